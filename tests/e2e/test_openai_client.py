"""The official OpenAI SDK through the real Envoy to an OpenAI-compatible upstream.

Chat (plain and stream=True) reaches the upstream without the agent's key; GET
/v1/models is answered by the PDP with the aliases the workload may use; a denial
is an OpenAI-shaped error the SDK shows with AAM's reason code.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx2
import openai
import pytest
from openai import OpenAI

from pdp.ledger.types import AuditFilter
from pdp.stack import Stack
from tests.e2e.agents import AgentUpstream, tls_context
from tests.e2e.conftest import Pki
from tests.e2e.envoy import Envoy, run_envoy
from tests.e2e.pdp import SERVE_TOKEN, Recording, Throttling, serve
from tests.e2e.pki import Svid

pytestmark = pytest.mark.integration

AGENT_KEY = "sk-agent-own-key"
MESSAGES = [{"role": "user", "content": "hello"}]


def sdk(envoy: Envoy, pki: Pki, svid: Svid, **kw: object) -> OpenAI:
    http = httpx2.Client(verify=tls_context(pki.domain.bundle, svid), timeout=10.0)
    return OpenAI(base_url=envoy.url + "/v1", api_key=AGENT_KEY, http_client=http, **kw)


@pytest.fixture()
def finance(agent_envoy: Envoy, pki: Pki) -> Iterator[OpenAI]:
    with sdk(agent_envoy, pki, pki.finance) as client:
        yield client


def test_chat_and_stream_reach_the_upstream_without_the_agents_key(
        finance: OpenAI, agent_upstream: AgentUpstream) -> None:
    before = len(agent_upstream.find("/v1/chat/completions"))
    done = finance.chat.completions.create(model="summarization", messages=MESSAGES, max_tokens=16)
    assert done.choices[0].message.content == "Hello"
    stream = finance.chat.completions.create(model="reasoning-high", messages=MESSAGES,
                                             max_tokens=16, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream) == "Hello"
    got = agent_upstream.find("/v1/chat/completions")[before:]
    assert len(got) == 2
    assert all("authorization" not in g.headers for g in got)
    assert [g.headers["x-aam-route-alias"] for g in got] == ["summarization", "reasoning-high"]
    assert got[1].response_type.startswith("text/event-stream")
    assert all(AGENT_KEY not in str(g.headers) for g in agent_upstream.seen)


def test_models_list_is_answered_by_the_pdp_with_the_workloads_aliases(
        finance: OpenAI, agent_upstream: AgentUpstream, stack: Stack) -> None:
    page = finance.models.with_raw_response.list()
    models = page.parse()
    assert sorted(m.id for m in models) == ["reasoning-high", "summarization"]
    assert all(m.object == "model" for m in models)
    decision = page.headers["x-aam-decision-id"]
    assert agent_upstream.find("/v1/models") == []
    assert stack.ledger is not None
    (row,) = stack.ledger.audit_rows(AuditFilter(decision_id=decision))
    record = row.record()
    assert (record["outcome"], record["policy"], record["action"]["list"]) == \
        ("allow", "finance-analyst-readonly", "models")


def test_denials_are_openai_errors_carrying_the_reason(
        finance: OpenAI, agent_envoy: Envoy, pki: Pki, agent_upstream: AgentUpstream) -> None:
    before = len(agent_upstream.seen)
    for stream in (False, True):
        with pytest.raises(openai.PermissionDeniedError) as err:
            finance.chat.completions.create(model="gpt-unlisted", messages=MESSAGES, stream=stream)
        e = err.value
        assert e.status_code == 403
        assert e.code == "model_not_allowed"
        assert "model_not_allowed" in e.message and "gpt-unlisted" in e.message
        assert e.response.headers["x-aam-decision-id"]
    with sdk(agent_envoy, pki, pki.stranger) as stranger, \
            pytest.raises(openai.PermissionDeniedError) as err:
        stranger.models.list()
    assert err.value.code == "no_policy" and "no_policy" in err.value.message
    assert agent_upstream.seen[before:] == []


def test_budget_exhausted_is_a_429_the_sdk_does_not_retry(
        pki: Pki, agent_upstream: AgentUpstream) -> None:
    engine = Recording(Throttling("budget_exhausted", 3600.0))
    server, _, port = serve(engine)
    try:
        with run_envoy(pdp_port=port, upstream_port=agent_upstream.port, tls=pki.tls,
                       pdp_token=SERVE_TOKEN) as envoy, sdk(envoy, pki, pki.finance) as client, \
                pytest.raises(openai.RateLimitError) as err:
            client.chat.completions.create(model="reasoning-high", messages=MESSAGES, max_tokens=1)
    finally:
        server.stop(0)
    assert err.value.code == "budget_exhausted" and "budget_exhausted" in err.value.message
    assert err.value.response.headers["retry-after"] == "3600"
    assert err.value.response.headers["x-should-retry"] == "false"
    assert len(engine.seen) == 1  # the SDK retries a 429 twice unless told not to
