"""What the console's generated columns and indexes cost each audit insert.

Two schemas side by side on one throw-away PostgreSQL cluster (fsync on) and two SQLite
files: "before" is every migration with the console migration as first written (indexes
on (workload, seq) and (outcome, ts) only), "after" is the current one (generated
reason/tool/model columns, their indexes, (outcome, ts) INCLUDE (reasons)). Rows are
inserted with the ledger's own statement (PostgreSQL: pdp/ledger/postgres.py
INSERT_ROWS, one transaction per batch as the audit writer commits them; SQLite: the
same executemany in one transaction), in alternating rounds so both see the same noise.

Printed: µs per row for each schema and batch size, and the difference. Never asserted.

    .venv/bin/python bench/audit_insert.py [--rows 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pdp.ledger import open_ledger  # noqa: E402
from pdp.ledger.chain import canonical  # noqa: E402
from pdp.ledger.postgres import INSERT_ROWS  # noqa: E402
from tests.servers import run_postgres  # noqa: E402

# The console migration as first written: what "before" had beyond 0004 / 0002.
ADDED_PG = """
DROP INDEX aam_audit_tool_seq, aam_audit_model_seq, aam_audit_reasons, aam_audit_outcome_ts;
ALTER TABLE aam_audit DROP COLUMN tool, DROP COLUMN model, DROP COLUMN reasons;
CREATE INDEX aam_audit_outcome_ts ON aam_audit (outcome, ts);
"""
ADDED_SQLITE = [
    "DROP INDEX aam_audit_tool_seq", "DROP INDEX aam_audit_model_seq",
    "DROP INDEX aam_audit_reason_seq", "DROP INDEX aam_audit_reasons_more",
    "DROP INDEX aam_audit_outcome_ts",
    "ALTER TABLE aam_audit DROP COLUMN tool", "ALTER TABLE aam_audit DROP COLUMN model",
    "ALTER TABLE aam_audit DROP COLUMN reason", "ALTER TABLE aam_audit DROP COLUMN reason_n",
    "CREATE INDEX aam_audit_outcome_ts ON aam_audit (outcome, ts)",
]
REASONS = ("action_denied", "budget_exhausted", "rate_limited")


def rows(n: int, first_seq: int, rnd: random.Random) -> list[dict]:
    """Audit rows shaped like the PDP's (bench/console.py's mix)."""
    out = []
    now = datetime.now(UTC)
    for i in range(n):
        seq = first_seq + i
        did = uuid.UUID(int=rnd.getrandbits(128)).hex
        w = f"spiffe://prod/agent/bench-{rnd.randrange(60):02d}"
        deny = rnd.random() < 0.2
        ts = (now + timedelta(microseconds=seq)).isoformat(timespec="microseconds")
        body: dict = {"ts": ts, "decision_id": did, "workload": w,
                      "outcome": "deny" if deny else "allow", "revision": "bench",
                      "identity": {"spiffe_id": w}, "policy": "bench"}
        body["action"] = ({"model": "reasoning-high"} if rnd.random() < 0.5
                          else {"tool": "salesforce.accounts", "action": "read"})
        if deny:
            code = rnd.choice(REASONS)
            body["reasons"] = [{"code": code, "message": f"{code}: denied by the bench policy"}]
        out.append({"seq": seq, "ts": ts, "id": did, "workload": w, "outcome": body["outcome"],
                    "body": canonical(body), "prev": "0" * 64, "hash": "1" * 64, "key": "k1"})
    return out


def pg_round(dsn: str, batch: int, data: list[dict]) -> float:
    with psycopg.connect(dsn, autocommit=True) as conn:
        t = time.perf_counter()
        for i in range(0, len(data), batch):
            with conn.transaction():
                conn.execute(INSERT_ROWS, (json.dumps(data[i:i + batch], separators=(",", ":")),),
                             prepare=True)
        return (time.perf_counter() - t) / len(data) * 1e6


def sqlite_round(path: str, batch: int, data: list[dict]) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    t = time.perf_counter()
    for i in range(0, len(data), batch):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO aam_audit (seq, ts, decision_id, workload, outcome, body,"
                         " prev_hash, hash, key_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         [(r["seq"], r["ts"], r["id"], r["workload"], r["outcome"], r["body"],
                           r["prev"], r["hash"], r["key"]) for r in data[i:i + batch]])
        conn.execute("COMMIT")
    conn.close()
    return (time.perf_counter() - t) / len(data) * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20_000, help="rows per schema, batch size and round")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    rnd = random.Random(5)
    with tempfile.TemporaryDirectory(prefix="aam-bench-insert-") as tmp, \
            run_postgres(fsync=True) as pg:
        targets: dict[str, dict[str, str]] = {"postgres": {}, "sqlite": {}}
        for schema in ("before", "after"):
            with psycopg.connect(pg.dsn, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {schema}")
            dsn = pg.dsn_for(schema)
            path = str(Path(tmp) / f"{schema}.sqlite3")
            for url in (dsn, f"sqlite://{path}"):
                ledger = open_ledger(url, 1, 10.0)
                assert ledger is not None
                ledger.migrate()
                ledger.close()
            if schema == "before":
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute(ADDED_PG)
                with sqlite3.connect(path) as c:
                    for stmt in ADDED_SQLITE:
                        c.execute(stmt)
            targets["postgres"][schema], targets["sqlite"][schema] = dsn, path
        print(f"{'store':9} {'rows/commit':>11} {'before µs/row':>14} {'after µs/row':>13} "
              f"{'added µs/row':>13}  (median of {args.rounds} rounds of {args.rows:,} rows)")
        for store, run in (("postgres", pg_round), ("sqlite", sqlite_round)):
            seq = {"before": 1, "after": 1}
            for batch in (1, 32):
                n = args.rows // (10 if batch == 1 else 1)  # a commit each: fsync-bound
                got: dict[str, list[float]] = {"before": [], "after": []}
                for _ in range(args.rounds):
                    data = rows(n, seq["before"], rnd)
                    for schema in ("before", "after"):
                        got[schema].append(run(targets[store][schema], batch, data))
                        seq[schema] += n
                b, a = statistics.median(got["before"]), statistics.median(got["after"])
                print(f"{store:9} {batch:11} {b:14.1f} {a:13.1f} {a - b:+13.1f}"
                      f" ({(a - b) / b * 100:+.0f}%)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
