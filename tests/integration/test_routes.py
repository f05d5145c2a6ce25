"""Model routes end to end: compiled policies, the real OPA, the gRPC PDP and `aam authorize`.

One route per option, so each test shows one rule choosing or dropping targets.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf import json_format

from aam.cli.main import run
from aam.v1 import pdp_pb2
from pdp.stack import Stack
from tests.integration.pdp import EXAMPLES, FINANCE, request, running_stack, stub

ROUTER = "spiffe://prod/agent/router"
EU_ROUTER = "spiffe://prod/agent/eu-router"
CLAIMS = "spiffe://prod/agent/claims-assistant"

TARGETS = """\
    - {provider: anthropic, model: claude, region: us-east-1, input_price_per_mtok: 3,
       output_price_per_mtok: 15, context_window: 200000}
    - {provider: openai, model: gpt, region: us-east-1, input_price_per_mtok: 1.25,
       output_price_per_mtok: 10, context_window: 100000, data_retention: true}
    - {provider: bedrock, model: claude-eu, region: eu-central-1, input_price_per_mtok: 3.3,
       output_price_per_mtok: 16.5, context_window: 200000}
"""

OPTIONS = {
    "ordered": "",
    "cheapest": "sort: price",
    "first-only": "allow_fallbacks: false\n  providers: {ignore: [anthropic]}",
    "only-bedrock": "providers: {only: [bedrock]}",
    "no-openai": "providers: {ignore: [openai]}",
    "eu": "regions: [eu-*]",
    "capped": "max_price: {output_per_mtok: 15}",
    "private": "data_collection: deny",
    "limited": "rate: {requests_per_minute: 5}",
}


def _route(name: str, options: str) -> str:
    return (f"apiVersion: access.envisionai.dev/v1\nkind: ModelRoute\nmetadata: {{name: {name}}}\n"
            f"spec:\n  {options}\n  targets:\n{TARGETS}" if options else
            f"apiVersion: access.envisionai.dev/v1\nkind: ModelRoute\nmetadata: {{name: {name}}}\n"
            f"spec:\n  targets:\n{TARGETS}")


POLICIES = f"""\
apiVersion: access.envisionai.dev/v1
kind: AgentPolicy
metadata: {{name: router}}
spec:
  identity: {{workload: "{ROUTER}"}}
  models: {{allow: [{", ".join(OPTIONS)}]}}
  budget: {{per_request_usd: 0.12}}
  tools:
    - resource: crm.pii
      actions: [read]
      conditions: {{model_region: [eu-*]}}
---
apiVersion: access.envisionai.dev/v1
kind: AgentPolicy
metadata: {{name: eu-router}}
spec:
  identity: {{workload: "{EU_ROUTER}"}}
  models: {{allow: [ordered, cheapest], regions: [eu-*]}}
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    d = tmp_path_factory.mktemp("routes")
    (d / "routes.yaml").write_text("---\n".join(_route(n, o) for n, o in OPTIONS.items()))
    (d / "policies.yaml").write_text(POLICIES)
    with running_stack(d) as s:
        yield s


def authorize(stack: Stack, workload: str = ROUTER, **fields: Any) -> pdp_pb2.AuthorizeResponse:
    channel, pdp = stub(stack)
    with channel:
        return pdp.Authorize(request(workload, **fields), timeout=5)


def chain(resp: pdp_pb2.AuthorizeResponse) -> list[str]:
    assert resp.decision == pdp_pb2.DECISION_ALLOW, resp.reasons
    return [t.provider for t in resp.route.targets]


def excluded(resp: pdp_pb2.AuthorizeResponse) -> dict[str, str]:
    return {x.target.provider: x.reason for x in resp.route.excluded}


@pytest.mark.parametrize(("alias", "providers", "left_out"), [
    ("ordered", ["anthropic", "openai", "bedrock"], {}),
    ("cheapest", ["openai", "anthropic", "bedrock"], {}),
    ("first-only", ["openai"], {"anthropic": "provider"}),
    ("only-bedrock", ["bedrock"], {"anthropic": "provider", "openai": "provider"}),
    ("no-openai", ["anthropic", "bedrock"], {"openai": "provider"}),
    ("eu", ["bedrock"], {"anthropic": "region", "openai": "region"}),
    ("capped", ["anthropic", "openai"], {"bedrock": "price"}),
    ("private", ["anthropic", "bedrock"], {"openai": "data_collection"}),
])
def test_each_route_option(stack: Stack, alias: str, providers: list[str],
                           left_out: dict[str, str]) -> None:
    resp = authorize(stack, model=alias, explain=True)
    assert chain(resp) == providers
    assert excluded(resp) == left_out
    assert resp.route.allow_fallbacks is (alias != "first-only")


def test_exclusions_only_with_explain(stack: Stack) -> None:
    resp = authorize(stack, model="eu")
    assert chain(resp) == ["bedrock"]
    assert not resp.route.excluded


def test_route_prices_and_limits(stack: Stack) -> None:
    resp = authorize(stack, model="limited", estimated_tokens=4000)
    assert [(t.provider, t.region, t.input_price_per_mtok, t.output_price_per_mtok,
             t.context_window, t.data_retention, round(t.estimated_cost_usd, 6))
            for t in resp.route.targets] == [
        ("anthropic", "us-east-1", 3.0, 15.0, 200000, False, 0.06),
        ("openai", "us-east-1", 1.25, 10.0, 100000, True, 0.04),
        ("bedrock", "eu-central-1", 3.3, 16.5, 200000, False, 0.066),
    ]
    assert resp.route.limits.requests_per_minute == 5
    assert resp.route.limits.reserve_usd == pytest.approx(0.066)
    assert resp.route.limits.budget_left_usd == pytest.approx(0.12)


def test_context_window_skips_small_models(stack: Stack) -> None:
    resp = authorize(stack, EU_ROUTER, model="ordered", estimated_tokens=2000, explain=True)
    assert chain(resp) == ["bedrock"]
    resp = authorize(stack, model="no-openai", estimated_tokens=8000, explain=True)
    # 8,000 tokens: anthropic $0.12 fits the $0.12 cap, bedrock $0.132 does not.
    assert chain(resp) == ["anthropic"]
    assert excluded(resp) == {"openai": "provider", "bedrock": "budget"}
    assert resp.route.limits.reserve_usd == pytest.approx(0.12)


def test_budget_skips_dear_targets_and_prices_the_reservation(stack: Stack) -> None:
    resp = authorize(stack, model="ordered", estimated_tokens=10000, explain=True)
    assert chain(resp) == ["openai"]  # $0.10; anthropic $0.15 and bedrock $0.165 exceed $0.12
    assert excluded(resp) == {"anthropic": "budget", "bedrock": "budget"}
    assert resp.route.limits.reserve_usd == pytest.approx(0.10)


def test_budget_leaving_no_target(stack: Stack) -> None:
    resp = authorize(stack, model="ordered", estimated_tokens=20000)
    assert resp.decision == pdp_pb2.DECISION_DENY
    assert {r.code for r in resp.reasons} == {"budget_exhausted"}
    assert not resp.HasField("route")


def test_context_window_exclusion(stack: Stack) -> None:
    resp = authorize(stack, EU_ROUTER, model="cheapest", estimated_tokens=150000, explain=True)
    assert chain(resp) == ["bedrock"]


def test_policy_region_pinning_leaving_no_target_denies(stack: Stack) -> None:
    resp = authorize(stack, EU_ROUTER, model="ordered", context={"data_residency": "us-*"})
    assert resp.decision == pdp_pb2.DECISION_DENY
    assert [r.code for r in resp.reasons] == ["no_eligible_route"]
    assert "bedrock/claude-eu@eu-central-1: region" in resp.reasons[0].message
    assert not resp.HasField("route")


def test_context_residency_narrows(stack: Stack) -> None:
    assert chain(authorize(stack, model="ordered", context={"data_residency": ["eu-*"]})) == ["bedrock"]
    assert chain(authorize(stack, EU_ROUTER, model="cheapest")) == ["bedrock"]


def test_fallback_disabled_with_region_pinning(stack: Stack) -> None:
    resp = authorize(stack, model="first-only", context={"data_residency": "eu-*"})
    assert chain(resp) == ["bedrock"]
    assert len(resp.route.targets) == 1


@pytest.mark.parametrize(("region", "allowed"), [
    ("eu-central-1", True), ("us-east-1", False), (None, False),
])
def test_pii_tool_needs_an_eu_model(stack: Stack, region: str | None, allowed: bool) -> None:
    context = {"model_region": region} if region else None
    resp = authorize(stack, tool="crm.pii", action="read", context=context)
    assert (resp.decision == pdp_pb2.DECISION_ALLOW) is allowed
    if not allowed:
        assert [r.code for r in resp.reasons] == ["condition_not_met"]


@pytest.fixture(scope="module")
def examples() -> Iterator[Stack]:
    with running_stack(EXAMPLES) as s:
        yield s


def test_authorize_explain_prints_order_and_exclusions(examples: Stack) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = run(["authorize", "--addr", examples.settings.grpc_addr, "--workload", CLAIMS,
                "--model", "reasoning-eu", "--tokens", "2000", "--explain"], out, err)
    assert code == 0, err.getvalue()
    text = out.getvalue()
    lines = [line.strip() for line in text.splitlines()]
    assert "route     reasoning-eu (fallbacks allowed, sort price)".strip() in lines
    assert lines.index(next(x for x in lines if x.startswith("1. mistral/"))) < lines.index(
        next(x for x in lines if x.startswith("2. bedrock/")))
    reasons = {x.split()[1]: x.split()[8] for x in lines if x.startswith("excluded ")}
    assert reasons == {"azure/gpt-5": "[data_collection]", "openai/gpt-5": "[provider]",
                       "anthropic/claude-sonnet-4-5": "[region]"}
    assert "limits    reserve $0.033, budget left $1, 600 req/min, 2000000 tokens/min".strip() in lines


def test_ledger_budget_skips_targets_and_reserves_the_chain_price(examples: Stack) -> None:
    """75 USD a day, 74.20 spent: 60k tokens cost anthropic 0.90, openai 0.60, bedrock 0.99.
    The ledger refuses the quote (0.99), the chain narrows to openai, and 0.60 is reserved."""
    channel, pdp = stub(examples, gateway=True)
    with channel:
        spent = pdp.Authorize(request(FINANCE, model="summarization", estimated_cost_usd=74.20), timeout=5)
        assert pdp.RecordUsage(pdp_pb2.RecordUsageRequest(decision_id=spent.decision_id, tokens=1,
                                                          cost_usd=74.20), timeout=5).applied
        resp = pdp.Authorize(request(FINANCE, model="reasoning-high", estimated_tokens=60_000,
                                     explain=True), timeout=5)
        assert chain(resp) == ["openai"]
        assert excluded(resp) == {"anthropic": "budget", "bedrock": "budget"}
        assert resp.route.limits.reserve_usd == pytest.approx(0.60)
        assert resp.route.limits.budget_left_usd == pytest.approx(0.80)
        after = pdp.Authorize(request(FINANCE, model="summarization", estimated_tokens=1000,
                                      explain=True), timeout=5)
    state = json_format.MessageToDict(after.explanation)["input"]["state"]["budget"]["daily"]
    assert state["reserved_usd"] == pytest.approx(0.60)  # what the chain costs, not 0.99
    assert state["spent_usd"] == pytest.approx(74.20)
