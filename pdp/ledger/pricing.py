"""What a request costs the ledger and how many tokens it counts: one rule for both paths.

A model call costs the price routes.rego gives its chain, read from the allowed
route's ``reserve_usd`` (the decision prices it: no second query); anything else
costs the caller's estimate, never less than the price its tool grant declares.
Amounts are integer micro-dollars (pdp/ledger/types.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pdp.compiled import CompiledPolicy
from pdp.ledger.types import usd_to_micro


def estimate(model: str, tokens: int, cost_usd: float, default_tokens: int,
             floor_usd: float = 0.0) -> tuple[int, int]:
    """(cost in micro-USD, tokens) before OPA has priced anything: the caller's cost,
    never less than ``floor_usd``. A model call without an estimate counts
    ``default_tokens`` (the tokens routes.rego prices)."""
    if model and tokens <= 0:
        tokens = default_tokens
    cost = max(cost_usd, floor_usd)
    return usd_to_micro(cost) if cost > 0 else 0, tokens


def tool_price(policy: CompiledPolicy, tool: str, model: str) -> float:
    """The price a tool call's grant declares (0 for a model call or an ungranted tool)."""
    grant = policy.tools.get(tool) if tool and not model else None
    return grant.price_usd if grant is not None else 0.0


def route_price(route: Mapping[str, Any] | None) -> float | None:
    """The price routes.rego put on an allowed route's chain (``route.limits.reserve_usd``
    of OPA's decision), None when it gave none."""
    limits = (route or {}).get("limits")
    price = limits.get("reserve_usd") if isinstance(limits, dict) else None
    if isinstance(price, bool) or not isinstance(price, int | float):
        return None
    return float(price)
