"""Faults: PostgreSQL going away and coming back; a PDP killed with SIGKILL."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import psycopg
import pytest

from aam.v1 import pdp_pb2, pdp_pb2_grpc
from pdp.ledger import AuditFilter, open_ledger
from pdp.ledger.chain import verify
from pdp.ledger.keyring import Keyring
from tests.integration.ledgers import fresh_database
from tests.integration.pdp import EXAMPLES, FINANCE, request, running_stack, stub
from tests.integration.processes import pdp_processes
from tests.integration.test_ledger_concurrency import BUDGET, POLICIES
from tests.servers import Postgres, run_postgres


def _policies(tmp_path: Path) -> Path:
    d = tmp_path / "policies"
    d.mkdir()
    (d / "p.yaml").write_text(POLICIES)
    (d / "routes.yaml").write_text((EXAMPLES / "model-routes.yaml").read_text())
    return d


def _call(pdp: pdp_pb2_grpc.PolicyDecisionServiceStub) -> pdp_pb2.AuthorizeResponse:
    return pdp.Authorize(request(BUDGET, model="summarization", estimated_tokens=1000,
                                estimated_cost_usd=0.01), timeout=10)


def _settle(pdp: pdp_pb2_grpc.PolicyDecisionServiceStub, decision_id: str) -> bool:
    return pdp.RecordUsage(pdp_pb2.RecordUsageRequest(decision_id=decision_id, tokens=10,
                                                      cost_usd=0.01), timeout=10).applied


@pytest.mark.parametrize("checked", [True, False], ids=["ledger-state", "cached-state"])
def test_database_outage_denies_then_recovers_without_leaks(tmp_path: Path, checked: bool) -> None:
    """The database goes away mid-decision: after the state OPA decides on was read
    (from the ledger, or this PDP's cached view) and before the batch that reserves
    and audits. Nothing is held, nothing leaks, the decision is audited later."""
    with run_postgres() as pg, running_stack(_policies(tmp_path), ledger_url=pg.dsn,
                                             ledger_timeout_ms=500,
                                             ledger_state_ttl_ms=0 if checked else 60_000) as stack:
        channel, pdp = stub(stack, gateway=True)
        gate = stack.engine.gate if stack.engine else None
        assert gate is not None
        step = "read_state"
        original = getattr(gate, step)

        def then_database_goes_down(*args: object, **kwargs: object) -> object:
            out = original(*args, **kwargs)
            pg.stop()
            return out

        with channel:
            before = [_call(pdp) for _ in range(3)]
            assert all(r.decision == pdp_pb2.DECISION_ALLOW for r in before)
            assert _settle(pdp, before[0].decision_id) and _settle(pdp, before[1].decision_id)

            setattr(gate, step, then_database_goes_down)
            cut = _call(pdp)  # the database went away mid-decision
            setattr(gate, step, original)
            during = [cut, *(_call(pdp) for _ in range(3))]
            assert [[x.code for x in r.reasons] for r in during] == [["ledger_unavailable"]] * 4
            assert all(r.decision == pdp_pb2.DECISION_DENY for r in during)
            with pytest.raises(grpc.RpcError) as err:
                _settle(pdp, before[2].decision_id)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE

            pg.start()
            after, deadline = [], time.monotonic() + 30
            while time.monotonic() < deadline:  # the PDP reconnects by itself
                r = _call(pdp)
                if r.decision == pdp_pb2.DECISION_ALLOW:
                    after.append(r)
                    break
                assert [x.code for x in r.reasons] == ["ledger_unavailable"]
                during.append(r)
                time.sleep(0.2)
            assert after, "the PDP did not reconnect to PostgreSQL"
            after += [_call(pdp) for _ in range(2)]
            assert all(r.decision == pdp_pb2.DECISION_ALLOW for r in after)
            for r in [before[2], *after]:
                assert _settle(pdp, r.decision_id)
            assert not _settle(pdp, before[2].decision_id)

        allowed = {r.decision_id for r in before + after}
        with psycopg.connect(pg.dsn) as conn:
            spent, reserved = conn.execute(
                "SELECT spent_micro, reserved_micro FROM aam_budget_windows"
                " WHERE window_key LIKE 'd:%'").fetchone()
            rows = dict(conn.execute("SELECT decision_id, state FROM aam_reservations").fetchall())
        # Each allowed call spent once; the call cut mid-decision never reserved.
        assert (spent, reserved) == (10_000 * len(allowed), 0)
        assert rows == dict.fromkeys(allowed, "settled")
        ledger = open_ledger(pg.dsn)
        assert ledger is not None
        audit = ledger.audit_rows(AuditFilter())
        ledger.close()
        # Decisions answered during the outage are audited once the database is back.
        assert {r.decision_id for r in audit} == allowed | {r.decision_id for r in during}
        assert {r.outcome for r in audit if r.decision_id == cut.decision_id} == {"deny"}
        assert verify(audit, Keyring.load(stack.settings.audit_key_file)) == (len(audit), [])


def test_every_decision_a_client_saw_survives_kill_9(postgres: Postgres, tmp_path: Path) -> None:
    dsn = fresh_database(postgres)
    seen: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    with pdp_processes(1, EXAMPLES, dsn, tmp_path, ledger_migrate="true") as (pdp_proc,):
        def client() -> None:
            with grpc.insecure_channel(pdp_proc.addr) as ch:
                pdp = pdp_pb2_grpc.PolicyDecisionServiceStub(ch)
                while not stop.is_set():
                    try:
                        r = pdp.Authorize(request(FINANCE, tool="salesforce.accounts",
                                                  action="read"), timeout=5)
                    except grpc.RpcError:
                        return
                    with lock:
                        seen.append(r.decision_id)

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(seen) < 300 and time.monotonic() < deadline:
            time.sleep(0.01)
        pdp_proc.kill9()  # mid-load, decisions in flight
        stop.set()
        for t in threads:
            t.join()

    assert len(seen) >= 300
    ledger = open_ledger(dsn)
    assert ledger is not None
    audit = ledger.audit_rows(AuditFilter())
    ledger.close()
    recorded = {r.decision_id for r in audit}
    assert set(seen) <= recorded
    assert verify(audit, Keyring.load(tmp_path / "audit.key")) == (len(audit), [])
