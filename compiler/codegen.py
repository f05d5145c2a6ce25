"""Policy set -> the data document the Rego library in ``rego/`` evaluates.

Policies are indexed by workload and tool grants by resource, so a decision
is a handful of map look-ups whatever the number of policies loaded.
"""

from __future__ import annotations

from typing import Any

from compiler import toolcredential
from compiler.model import (
    DEFAULT_TOOL_PRICE_USD,
    AgentPolicy,
    Conditions,
    Constraint,
    ModelRoute,
    PolicySet,
    RouteTarget,
    ToolGrant,
)
from compiler.source import Document

_WEEKDAYS = {"mon": "Monday", "tue": "Tuesday", "wed": "Wednesday", "thu": "Thursday",
             "fri": "Friday", "sat": "Saturday", "sun": "Sunday"}


def minutes(hhmm: str) -> int:
    """"08:30" -> 510; the checks have already refused malformed times."""
    hours, _, mins = hhmm.partition(":")
    return int(hours) * 60 + int(mins)


def _constraint(g: ToolGrant, c: Constraint) -> dict[str, Any]:
    out: dict[str, Any] = {"rule": f"{g.rule}.constraints[{c.index}]", "param": c.param,
                           "path": list(c.path), **c.rules}
    if "pattern" in c.rules:  # authors write a whole-value pattern; RE2 searches
        out["regex"] = f"^(?:{c.rules['pattern']})$"
    return out


def _conditions(g: ToolGrant, cond: Conditions) -> dict[str, Any]:
    out: dict[str, Any] = {"rule": f"{g.rule}.conditions"}
    tw = cond.time_window
    if tw is not None:
        out["time_window"] = {
            "start": minutes(tw.start), "end": minutes(tw.end), "text": f"{tw.start}-{tw.end}",
            "timezone": tw.timezone,
            "days": {_WEEKDAYS[d]: True for d in sorted(tw.days)} if tw.days else None,
        }
    if cond.environments:
        out["environments"] = dict.fromkeys(sorted(cond.environments), True)
    if cond.context:
        out["context"] = {k: list(v) for k, v in sorted(cond.context.items())}
    if cond.model_region:
        out["model_region"] = sorted(cond.model_region)
    return out


def _tool(g: ToolGrant, prices: dict[str, float]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "rule": g.rule,
        "price_usd": g.price_usd if g.price_usd is not None
        else prices.get(g.resource, DEFAULT_TOOL_PRICE_USD),
        "actions": dict.fromkeys(sorted(g.actions), True),
        "deny": {a: f"{g.rule}.deny" for a in sorted(g.deny)},
    }
    if g.constraints:
        out["constraints"] = [_constraint(g, c) for c in g.constraints]
    if g.conditions is not None:
        out["conditions"] = _conditions(g, g.conditions)
    return out


def _policy(p: AgentPolicy, prices: dict[str, float]) -> dict[str, Any]:
    tools = {g.resource: _tool(g, prices) for g in p.tools}
    out: dict[str, Any] = {
        "name": p.name,
        "binding": dict(sorted(p.binding.items())),
        "models": dict.fromkeys(sorted(p.models), True),
        "tools": tools,
        "audit": {"record": sorted(p.audit_record)},
    }
    if p.budget:
        out["budget"] = {"timezone": "UTC", **p.budget}
    if p.rate:
        out["rate"] = dict(sorted(p.rate.items()))
    if p.model_regions:
        out["model_regions"] = sorted(p.model_regions)
    return out


def _target(t: RouteTarget) -> dict[str, Any]:
    out: dict[str, Any] = {
        "provider": t.provider,
        "model": t.model,
        "region": t.region,
        "input_price_per_mtok": t.input_price_per_mtok,
        "output_price_per_mtok": t.output_price_per_mtok,
        "data_retention": t.data_retention,
    }
    if t.context_window is not None:
        out["context_window"] = t.context_window
    return out


def _route(r: ModelRoute) -> dict[str, Any]:
    out: dict[str, Any] = {
        "alias": r.name,
        "allow_fallbacks": r.allow_fallbacks,
        "sort": r.sort,
        "data_collection": r.data_collection,
        "targets": [_target(t) for t in r.targets],
    }
    if r.rate:
        out["rate"] = dict(sorted(r.rate.items()))
    if r.only or r.ignore:
        out["providers"] = {k: dict.fromkeys(sorted(v), True)
                            for k, v in (("only", r.only), ("ignore", r.ignore)) if v}
    if r.regions:
        out["regions"] = sorted(r.regions)
    if r.max_price:
        out["max_price"] = dict(sorted(r.max_price.items()))
    return out


def _pos(doc: Document, path: tuple[str | int, ...]) -> str:
    line, col = doc.at(path, key=True)
    return f"{line}:{col}"


def _policy_source(p: AgentPolicy) -> dict[str, Any]:
    """Where each rule of a policy is written, keyed by the rule names the decision
    and its reasons use (``spec.tools[0].deny``), for ``aam authorize --explain``.

    Kept to the rules an explanation names: at 10,000 policies the map is a third
    of the bundle's data, and OPA holds all of it in memory."""
    d = p.doc
    at = {"spec.identity.workload": _pos(d, ("spec", "identity", "workload"))}
    for path in (("spec", "models", "allow"), ("spec", "budget"), ("spec", "rate")):
        if path in d.key_positions:
            at[".".join(path)] = _pos(d, path)
    for g in p.tools:
        base = ("spec", "tools", g.index)
        at[g.rule] = _pos(d, base)
        for part in ("actions", "deny", "conditions"):
            if getattr(g, part):
                at[f"{g.rule}.{part}"] = _pos(d, (*base, part))
        at.update({f"{g.rule}.constraints[{c.index}]": _pos(d, (*base, "constraints", c.index))
                   for c in g.constraints})
    return {"file": d.source_name, "at": dict(sorted(at.items()))}


def _route_source(r: ModelRoute) -> dict[str, Any]:
    at = {"metadata.name": _pos(r.doc, ("metadata", "name"))}
    at.update({f"spec.targets[{i}]": _pos(r.doc, ("spec", "targets", i)) for i in range(len(r.targets))})
    return {"file": r.doc.source_name, "at": at}


def generate(ps: PolicySet) -> dict[str, Any]:
    """The ``data.aam.compiled`` document, without its revision."""
    prices = {t.resource: t.price_usd for t in ps.tools if t.price_usd is not None}
    ordered = sorted(ps.policies, key=lambda p: p.workload)
    routes = sorted(ps.routes, key=lambda r: r.name)
    return {
        "policies": {p.workload: _policy(p, prices) for p in ordered if not p.shadow},
        # Evaluated beside the enforced ones, never deciding (rego/aam/shadow.rego).
        "shadow_policies": {p.workload: _policy(p, prices) for p in ordered if p.shadow},
        "routes": {r.name: _route(r) for r in routes},
        "credentials": toolcredential.generate(ps),
        # The source map: file (relative to the directory compiled) and line:col of
        # each rule, read only by explanations (rego/aam/explain.rego).
        "sources": {
            "policies": {p.workload: _policy_source(p) for p in ordered if not p.shadow},
            "routes": {r.name: _route_source(r) for r in routes},
        },
    }
