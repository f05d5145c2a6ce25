"""One contract both ledger stores pass: PostgreSQL (real server) and SQLite."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
import pytest

from pdp.ledger import Ask, AuditEntry, AuditFilter, Ledger
from pdp.ledger.chain import canonical, verify
from pdp.ledger.types import Limits
from tests.integration.ledgers import KEYRING, fresh_ledger

W = "spiffe://prod/agent/a"


@pytest.fixture(params=["postgres", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Ledger, str]]:
    pg = request.getfixturevalue("postgres") if request.param == "postgres" else None
    ledger, url = fresh_ledger(request.param, pg, tmp_path)
    yield ledger, url
    ledger.close()


@pytest.fixture
def ledger(store: tuple[Ledger, str]) -> Ledger:
    return store[0]


def ask(cost: int = 10_000, limits: Limits | None = None, workload: str = W, route: str = "",
        tokens: int = 0, ttl_s: float = 600) -> Ask:
    return Ask(uuid.uuid4().hex, workload, route, cost, tokens, limits or Limits(), ttl_s)


def entry(decision_id: str, outcome: str = "allow", workload: str = W) -> AuditEntry:
    ts = datetime.now(ZoneInfo("UTC")).isoformat(timespec="microseconds")
    body = {"ts": ts, "decision_id": decision_id, "workload": workload, "outcome": outcome}
    return AuditEntry(ts, decision_id, workload, outcome, canonical(body))


def test_migrate_is_idempotent(ledger: Ledger) -> None:
    assert ledger.migrate() == []


def test_budget_reserves_until_the_limit_exactly(ledger: Ledger) -> None:
    lim = Limits(daily_micro=30_000)
    results = [ledger.reserve(ask(10_000, lim)) for _ in range(4)]
    assert [r.reserved for r in results] == [True, True, True, False]
    last = results[-1]
    assert (last.daily.spent_micro, last.daily.reserved_micro) == (0, 30_000)
    assert last.daily.key == datetime.now(ZoneInfo("UTC")).strftime("%Y-%m-%d")
    assert last.monthly.key == datetime.now(ZoneInfo("UTC")).strftime("%Y-%m")
    assert 0 < last.daily.resets_in_s <= 86_400


def test_peek_reads_the_state_a_reservation_checks_and_writes_nothing(ledger: Ledger) -> None:
    lim = Limits(daily_micro=30_000, workload_rpm=10)
    assert ledger.reserve(ask(10_000, lim, route="r", tokens=5)).reserved
    looked = [ledger.peek(ask(25_000, lim, route="r", tokens=5)) for _ in range(3)]
    assert all(not a.reserved for a in looked)  # nothing was reserved, whatever it fits
    seen = {(a.daily.spent_micro, a.daily.reserved_micro, a.monthly.reserved_micro,
             a.workload_rate.requests) for a in looked}
    assert seen == {(0, 10_000, 10_000, 1)}  # and nothing counted
    a = looked[-1]
    assert (a.daily.spent_micro, a.daily.reserved_micro) == (0, 10_000)
    assert (a.workload_rate.requests, a.workload_rate.tokens) == (1, 5)
    assert (a.route_rate.requests, a.route_rate.tokens) == (1, 5)
    peeked = ask(10_000, lim)
    ledger.peek(peeked)
    assert ledger.settle(peeked.decision_id, 1, 1).state == "unknown"  # no reservation row
    done = ledger.reserve(ask(20_000, lim))  # the peeks took none of the budget
    assert done.reserved and done.daily.reserved_micro == 10_000 and done.workload_rate.requests == 1


def test_monthly_limit_applies_too(ledger: Ledger) -> None:
    lim = Limits(daily_micro=100_000, monthly_micro=15_000)
    assert ledger.reserve(ask(10_000, lim)).reserved
    assert not ledger.reserve(ask(10_000, lim)).reserved


def test_window_follows_the_policy_time_zone(ledger: Ledger) -> None:
    tz = "Pacific/Kiritimati"  # UTC+14: usually another date than UTC
    a = ledger.reserve(ask(1, Limits(timezone=tz)))
    assert a.daily.key == datetime.now(ZoneInfo(tz)).strftime("%Y-%m-%d")


def test_settle_is_idempotent_and_releases_the_rest(ledger: Ledger) -> None:
    lim = Limits(daily_micro=1_000_000)
    a = ask(50_000, lim)
    assert ledger.reserve(a).reserved
    first = ledger.settle(a.decision_id, 120, 20_000)
    again = ledger.settle(a.decision_id, 120, 20_000)
    assert (first.applied, again.applied) == (True, False)
    state = ledger.reserve(ask(0, lim))
    assert (state.daily.spent_micro, state.daily.reserved_micro) == (20_000, 0)
    assert ledger.settle("no-such-decision", 1, 1).state == "unknown"
    b = ask(1_000, lim)
    ledger.reserve(b)
    assert ledger.settle(b.decision_id, 1, 1, owner="spiffe://prod/agent/other").state == "unknown"
    assert ledger.settle(b.decision_id, 1, 1, owner=W).applied


def test_deny_releases_the_reservation_with_its_audit_row(ledger: Ledger) -> None:
    lim = Limits(daily_micro=10_000)
    a = ask(10_000, lim)
    assert ledger.reserve(a).reserved
    ledger.finish(entry(a.decision_id, "deny"), release=True)
    assert ledger.settle(a.decision_id, 1, 1).state == "released"
    b = ledger.reserve(ask(10_000, lim))
    assert b.reserved and b.daily.reserved_micro == 0


def test_commit_reserves_and_audits_together_or_writes_nothing(ledger: Ledger) -> None:
    lim = Limits(daily_micro=20_000, route_rpm=5)
    asks = [ask(10_000, lim, route="r") for _ in range(3)]
    done = [ledger.commit(a, entry(a.decision_id)) for a in asks]
    assert [d.admission.reserved for d in done] == [True, True, False]
    assert [d.admission.daily.reserved_micro for d in done] == [0, 10_000, 20_000]
    assert [d.admission.route_rate.requests for d in done] == [0, 1, 2]
    assert done[0].seq > 0 and done[1].seq == done[0].seq + 1 and done[2].seq == 0
    written = [r.decision_id for r in ledger.audit_rows(AuditFilter())]
    assert written == [done_ask.decision_id for done_ask in asks[:2]]  # none for the refused ...
    assert ledger.settle(asks[2].decision_id, 1, 1).state == "unknown"  # ... no reservation
    # A plain audit row (a deny) and commits share the writer's batches and one chain.
    ledger.finish(entry(uuid.uuid4().hex, "deny"), release=False)
    rows = ledger.audit_rows(AuditFilter())
    assert [r.outcome for r in rows] == ["allow", "allow", "deny"]
    assert verify(rows, KEYRING) == (3, [])


def test_commits_from_many_threads_never_overspend(ledger: Ledger) -> None:
    """Concurrent commits land in shared batches; the limit holds exactly."""
    from concurrent.futures import ThreadPoolExecutor

    lim = Limits(daily_micro=100_000)
    asks = [ask(10_000, lim) for _ in range(40)]
    with ThreadPoolExecutor(16) as pool:
        done = list(pool.map(lambda a: ledger.commit(a, entry(a.decision_id)), asks))
    assert sum(d.admission.reserved for d in done) == 10
    rows = ledger.audit_rows(AuditFilter())
    assert len(rows) == 10 and verify(rows, KEYRING) == (10, [])


def test_unsettled_reservations_expire(ledger: Ledger) -> None:
    lim = Limits(daily_micro=10_000)
    a = ask(10_000, lim, ttl_s=0.3)
    assert ledger.reserve(a).reserved
    assert not ledger.reserve(ask(10_000, lim)).reserved
    time.sleep(0.5)
    b = ledger.reserve(ask(10_000, lim))
    assert b.reserved and b.daily.reserved_micro == 0
    # A late report still counts as spend, once.
    assert ledger.settle(a.decision_id, 5, 4_000).applied
    assert not ledger.settle(a.decision_id, 5, 4_000).applied
    c = ledger.reserve(ask(0, lim))
    assert (c.daily.spent_micro, c.daily.reserved_micro) == (4_000, 10_000)


def test_requests_per_minute_per_workload(ledger: Ledger) -> None:
    lim = Limits(workload_rpm=3)
    got = [ledger.reserve(ask(0, lim)) for _ in range(4)]
    assert [g.reserved for g in got] == [True, True, True, False]
    assert got[-1].workload_rate.requests == 3
    assert 0 < got[-1].workload_rate.retry_after_s <= 60
    other = ledger.reserve(ask(0, lim, workload="spiffe://prod/agent/b"))
    assert other.reserved and other.workload_rate.requests == 0


def test_denied_decisions_do_not_count_against_the_rate(ledger: Ledger) -> None:
    lim = Limits(workload_rpm=1)
    a = ask(0, lim)
    assert ledger.reserve(a).reserved
    ledger.finish(entry(a.decision_id, "deny"), release=True)
    assert ledger.reserve(ask(0, lim)).reserved


def test_tokens_per_minute_and_route_limits(ledger: Ledger) -> None:
    assert ledger.reserve(ask(0, Limits(workload_tpm=1000), tokens=800)).reserved
    assert not ledger.reserve(ask(0, Limits(workload_tpm=1000), tokens=300)).reserved
    route = Limits(route_rpm=2)
    assert ledger.reserve(ask(0, route, workload="spiffe://x/a", route="m1")).reserved
    assert ledger.reserve(ask(0, route, workload="spiffe://x/b", route="m1")).reserved
    third = ledger.reserve(ask(0, route, workload="spiffe://x/c", route="m1"))
    assert not third.reserved and third.route_rate.requests == 2
    assert ledger.reserve(ask(0, route, workload="spiffe://x/c", route="m2")).reserved


def test_audit_chain_appends_verifies_and_filters(ledger: Ledger) -> None:
    ids = [uuid.uuid4().hex for _ in range(5)]
    seqs = [ledger.finish(entry(d, "deny" if i % 2 else "allow",
                                workload=W if i < 3 else "spiffe://prod/agent/b"), release=False)
            for i, d in enumerate(ids)]
    assert seqs == [1, 2, 3, 4, 5]
    assert ledger.finish(entry(ids[0]), release=False) == 1  # a retry appends nothing
    rows = ledger.audit_rows(AuditFilter())
    assert [r.decision_id for r in rows] == ids
    assert verify(rows, KEYRING) == (5, [])
    assert [r.seq for r in ledger.audit_rows(AuditFilter(workload=W, outcome="allow"))] == [1, 3]
    assert [r.seq for r in ledger.audit_rows(AuditFilter(decision_id=ids[3]))] == [4]
    since = rows[2].ts
    assert [r.seq for r in ledger.audit_rows(AuditFilter(since=since))] == [3, 4, 5]
    assert [r.seq for r in ledger.audit_rows(AuditFilter(until=since))] == [1, 2]
    assert len(ledger.audit_rows(AuditFilter(limit=2))) == 2


def test_audit_rows_link_to_the_settled_cost(ledger: Ledger) -> None:
    a = ask(30_000, Limits(daily_micro=100_000))
    ledger.reserve(a)
    ledger.finish(entry(a.decision_id), release=False)
    ledger.settle(a.decision_id, 10, 25_000)
    (row,) = ledger.audit_rows(AuditFilter(decision_id=a.decision_id))
    assert (row.cost_micro, row.settlement) == (25_000, "settled")


def test_audit_table_is_append_only(store: tuple[Ledger, str]) -> None:
    ledger, url = store
    ledger.finish(entry(uuid.uuid4().hex), release=False)
    for stmt in ("UPDATE aam_audit SET outcome = 'allow'", "DELETE FROM aam_audit"):
        if url.startswith("sqlite:"):
            conn = sqlite3.connect(url.removeprefix("sqlite://"))
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                conn.execute(stmt)
            conn.close()
        else:
            with psycopg.connect(url) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(stmt)
    assert len(ledger.audit_rows(AuditFilter())) == 1


def test_rate_window_counts_actual_tokens_once_settled(ledger: Ledger) -> None:
    lim = Limits(workload_tpm=1000, route_tpm=1000)
    a = ask(0, lim, route="m1", tokens=900)
    assert ledger.reserve(a).reserved
    assert not ledger.reserve(ask(0, lim, route="m1", tokens=200)).reserved
    assert ledger.settle(a.decision_id, 300, 0).applied  # the call used far fewer tokens
    b = ledger.reserve(ask(0, lim, route="m1", tokens=200))
    assert b.reserved
    assert (b.workload_rate.tokens, b.route_rate.tokens) == (300, 300)


def _sql(url: str, stmt: str, *args: object) -> list[tuple[object, ...]]:
    if url.startswith("sqlite:"):
        conn = sqlite3.connect(url.removeprefix("sqlite://"))
        with conn:
            rows = conn.execute(stmt.replace("%s", "?"), args).fetchall()
        conn.close()
        return rows
    with psycopg.connect(url, autocommit=True) as pconn:
        cur = pconn.execute(stmt, args)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def test_buckets_older_than_the_window_neither_count_nor_stay(store: tuple[Ledger, str]) -> None:
    ledger, url = store
    old = int(time.time()) - 120
    for scope in ("w:" + W, "r:m1"):
        _sql(url, "INSERT INTO aam_rate_buckets (scope, sec, requests, tokens) VALUES (%s, %s, 5, 500)",
             scope, old)
    got = ledger.reserve(ask(0, Limits(workload_rpm=1, route_rpm=1), route="m1"))
    assert got.reserved
    assert (got.workload_rate.requests, got.route_rate.requests) == (0, 0)
    # Opening a new second pruned both scopes: the table stays one minute long.
    assert _sql(url, "SELECT scope FROM aam_rate_buckets WHERE sec <= %s", old) == []
