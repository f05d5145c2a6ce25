"""The decision's model route (Rego's ``route`` object) as the proto ``ModelRoute``.

Rego chooses the chain, its order and its limits (rego/aam/routes.rego);
this module only translates. Excluded targets describe the route's policy,
so they go out only with an explanation, for tooling, not to every agent.
"""

from __future__ import annotations

from typing import Any

from aam.v1 import pdp_pb2


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _target(msg: pdp_pb2.RouteTarget, t: dict[str, Any]) -> None:
    msg.provider = str(t.get("provider", ""))
    msg.model = str(t.get("model", ""))
    msg.region = str(t.get("region", ""))
    msg.input_price_per_mtok = _num(t.get("input_price_per_mtok"))
    msg.output_price_per_mtok = _num(t.get("output_price_per_mtok"))
    msg.context_window = int(_num(t.get("context_window")))
    msg.data_retention = t.get("data_retention") is True
    msg.estimated_cost_usd = _num(t.get("estimated_cost_usd"))


def fill(msg: pdp_pb2.ModelRoute, route: dict[str, Any], explain: bool) -> None:
    msg.alias = str(route.get("alias", ""))
    msg.allow_fallbacks = route.get("allow_fallbacks") is True
    msg.sort = str(route.get("sort", ""))
    for t in route.get("targets") or ():
        if isinstance(t, dict):
            _target(msg.targets.add(), t)
    limits = route.get("limits")
    if isinstance(limits, dict):
        rate = limits.get("rate") if isinstance(limits.get("rate"), dict) else {}
        msg.limits.requests_per_minute = int(_num(rate.get("requests_per_minute")))
        msg.limits.tokens_per_minute = int(_num(rate.get("tokens_per_minute")))
        msg.limits.reserve_usd = _num(limits.get("reserve_usd"))
        if isinstance(limits.get("budget_left_usd"), int | float):
            msg.limits.budget_left_usd = float(limits["budget_left_usd"])
    if explain:
        for t in route.get("excluded") or ():
            if isinstance(t, dict):
                x = msg.excluded.add(reason=str(t.get("reason", "")), message=str(t.get("message", "")))
                _target(x.target, t)
