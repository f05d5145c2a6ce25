"""The limits the ledger enforces, this PDP's cached view of their state, and ``input.state``.

:func:`limits_of` reads a compiled policy and route (one revision's view,
pdp/compiled.py). :class:`StateCache` is the optimistic path's hint; the ledger
checks every limit again when it reserves. :func:`state` describes a ledger view
to OPA against the same limits the ledger checks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from pdp.compiled import CompiledPolicy, CompiledRoute
from pdp.ledger.types import Admission, Ask, Limits, usd, usd_to_micro


def limits_of(policy: CompiledPolicy, route: CompiledRoute | None) -> Limits:
    budget, rate = policy.budget, policy.rate
    route_rate = route.rate if route is not None else None
    return Limits(
        daily_micro=_micro(budget.daily_usd),
        monthly_micro=_micro(budget.monthly_usd),
        timezone=budget.timezone,
        workload_rpm=rate.requests_per_minute,
        workload_tpm=rate.tokens_per_minute,
        route_rpm=route_rate.requests_per_minute if route_rate is not None else None,
        route_tpm=route_rate.tokens_per_minute if route_rate is not None else None,
    )


def _micro(value: float | None) -> int | None:
    return usd_to_micro(value) if value is not None else None


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


def state(a: Admission, limits: Limits) -> dict[str, Any]:
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
