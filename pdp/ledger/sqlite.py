"""The embedded ledger (SQLite): the zero-config store of ``aam up``.

Same schema and semantics as PostgreSQL; each step is one ``BEGIN IMMEDIATE``
transaction (SQLite's single writer serialises them, also across processes)
committed with ``synchronous=FULL`` before the PDP answers. Audit rows are
keyed exactly as on PostgreSQL (pdp/ledger/chain.py), inside that transaction.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote
from zoneinfo import ZoneInfo

from pdp.ledger import migrations
from pdp.ledger.keyring import Keyring
from pdp.ledger.types import (
    GENESIS,
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

T = TypeVar("T")
RATE_WINDOW_S = 60.0
READ_ONLY = "?mode=ro"  # a URL suffix: open an existing file for reading only


class SqliteLedger(WriterBacked):
    def __init__(self, path: str, timeout_s: float = 2.0, clock: Callable[[], float] = time.time,
                 keyring: Keyring | None = None) -> None:
        self.keyring = keyring
        # "PATH?mode=ro" (what the audit commands open): read an existing file only, never
        # create it, so a mistyped path is "no ledger there", not a new empty ledger.
        path, read_only = (path.removesuffix(READ_ONLY), True) if path.endswith(READ_ONLY) \
            else (path, False)
        if path != ":memory:" and not read_only:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self._lock = threading.Lock()
        try:
            if read_only:
                self.conn = sqlite3.connect(f"file:{quote(path)}{READ_ONLY}", uri=True,
                                            timeout=timeout_s, isolation_level=None,
                                            check_same_thread=False)
            else:
                self.conn = sqlite3.connect(path, timeout=timeout_s, isolation_level=None,
                                            check_same_thread=False)
                self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as exc:
            raise LedgerUnavailable(f"ledger: cannot open {path}: {exc}") from None
        self.writer = AuditWriter(self._write_batch, wait_s=timeout_s + 30)

    def close(self) -> None:
        self.writer.close()
        with self._lock:
            self.conn.close()

    def _tx(self, what: str, fn: Callable[[sqlite3.Connection], T], durable: bool = True,
            keep: bool = True) -> T:
        """One BEGIN IMMEDIATE transaction; ``durable`` fsyncs the WAL at commit, and
        without ``keep`` it is rolled back (a read through the writing code).

        A reservation commits without its own fsync: the audit commit that follows
        it (before the PDP answers) syncs the WAL, and with it the reservation.
        """
        with self._lock:
            try:
                self.conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
                self.conn.execute("BEGIN IMMEDIATE")
                try:
                    out = fn(self.conn)
                except BaseException:
                    self.conn.execute("ROLLBACK")
                    raise
                self.conn.execute("COMMIT" if keep else "ROLLBACK")
                return out
            except sqlite3.OperationalError as exc:
                raise LedgerUnavailable(f"ledger {what}: {exc}") from None
            except sqlite3.Error as exc:
                raise LedgerError(f"ledger {what}: {type(exc).__name__}") from None

    def ping(self) -> None:
        """The health probe: a read on the open database (a file has no outage to speak
        of, but a full disk or a removed file shows here)."""
        with self._lock:
            try:
                self.conn.execute("SELECT 1").fetchone()
            except sqlite3.Error as exc:
                raise LedgerUnavailable(f"ledger ping: {type(exc).__name__}") from None

    def migrate(self, grant_role: str = "") -> list[str]:
        def run(c: sqlite3.Connection) -> list[str]:
            c.execute("CREATE TABLE IF NOT EXISTS aam_schema_migrations (version INTEGER PRIMARY KEY,"
                      " name TEXT NOT NULL, applied_at TEXT NOT NULL)")
            done = {r[0] for r in c.execute("SELECT version FROM aam_schema_migrations")}
            applied = []
            for m in migrations.load("sqlite"):
                if m.version in done:
                    continue
                for stmt in _statements(m.sql):
                    c.execute(stmt)
                c.execute("INSERT INTO aam_schema_migrations VALUES (?, ?, ?)",
                          (m.version, m.name, datetime.now(UTC).isoformat()))
                applied.append(m.name)
            return applied

        return self._tx("migrate", run)

    def reserve(self, ask: Ask) -> Admission:
        return self._tx("reserve", lambda c: self._reserve_in(c, ask), durable=False)

    def peek(self, ask: Ask) -> Admission:
        """The reservation's own check, rolled back: the same state, nothing written."""
        return self._tx("read state", lambda c: replace(self._reserve_in(c, ask), reserved=False),
                        durable=False, keep=False)

    def _reserve_in(self, c: sqlite3.Connection, ask: Ask) -> Admission:
        """Check every limit and, if all allow, reserve; inside the caller's transaction."""
        lim = ask.limits
        now = self.clock()
        for day_key, month_key, micro in c.execute(
                "UPDATE aam_reservations SET state = 'expired' WHERE workload = ? AND"
                " state = 'reserved' AND expires_at <= ? RETURNING day_key, month_key, reserved_micro",
                (ask.workload, now)).fetchall():
            c.execute("UPDATE aam_budget_windows SET reserved_micro = reserved_micro - ?"
                      " WHERE workload = ? AND window_key IN (?, ?)",
                      (micro, ask.workload, day_key, month_key))
        local = datetime.fromtimestamp(now, ZoneInfo(lim.timezone))
        day, month = local.strftime("%Y-%m-%d"), local.strftime("%Y-%m")
        d_spent, d_res = _window(c, ask.workload, "d:" + day)
        m_spent, m_res = _window(c, ask.workload, "m:" + month)
        w = _rate(c, "w:" + ask.workload, now)
        r = _rate(c, "r:" + ask.route, now) if ask.route else RateWindow(0, 0, 0.0)
        ok = ((lim.daily_micro is None or d_spent + d_res + ask.cost_micro <= lim.daily_micro)
              and (lim.monthly_micro is None
                   or m_spent + m_res + ask.cost_micro <= lim.monthly_micro)
              and (lim.workload_rpm is None or w.requests < lim.workload_rpm)
              and (lim.workload_tpm is None or w.tokens + ask.tokens <= lim.workload_tpm)
              and (lim.route_rpm is None or r.requests < lim.route_rpm)
              and (lim.route_tpm is None or r.tokens + ask.tokens <= lim.route_tpm))
        if ok:
            for key in ("d:" + day, "m:" + month):
                c.execute("INSERT INTO aam_budget_windows (workload, window_key, reserved_micro)"
                          " VALUES (?, ?, ?) ON CONFLICT (workload, window_key) DO UPDATE"
                          " SET reserved_micro = reserved_micro + excluded.reserved_micro",
                          (ask.workload, key, ask.cost_micro))
            c.execute("INSERT INTO aam_reservations (decision_id, workload, route, day_key,"
                      " month_key, reserved_micro, tokens, state, created_at, rate_second,"
                      " expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'reserved', ?, ?, ?)",
                      (ask.decision_id, ask.workload, ask.route, "d:" + day, "m:" + month,
                       ask.cost_micro, ask.tokens, now, int(now), now + ask.ttl_s))
            _rate_add(c, "w:" + ask.workload, int(now), 1, ask.tokens)
            if ask.route:
                _rate_add(c, "r:" + ask.route, int(now), 1, ask.tokens)
        next_day = datetime.combine(local.date() + timedelta(days=1), datetime.min.time(),
                                    local.tzinfo)
        next_month = datetime(local.year + local.month // 12, local.month % 12 + 1, 1,
                              tzinfo=local.tzinfo)
        return Admission(
            reserved=ok, cost_micro=ask.cost_micro,
            daily=Window(day, d_spent, d_res, next_day.timestamp() - now),
            monthly=Window(month, m_spent, m_res, next_month.timestamp() - now),
            workload_rate=w, route_rate=r,
        )

    def _write_batch(self, batch: list[Pending]) -> None:
        key = self.audit_key()

        def run(c: sqlite3.Connection) -> NewRows:
            keep = []
            for p in batch:
                if p.ask is not None:
                    p.admission = self._reserve_in(c, p.ask)
                    if not p.admission.reserved:
                        keep.append(False)
                        continue
                keep.append(True)
                if p.release:
                    _release(c, p.entry.decision_id)
            last = c.execute("SELECT seq, hash FROM aam_audit ORDER BY seq DESC LIMIT 1").fetchone()
            if self.head is not None:
                # Usually this PDP wrote the newest row: the tail just read already holds it.
                mine = last if last and last[0] == self.head.seq else c.execute(
                    "SELECT seq, hash FROM aam_audit WHERE seq = ?", (self.head.seq,)).fetchone()
                self.check_head(mine[1] if mine else None)
            ids = [p.entry.decision_id for p, k in zip(batch, keep, strict=True) if k]
            existing = dict(c.execute(
                f"SELECT decision_id, seq FROM aam_audit WHERE decision_id IN"
                f" ({','.join('?' * len(ids))})", ids).fetchall()) if ids else {}
            rows = self.chain(batch, keep, existing,
                              ChainHead(*last) if last else ChainHead(0, GENESIS), key)
            c.executemany("INSERT INTO aam_audit (seq, ts, decision_id, workload, outcome, body,"
                          " prev_hash, hash, key_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                          [(lk.seq, e.ts, e.decision_id, e.workload, e.outcome, e.body,
                            lk.prev_hash, lk.hash, key.id) for lk, e in rows])
            return rows

        self.advance(self._tx("audit", run))

    def audit_hash(self, seq: int) -> str | None:
        with self._lock:
            try:
                row = self.conn.execute("SELECT hash FROM aam_audit WHERE seq = ?",
                                        (seq,)).fetchone()
            except sqlite3.Error as exc:
                raise LedgerUnavailable(f"ledger audit query: {exc}") from None
        return None if row is None else str(row[0])

    def settle(self, decision_id: str, tokens: int, cost_micro: int, owner: str = "") -> Settlement:
        def run(c: sqlite3.Connection) -> Settlement:
            row = c.execute("SELECT workload, day_key, month_key, reserved_micro, state, route,"
                            " rate_second, tokens FROM aam_reservations WHERE decision_id = ?",
                            (decision_id,)).fetchone()
            if row is None or (owner and row[0] != owner):
                return Settlement(False, "unknown")
            workload, day_key, month_key, reserved, state, route, sec, estimated = row
            if state in ("settled", "released"):
                return Settlement(False, state)
            c.execute("UPDATE aam_budget_windows SET spent_micro = spent_micro + ?,"
                      " reserved_micro = reserved_micro - ? WHERE workload = ? AND window_key IN (?, ?)",
                      (cost_micro, reserved if state == "reserved" else 0, workload, day_key, month_key))
            c.execute("UPDATE aam_reservations SET state = 'settled', cost_micro = ?, tokens = ?,"
                      " settled_at = ? WHERE decision_id = ?",
                      (cost_micro, tokens, self.clock(), decision_id))
            c.execute("UPDATE aam_rate_buckets SET tokens = tokens + ? WHERE sec = ? AND scope IN (?, ?)",
                      (tokens - estimated, sec, "w:" + workload, "r:" + route))
            return Settlement(True, "settled")

        return self._tx("settle", run)

    def audit_rows(self, flt: AuditFilter) -> list[AuditRow]:
        """Times are compared as datetimes here, not as text in SQL (a row's ISO text need
        not be in the filter's form; SQL bounds ts only by whole days, on its index), so
        ``limit`` (the newest N) is applied here too: rows are read newest first and the
        read stops at the limit."""
        since, until = flt.bounds()
        if since is None and until is None:  # nothing to compare here: all of it in SQL
            query, args = flt.sql("?", dialect="sqlite")
            with self._lock:
                try:
                    fetched = self.conn.execute(query, args).fetchall()
                except sqlite3.Error as exc:
                    raise LedgerUnavailable(f"ledger audit query: {exc}") from None
            return [AuditRow(*r[:8], cost_micro=r[8], settlement=r[9], key_id=r[10])
                    for r in fetched]
        query, args = flt.sql("?", dialect="sqlite", times=False, newest_first=True)
        rows = []
        with self._lock:
            try:
                cur = self.conn.execute(query, args)
                while flt.limit is None or len(rows) < flt.limit:
                    page = cur.fetchmany(500)
                    if not page:
                        break
                    for r in page:
                        ts = _utc(datetime.fromisoformat(r[1]))
                        if (since and ts < since) or (until and ts >= until):
                            continue
                        rows.append(AuditRow(*r[:8], cost_micro=r[8], settlement=r[9],
                                             key_id=r[10]))
                        if flt.limit is not None and len(rows) >= flt.limit:
                            break
                cur.close()
            except sqlite3.Error as exc:
                raise LedgerUnavailable(f"ledger audit query: {exc}") from None
        rows.reverse()
        if flt.shadow_only:
            rows = [r for r in rows if _has_shadow(r.body)]
        return rows

    def audit_counts(self, flt: AuditFilter, start: datetime, step_s: int
                     ) -> tuple[int, list[tuple[int, str, int]]]:
        """The rows ``flt`` matches, and how many of them carry each reason code per
        bucket of ``step_s`` seconds from ``start`` (bucket, code: "" for a row without
        reasons, rows; a row before ``start`` is in bucket -1). Counted in SQL on the
        (outcome, ts, reason, reason_n) index, times compared by julianday (whatever a
        row's ISO form, to the millisecond); only a row with several reasons has its
        body read."""
        query, args = counts_query(flt, start, step_s)
        with self._lock:
            try:
                got = self.conn.execute(query, args).fetchall()
            except sqlite3.Error as exc:
                raise LedgerUnavailable(f"ledger audit query: {exc}") from None
        total = 0
        counts: Counter[tuple[int, str]] = Counter()
        for b, first_code, body, n in got:
            total += n
            codes = {str(first_code)} if first_code is not None else set()
            if body is not None:
                with contextlib.suppress(ValueError, TypeError, AttributeError, KeyError):
                    codes |= {str(x.get("code", "")) for x in json.loads(body)["reasons"]
                              if isinstance(x, dict)}
            for code in codes or {""}:
                counts[int(b), code] += n
        return total, [(b, c, n) for (b, c), n in counts.items()]


def counts_query(flt: AuditFilter, start: datetime, step_s: int) -> tuple[str, list]:
    """The GROUP BY of :meth:`SqliteLedger.audit_counts` and its arguments."""
    where, args = flt.where("?", dialect="sqlite", times=False)
    since, until = flt.bounds()
    for op, bound in ((">=", since), ("<", until)):
        if bound is not None:
            where.append(f"julianday(a.ts) {op} julianday(?)")
            args.append(bound.isoformat())
    bucket = "(julianday(a.ts) - julianday(?)) * 86400.0 / ?"
    query = (f"SELECT CASE WHEN {bucket} < 0 THEN -1 ELSE CAST({bucket} AS INTEGER) END AS b,"
             " a.reason, CASE WHEN a.reason_n > 1 THEN a.body END AS more, count(*)"
             " FROM aam_audit a" + (" WHERE " + " AND ".join(where) if where else "")
             + " GROUP BY b, a.reason, more")
    return query, [start.isoformat(), step_s] * 2 + args


def _has_shadow(body: str) -> bool:
    try:
        return '"shadow"' in body and json.loads(body).get("shadow") is not None
    except (ValueError, AttributeError):
        return False


def _utc(ts: datetime) -> datetime:
    """Rows are written in UTC with the zone; one without a zone is taken as UTC too."""
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts


def _release(c: sqlite3.Connection, decision_id: str) -> None:
    """A denied decision's reservation goes back, and it stops counting against the rate."""
    row = c.execute("UPDATE aam_reservations SET state = 'released' WHERE decision_id = ?"
                    " AND state = 'reserved' RETURNING workload, day_key, month_key,"
                    " reserved_micro, route, rate_second, tokens", (decision_id,)).fetchone()
    if row:
        c.execute("UPDATE aam_budget_windows SET reserved_micro = reserved_micro - ?"
                  " WHERE workload = ? AND window_key IN (?, ?)", (row[3], row[0], row[1], row[2]))
        c.execute("UPDATE aam_rate_buckets SET requests = requests - 1, tokens = tokens - ?"
                  " WHERE sec = ? AND scope IN (?, ?)", (row[6], row[5], "w:" + row[0], "r:" + row[4]))


def _window(c: sqlite3.Connection, workload: str, key: str) -> tuple[int, int]:
    row = c.execute("SELECT spent_micro, reserved_micro FROM aam_budget_windows"
                    " WHERE workload = ? AND window_key = ?", (workload, key)).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def _rate(c: sqlite3.Connection, scope: str, now: float) -> RateWindow:
    sec = int(now)
    c.execute("DELETE FROM aam_rate_buckets WHERE scope = ? AND sec <= ?", (scope, sec - 60))
    n, tokens, oldest = c.execute(
        "SELECT coalesce(sum(requests), 0), coalesce(sum(tokens), 0),"
        " min(CASE WHEN requests > 0 THEN sec END) FROM aam_rate_buckets"
        " WHERE scope = ? AND sec > ?", (scope, sec - 60)).fetchone()
    retry = max(0.0, oldest + RATE_WINDOW_S - now) if oldest is not None else 0.0
    return RateWindow(int(n), int(tokens), retry)


def _rate_add(c: sqlite3.Connection, scope: str, sec: int, requests: int, tokens: int) -> None:
    c.execute("INSERT INTO aam_rate_buckets (scope, sec, requests, tokens) VALUES (?, ?, ?, ?)"
              " ON CONFLICT (scope, sec) DO UPDATE SET requests = requests + excluded.requests,"
              " tokens = tokens + excluded.tokens", (scope, sec, requests, tokens))


def _statements(script: str) -> list[str]:
    """Split a migration on ';' at line ends, keeping trigger bodies whole."""
    out, buf = [], []
    for line in script.splitlines():
        if line.strip().startswith("--") and not buf:
            continue
        buf.append(line)
        text = "\n".join(buf).strip()
        if text.endswith(";") and sqlite3.complete_statement(text):
            out.append(text)
            buf = []
    if "\n".join(buf).strip():
        out.append("\n".join(buf))
    return out
