"""Denials in the shape each client reads: JSON-RPC for MCP, OpenAI errors, AAM's own."""

from __future__ import annotations

import json

from pdp.engine import Decision, Reason
from pdp.httpmap import Surface
from pdp.replies import denial, models_list

HEADER = "x-aam-decision-id"


def deny(*reasons: tuple[str, str], retry: float | None = None) -> Decision:
    return Decision(allow=False, reasons=tuple(Reason(c, m) for c, m in reasons), policy="p",
                    decision_id="d-9", revision="r", retry_after_s=retry)


def test_mcp_denial_is_a_json_rpc_error_echoing_the_id() -> None:
    r = denial(deny(("action_denied", "export is denied")), Surface("mcp", "req-1"), HEADER)
    body = json.loads(r.body)
    assert (r.status, r.headers["content-type"], r.headers[HEADER]) == (403, "application/json", "d-9")
    assert body["jsonrpc"] == "2.0" and body["id"] == "req-1"
    assert body["error"]["code"] == -32001
    assert body["error"]["message"] == "action_denied: export is denied (decision d-9)"
    assert body["error"]["data"] == {"decision_id": "d-9", "reasons": [
        {"code": "action_denied", "message": "export is denied"}]}
    bad = json.loads(denial(deny(("invalid_request", "a batch")), Surface("mcp"), HEADER).body)
    assert (bad["id"], bad["error"]["code"]) == (None, -32600)


def test_openai_denial_carries_type_code_and_aams_fields() -> None:
    r = denial(deny(("model_not_allowed", "m is not allowed"), ("binding_mismatch", "wrong env")),
               Surface("openai"), HEADER)
    body = json.loads(r.body)
    assert body["error"] == {
        "message": "model_not_allowed: m is not allowed; binding_mismatch: wrong env (decision d-9)",
        "type": "permission_denied", "code": "model_not_allowed", "param": None}
    assert [x["code"] for x in body["reasons"]] == ["model_not_allowed", "binding_mismatch"]


def test_throttled_denials_say_when_and_whether_to_retry() -> None:
    budget = denial(deny(("budget_exhausted", "spent"), retry=3599.2), Surface("openai"), HEADER)
    assert (budget.status, budget.headers["retry-after"], budget.headers["x-should-retry"]) == \
        (429, "3600", "false")
    assert json.loads(budget.body)["error"]["type"] == "insufficient_quota"
    rate = denial(deny(("rate_limited", "slow down")), Surface(), HEADER)
    assert (rate.status, rate.headers["retry-after"]) == (429, "60")
    assert "x-should-retry" not in rate.headers
    assert set(json.loads(rate.body)) == {"decision_id", "reasons"}  # AAM's own shape


def test_internal_failures_never_show_their_detail() -> None:
    for surface in (Surface("mcp", 1), Surface("openai"), Surface()):
        r = denial(deny(("engine_unavailable", "dial tcp 10.0.0.7:8181: refused")), surface, HEADER)
        assert b"10.0.0.7" not in r.body and b"policy engine is unavailable" in r.body


def test_models_list_is_the_openai_list_shape() -> None:
    d = Decision(allow=True, reasons=(), policy="p", decision_id="d-1", revision="r",
                 models=("a", "b"))
    r = models_list(d, HEADER)
    assert (r.status, r.headers[HEADER]) == (200, "d-1")
    assert json.loads(r.body) == {"object": "list", "data": [
        {"id": "a", "object": "model", "created": 0, "owned_by": "aam"},
        {"id": "b", "object": "model", "created": 0, "owned_by": "aam"}]}
