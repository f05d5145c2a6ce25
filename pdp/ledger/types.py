"""Values crossing the ledger boundary. Money is integer micro-dollars (exact sums)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

MICRO = 1_000_000
GENESIS = "0" * 64


class LedgerError(Exception):
    """The ledger refused or failed an operation; the message carries no secret."""


class LedgerUnavailable(LedgerError):
    """The store cannot be reached or failed mid-operation: decisions must deny."""


class LedgerOff(LedgerError):
    """No ledger is configured, so what needs one (recording usage) does not exist here."""


def usd_to_micro(usd: float) -> int:
    """Round up to a whole micro-dollar, ignoring float noise (0.01 -> 10000)."""
    scaled = round(usd * MICRO, 3)
    whole = int(scaled)
    return whole + (1 if scaled > whole else 0)


def usd(micro: int) -> float:
    return micro / MICRO


@dataclass(frozen=True)
class Limits:
    """What the compiled policy and route allow; ``None`` means no limit."""

    daily_micro: int | None = None
    monthly_micro: int | None = None
    timezone: str = "UTC"
    workload_rpm: int | None = None
    workload_tpm: int | None = None
    route_rpm: int | None = None
    route_tpm: int | None = None


@dataclass(frozen=True)
class Ask:
    decision_id: str
    workload: str
    route: str  # model alias, "" for a tool call
    cost_micro: int
    tokens: int
    limits: Limits
    ttl_s: float


@dataclass(frozen=True)
class Window:
    key: str  # "2026-11-26" (day) or "2026-11" (month), in the policy's time zone
    spent_micro: int
    reserved_micro: int
    resets_in_s: float

    # Built directly, not with dataclasses.replace: these run on every decision.
    def aged(self, seconds: float) -> Window:
        return Window(self.key, self.spent_micro, self.reserved_micro, self.resets_in_s - seconds)

    def reserving(self, cost_micro: int) -> Window:
        return Window(self.key, self.spent_micro, self.reserved_micro + cost_micro, self.resets_in_s)


@dataclass(frozen=True)
class RateWindow:
    requests: int  # in the last 60 s, not counting denied decisions
    tokens: int
    retry_after_s: float  # until the oldest of them leaves the window

    def aged(self, seconds: float) -> RateWindow:
        return RateWindow(self.requests, self.tokens, max(0.0, self.retry_after_s - seconds))

    def counting(self, tokens: int) -> RateWindow:
        return RateWindow(self.requests + 1, self.tokens + tokens, self.retry_after_s)


@dataclass(frozen=True)
class Admission:
    """State before this decision, and whether its reservation was taken."""

    reserved: bool
    cost_micro: int
    daily: Window
    monthly: Window
    workload_rate: RateWindow
    route_rate: RateWindow


@dataclass(frozen=True)
class Committed:
    """A decision's reservation and audit row, written together (or not at all)."""

    admission: Admission  # the state it was checked against; .reserved: taken or refused
    seq: int  # the audit row's sequence; 0 when refused (nothing was written)


@dataclass(frozen=True)
class Settlement:
    applied: bool
    state: str  # "settled" now or before, "released" (a deny), "unknown"


@dataclass(frozen=True)
class AuditEntry:
    """One decision's audit row before it is chained. ``body`` is canonical JSON."""

    ts: str
    decision_id: str
    workload: str
    outcome: str
    body: str


@dataclass(frozen=True)
class AuditRow:
    seq: int
    ts: str
    decision_id: str
    workload: str
    outcome: str
    body: str
    prev_hash: str
    hash: str
    cost_micro: int | None = None
    settlement: str = ""
    key_id: str = ""  # the audit key that keyed the hash; "" = a legacy (unkeyed) row

    def record(self) -> dict[str, Any]:
        import json

        return json.loads(self.body)


@dataclass(frozen=True)
class ChainHead:
    """The newest row a PDP wrote (or its anchor names): where its chain must still reach."""

    seq: int
    hash: str


class FilterError(ValueError):
    """An audit filter value that cannot be used (a malformed time): the caller's mistake,
    found before any SQL runs, so both stores refuse it the same way."""


_DURATION = re.compile(r"(?:\d+[wdhms])+")
_UNITS = {"w": 604_800, "d": 86_400, "h": 3_600, "m": 60, "s": 1}
TIME_FORMS = ("ISO 8601 (2026-12-01T19:52, 2026-12-01T19:52:00+01:00 or 2026-12-01; no zone "
              "means UTC) or a duration back from now (90s, 30m, 1h, 2d, 1w, 1h30m)")


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """An audit time bound as users type it, in UTC: ISO 8601 with or without a zone (none
    means UTC, the zone the ledger stores), a date (its midnight, UTC), or a duration
    before ``now`` (``30m``, ``1h``, ``2d``). Raises :class:`FilterError`."""
    value = text.strip()
    if _DURATION.fullmatch(value):
        seconds = sum(int(n) * _UNITS[u] for n, u in re.findall(r"(\d+)([wdhms])", value))
        try:
            return (now or datetime.now(UTC)).astimezone(UTC) - timedelta(seconds=seconds)
        except OverflowError:
            raise FilterError(f"{text!r} reaches back before year 1") from None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise FilterError(f"{text!r} is not a time: use {TIME_FORMS}") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


@dataclass(frozen=True)
class AuditFilter:
    """Which audit rows to read; every field set must match (AND).

    ``workload`` is a full SPIFFE ID (``spiffe://...``, matched exactly) or a workload name:
    the last path segment(s) of the ID (``github-triage`` and ``agent/github-triage`` match
    ``spiffe://prod/agent/github-triage``). ``outcome`` is allow or deny, any case.
    ``policy``, ``reason`` (a reason code any of the row's reasons carries), ``tool`` and
    ``model`` match fields of the row's JSON body. ``since`` (inclusive) and ``until``
    (exclusive) take what :func:`parse_time` does. ``limit`` keeps the newest N matching
    rows (a log is read for what happened last), still returned in chain order."""

    workload: str = ""
    outcome: str = ""
    decision_id: str = ""
    since: str = ""
    until: str = ""
    limit: int | None = None
    policy: str = ""
    reason: str = ""
    tool: str = ""
    model: str = ""
    # Rows after this sequence number and up to ``through_seq`` (inclusive): a walk of the
    # chain in pages on the primary key (the console's incremental verify).
    after_seq: int = 0
    through_seq: int | None = None
    # Of the rows the rest selects (after ``limit``: among the newest N), only those whose
    # body has a ``shadow`` entry (the console's shadow page: nothing else leaves the store).
    shadow_only: bool = False

    def bounds(self, now: datetime | None = None) -> tuple[datetime | None, datetime | None]:
        """``since`` and ``until`` as UTC datetimes; a malformed one is a FilterError."""
        out: list[datetime | None] = []
        for flag, text in (("--since", self.since), ("--until", self.until)):
            try:
                out.append(parse_time(text, now) if text else None)
            except FilterError as exc:
                raise FilterError(f"{flag} {exc}") from None
        return out[0], out[1]

    def sql(self, placeholder: str, *, dialect: str = "postgres",
            times: bool = True, newest_first: bool = False) -> tuple[str, list[Any]]:
        """The audit query both stores run, with ``placeholder`` for their driver and the
        columns of ``dialect`` ("postgres" or "sqlite": reason, tool and model are read
        from the generated columns the console migrations add, each on an index).

        ``times=False`` leaves since/until, and so ``limit``, to the caller (SQLite keeps
        ISO text, compared after parsing): the query then bounds ts only by whole days
        either side, a range of the ts index no row in the window falls outside.
        ``newest_first`` orders it by seq descending (the caller stops at its limit). Times
        are checked here first either way: a bad one is a FilterError before any SQL runs."""
        where, args = self.where(placeholder, dialect=dialect, times=times)
        query = ("SELECT a.seq, a.ts, a.decision_id, a.workload, a.outcome, a.body, a.prev_hash,"
                 " a.hash, r.cost_micro, coalesce(r.state, '') AS settlement, a.key_id"
                 " FROM aam_audit a LEFT JOIN aam_reservations r ON r.decision_id = a.decision_id"
                 + (" WHERE " + " AND ".join(where) if where else ""))
        if times and self.limit is not None:
            # The newest N, put back in chain order.
            shadow = (f" WHERE {_shadow(dialect, 'newest')}" if self.shadow_only else "")
            return (f"SELECT * FROM ({query} ORDER BY a.seq DESC LIMIT {int(self.limit)})"
                    f" AS newest{shadow} ORDER BY seq"), args
        if times and self.shadow_only:
            query += (" AND " if where else " WHERE ") + _shadow(dialect, "a")
        return query + (" ORDER BY a.seq DESC" if newest_first else " ORDER BY a.seq"), args

    def where(self, placeholder: str, *, dialect: str = "postgres",
              times: bool = True) -> tuple[list[str], list[Any]]:
        """The WHERE terms (ANDed) of :meth:`sql` and their arguments, on table alias ``a``."""
        since, until = self.bounds()
        if self.limit is not None and self.limit < 0:
            raise FilterError(f"--limit {self.limit}: must not be negative")
        ph = placeholder
        where: list[str] = []
        args: list[Any] = []
        if self.workload.startswith("spiffe://"):
            where.append(f"a.workload = {ph}")
            args.append(self.workload)
        elif self.workload:
            # The ID's last segment(s): a suffix test written the same way for both stores
            # (no LIKE: SQLite's is case-insensitive and '_' is a wildcard in both).
            tail = "/" + self.workload.strip("/")
            where.append(f"(a.workload = {ph} OR substr(a.workload, length(a.workload)"
                         f" - CAST({ph} AS integer) + 1) = {ph})")
            args += [self.workload, len(tail), tail]
        for column, value in (("a.outcome", self.outcome.lower()),
                              ("a.decision_id", self.decision_id),
                              ("a.tool", self.tool), ("a.model", self.model)):
            if value:
                where.append(f"{column} = {ph}")
                args.append(value)
        if self.policy:
            where.append(f"{_json_text(dialect, ('policy',))} = {ph}")
            args.append(self.policy)
        if self.reason:
            where.append(_reason(dialect, ph))
            args += [self.reason] * (1 if dialect == "postgres" else 2)
        if self.after_seq:
            where.append(f"a.seq > {ph}")
            args.append(int(self.after_seq))
        if self.through_seq is not None:
            where.append(f"a.seq <= {ph}")
            args.append(int(self.through_seq))
        if times:
            if since:
                where.append(f"a.ts >= {ph}")
                args.append(since.isoformat())
            if until:
                where.append(f"a.ts < {ph}")
                args.append(until.isoformat())
        else:
            # Whole UTC days either side, as text: any ISO form of a time in the window
            # (whatever its offset, -12:00 to +14:00) starts with a date inside these.
            # SQLite has no statistics of ts ranges: it would walk the primary key for
            # ORDER BY seq rather than read a day of ts. A window of days is a small part
            # of a ledger: say so (likelihood), and it reads the ts index and sorts.
            if since:
                short = (until or datetime.now(UTC)) - since <= timedelta(days=7)
                where.append(f"likelihood(a.ts >= {ph}, 0.01)" if short else f"a.ts >= {ph}")
                args.append((since - timedelta(days=1)).date().isoformat())
            if until:
                where.append(f"a.ts < {ph}")
                args.append((until + timedelta(days=2)).date().isoformat())
        return where, args


def _json_text(dialect: str, path: tuple[str, ...]) -> str:
    """A string field of the row's JSON body, NULL when absent."""
    if dialect == "postgres":
        return "(a.body::jsonb" + "".join(f" -> '{k}'" for k in path[:-1]) + f" ->> '{path[-1]}')"
    return (f"(CASE WHEN json_valid(a.body) THEN json_extract(a.body, '$.{'.'.join(path)}') END)")


def _shadow(dialect: str, alias: str) -> str:
    if dialect == "postgres":
        return f"({alias}.body::jsonb -> 'shadow') IS NOT NULL"
    return (f"(CASE WHEN json_valid({alias}.body) THEN json_extract({alias}.body, '$.shadow') END)"
            " IS NOT NULL")


def _reason(dialect: str, ph: str) -> str:
    """Some entry of the body's ``reasons`` list has this ``code``. PostgreSQL: the
    ``reasons`` column holds every code (GIN index). SQLite: ``reason`` holds the first
    (btree index); the few rows with more than one (``reason_n > 1``, a partial index)
    are searched in their body."""
    if dialect == "postgres":
        return f"a.reasons ? {ph}"
    # One list of seqs from both indexes (an OR of the two would walk the table for the
    # ORDER BY seq): SQLite reads it in order on the primary key.
    return (f"a.seq IN (SELECT f.seq FROM aam_audit f WHERE f.reason = {ph} UNION ALL"
            " SELECT m.seq FROM aam_audit m WHERE m.reason_n > 1"
            " AND EXISTS (SELECT 1 FROM json_each(m.body, '$.reasons') AS r"
            f" WHERE json_extract(r.value, '$.code') = {ph}))")
