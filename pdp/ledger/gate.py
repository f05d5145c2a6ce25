"""The engine's side of the ledger: price the request, reserve, describe state, audit.

:class:`Gate` turns a request into an :class:`Ask` (limits from the compiled
policy and route, cost as routes.rego prices the route's chain) and gives OPA
the resulting ``input.state``. Two ways through it:

- checked first (:meth:`Gate.admit`, then :meth:`Gate.finish`): reserve, let
  OPA decide on that exact state, release a denied decision's reservation and
  append its audit row;
- optimistic (:meth:`Gate.cached_state`, then :meth:`Gate.commit`): OPA decides
  on this PDP's last view of the state (:class:`StateCache`), and the ledger
  checks every limit again, atomically, when it reserves for the allow and
  writes its audit row in the same batch. A refusal writes nothing; the engine
  then decides again the checked way, so the answer is always the ledger's.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from pdp.ledger import Ledger, LedgerError
from pdp.ledger.chain import canonical
from pdp.ledger.types import (
    MICRO,
    Admission,
    Ask,
    AuditEntry,
    Limits,
    Settlement,
    usd_to_micro,
)

# Recorded when the policy does not say (or there is no policy).
DEFAULT_RECORD = ("identity", "policy", "action", "outcome", "reasons")
# Decisions answered ledger_unavailable, kept to audit once the ledger is back.
BACKLOG = 10_000


class CompiledView:
    """The compiled data of the bundle being served, for limits and prices."""

    def __init__(self) -> None:
        self._data: dict[str, Any] = {"policies": {}, "routes": {}}
        self._lock = threading.Lock()

    def update(self, files: dict[str, bytes], data_path: str) -> None:
        data = json.loads(files[data_path])
        with self._lock:
            self._data = data

    def policy(self, workload: str) -> dict[str, Any] | None:
        return self._data.get("policies", {}).get(workload)

    def route(self, alias: str) -> dict[str, Any] | None:
        return self._data.get("routes", {}).get(alias) if alias else None


def _micro(value: Any) -> int | None:
    return usd_to_micro(float(value)) if isinstance(value, int | float) else None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) else None


def usd(micro: int) -> float:
    return micro / MICRO


@dataclass(frozen=True)
class Metered:
    """What the engine carries from admit() to finish()."""

    admission: Admission | None  # None: not reserved yet, or nothing to meter
    record: tuple[str, ...]
    route: str
    cost_micro: int
    tokens: int
    ask: Ask | None = None  # None: nothing to meter (no policy for the workload)

    def priced(self, cost_micro: int) -> Metered:
        """The same request at another price (the route's, once OPA has chosen it)."""
        ask = replace(self.ask, cost_micro=cost_micro) if self.ask is not None else None
        return replace(self, cost_micro=cost_micro, ask=ask)


class StateCache:
    """This PDP's latest view of each (workload, route) ledger state, as the ledger
    returned it with this PDP's last reservation for that key, plus that reservation.

    Only a hint for OPA: the ledger re-checks every limit when it reserves. An
    entry older than ``ttl_s``, or past a budget window's reset, is not used.
    """

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._entries: dict[tuple[str, str], tuple[float, Admission]] = {}
        self._lock = threading.Lock()

    def put(self, ask: Ask, before: Admission, reserved: bool) -> None:
        """Remember the state ``before`` this ask, plus the ask if it was reserved."""
        after = before
        if reserved:
            after = Admission(
                before.reserved, before.cost_micro,
                before.daily.reserving(ask.cost_micro), before.monthly.reserving(ask.cost_micro),
                before.workload_rate.counting(ask.tokens),
                before.route_rate.counting(ask.tokens) if ask.route else before.route_rate)
        with self._lock:
            self._entries[ask.workload, ask.route] = (self.clock(), after)

    def get(self, workload: str, route: str) -> Admission | None:
        with self._lock:
            hit = self._entries.get((workload, route))
        if hit is None:
            return None
        age = self.clock() - hit[0]
        a = hit[1]
        if age > self.ttl_s or age >= a.daily.resets_in_s or age >= a.monthly.resets_in_s:
            return None
        return Admission(a.reserved, a.cost_micro, a.daily.aged(age), a.monthly.aged(age),
                         a.workload_rate.aged(age), a.route_rate.aged(age))


class Gate:
    def __init__(self, ledger: Ledger, view: CompiledView, reservation_ttl_s: float,
                 default_tokens: int, state_ttl_s: float = 0.0) -> None:
        self.ledger = ledger
        self.view = view
        self.ttl_s = reservation_ttl_s
        self.default_tokens = default_tokens
        # 0 turns the optimistic path off: every decision is checked first.
        self.cache = StateCache(state_ttl_s) if state_ttl_s > 0 else None
        self._backlog: deque[tuple[AuditEntry, bool]] = deque(maxlen=BACKLOG)
        self._backlog_lock = threading.Lock()

    def estimate(self, model: str, tokens: int, cost_usd: float,
                 quote_usd: float | None = None, floor_usd: float = 0.0) -> tuple[int, int]:
        """(cost in micro-USD, tokens). A model call costs ``quote_usd``, the price
        routes.rego gives its chain (the one pricing rule, which already counts the
        caller's estimate); anything else the caller's cost, but never less than
        ``floor_usd`` (a tool's declared price)."""
        if model and tokens <= 0:
            tokens = self.default_tokens
        if quote_usd is not None:
            return usd_to_micro(max(quote_usd, cost_usd)), tokens
        cost = max(cost_usd, floor_usd)
        return usd_to_micro(cost) if cost > 0 else 0, tokens

    def admit(self, decision_id: str, workload: str, model: str, tokens: int,
              cost_usd: float, quote_usd: float | None = None, tool: str = "") -> Metered:
        """Reserve before OPA decides. Raises LedgerError when the store fails."""
        m = self.meter(decision_id, workload, model, tokens, cost_usd, quote_usd, tool)
        if m.ask is None:
            return m
        admission = self.ledger.reserve(m.ask)
        if self.cache is not None:
            self.cache.put(m.ask, admission, admission.reserved)
        return replace(m, admission=admission)

    def meter(self, decision_id: str, workload: str, model: str, tokens: int,
              cost_usd: float, quote_usd: float | None = None, tool: str = "") -> Metered:
        """Limits and price of a request, from the compiled policy; no ledger call."""
        policy = self.view.policy(workload)
        if policy is None:
            cost, tokens = self.estimate(model, tokens, cost_usd, quote_usd)
            return Metered(None, DEFAULT_RECORD, model, cost, tokens)
        grant = (policy.get("tools") or {}).get(tool) if tool and not model else None
        price = grant.get("price_usd") if isinstance(grant, dict) else None
        cost, tokens = self.estimate(model, tokens, cost_usd, quote_usd,
                                     float(price) if isinstance(price, int | float) else 0.0)
        budget, rate = policy.get("budget") or {}, policy.get("rate") or {}
        route = self.view.route(model)
        route_rate = (route or {}).get("rate") or {}
        limits = Limits(
            daily_micro=_micro(budget.get("daily_usd")),
            monthly_micro=_micro(budget.get("monthly_usd")),
            timezone=str(budget.get("timezone") or "UTC"),
            workload_rpm=_int(rate.get("requests_per_minute")),
            workload_tpm=_int(rate.get("tokens_per_minute")),
            route_rpm=_int(route_rate.get("requests_per_minute")),
            route_tpm=_int(route_rate.get("tokens_per_minute")),
        )
        ask = Ask(decision_id, workload, model if route else "", cost, tokens, limits, self.ttl_s)
        record = tuple((policy.get("audit") or {}).get("record") or DEFAULT_RECORD)
        return Metered(None, record, ask.route, cost, tokens, ask)

    def cached_state(self, m: Metered) -> dict[str, Any] | None:
        """``input.state`` from this PDP's last view, or None when there is no fresh one
        (or the optimistic path is off)."""
        if self.cache is None:
            return None
        if m.ask is None:
            return {}  # nothing to meter: OPA needs no state
        cached = self.cache.get(m.ask.workload, m.ask.route)
        return None if cached is None else _state(cached, m.ask.limits)

    def commit(self, m: Metered, decision_id: str, fields: dict[str, Any]) -> bool:
        """An allow decided on cached state: reserve (the ledger checks every limit again)
        and append its audit row in one durable batch. False: the ledger refused, and
        nothing was written."""
        assert m.ask is not None and self.cache is not None
        done = self.ledger.commit(m.ask, self._entry(m, decision_id, fields, True))
        self.cache.put(m.ask, done.admission, done.admission.reserved)
        if self._backlog:
            self._flush_backlog()
        return done.admission.reserved

    def state(self, m: Metered) -> dict[str, Any]:
        """``input.state``: spend and rates before this decision."""
        return {} if m.admission is None or m.ask is None else _state(m.admission, m.ask.limits)

    def _entry(self, m: Metered | None, decision_id: str, fields: dict[str, Any],
               allow: bool) -> AuditEntry:
        ts = datetime.now(UTC).isoformat(timespec="microseconds")
        body = {"ts": ts, "decision_id": decision_id, "workload": fields["workload"],
                "outcome": "allow" if allow else "deny", "revision": fields.get("revision", "")}
        for item in (m.record if m is not None else DEFAULT_RECORD):
            if item == "identity":
                body["identity"] = {"spiffe_id": fields["workload"]}
            elif item == "cost" and m is not None:
                body["cost"] = {"estimate_usd": usd(m.cost_micro), "estimate_tokens": m.tokens}
            elif item in fields:
                body[item] = fields[item]
        if fields.get("lease_accessor"):
            body["lease_accessor"] = fields["lease_accessor"]
        return AuditEntry(ts, decision_id, fields["workload"], body["outcome"], canonical(body))

    def finish(self, m: Metered, decision_id: str, fields: dict[str, Any], allow: bool) -> None:
        """Release a denied reservation and chain the audit row; durable on return."""
        entry = self._entry(m, decision_id, fields, allow)
        released = not allow and m.admission is not None and m.admission.reserved
        self.ledger.finish(entry, release=released)
        if released and self.cache is not None and m.ask is not None and m.admission is not None:
            self.cache.put(m.ask, m.admission, False)
        if self._backlog:
            self._flush_backlog()

    def audit(self, decision_id: str, fields: dict[str, Any]) -> None:
        """A deny that metered nothing (refused before the policy was asked): its row."""
        self.finish(Metered(None, DEFAULT_RECORD, "", 0, 0), decision_id, fields, False)

    def defer(self, m: Metered | None, decision_id: str, fields: dict[str, Any]) -> None:
        """A decision answered ``ledger_unavailable``: audit it (and release what it may have
        reserved) after the next successful write. In memory and bounded: best effort."""
        reserved = m is not None and m.admission is not None and m.admission.reserved
        with self._backlog_lock:
            self._backlog.append((self._entry(m, decision_id, fields, False), reserved))

    def _flush_backlog(self) -> None:
        while True:
            with self._backlog_lock:
                if not self._backlog:
                    return
                entry, release = self._backlog.popleft()
            try:
                self.ledger.finish(entry, release=release)  # idempotent per decision id
            except LedgerError:
                with self._backlog_lock:
                    self._backlog.appendleft((entry, release))
                return

    def record_refusal(self, caller: str, asserted: str, code: str, message: str) -> None:
        """An identity refusal (no decision was made) as an audit row of its own."""
        decision_id = uuid.uuid4().hex
        workload = asserted or caller or "unknown"
        ts = datetime.now(UTC).isoformat(timespec="microseconds")
        body = {"ts": ts, "decision_id": decision_id, "workload": workload, "outcome": "deny",
                "event": "identity_refused", "caller": caller, "asserted": asserted,
                "reasons": [{"code": code, "message": message}]}
        self.ledger.finish(AuditEntry(ts, decision_id, workload, "deny", canonical(body)),
                           release=False)

    def settle(self, decision_id: str, tokens: int, cost_usd: float, owner: str = "") -> Settlement:
        return self.ledger.settle(decision_id, tokens, usd_to_micro(cost_usd), owner)


def _state(a: Admission, limits: Limits) -> dict[str, Any]:
    """``input.state`` from a ledger view, against the limits the ledger enforces."""
    windows = {}
    for name, w, limit in (("daily", a.daily, limits.daily_micro),
                           ("monthly", a.monthly, limits.monthly_micro)):
        windows[name] = {
            "window": w.key,
            "spent_usd": usd(w.spent_micro),
            "reserved_usd": usd(w.reserved_micro),
            "limit_usd": usd(limit) if limit is not None else None,
            "remaining_usd": usd(limit - w.spent_micro - w.reserved_micro)
            if limit is not None else None,
            "resets_in_s": round(w.resets_in_s, 3),
        }
    return {
        "budget": windows,
        "rate": {
            "requests_last_minute": a.workload_rate.requests,
            "tokens_last_minute": a.workload_rate.tokens,
            "retry_after_s": round(a.workload_rate.retry_after_s, 3),
            "route": {
                "requests_last_minute": a.route_rate.requests,
                "tokens_last_minute": a.route_rate.tokens,
                "retry_after_s": round(a.route_rate.retry_after_s, 3),
            },
        },
        "reserved": a.reserved,
    }
