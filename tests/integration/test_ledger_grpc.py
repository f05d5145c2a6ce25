"""Budgets and usage over gRPC on the embedded ledger (the aam up default)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from aam.v1 import pdp_pb2
from pdp.ledger import AuditFilter
from pdp.opa import DECISION_PATH as DECIDE
from pdp.stack import Stack
from tests.integration.pdp import FINANCE, request, running_stack, stub


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_stack() as s:
        yield s


def usage(decision_id: str, cost: float, tokens: int = 1000) -> pdp_pb2.RecordUsageRequest:
    return pdp_pb2.RecordUsageRequest(decision_id=decision_id, tokens=tokens, cost_usd=cost)


def test_budget_is_reserved_settled_and_explained(stack: Stack) -> None:
    channel, pdp = stub(stack, gateway=True)
    with channel:
        first = pdp.Authorize(request(model="reasoning-high", estimated_cost_usd=74.20), timeout=5)
        assert first.decision == pdp_pb2.DECISION_ALLOW
        assert pdp.RecordUsage(usage(first.decision_id, 74.20), timeout=5).applied
        assert not pdp.RecordUsage(usage(first.decision_id, 74.20), timeout=5).applied

        # 100k tokens: even the cheapest target (gpt-5, 10 USD/Mtok) needs 1.00 USD.
        second = pdp.Authorize(request(model="reasoning-high", estimated_tokens=100_000), timeout=5)
        assert second.decision == pdp_pb2.DECISION_DENY
        assert [r.code for r in second.reasons] == ["budget_exhausted"]
        assert second.reasons[0].message == (
            "spent 74.20 and reserved 0.00 of 75.00 USD today; this call may cost up to 1.00 USD")
        assert 0 < second.retry_after.ToSeconds() <= 86_400

        # A smaller call still fits: 40k tokens cost up to 0.66 USD of the 0.80 left.
        third = pdp.Authorize(request(model="reasoning-high", estimated_tokens=40_000), timeout=5)
        assert third.decision == pdp_pb2.DECISION_ALLOW

        for decision_id, code in ((second.decision_id, grpc.StatusCode.NOT_FOUND),
                                  ("0" * 32, grpc.StatusCode.NOT_FOUND)):
            with pytest.raises(grpc.RpcError) as err:
                pdp.RecordUsage(usage(decision_id, 1.0), timeout=5)
            assert err.value.code() == code
        with pytest.raises(grpc.RpcError) as err:
            pdp.RecordUsage(usage(third.decision_id, -1.0), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_audit_rows_hold_what_the_policy_records(stack: Stack) -> None:
    channel, pdp = stub(stack)
    with channel:
        resp = pdp.Authorize(request(tool="salesforce.accounts", action="export",
                                     params={"secret_looking": "x"}), timeout=5)
    assert stack.ledger is not None
    (row,) = stack.ledger.audit_rows(AuditFilter(decision_id=resp.decision_id))
    rec = row.record()
    # finance-analyst-readonly records [identity, policy, action, outcome]
    assert rec["outcome"] == "deny" and row.outcome == "deny"
    assert rec["identity"] == {"spiffe_id": FINANCE}
    assert rec["policy"] == "finance-analyst-readonly"
    assert rec["action"] == {"model": "", "tool": "salesforce.accounts", "action": "export"}
    assert rec["revision"] == resp.bundle_revision
    assert "params" not in rec and "reasons" not in rec


def test_ledger_off_fails_budgets_closed() -> None:
    with running_stack(ledger_url="off") as s:
        channel, pdp = stub(s, gateway=True)
        with channel:
            resp = pdp.Authorize(request(model="reasoning-high"), timeout=5)
            assert resp.decision == pdp_pb2.DECISION_DENY
            assert [r.code for r in resp.reasons] == ["ledger_unavailable"]
            with pytest.raises(grpc.RpcError) as err:
                pdp.RecordUsage(usage("ab" * 16, 1.0), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_one_opa_query_per_decision_and_limit_denies_confirmed_fresh() -> None:
    """One OPA query per model call, which prices the route too: with nothing cached
    (the ledger's state is read, then one batch reserves and audits) and on the PDP's
    cached view. A budget deny on that view is given only once fresh state confirms it."""
    with running_stack(ledger_state_ttl_ms=60_000) as s:
        assert s.engine is not None
        opa, queries = s.engine.opa, []
        query = opa.query

        def counted(path: str, doc: dict) -> object:
            queries.append(path)
            return query(path, doc)

        opa.query = counted  # type: ignore[method-assign]
        channel, pdp = stub(s, gateway=True)
        with channel:
            first = pdp.Authorize(request(model="reasoning-high", estimated_cost_usd=74.99), timeout=5)
            assert first.decision == pdp_pb2.DECISION_ALLOW
            assert queries == [DECIDE]  # no cached view yet: the ledger's state, one query
            queries.clear()
            small = pdp.Authorize(request(model="reasoning-high", estimated_cost_usd=0.50), timeout=5)
            assert [r.code for r in small.reasons] == ["budget_exhausted"]
            assert pdp.RecordUsage(usage(first.decision_id, 1.00), timeout=5).applied
            queries.clear()
            # The cached view still holds the 74.99 reservation; the ledger no longer does.
            again = pdp.Authorize(request(model="reasoning-high", estimated_cost_usd=0.50), timeout=5)
            assert again.decision == pdp_pb2.DECISION_ALLOW, again.reasons
            assert queries == [DECIDE, DECIDE]  # cached view: deny; the ledger's state: allow
            queries.clear()
            steady = pdp.Authorize(request(model="reasoning-high", estimated_tokens=1000), timeout=5)
            assert steady.decision == pdp_pb2.DECISION_ALLOW
            assert queries == [DECIDE]
        assert s.ledger is not None
        rows = s.ledger.audit_rows(AuditFilter())
        assert [r.outcome for r in rows] == ["allow", "deny", "allow", "allow"]
        assert [r.decision_id for r in rows] == [first.decision_id, small.decision_id,
                                                 again.decision_id, steady.decision_id]
