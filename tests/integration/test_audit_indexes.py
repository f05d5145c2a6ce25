"""The console's filters on the audit body (reason, tool, model) and its denials counts
read an index, not the whole table, on both stores (console migrations: postgres 0005,
sqlite 0003).

20,000 rows are copied straight into aam_audit (no chain: only the plans are looked at),
then ANALYZE (and VACUUM on PostgreSQL, as autovacuum would) so each planner decides
from real statistics; the plan of the exact SQL the ledger runs must name the index.
No planner setting is changed (no ``enable_seqscan = off``): at this size, for values few
rows carry, the planner prefers the index by itself.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from pdp.ledger import AuditFilter, Ledger, postgres
from pdp.ledger import sqlite as sqlite_ledger
from tests.integration.ledgers import fresh_ledger

pytestmark = pytest.mark.integration

ROWS = 20_000
# A value each filter looks for, on one row in 1,000 (reason: 2 in 1,000) (the "rare" end: what the planner
# must not answer with a walk of the table); the other rows carry common values.
RARE = {"reason": "model_not_allowed", "tool": "github.issues", "model": "summarization"}


def _rows() -> Iterator[tuple]:
    start = START
    for seq in range(1, ROWS + 1):
        rare = seq % 1000 in (0, 1)  # an even row (a tool call) and an odd one (a model)
        deny = rare or seq % 5 == 0
        codes = ["action_denied", RARE["reason"]] if rare else ["budget_exhausted"] if deny else []
        if seq % 2:
            action = {"model": RARE["model"] if rare else "reasoning-high"}
        else:
            action = {"tool": RARE["tool"] if rare else "salesforce.accounts", "action": "read"}
        ts = (start + timedelta(seconds=40 * seq)).isoformat(timespec="microseconds")
        body = {"ts": ts, "decision_id": f"d{seq}", "outcome": "deny" if deny else "allow",
                "action": action, "reasons": [{"code": c, "message": c} for c in codes]}
        yield (seq, ts, f"d{seq}", f"spiffe://prod/agent/w{seq % 7}",
               "deny" if deny else "allow", json.dumps(body), "0" * 64, "0" * 64, "k1")


START = datetime.now(UTC) - timedelta(days=10)
COLUMNS = "seq, ts, decision_id, workload, outcome, body, prev_hash, hash, key_id"


@pytest.fixture(params=["postgres", "sqlite"])
def filled(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str, Ledger]]:
    pg = request.getfixturevalue("postgres") if request.param == "postgres" else None
    ledger, url = fresh_ledger(request.param, pg, tmp_path)
    if request.param == "postgres":
        dsn = url
        with psycopg.connect(dsn, autocommit=True) as conn:
            with conn.cursor() as cur, cur.copy(f"COPY aam_audit ({COLUMNS}) FROM STDIN") as copy:
                for row in _rows():
                    copy.write_row(row)
            conn.execute("VACUUM (ANALYZE) aam_audit")
    else:
        dsn = url.removeprefix("sqlite://")
        with sqlite3.connect(dsn) as conn:
            conn.executemany(f"INSERT INTO aam_audit ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             _rows())
            conn.execute("ANALYZE")
    yield request.param, dsn, ledger
    ledger.close()


def _plan(kind: str, dsn: str, query: str, args: list) -> str:
    if kind == "postgres":
        with psycopg.connect(dsn, autocommit=True, options="-c timezone=UTC") as conn:
            return "\n".join(r[0] for r in conn.execute(
                ("EXPLAIN " + query).encode(), args).fetchall())  # type: ignore[call-overload]
    with sqlite3.connect(dsn) as conn:
        return "\n".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + query, args))


FILTERS = {
    "reason": ({"postgres": "aam_audit_reasons", "sqlite": "aam_audit_reason_seq"}),  # + _more
    "tool": ({"postgres": "aam_audit_tool_seq", "sqlite": "aam_audit_tool_seq"}),
    "model": ({"postgres": "aam_audit_model_seq", "sqlite": "aam_audit_model_seq"}),
}


@pytest.mark.parametrize("field", sorted(FILTERS))
@pytest.mark.parametrize("since", ["", "30d"])
def test_body_filters_read_their_index(filled: tuple[str, str, Ledger], field: str,
                                       since: str) -> None:
    kind, dsn, ledger = filled
    flt = AuditFilter(limit=100, since=since, **{field: RARE[field]})
    if kind == "postgres":
        query, args = flt.sql("%s", dialect="postgres")
    else:
        query, args = flt.sql("?", dialect="sqlite", times=False, newest_first=True)
    plan = _plan(kind, dsn, query, args)
    index = FILTERS[field][kind]
    if kind == "postgres":
        assert f"using {index} on aam_audit" in plan or f"Bitmap Index Scan on {index}" in plan, plan
        assert "Seq Scan on aam_audit" not in plan, plan
    else:
        assert f"USING INDEX {index}" in plan, plan
        assert "SCAN a\n" not in plan + "\n" and "SCAN a " not in plan, plan  # no table walk
    rows = ledger.audit_rows(flt)
    assert len(rows) == (2 * ROWS // 1000 if field == "reason" else ROWS // 1000)


def test_a_second_reason_code_is_found_too(filled: tuple[str, str, Ledger]) -> None:
    """The rare code is each rare row's second reason (SQLite's ``reason`` column holds the
    first; the rows with more than one are searched by their partial index)."""
    _kind, _dsn, ledger = filled
    assert len(ledger.audit_rows(AuditFilter(reason=RARE["reason"]))) == 2 * ROWS // 1000
    assert len(ledger.audit_rows(AuditFilter(reason="action_denied"))) == 2 * ROWS // 1000


def test_denials_are_counted_on_the_outcome_ts_index(filled: tuple[str, str, Ledger]) -> None:
    kind, dsn, ledger = filled
    flt = AuditFilter(outcome="deny", since="2d")
    since, _ = flt.bounds()
    assert since is not None
    if kind == "postgres":
        plan = _plan(kind, dsn, *postgres.counts_query(flt, since, 3600))
        assert "Index Only Scan using aam_audit_outcome_ts on aam_audit" in plan, plan
    else:
        plan = _plan(kind, dsn, *sqlite_ledger.counts_query(flt, since, 3600))
        assert "USING INDEX aam_audit_outcome_ts (outcome=? AND ts>?)" in plan, plan
    total, counts = ledger.audit_counts(flt, since, 3600)  # type: ignore[attr-defined]
    want = sum(1 for r in _rows() if r[4] == "deny"
               and datetime.fromisoformat(r[1]) >= since)
    assert total == want
    by_code: dict[str, int] = {}
    for _bucket, code, n in counts:
        by_code[code] = by_code.get(code, 0) + n
    assert sum(by_code.values()) == total + by_code.get("action_denied", 0)
