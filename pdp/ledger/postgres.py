"""The PostgreSQL ledger: psycopg 3 with a connection pool, one function call per step.

Each step calls a PL/pgSQL function (``aam_reserve``, ``aam_prepare_many``,
``aam_settle``) that serialises per workload with advisory locks, so several
PDP processes sharing the database never over-spend a budget or over-count a
rate window. An audit batch is one transaction: ``aam_prepare_many`` reserves,
releases and takes the chain lock, then the PDP keys the rows (HMAC in Python:
the audit key never reaches the database, see pdp/ledger/chain.py) and inserts
them, then commits. A connection broken by a database restart is retried once
on a fresh one; every step is idempotent per decision id, so the retry cannot
double-count.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

from pdp.ledger import migrations
from pdp.ledger.keyring import Keyring
from pdp.ledger.types import (
    Admission,
    Ask,
    AuditFilter,
    AuditRow,
    ChainHead,
    LedgerError,
    LedgerUnavailable,
    RateWindow,
    Settlement,
    Window,
)
from pdp.ledger.writer import AuditWriter, NewRows, Pending, WriterBacked

log = logging.getLogger("aam.ledger")
T = TypeVar("T")
MIGRATION_LOCK = 4  # advisory lock class held while migrating
STATEMENT_TIMEOUT_S = 10  # a hung database fails decisions instead of holding them
# The rows of one batch, hashed by the PDP (one parameter, encoded in C by json).
INSERT_ROWS = (
    "INSERT INTO aam_audit (seq, ts, decision_id, workload, outcome, body, prev_hash, hash, key_id)"
    " SELECT x.seq, x.ts, x.id, x.workload, x.outcome, x.body, x.prev, x.hash, x.key"
    " FROM jsonb_to_recordset(%s::jsonb) AS x(seq bigint, ts timestamptz, id text, workload text,"
    " outcome text, body text, prev text, hash text, key text)")


class PostgresLedger(WriterBacked):
    def __init__(self, conninfo: str, pool_size: int = 8, timeout_s: float = 2.0,
                 keyring: Keyring | None = None) -> None:
        self.timeout_s = timeout_s
        self.keyring = keyring
        self.pool = ConnectionPool(
            conninfo, min_size=1, max_size=max(1, pool_size), timeout=timeout_s,
            kwargs={"autocommit": True, "connect_timeout": max(1, int(timeout_s)),
                    "options": f"-c timezone=UTC -c statement_timeout={STATEMENT_TIMEOUT_S * 1000}"},
            open=False, name="aam-ledger", reconnect_timeout=3600,
        )
        self.pool.open(wait=False)
        self.writer = AuditWriter(self._write_batch, wait_s=timeout_s + STATEMENT_TIMEOUT_S + 5)

    def close(self) -> None:
        self.writer.close()
        self.pool.close()

    def _run(self, what: str, fn: Callable[[psycopg.Connection], T]) -> T:
        for attempt in (1, 2):
            try:
                with self.pool.connection() as conn:
                    return fn(conn)
            except PoolTimeout:
                raise LedgerUnavailable(f"ledger {what}: no database connection within "
                                        f"{self.timeout_s:g} s") from None
            except psycopg.OperationalError as exc:
                log.warning("ledger operation failed",
                            extra={"fields": {"op": what, "attempt": attempt,
                                              "error": type(exc).__name__}})
                if attempt == 2:
                    raise LedgerUnavailable(f"ledger {what}: database unavailable") from None
            except psycopg.Error as exc:
                raise LedgerError(f"ledger {what}: {type(exc).__name__}") from None
        raise AssertionError("unreachable")

    def ping(self) -> None:
        """``SELECT 1`` on a pooled connection: the health probe (pdp/ledger/watched.py)."""
        self._run("ping", lambda conn: conn.execute("SELECT 1").fetchone())

    # --- schema ---------------------------------------------------------------

    def migrate(self, grant_role: str = "") -> list[str]:
        def run(conn: psycopg.Connection) -> list[str]:
            applied: list[str] = []
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (MIGRATION_LOCK,))
                conn.execute("CREATE TABLE IF NOT EXISTS aam_schema_migrations ("
                             "version integer PRIMARY KEY, name text NOT NULL, "
                             "applied_at timestamptz NOT NULL DEFAULT now())")
                done = {r[0] for r in conn.execute("SELECT version FROM aam_schema_migrations")}
                for m in migrations.load("postgres"):
                    if m.version in done:
                        continue
                    conn.execute(m.sql.encode())  # type: ignore[call-overload]
                    conn.execute("INSERT INTO aam_schema_migrations (version, name) VALUES (%s, %s)",
                                 (m.version, m.name))
                    applied.append(m.name)
                if grant_role:
                    _grant(conn, grant_role)
            return applied

        return self._run("migrate", run)

    # --- decisions ------------------------------------------------------------

    def reserve(self, ask: Ask) -> Admission:
        def run(conn: psycopg.Connection) -> Admission:
            return _reserve(conn, ask)

        try:
            return self._run("reserve", run)
        except LedgerError as exc:
            if "UniqueViolation" in str(exc):  # a retry after the first attempt committed
                raise LedgerUnavailable("ledger reserve: outcome of a retried call unknown") from None
            raise

    def peek(self, ask: Ask) -> Admission:
        """aam_reserve in a transaction that is rolled back: the same state computation
        as a reservation, no second copy of it in SQL, nothing written (no WAL flush)."""

        def run(conn: psycopg.Connection) -> Admission:
            with conn.transaction(force_rollback=True):
                return replace(_reserve(conn, ask), reserved=False)

        return self._run("read state", run)

    def _write_batch(self, batch: list[Pending]) -> None:
        key = self.audit_key()
        items = json.dumps([_item(p) for p in batch], separators=(",", ":"))
        mine = self.head.seq if self.head is not None else 0

        def run(conn: psycopg.Connection) -> tuple[dict[str, Any], NewRows]:
            # Pipelined: BEGIN travels with the first statement and COMMIT with the
            # insert, so a batch costs two round trips, not four.
            with conn.pipeline(), conn.transaction():
                row = conn.execute("SELECT aam_prepare_many(%s::jsonb, %s)", (items, mine),
                                   prepare=True).fetchone()
                assert row is not None
                doc: dict[str, Any] = row[0]
                self.check_head(doc["mine"] if mine else None)
                rows = self.chain(batch, [bool(i["keep"]) for i in doc["items"]], doc["existing"],
                                  ChainHead(int(doc["seq"]), doc["hash"]), key)
                if rows:
                    conn.execute(INSERT_ROWS, (json.dumps(
                        [{"seq": lk.seq, "ts": e.ts, "id": e.decision_id, "workload": e.workload,
                          "outcome": e.outcome, "body": e.body, "prev": lk.prev_hash,
                          "hash": lk.hash, "key": key.id} for lk, e in rows],
                        separators=(",", ":")),), prepare=True)
            return doc, rows

        doc, rows = self._run("audit", run)
        for p, out in zip(batch, doc["items"], strict=True):
            if p.ask is not None:
                p.admission = _admission(out["admission"], p.ask.cost_micro)
        self.advance(rows)

    def audit_hash(self, seq: int) -> str | None:
        def run(conn: psycopg.Connection) -> str | None:
            row = conn.execute("SELECT hash FROM aam_audit WHERE seq = %s", (seq,)).fetchone()
            return None if row is None else str(row[0])

        return self._run("audit query", run)

    def settle(self, decision_id: str, tokens: int, cost_micro: int, owner: str = "") -> Settlement:
        def run(conn: psycopg.Connection) -> Settlement:
            row = conn.execute("SELECT aam_settle(%s, %s, %s, %s)",
                               (decision_id, tokens, cost_micro, owner)).fetchone()
            assert row is not None
            state = str(row[0])
            return Settlement(state == "applied", "settled" if state == "applied" else state)

        return self._run("settle", run)

    # --- audit ----------------------------------------------------------------

    def audit_rows(self, flt: AuditFilter) -> list[AuditRow]:
        query, args = flt.sql("%s", dialect="postgres")  # a bad time raises here, before SQL

        def run(conn: psycopg.Connection) -> list[AuditRow]:
            rows = conn.execute(query.encode(), args).fetchall()  # type: ignore[call-overload]
            return [AuditRow(r[0], r[1].astimezone(UTC).isoformat(), *r[2:8],
                             cost_micro=r[8], settlement=r[9], key_id=r[10]) for r in rows]

        return self._run("audit query", run)


    def audit_counts(self, flt: AuditFilter, start: datetime, step_s: int
                     ) -> tuple[int, list[tuple[int, str, int]]]:
        """The rows ``flt`` matches, and how many of them carry each reason code per
        bucket of ``step_s`` seconds from ``start`` (bucket, code: "" for a row without
        reasons, rows), counted in the database by bucket and the row's codes: a denials
        window reads the (outcome, ts) INCLUDE (reasons) index only, no body leaves it."""
        query, args = counts_query(flt, start, step_s)

        def run(conn: psycopg.Connection) -> tuple[int, list[tuple[int, str, int]]]:
            got = conn.execute(query.encode(), args).fetchall()  # type: ignore[call-overload]
            total, counts = 0, Counter[tuple[int, str]]()
            for bucket, codes, n in got:
                total += n
                for code in {str(c) for c in codes or ()} or {""}:
                    counts[int(bucket), code] += n
            return total, [(b, c, n) for (b, c), n in counts.items()]

        return self._run("audit query", run)

def counts_query(flt: AuditFilter, start: datetime, step_s: int) -> tuple[str, list[Any]]:
    """The GROUP BY of :meth:`PostgresLedger.audit_counts` (by bucket and the row's
    ``reasons`` array: a handful of groups) and its arguments."""
    where, args = flt.where("%s", dialect="postgres")
    query = ("SELECT floor(date_part('epoch', a.ts - %s::timestamptz) / %s)::bigint,"
             " a.reasons, count(*) FROM aam_audit a"
             + (" WHERE " + " AND ".join(where) if where else "") + " GROUP BY 1, 2")
    return query, [start.isoformat(), step_s, *args]


def _reserve(conn: psycopg.Connection, ask: Ask) -> Admission:
    lim = ask.limits
    row = conn.execute(
        "SELECT aam_reserve(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (ask.decision_id, ask.workload, ask.route, ask.cost_micro, ask.tokens,
         lim.timezone, lim.daily_micro, lim.monthly_micro, lim.workload_rpm,
         lim.workload_tpm, lim.route_rpm, lim.route_tpm, ask.ttl_s),
        prepare=True,
    ).fetchone()
    assert row is not None
    return _admission(row[0], ask.cost_micro)


def _grant(conn: psycopg.Connection, role: str) -> None:
    """What the PDP's own role needs: no UPDATE, DELETE or TRUNCATE on the audit table."""
    r = sql.Identifier(role)
    conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE ON aam_reservations, aam_budget_windows TO {}")
                 .format(r))
    conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON aam_rate_buckets TO {}").format(r))
    conn.execute(sql.SQL("GRANT SELECT, INSERT ON aam_audit TO {}").format(r))
    conn.execute(sql.SQL("GRANT SELECT ON aam_schema_migrations TO {}").format(r))


def _item(p: Pending) -> dict[str, Any]:
    """One decision of an aam_prepare_many batch (see 0004_keyed_audit.sql)."""
    e = p.entry
    item: dict[str, Any] = {"id": e.decision_id, "workload": e.workload, "release": p.release,
                            "ask": p.ask is not None}
    if p.ask is not None:
        a, lim = p.ask, p.ask.limits
        item.update(route=a.route, cost=a.cost_micro, tokens=a.tokens, tz=lim.timezone,
                    daily=lim.daily_micro, monthly=lim.monthly_micro, w_rpm=lim.workload_rpm,
                    w_tpm=lim.workload_tpm, r_rpm=lim.route_rpm, r_tpm=lim.route_tpm,
                    ttl_s=a.ttl_s)
    return item


def _admission(doc: dict[str, Any], cost_micro: int) -> Admission:
    return Admission(
        reserved=bool(doc["reserved"]),
        cost_micro=cost_micro,
        daily=Window(doc["day"], int(doc["day_spent"]), int(doc["day_reserved"]),
                     float(doc["day_resets_s"])),
        monthly=Window(doc["month"], int(doc["month_spent"]), int(doc["month_reserved"]),
                       float(doc["month_resets_s"])),
        workload_rate=RateWindow(int(doc["w_requests"]), int(doc["w_tokens"]), float(doc["w_retry_s"])),
        route_rate=RateWindow(int(doc["r_requests"]), int(doc["r_tokens"]), float(doc["r_retry_s"])),
    )
