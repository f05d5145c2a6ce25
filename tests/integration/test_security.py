"""Issue 15's attacks, tried the way an agent would: against the plaintext port of an
``aam up``-like stack and against mTLS, with the real OPA, OpenBao and ledger.

- the brokered secret reaches only a trusted gateway, never an agent asking about itself;
- an agent cannot set its own price (estimate) nor settle its own usage;
- every deny is audited and counted, the ones made before the policy was asked included;
- a client that hangs up leaves no traceback behind.
"""

from __future__ import annotations

import re
import socket
import struct
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import requests
from envoy.service.auth.v3 import external_auth_pb2_grpc
from google.protobuf import json_format

from aam.v1 import pdp_pb2, pdp_pb2_grpc
from pdp.identity import GATEWAY_TOKEN_HEADER
from pdp.ledger import AuditFilter
from pdp.stack import Stack
from tests import vaultsetup
from tests.certs import CA, JwtIssuer
from tests.e2e.pdp import check_request
from tests.integration.pdp import EXAMPLES, Metadata, gateway_channel, request, running_stack, stub
from tests.integration.test_identity import GATEWAY, mtls_stack

CRM = "spiffe://prod/agent/crm"
TIGHT = "spiffe://prod/agent/tight"
SECRET_TOOL = {"tool": "salesforce.accounts", "action": "read"}  # KV secret, "Bearer ..."

TIGHT_POLICY = """\
apiVersion: access.envisionai.dev/v1
kind: AgentPolicy
metadata: {name: tight}
spec:
  identity: {workload: spiffe://prod/agent/tight}
  models: {allow: [reasoning-high]}
  budget: {daily_usd: 0.01}
  tools:
    - resource: crm.accounts
      actions: [read]
"""


@pytest.fixture(scope="module")
def brokered(vault: vaultsetup.VaultSetup, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Plaintext, as aam up runs it: a gateway token file, Vault behind the broker."""
    with running_stack(vaultsetup.policies(tmp_path_factory.mktemp("policies")),
                       **vault.settings()) as s:
        yield s


def tight_policies(tmp: Path) -> Path:
    (tmp / "tight.yaml").write_text(TIGHT_POLICY)
    (tmp / "routes.yaml").write_text((EXAMPLES / "model-routes.yaml").read_text())
    return tmp


def codes(resp: pdp_pb2.AuthorizeResponse) -> list[str]:
    return [r.code for r in resp.reasons]


def refusal_rows(stack: Stack, code: str) -> list[dict]:
    assert stack.ledger is not None
    return [r.record() for r in stack.ledger.audit_rows(AuditFilter())
            if r.record().get("event") == "identity_refused" and r.record()["reasons"][0]["code"] == code]


def metric(stack: Stack, outcome: str, reason: str) -> float:
    assert stack.http is not None
    text = requests.get(stack.http.url + "/metrics", timeout=5).text
    m = re.search(rf'^aam_decisions_total{{outcome="{outcome}",reason="{reason}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


# --- 1. the credential reaches only the gateway --------------------------------------

def test_plaintext_caller_gets_the_grant_without_its_value(brokered: Stack,
                                                           vault: vaultsetup.VaultSetup) -> None:
    channel, agent = stub(brokered)
    with channel:
        resp = agent.Authorize(request(CRM, **SECRET_TOOL), timeout=10)
    assert resp.decision == pdp_pb2.DECISION_ALLOW, resp.reasons
    grant = resp.credential
    assert (grant.value, grant.withheld, grant.header) == ("", True, "authorization")
    assert grant.expires_at.seconds > time.time()
    assert vault.kv_secret not in json_format.MessageToJson(resp)


def test_the_gateway_token_holder_gets_the_value(brokered: Stack, vault: vaultsetup.VaultSetup) -> None:
    channel, gateway = stub(brokered, gateway=True)
    with channel:
        resp = gateway.Authorize(request(CRM, **SECRET_TOOL), timeout=10)
    assert resp.credential.value == f"Bearer {vault.kv_secret}"
    assert not resp.credential.withheld


def test_a_wrong_gateway_token_is_unauthenticated_and_audited(brokered: Stack) -> None:
    before = metric(brokered, "deny", "gateway_token_invalid")
    wrong = grpc.intercept_channel(grpc.insecure_channel(brokered.settings.grpc_addr),
                                   Metadata(((GATEWAY_TOKEN_HEADER, "x" * 64),)))
    with wrong, pytest.raises(grpc.RpcError) as err:
        pdp_pb2_grpc.PolicyDecisionServiceStub(wrong).Authorize(request(CRM, **SECRET_TOOL), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "x" * 64 not in (err.value.details() or "")
    assert refusal_rows(brokered, "gateway_token_invalid")
    assert metric(brokered, "deny", "gateway_token_invalid") == before + 1


def test_check_on_a_plaintext_port_needs_the_gateway_token(brokered: Stack) -> None:
    """Check answers with the injected header: without the token it would hand any
    local process the secret of any workload it names."""
    before = len(refusal_rows(brokered, "not_gateway"))
    req = check_request(principal=CRM, path="/tools/salesforce.accounts/read", body={})
    with grpc.insecure_channel(brokered.settings.grpc_addr) as channel, \
            pytest.raises(grpc.RpcError) as err:
        external_auth_pb2_grpc.AuthorizationStub(channel).Check(req, timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert len(refusal_rows(brokered, "not_gateway")) == before + 1


def test_over_mtls_an_agent_gets_no_value_and_the_gateway_does(
        vault: vaultsetup.VaultSetup, tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    pol = vaultsetup.policies(tmp_path / "policies")
    with mtls_stack(tmp_path, JwtIssuer(), policies=str(pol), **vault.settings()) as pki:
        def ask(client_id: str) -> pdp_pb2.AuthorizeResponse:
            client = pki.ca.svid(client_id)
            creds = grpc.ssl_channel_credentials(pki.ca.pem, client.key_pem, client.cert_pem)
            with grpc.secure_channel(pki.stack.settings.grpc_addr, creds) as ch:
                return pdp_pb2_grpc.PolicyDecisionServiceStub(ch).Authorize(
                    request(CRM, **SECRET_TOOL), timeout=10)

        agent, gateway = ask(CRM), ask(GATEWAY)
    assert agent.decision == gateway.decision == pdp_pb2.DECISION_ALLOW
    assert (agent.credential.value, agent.credential.withheld) == ("", True)
    assert agent.credential.header == "authorization"
    assert gateway.credential.value == f"Bearer {vault.kv_secret}"


# --- 2. the agent does not set its own price -----------------------------------------

@pytest.mark.parametrize("state_ttl_ms", [1000, 0], ids=["optimistic", "checked"])
def test_a_tiny_estimate_does_not_buy_a_dear_model_call(tmp_path: Path, state_ttl_ms: int) -> None:
    """$0.01 a day; 100,000 reasoning-high tokens cost about $1.50 on the route whatever
    the agent says: denied, and nothing stays reserved."""
    with running_stack(tight_policies(tmp_path), ledger_state_ttl_ms=state_ttl_ms) as s:
        channel, agent = stub(s)
        with channel:
            lie = agent.Authorize(request(TIGHT, model="reasoning-high", estimated_tokens=100_000,
                                          estimated_cost_usd=1e-12), timeout=10)
            small = agent.Authorize(request(TIGHT, model="reasoning-high", estimated_tokens=100,
                                            explain=True), timeout=10)
    assert lie.decision == pdp_pb2.DECISION_DENY
    assert codes(lie) == ["budget_exhausted"]
    assert small.decision == pdp_pb2.DECISION_ALLOW, small.reasons
    state = json_format.MessageToDict(small.explanation)["input"]["state"]["budget"]["daily"]
    assert state["reserved_usd"] == 0  # the denied call holds nothing


def test_an_estimate_can_raise_a_reservation(tmp_path: Path) -> None:
    with running_stack(tight_policies(tmp_path)) as s:
        channel, agent = stub(s)
        with channel:
            first = agent.Authorize(request(TIGHT, model="reasoning-high", estimated_tokens=10,
                                            estimated_cost_usd=0.004), timeout=10)
            after = agent.Authorize(request(TIGHT, model="reasoning-high", estimated_tokens=10,
                                            explain=True), timeout=10)
    assert first.decision == pdp_pb2.DECISION_ALLOW, first.reasons
    assert first.route.limits.reserve_usd == pytest.approx(0.004)
    state = json_format.MessageToDict(after.explanation)["input"]["state"]["budget"]["daily"]
    assert state["reserved_usd"] == pytest.approx(0.004)


def test_an_agent_cannot_settle_its_own_decision(tmp_path: Path) -> None:
    with running_stack(tight_policies(tmp_path)) as s:
        channel, agent = stub(s)
        gchannel, gateway = stub(s, gateway=True)
        with channel, gchannel:
            d = agent.Authorize(request(TIGHT, model="reasoning-high", estimated_tokens=100), timeout=10)
            report = pdp_pb2.RecordUsageRequest(decision_id=d.decision_id, tokens=100, cost_usd=0)
            with pytest.raises(grpc.RpcError) as err:
                agent.RecordUsage(report, timeout=10)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert refusal_rows(s, "not_gateway")
            assert gateway.RecordUsage(report, timeout=10).applied


def test_a_spent_budget_denies_a_tool_call_with_a_zero_estimate(tmp_path: Path) -> None:
    """Tool calls cost their declared price (default 0.001 USD): once the gateway has
    settled the day's budget, a call the agent claims is free is still denied."""
    with running_stack(tight_policies(tmp_path)) as s:
        channel, gateway = stub(s, gateway=True)
        with channel:
            spend = gateway.Authorize(request(TIGHT, tool="crm.accounts", action="read"), timeout=10)
            assert spend.decision == pdp_pb2.DECISION_ALLOW, spend.reasons
            assert gateway.RecordUsage(pdp_pb2.RecordUsageRequest(
                decision_id=spend.decision_id, cost_usd=0.01), timeout=10).applied
            free = gateway.Authorize(request(TIGHT, tool="crm.accounts", action="read",
                                             estimated_cost_usd=0), timeout=10)
    assert free.decision == pdp_pb2.DECISION_DENY
    assert codes(free) == ["budget_exhausted"]


# --- 5. every decision is audited and counted ----------------------------------------

@pytest.mark.parametrize(("path", "body", "certified", "code"), [
    ("/nowhere", "{}", True, "route_not_mapped"),
    ("/tools/crm.accounts/read", "not json", True, "invalid_request"),
    ("/tools/crm.accounts/read", "{}", False, "unauthenticated"),  # a principal, no certificate
])
def test_a_check_the_mapping_cannot_read_leaves_an_audit_row(
        brokered: Stack, path: str, body: str, certified: bool, code: str) -> None:
    before = metric(brokered, "deny", code)
    cert = urllib.parse.quote(CA("prod").svid(CRM).cert_pem.decode(), safe="") if certified else ""
    raw = check_request(principal=CRM, certificate=cert, path=path, body=None)
    raw.attributes.request.http.raw_body = body.encode()
    with gateway_channel(brokered) as channel:
        resp = external_auth_pb2_grpc.AuthorizationStub(channel).Check(raw, timeout=10)
    assert resp.HasField("denied_response")
    decision_id = next(h.header.value for h in resp.denied_response.headers
                       if h.header.key == "x-aam-decision-id")
    assert brokered.ledger is not None
    (row,) = brokered.ledger.audit_rows(AuditFilter(decision_id=decision_id))
    rec = row.record()
    assert (rec["outcome"], rec["reasons"][0]["code"]) == ("deny", code)
    assert rec["workload"] == (CRM if certified else "unknown")
    assert metric(brokered, "deny", code) == before + 1


# --- 6. client behaviour leaves no traceback -----------------------------------------

def test_clients_that_hang_up_leave_no_traceback(brokered: Stack,
                                                  capfd: pytest.CaptureFixture[str]) -> None:
    assert brokered.http is not None
    host, port = brokered.http.httpd.server_address[:2]
    linger_rst = struct.pack("ii", 1, 0)  # close with a TCP reset
    for raw in (b"GET /bundles/aam.tar.gz HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /metr", b""):
        for _ in range(20):
            s = socket.create_connection((host, port), timeout=5)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger_rst)
            s.sendall(raw)
            s.close()
    time.sleep(0.5)
    assert requests.get(brokered.http.url + "/metrics", timeout=5).ok  # still serving
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert "BrokenPipe" not in err and "ConnectionReset" not in err
