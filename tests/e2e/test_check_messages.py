"""Envoy's own CheckRequest messages (xds-protos) against the PDP's Authorization service."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2_grpc
from google.protobuf import json_format
from google.rpc import code_pb2

from pdp.engine import Decision, Engine, Reason, Request
from pdp.opa import OpaClient, free_port
from pdp.stack import Stack
from tests.e2e.conftest import FINANCE, Pki
from tests.e2e.pdp import FakeBroker, Recording, Throttling, check_request, pdp_stack, pem, serve
from tests.integration.pdp import EXAMPLES, gateway_channel
from tests.vaultsetup import VaultSetup

pytestmark = pytest.mark.integration


def hand_built(stack: Stack, broker: Any) -> Engine:
    """An engine on the stack's OPA and ledger with a broker of the test's choosing."""
    assert stack.engine is not None
    return Engine(OpaClient(stack.opa_url, 1.0), broker=broker, gate=stack.engine.gate)


@pytest.fixture(scope="module")
def recording(stack: Stack) -> Iterator[tuple[Recording, external_auth_pb2_grpc.AuthorizationStub]]:
    rec = Recording(hand_built(stack, FakeBroker()))
    server, check, _ = serve(rec)
    yield rec, check
    server.stop(0)


@pytest.fixture(scope="module")
def check(stack: Stack) -> Iterator[external_auth_pb2_grpc.AuthorizationStub]:
    """The Stack's own gRPC listener: Check is served beside Authorize."""
    with gateway_channel(stack) as channel:
        yield external_auth_pb2_grpc.AuthorizationStub(channel)


def headers_of(options: Any) -> dict[str, str]:
    return {h.header.key: h.header.value for h in options}


def test_allow_injects_credential_strips_agent_headers_and_sets_metadata(
        check: external_auth_pb2_grpc.AuthorizationStub, pki: Pki, vault: VaultSetup) -> None:
    resp = check.Check(check_request(
        certificate=pem(pki.finance.cert), body={"account": "001"},
        headers={"authorization": "Bearer agent", "x-api-key": "agent"}))
    assert resp.status.code == code_pb2.OK
    assert resp.WhichOneof("http_response") == "ok_response"
    ok = resp.ok_response
    set_ = headers_of(ok.headers)
    assert set_["authorization"] == f"Bearer {vault.kv_secret}"
    assert all(h.append_action == base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
               for h in ok.headers)
    assert {"x-api-key", "proxy-authorization"} <= set(ok.headers_to_remove)
    assert "authorization" not in ok.headers_to_remove
    decision_id = set_["x-aam-decision-id"]
    assert headers_of(ok.response_headers_to_add) == {"x-aam-decision-id": decision_id}
    md = json_format.MessageToDict(resp.dynamic_metadata)
    assert md["decision_id"] == decision_id
    assert (md["workload"], md["tool"], md["action"], md["allow"]) == \
        (FINANCE, "salesforce.accounts", "read", True)
    assert md["policy"] == "finance-analyst-readonly"
    assert vault.kv_secret not in resp.dynamic_metadata.SerializeToString().decode("latin-1")
    assert vault.kv_secret not in str(resp.ok_response.response_headers_to_add)


def test_model_allow_exposes_route_as_headers_and_metadata(
        check: external_auth_pb2_grpc.AuthorizationStub, pki: Pki) -> None:
    resp = check.Check(check_request(
        certificate=pem(pki.finance.cert), path="/v1/chat/completions?x=1",
        body={"model": "summarization", "max_tokens": 10}))
    assert resp.WhichOneof("http_response") == "ok_response", resp
    set_ = headers_of(resp.ok_response.headers)
    assert (set_["x-aam-route-alias"], set_["x-aam-route-provider"], set_["x-aam-route-model"]) == \
        ("summarization", "openai", "gpt-5-mini")
    assert set_["x-ai-eg-fallback-chain"] == "openai:gpt-5-mini,anthropic:claude-haiku-4-5"
    route = json_format.MessageToDict(resp.dynamic_metadata)["route"]
    assert route["alias"] == "summarization" and route["allow_fallbacks"] is True
    assert [t["provider"] for t in route["targets"]] == ["openai", "anthropic"]
    assert "authorization" in resp.ok_response.headers_to_remove


def test_deny_is_403_with_json_reasons(check: external_auth_pb2_grpc.AuthorizationStub,
                                       pki: Pki) -> None:
    resp = check.Check(check_request(certificate=pem(pki.finance.cert),
                                     path="/tools/salesforce.accounts/delete"))
    assert resp.status.code == code_pb2.PERMISSION_DENIED
    denied = resp.denied_response
    assert denied.status.code == 403
    body = json.loads(denied.body)
    assert [r["code"] for r in body["reasons"]] == ["action_denied"]
    hdrs = headers_of(denied.headers)
    assert hdrs["content-type"] == "application/json"
    assert hdrs["x-aam-decision-id"] == body["decision_id"]
    assert "retry-after" not in hdrs


@pytest.mark.parametrize(("case", "kwargs"), [
    ("principal without certificate", {}),
    ("principal differs from certificate", {"principal": "spiffe://prod/agent/other"}),
    ("two URI SANs", {"principal": "spiffe://prod/agent/stranger", "two": True}),
    ("no identity at all", {"principal": ""}),
    ("certificate is not PEM", {"certificate": "garbage"}),
])
def test_identity_problems_are_unauthenticated(
        check: external_auth_pb2_grpc.AuthorizationStub, pki: Pki, case: str,
        kwargs: dict[str, Any]) -> None:
    kwargs = dict(kwargs)
    if case != "principal without certificate" and "certificate" not in kwargs:
        kwargs["certificate"] = pem((pki.two_uris if kwargs.pop("two", False) else pki.finance).cert)
    resp = check.Check(check_request(**kwargs))
    assert resp.denied_response.status.code == 403, case
    assert [r["code"] for r in json.loads(resp.denied_response.body)["reasons"]] == ["unauthenticated"]


@pytest.mark.parametrize(("body", "path", "code"), [
    ("not json", "/tools/salesforce.accounts/read", "invalid_request"),
    ([1, 2], "/tools/salesforce.accounts/read", "invalid_request"),
    ({"max_tokens": 5}, "/v1/chat/completions", "invalid_request"),
    ([{"jsonrpc": "2.0", "id": 1, "method": "ping"}], "/mcp/salesforce.accounts", "invalid_request"),
    ({"jsonrpc": "2.0", "method": "tools/list"}, "/mcp/salesforce.accounts", "mcp_method_not_allowed"),
    ({}, "/tools/salesforce.accounts/Not An Action", "invalid_request"),
    ({}, "/nowhere", "route_not_mapped"),
])
def test_malformed_or_unmapped_requests_are_denied(
        check: external_auth_pb2_grpc.AuthorizationStub, pki: Pki, body: Any, path: str,
        code: str) -> None:
    req = check_request(certificate=pem(pki.finance.cert), path=path.replace(" ", "%20"))
    req.attributes.request.http.raw_body = body.encode() if isinstance(body, str) \
        else json.dumps(body).encode()
    resp = check.Check(req)
    assert resp.denied_response.status.code == 403
    denied = json.loads(resp.denied_response.body)
    own = denied["error"]["data"] if path.startswith("/mcp/") else denied
    assert [r["code"] for r in own["reasons"]] == [code]


def test_context_extensions_and_estimate_reach_the_engine(
        recording: tuple[Recording, external_auth_pb2_grpc.AuthorizationStub], pki: Pki) -> None:
    rec, check = recording
    body = {"model": "reasoning-high", "max_tokens": 100, "messages": ["x" * 400]}
    resp = check.Check(check_request(
        certificate=pem(pki.finance.cert), path="/v1/chat/completions", body=body,
        context_extensions={"surface": "model-gateway", "env": "prod"}, raw_headers=True))
    assert resp.WhichOneof("http_response") == "ok_response"
    req = rec.seen[-1]
    assert req.context == {"surface": "model-gateway", "env": "prod"}
    assert req.model == "reasoning-high" and req.request_id == "req-1"
    assert req.estimated_tokens >= 100 + 400 // 4


@pytest.mark.parametrize(("code", "retry", "header"), [
    ("budget_exhausted", 41.2, "42"), ("rate_limited", None, "60")])
def test_budget_and_rate_denials_are_429_with_retry_after(pki: Pki, code: str,
                                                          retry: float | None, header: str) -> None:
    server, check, _ = serve(Throttling(code, retry))
    try:
        resp = check.Check(check_request(certificate=pem(pki.finance.cert),
                                         path="/v1/chat/completions",
                                         body={"model": "reasoning-high", "max_tokens": 10}))
    finally:
        server.stop(0)
    assert resp.status.code == code_pb2.RESOURCE_EXHAUSTED
    assert resp.denied_response.status.code == 429
    headers = headers_of(resp.denied_response.headers)
    assert headers["retry-after"] == header
    # A budget resets in hours: clients are told not to retry (the OpenAI SDK would, twice).
    assert headers.get("x-should-retry") == ("false" if code == "budget_exhausted" else None)
    body = json.loads(resp.denied_response.body)
    assert (body["decision_id"], body["reasons"]) == ("d-1", [{"code": code, "message": "over budget"}])
    assert body["error"]["code"] == code  # a model route: an OpenAI error object
    assert body["error"]["message"] == f"{code}: over budget (decision d-1)"


def test_engine_failure_is_a_deny_without_internal_detail(pki: Pki) -> None:
    dead = Engine(OpaClient(f"http://127.0.0.1:{free_port()}", 0.2))
    server, check, _ = serve(dead)
    try:
        resp = check.Check(check_request(certificate=pem(pki.finance.cert)))
    finally:
        server.stop(0)
    assert resp.denied_response.status.code == 403
    (reason,) = json.loads(resp.denied_response.body)["reasons"]
    assert reason["code"] == "engine_unavailable"
    assert "127.0.0.1" not in reason["message"] and "refused" not in reason["message"].lower()


def test_broker_denial_reaches_the_agent_without_its_detail(pki: Pki, stack: Stack) -> None:
    class Refusing:
        def attach(self, req: Request, decision: Decision) -> Decision:
            return dataclasses.replace(decision, allow=False, reasons=(Reason(
                "credential_unavailable", "vault said no: s.secret-token"),))

    server, check, _ = serve(hand_built(stack, Refusing()))
    try:
        resp = check.Check(check_request(certificate=pem(pki.finance.cert)))
    finally:
        server.stop(0)
    assert resp.denied_response.status.code == 403
    (reason,) = json.loads(resp.denied_response.body)["reasons"]
    assert reason["code"] == "credential_unavailable"
    assert "secret" not in resp.SerializeToString().decode("latin-1")


CTX_POLICY = """
apiVersion: access.envisionai.dev/v1
kind: AgentPolicy
metadata: {name: ctx-bound}
spec:
  identity: {workload: spiffe://prod/agent/ctx}
  tools:
    - resource: zendesk.tickets
      actions: [search]
      constraints:
        - {param: limit, min: 1, max: 50}
      conditions:
        context: {region: [eu-west-1]}
"""


def test_body_params_and_context_extensions_are_judged_by_the_policy(
        tmp_path_factory: pytest.TempPathFactory, vault: VaultSetup, pki: Pki) -> None:
    """Through the real OPA: params from the JSON body meet constraints, the route's
    context_extensions meet context conditions."""
    workload = "spiffe://prod/agent/ctx"
    cert = pem(pki.domain.issue("ctx", workload).cert)
    policies = tmp_path_factory.mktemp("ctx-policies")
    shutil.copy(EXAMPLES / "tools.yaml", policies / "tools.yaml")
    (policies / "ctx.yaml").write_text(CTX_POLICY)
    cases = [("eu-west-1", {"limit": 10}, []),
             ("us-east-1", {"limit": 10}, ["condition_not_met"]),
             ("eu-west-1", {"limit": 500}, ["constraint_violated"])]
    with pdp_stack(vault, policies=str(policies)) as stack, \
            gateway_channel(stack) as channel:
        check = external_auth_pb2_grpc.AuthorizationStub(channel)
        for region, body, expected in cases:
            resp = check.Check(check_request(
                principal=workload, certificate=cert, path="/tools/zendesk.tickets/search",
                body=body, context_extensions={"region": region}), timeout=10)
            codes = [r["code"] for r in json.loads(resp.denied_response.body)["reasons"]] \
                if resp.HasField("denied_response") else []
            assert codes == expected, (region, body)


def test_models_listing_is_answered_by_check_itself(
        check: external_auth_pb2_grpc.AuthorizationStub, pki: Pki) -> None:
    resp = check.Check(check_request(certificate=pem(pki.finance.cert), method="GET",
                                     path="/v1/models"))
    assert resp.status.code == code_pb2.PERMISSION_DENIED  # or Envoy would ask the upstream
    assert resp.denied_response.status.code == 200
    body = json.loads(resp.denied_response.body)
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["reasoning-high", "summarization"]
    md = json_format.MessageToDict(resp.dynamic_metadata)
    assert md["allow"] is True
    assert headers_of(resp.denied_response.headers)["x-aam-decision-id"] == md["decision_id"]


def test_mcp_metadata_tells_the_processor_what_the_message_was(
        check: external_auth_pb2_grpc.AuthorizationStub, pki: Pki) -> None:
    resp = check.Check(check_request(certificate=pem(pki.finance.cert), path="/mcp/salesforce.accounts",
                                     body={"jsonrpc": "2.0", "id": 7, "method": "tools/list"}))
    assert resp.WhichOneof("http_response") == "ok_response", resp
    md = json_format.MessageToDict(resp.dynamic_metadata)
    assert md["mcp"] == {"message": "request", "method": "tools/list", "id": "7"}
    assert (md["tool"], md["action"], md["policy"]) == \
        ("salesforce.accounts", "", "finance-analyst-readonly")
