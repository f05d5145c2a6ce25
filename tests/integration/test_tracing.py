"""Decision traces exported over OTLP to a real Jaeger, read back from its query API.

The PDP runs with real OPA, its ledger and a real OpenBao broker; the trace context is
sent the way gateways send it (W3C ``traceparent`` in the call's gRPC metadata).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aam.v1 import pdp_pb2
from pdp.stack import Stack
from tests import vaultsetup
from tests.integration.pdp import gateway_metadata, request, running_stack, stub
from tests.servers import Jaeger

CRM = "spiffe://prod/agent/crm"
SERVICE = "aam-pdp-test"
ALLOW = pdp_pb2.DECISION_ALLOW


@pytest.fixture(scope="module")
def stack(vault: vaultsetup.VaultSetup, jaeger: Jaeger,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    pol = vaultsetup.policies(tmp_path_factory.mktemp("policies"))
    with running_stack(pol, otlp_endpoint=jaeger.otlp_endpoint, trace_service_name=SERVICE,
                       **vault.settings()) as s:
        yield s


def traceparent() -> tuple[str, str, str]:
    """A sampled W3C traceparent of a fresh trace: (header, trace id, parent span id)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def authorize(stack: Stack, gateway: bool, metadata: tuple[tuple[str, str], ...] = (),
              **fields: Any) -> pdp_pb2.AuthorizeResponse:
    channel, pdp = stub(stack, gateway=gateway)
    with channel:
        return pdp.Authorize(request(CRM, **fields), metadata=metadata, timeout=10)


def wait_for(find: Any, timeout_s: float = 15.0) -> Any:
    """Poll until ``find()`` returns something: spans reach Jaeger a second or so later."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = find()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError("not exported to Jaeger in time")


def tags(span: dict) -> dict[str, Any]:
    return {t["key"]: t["value"] for t in span["tags"]}


def by_name(trace: dict, name: str) -> list[dict]:
    return [s for s in trace["spans"] if s["operationName"] == name]


def decision_trace(jaeger: Jaeger, decision_id: str) -> dict | None:
    """The trace holding the decision span of ``decision_id`` (searched by its tag)."""
    for trace in jaeger.traces(SERVICE):
        for span in by_name(trace, "aam.decision"):
            if tags(span).get("aam.decision_id") == decision_id:
                return trace
    return None


def test_a_gateways_traceparent_makes_the_decision_span_its_child(
        stack: Stack, jaeger: Jaeger) -> None:
    header, trace_id, parent_id = traceparent()
    meta = (*gateway_metadata(stack), ("traceparent", header))
    resp = authorize(stack, True, meta, tool="salesforce.accounts", action="read",
                     params={"q": "x"})
    assert resp.decision == ALLOW and resp.credential.value  # a brokered credential was issued

    def complete() -> dict | None:  # the decision span and its four steps
        trace = jaeger.trace(trace_id)
        return trace if trace and len(trace["spans"]) >= 4 else None

    trace = wait_for(complete)
    [decision] = by_name(trace, "aam.decision")
    assert decision["references"] == [
        {"refType": "CHILD_OF", "traceID": trace_id, "spanID": parent_id}]
    t = tags(decision)
    assert t["aam.decision_id"] == resp.decision_id
    assert t["aam.workload"] == CRM
    assert t["aam.tool"] == "salesforce.accounts" and t["aam.action"] == "read"
    assert t["aam.policy"] == resp.policy and t["aam.policy"]
    assert t["aam.outcome"] == "allow"
    assert t["aam.bundle_revision"] == resp.bundle_revision and resp.bundle_revision
    assert t["rpc.method"] == "Authorize"
    assert t["span.kind"] == "server"
    assert trace["processes"][decision["processID"]]["serviceName"] == SERVICE
    steps = {s["operationName"]: s for s in trace["spans"] if s is not decision}
    assert {"aam.policy.evaluate", "aam.broker.credential", "aam.ledger.commit"} <= set(steps)
    for step in steps.values():  # every step is a child of the decision
        assert step["references"][0]["spanID"] == decision["spanID"]
    assert tags(steps["aam.policy.evaluate"])["aam.bundle_revision"] == resp.bundle_revision
    assert tags(steps["aam.broker.credential"])["aam.issued"] is True


def test_a_deny_records_its_reason_codes(stack: Stack, jaeger: Jaeger) -> None:
    header, trace_id, _ = traceparent()
    meta = (*gateway_metadata(stack), ("traceparent", header))
    resp = authorize(stack, True, meta, tool="salesforce.accounts", action="delete")
    assert resp.decision != ALLOW
    trace = wait_for(lambda: jaeger.trace(trace_id))
    [decision] = by_name(trace, "aam.decision")
    t = tags(decision)
    assert t["aam.outcome"] == "deny"
    assert json.loads(t["aam.reasons"]) == [r.code for r in resp.reasons]
    assert "error.type" not in t  # a deny is an answer, not an error
    assert "aam.ledger.finish" in {s["operationName"] for s in trace["spans"]}


def test_an_agents_traceparent_is_only_a_link(stack: Stack, jaeger: Jaeger) -> None:
    """An agent asking about itself cannot graft the PDP's span into a trace of its
    choosing (nor force sampling): its trace context becomes a link of a fresh trace."""
    header, trace_id, parent_id = traceparent()
    resp = authorize(stack, False, (("traceparent", header),), tool="salesforce.accounts",
                     action="read")
    assert resp.decision == ALLOW and resp.credential.withheld
    trace = wait_for(lambda: decision_trace(jaeger, resp.decision_id))
    assert trace["traceID"] != trace_id
    [decision] = by_name(trace, "aam.decision")
    assert decision["references"] == [
        {"refType": "FOLLOWS_FROM", "traceID": trace_id, "spanID": parent_id}]
    assert jaeger.trace(trace_id) is None  # nothing was written into the claimed trace


def test_no_span_holds_a_secret_or_a_param_value(
        stack: Stack, jaeger: Jaeger, vault: vaultsetup.VaultSetup) -> None:
    marker = f"param-{secrets.token_hex(8)}"
    context_marker = f"context-{secrets.token_hex(8)}"
    issued: list[str] = []
    ids: list[str] = []
    for tool, action in [("salesforce.accounts", "read"), ("crm.accounts", "read"),
                         ("crm.accounts", "update"), ("salesforce.vault", "read"),
                         ("salesforce.accounts", "delete"), ("web.search", "query")]:
        for gateway in (True, False):
            header, _, _ = traceparent()
            meta = (*gateway_metadata(stack), ("traceparent", header)) if gateway else ()
            resp = authorize(stack, gateway, meta, tool=tool, action=action, explain=gateway,
                             params={"q": marker, "account": marker},
                             context={"note": context_marker})
            ids.append(resp.decision_id)
            if resp.credential.value:
                issued.append(resp.credential.value)
    assert f"Bearer {vault.kv_secret}" in issued  # the flow really handled the secret
    wait_for(lambda: all(decision_trace(jaeger, d) for d in ids[-2:]), 20)
    exported = json.dumps(jaeger.traces(SERVICE))
    assert all(decision_id in exported for decision_id in ids)
    token = Path(stack.settings.gateway_token_file).read_text().strip()
    secrets_ = {vault.kv_secret, token, marker, context_marker, *issued}
    for value in issued:
        secrets_.update(p for p in value.replace("Bearer ", "").split(":") if len(p) >= 8)
    assert {s: exported.count(s) for s in secrets_} == dict.fromkeys(secrets_, 0)
