"""Policy set -> the data document the Rego library in ``rego/`` evaluates.

Policies are indexed by workload and tool grants by resource, so a decision
is a handful of map look-ups whatever the number of policies loaded.
"""

from __future__ import annotations

from typing import Any

from compiler import toolcredential
from compiler.model import AgentPolicy, ModelRoute, PolicySet


def _policy(p: AgentPolicy) -> dict[str, Any]:
    tools = {
        g.resource: {
            "rule": g.rule,
            "actions": dict.fromkeys(sorted(g.actions), True),
            "deny": {a: f"{g.rule}.deny" for a in sorted(g.deny)},
        }
        for g in p.tools
    }
    out: dict[str, Any] = {
        "name": p.name,
        "binding": dict(sorted(p.binding.items())),
        "models": dict.fromkeys(sorted(p.models), True),
        "tools": tools,
        "audit": {"record": sorted(p.audit_record)},
    }
    if p.daily_usd is not None:
        out["budget"] = {"daily_usd": p.daily_usd}
    return out


def _route(r: ModelRoute) -> dict[str, Any]:
    return {
        "alias": r.name,
        "allow_fallbacks": r.allow_fallbacks,
        "targets": [
            {
                "provider": t.provider,
                "model": t.model,
                "region": t.region,
                "input_price_per_mtok": t.input_price_per_mtok,
                "output_price_per_mtok": t.output_price_per_mtok,
            }
            for t in r.targets
        ],
    }


def generate(ps: PolicySet) -> dict[str, Any]:
    """The ``data.aam.compiled`` document, without its revision."""
    return {
        "policies": {p.workload: _policy(p) for p in sorted(ps.policies, key=lambda p: p.workload)},
        "routes": {r.name: _route(r) for r in sorted(ps.routes, key=lambda r: r.name)},
        "credentials": toolcredential.generate(ps),
    }
