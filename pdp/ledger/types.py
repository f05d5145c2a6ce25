"""Values crossing the ledger boundary. Money is integer micro-dollars (exact sums)."""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class AuditFilter:
    workload: str = ""
    outcome: str = ""
    decision_id: str = ""
    since: str = ""  # ISO 8601
    until: str = ""
    limit: int | None = None

    def sql(self, placeholder: str, *, times: bool = True) -> tuple[str, list[Any]]:
        """The audit query both stores run, with ``placeholder`` for their driver.

        ``times=False`` leaves the since/until filter to the caller (SQLite keeps
        ISO text, compared after parsing)."""
        where, args = [], []
        for column, value in (("a.workload", self.workload), ("a.outcome", self.outcome),
                              ("a.decision_id", self.decision_id)):
            if value:
                where.append(f"{column} = {placeholder}")
                args.append(value)
        if times and self.since:
            where.append(f"a.ts >= {placeholder}")
            args.append(self.since)
        if times and self.until:
            where.append(f"a.ts < {placeholder}")
            args.append(self.until)
        query = ("SELECT a.seq, a.ts, a.decision_id, a.workload, a.outcome, a.body, a.prev_hash,"
                 " a.hash, r.cost_micro, coalesce(r.state, ''), a.key_id FROM aam_audit a"
                 " LEFT JOIN aam_reservations r ON r.decision_id = a.decision_id"
                 + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY a.seq")
        return query, args
