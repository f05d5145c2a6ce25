"""With mTLS: identity refusals are audited; only a gateway settles usage."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from aam.v1 import pdp_pb2, pdp_pb2_grpc
from pdp.ledger import AuditFilter
from tests.certs import JwtIssuer, Pair
from tests.integration.pdp import FINANCE, request
from tests.integration.test_identity import GATEWAY, OTHER, Pki, mtls_stack


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    with mtls_stack(tmp_path_factory.mktemp("pki"), JwtIssuer()) as pki:
        yield pki


def _stub(pki: Pki, client: Pair) -> tuple[grpc.Channel, pdp_pb2_grpc.PolicyDecisionServiceStub]:
    creds = grpc.ssl_channel_credentials(root_certificates=pki.ca.pem, private_key=client.key_pem,
                                         certificate_chain=client.cert_pem)
    ch = grpc.secure_channel(pki.stack.settings.grpc_addr, creds)
    return ch, pdp_pb2_grpc.PolicyDecisionServiceStub(ch)


def test_identity_refusal_is_an_audit_row(pki: Pki) -> None:
    ch, pdp = _stub(pki, pki.ca.svid(OTHER))
    with ch, pytest.raises(grpc.RpcError) as err:
        pdp.Authorize(request(FINANCE, model="summarization"), timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert pki.stack.ledger is not None
    rows = [r.record() for r in pki.stack.ledger.audit_rows(AuditFilter(workload=FINANCE))
            if r.record().get("event") == "identity_refused"]
    assert len(rows) == 1
    assert rows[0]["caller"] == OTHER and rows[0]["outcome"] == "deny"
    assert [r["code"] for r in rows[0]["reasons"]] == ["not_self"]


def test_only_a_gateway_settles_usage(pki: Pki) -> None:
    """An agent reporting its own usage would set its own price: PERMISSION_DENIED,
    audited, and the reservation stays for the gateway to settle."""
    finance_ch, finance = _stub(pki, pki.ca.svid(FINANCE))
    other_ch, other = _stub(pki, pki.ca.svid(OTHER))
    gateway_ch, gateway = _stub(pki, pki.ca.svid(GATEWAY))
    with finance_ch, other_ch, gateway_ch:
        mine = finance.Authorize(request(FINANCE, model="summarization", estimated_cost_usd=0.02),
                                 timeout=10)
        assert mine.decision == pdp_pb2.DECISION_ALLOW
        report = pdp_pb2.RecordUsageRequest(decision_id=mine.decision_id, tokens=5, cost_usd=0)
        for agent in (finance, other):
            with pytest.raises(grpc.RpcError) as err:
                agent.RecordUsage(report, timeout=10)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "only gateways may report usage" in (err.value.details() or "")
        assert gateway.RecordUsage(report, timeout=10).applied
        assert not gateway.RecordUsage(report, timeout=10).applied  # settled once
    assert pki.stack.ledger is not None
    refused = [r.record() for r in pki.stack.ledger.audit_rows(AuditFilter())
               if r.record().get("event") == "identity_refused"
               and r.record()["reasons"][0]["code"] == "not_gateway"]
    assert {r["caller"] for r in refused} == {FINANCE, OTHER}
