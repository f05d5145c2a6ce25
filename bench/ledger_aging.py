"""Does a decision cost the ledger more as its history grows?

PostgreSQL keeps every settled reservation and every audit row, so any
statement on the hot path that scans instead of seeking gets slower with age,
and a PL/pgSQL plan cached while the tables were small can do exactly that
(it did: see 0003_lean_reserve.sql). This drives the store the way the PDP
does (``PostgresLedger.commit``: reserve and audit in the audit writer's next
batch, on one long-lived pool) on a throw-away cluster with fsync on, then
adds synthetic history (settled reservations and audit rows spread over 50
workloads) and measures again. Figures are printed, never asserted.

    .venv/bin/python -m bench.ledger_aging [--history 0,30000,150000] [--decisions 1600]

The synthetic rows do not form a valid hash chain; the cluster is thrown away.
The audit rows are keyed under a throw-away in-memory keyring (pdp/ledger/chain.py).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid
from datetime import UTC, datetime

import psycopg

from bench.procstat import tree_cpu_seconds
from pdp.ledger import Ask, AuditEntry, Ledger, open_ledger
from pdp.ledger.chain import canonical
from pdp.ledger.keyring import Keyring
from pdp.ledger.types import Limits
from tests.servers import run_postgres

WORKLOAD = "spiffe://bench/agent/0"
LIMITS = Limits(daily_micro=10**15, monthly_micro=10**16, workload_rpm=10**9, route_rpm=10**9)

HISTORY_SQL = ("""
INSERT INTO aam_reservations (decision_id, workload, route, day_key, month_key, reserved_micro,
                              tokens, cost_micro, state, created_at, rate_second, expires_at,
                              settled_at)
SELECT 'history-' || g, 'spiffe://bench/agent/' || (g %% 50), 'reasoning-high',
       'd:' || to_char(now(), 'YYYY-MM-DD'), 'm:' || to_char(now(), 'YYYY-MM'), 10, 100, 10,
       'settled', now(), extract(epoch FROM now())::bigint - 3600, now(), now()
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g
""", """
INSERT INTO aam_audit (seq, ts, decision_id, workload, outcome, body, prev_hash, hash, key_id)
SELECT s.base + g - %(first)s::bigint + 1, now(), 'history-' || g, 'spiffe://bench/agent/' || (g %% 50),
       'allow', repeat('x', 600), repeat('0', 64), repeat('0', 64), 'synthetic'
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g,
     (SELECT coalesce(max(seq), 0) AS base FROM aam_audit) AS s
""")


def entry(decision_id: str) -> AuditEntry:
    ts = datetime.now(UTC).isoformat(timespec="microseconds")
    body = {"ts": ts, "decision_id": decision_id, "workload": WORKLOAD, "outcome": "allow",
            "model": "reasoning-high", "policy": "bench", "padding": "x" * 400}
    return AuditEntry(ts, decision_id, WORKLOAD, "allow", canonical(body))


def decide(ledger: Ledger) -> float:
    """One allowed, metered decision as the PDP commits it; returns its latency (s)."""
    decision_id = uuid.uuid4().hex
    t0 = time.perf_counter()
    committed = ledger.commit(Ask(decision_id, WORKLOAD, "reasoning-high", 10, 100, LIMITS, 900),
                              entry(decision_id))
    if not committed.admission.reserved:
        raise SystemExit("bench: the ledger refused a reservation far below every limit")
    return time.perf_counter() - t0


def count_batches(ledger: Ledger) -> list[int]:
    """A counter of the audit writer's batches (one transaction each)."""
    counter = [0]
    writer = ledger.writer  # type: ignore[attr-defined]
    write = writer.write

    def counted(batch: list) -> None:  # type: ignore[type-arg]
        counter[0] += 1
        write(batch)

    writer.write = counted
    return counter


def drive(ledger: Ledger, postmaster: int, decisions: int, clients: int,
          batches: list[int]) -> tuple[float, float, float, float]:
    """Decisions/s, PostgreSQL CPU ms per decision and per batch, p50 latency (ms)."""
    latencies: list[float] = []
    lock = threading.Lock()

    def client() -> None:
        mine = [decide(ledger) for _ in range(decisions // clients)]
        with lock:
            latencies.extend(mine)

    before, batches_before = tree_cpu_seconds(postmaster), batches[0]
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    after = tree_cpu_seconds(postmaster)
    cpu = sum(c - before.get(p, 0.0) for p, c in after.items())
    return (len(latencies) / wall, 1000 * cpu / len(latencies),
            1000 * cpu / max(1, batches[0] - batches_before), 1000 * statistics.median(latencies))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--history", default="0,30000,150000",
                    help="ledger sizes to measure at: prior decisions, comma-separated, rising")
    ap.add_argument("--decisions", type=int, default=1600, help="decisions per measurement")
    args = ap.parse_args()
    sizes = [int(s) for s in args.history.split(",")]
    print("Ledger commit (reserve + audit row, as the PDP's audit writer batches them), "
          "PostgreSQL on loopback, fsync on; CPU is the postmaster and its backends", flush=True)
    print(f"{'history':>9}  {'clients':>7}  {'decisions/s':>11}  {'PG ms/decision':>14}"
          f"  {'PG ms/batch':>11}  {'p50 ms':>7}")
    with run_postgres(fsync=True) as pg:
        assert pg.proc is not None
        ledger = open_ledger(pg.dsn, pool_size=8, timeout_s=10, keyring=Keyring.generate())
        assert ledger is not None
        ledger.migrate()
        batches = count_batches(ledger)
        loaded = 0
        with psycopg.connect(pg.dsn, autocommit=True) as admin:
            for size in sizes:
                if size > loaded:
                    for stmt in HISTORY_SQL:
                        admin.execute(stmt.encode(), {"first": loaded + 1, "last": size})
                    loaded = size
                for _ in range(50):
                    decide(ledger)
                for clients in (1, 8):
                    rate, cpu_ms, batch_ms, p50 = drive(ledger, pg.proc.pid, args.decisions,
                                                        clients, batches)
                    print(f"{size:>9,}  {clients:>7}  {rate:>11,.0f}  {cpu_ms:>14.2f}"
                          f"  {batch_ms:>11.2f}  {p50:>7.2f}", flush=True)
        ledger.close()


if __name__ == "__main__":
    main()
