"""Proof under concurrency: 4 PDP processes, 32 clients, one PostgreSQL ledger.

A 1.00 USD daily budget with 0.01 USD calls admits exactly 100 calls however
the calls interleave across processes; a 50 requests-per-minute limit admits
exactly 50. Nothing errors, and the ledger sums to 1.00 after settlement.
"""

from __future__ import annotations

import itertools
import re
import threading
from collections import Counter
from pathlib import Path

import grpc
import psycopg
import pytest

from aam.v1 import pdp_pb2, pdp_pb2_grpc
from tests.integration.ledgers import fresh_database
from tests.integration.pdp import EXAMPLES, request
from tests.integration.processes import pdp_processes
from tests.servers import Postgres

BUDGET = "spiffe://prod/agent/budgeted"
RATED = "spiffe://prod/agent/rated"
POLICIES = f"""
apiVersion: access.envisionai.dev/v1
kind: AgentPolicy
metadata: {{name: budgeted}}
spec:
  identity: {{workload: {BUDGET}}}
  models: {{allow: [summarization]}}
  budget: {{daily_usd: 1.00}}
---
apiVersion: access.envisionai.dev/v1
kind: AgentPolicy
metadata: {{name: rated}}
spec:
  identity: {{workload: {RATED}}}
  models: {{allow: [summarization]}}
  rate: {{requests_per_minute: 50}}
"""
CLIENTS = 32
CALLS = 240


def hammer(addrs: list[str], make: callable) -> list[pdp_pb2.AuthorizeResponse | Exception]:  # type: ignore[valid-type]
    tickets = itertools.count()
    results: list = []
    lock = threading.Lock()

    def client(i: int) -> None:
        with grpc.insecure_channel(addrs[i % len(addrs)]) as ch:
            stub = pdp_pb2_grpc.PolicyDecisionServiceStub(ch)
            while next(tickets) < CALLS:
                try:
                    out = stub.Authorize(make(), timeout=30)
                except Exception as exc:
                    out = exc
                with lock:
                    results.append(out)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@pytest.mark.parametrize("state_ttl_ms", ["1000", "0"], ids=["optimistic", "checked"])
def test_four_processes_never_overspend_or_overcount(postgres: Postgres, tmp_path: Path,
                                                     state_ttl_ms: str) -> None:
    """Both ways through the ledger: OPA on each PDP's cached view with the ledger's
    re-check at commit (the default), and a reservation before every decision."""
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.yaml").write_text(POLICIES)
    (policies / "routes.yaml").write_text((EXAMPLES / "model-routes.yaml").read_text())
    dsn = fresh_database(postgres)
    with pdp_processes(4, policies, dsn, tmp_path, ledger_migrate="true",
                       ledger_state_ttl_ms=state_ttl_ms) as procs:
        addrs = [p.addr for p in procs]
        budget = hammer(addrs, lambda: request(BUDGET, model="summarization",
                                               estimated_tokens=1000, estimated_cost_usd=0.01))
        rated = hammer(addrs, lambda: request(RATED, model="summarization", estimated_tokens=10))

        assert [r for r in budget + rated if isinstance(r, Exception)] == []
        assert len(budget) == len(rated) == CALLS
        outcome = Counter("allow" if r.decision == pdp_pb2.DECISION_ALLOW
                          else ",".join(x.code for x in r.reasons) for r in budget)
        assert outcome == {"allow": 100, "budget_exhausted": CALLS - 100}
        denied = [r for r in budget if r.decision == pdp_pb2.DECISION_DENY]
        # Spent (settled) plus reserved (not yet settled) is the whole budget: 1.00 USD.
        told = [re.match(r"spent (\d+\.\d\d) and reserved (\d+\.\d\d) of 1\.00 USD today",
                         r.reasons[0].message) for r in denied]
        assert all(m and float(m[1]) + float(m[2]) == pytest.approx(1.0) for m in told)
        assert all(r.retry_after.seconds > 0 for r in denied)

        outcome = Counter("allow" if r.decision == pdp_pb2.DECISION_ALLOW
                          else ",".join(x.code for x in r.reasons) for r in rated)
        assert outcome == {"allow": 50, "rate_limited": CALLS - 50}
        assert all(0 < r.retry_after.ToNanoseconds() <= 60e9 for r in rated
                   if r.decision == pdp_pb2.DECISION_DENY)

        # Settle through different processes, twice: the repeat changes nothing.
        allowed = [r.decision_id for r in budget if r.decision == pdp_pb2.DECISION_ALLOW]
        applied = Counter()
        for round_ in range(2):
            for i, decision_id in enumerate(allowed):
                with procs[(i + round_) % 4].gateway_channel() as ch:
                    resp = pdp_pb2_grpc.PolicyDecisionServiceStub(ch).RecordUsage(
                        pdp_pb2.RecordUsageRequest(decision_id=decision_id, tokens=100,
                                                   cost_usd=0.01), timeout=10)
                applied[(round_, resp.applied)] += 1
        assert applied == {(0, True): 100, (1, False): 100}

    with psycopg.connect(dsn) as conn:
        spent, reserved = conn.execute(
            "SELECT spent_micro, reserved_micro FROM aam_budget_windows"
            " WHERE workload = %s AND window_key LIKE 'd:%%'", (BUDGET,)).fetchone()
        settled = conn.execute("SELECT sum(cost_micro), count(*) FROM aam_reservations"
                               " WHERE workload = %s AND state = 'settled'", (BUDGET,)).fetchone()
        audited = conn.execute("SELECT outcome, count(*) FROM aam_audit WHERE workload = %s"
                               " GROUP BY outcome ORDER BY outcome", (BUDGET,)).fetchall()
    assert (spent, reserved) == (1_000_000, 0)
    assert settled == (1_000_000, 100)
    assert audited == [("allow", 100), ("deny", CALLS - 100)]
