"""Semantic checks of the v1 policy language: tools, constraints, conditions, budgets.

Each rule is a small generator over the whole policy set, like those in
``checks.py``; they cover what JSON Schema cannot say: references to ``Tool``
documents, parameter paths against a tool's input schema, regular
expressions, times and time zones, and amounts that are finite and ordered.

``ToolCredential`` documents are checked by the broker's own checks; the one
cross-kind rule here is that a credential scope names actions its ``Tool``
declares (when a ``Tool`` declares the resource).
"""

from __future__ import annotations

import functools
import itertools
import math
import re
import zoneinfo
from collections.abc import Iterator
from typing import Any

import jsonschema

from compiler.errors import Diagnostic, did_you_mean
from compiler.model import AgentPolicy, Constraint, PolicySet, Tool, ToolGrant
from compiler.unique import repeats

_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$|^24:00$")
# Constructs Python's re accepts but RE2 (OPA's regex engine) refuses.
_NOT_RE2 = re.compile(r"\(\?[=!]|\(\?<[=!]|\\[1-9]|\(\?P=|\(\?>|[*+?}][+]")
_NUMERIC = ("min", "max")


def _tools_by_resource(ps: PolicySet) -> dict[str, Tool]:
    out: dict[str, Tool] = {}
    for t in ps.tools:
        out.setdefault(t.resource, t)
    return out


def duplicate_tools(ps: PolicySet) -> Iterator[Diagnostic]:
    """One Tool per resource (unique names: checks.duplicate_names)."""
    for t, first in repeats(ps.tools, lambda t: t.resource):
        yield t.doc.error(("spec", "resource"), f"tool resource {t.resource!r} is already declared"
                          f" by Tool {first.name!r}")


def tool_input_schemas(ps: PolicySet) -> Iterator[Diagnostic]:
    for t in ps.tools:
        if t.input_schema is None:
            continue
        try:
            jsonschema.Draft202012Validator.check_schema(t.input_schema)
        except jsonschema.SchemaError as exc:
            path = ("spec", "inputSchema", *exc.absolute_path)
            yield t.doc.error(path, f"inputSchema is not a valid JSON Schema: {exc.message}")


def tool_references(ps: PolicySet) -> Iterator[Diagnostic]:
    """Grants name declared actions; constraints need a Tool that declares the parameters."""
    tools = _tools_by_resource(ps)
    for p in ps.policies:
        for g in p.tools:
            if ("Tool", g.resource) in ps.incomplete:
                continue  # its Tool has schema errors: judged once they are fixed
            tool = tools.get(g.resource)
            base = ("spec", "tools", g.index)
            if tool is None:
                if g.constraints:
                    yield p.doc.error((*base, "resource"),
                                      f"tool resource {g.resource!r} has constraints but no Tool declares"
                                      " it (add a Tool document with its inputSchema)"
                                      f"{did_you_mean(g.resource, tools)}")
                continue
            for field in ("actions", "deny"):
                for j, action in enumerate(getattr(g, field)):
                    if action not in tool.actions:
                        yield p.doc.error((*base, field, j), _not_an_action(action, tool))
            for c in g.constraints:
                yield from _constraint_param(p, g, c, tool)


def _not_an_action(action: str, tool: Tool) -> str:
    return (f"action {action!r} is not an action of Tool {tool.name!r}"
            f" (actions: {', '.join(tool.actions)}){did_you_mean(action, tool.actions)}")


def _siblings(schema: Any, path: tuple[str, ...]) -> list[str]:
    """The parameter names declared beside the last part of ``path``, for a suggestion."""
    parent = _declared(schema, path[:-1]) if len(path) > 1 else schema
    props = parent.get("properties") if isinstance(parent, dict) else None
    if not isinstance(props, dict):
        return []
    prefix = ".".join(path[:-1])
    return [f"{prefix}.{k}" if prefix else str(k) for k in props]


def _declared(schema: Any, path: tuple[str, ...]) -> Any:
    """The sub-schema of a dotted parameter path, or None when not declared."""
    node = schema
    for part in path:
        if not isinstance(node, dict):
            return None
        props = node.get("properties")
        if not isinstance(props, dict) or part not in props:
            return None
        node = props[part]
    return node if isinstance(node, dict) else {}


def _types(schema: dict[str, Any]) -> set[str]:
    t = schema.get("type")
    if isinstance(t, str):
        return {t}
    # A hostile inputSchema may hold anything in a type list (found by the fuzz test).
    return {x for x in t if isinstance(x, str)} if isinstance(t, list) else set()


def _constraint_param(p: AgentPolicy, g: ToolGrant, c: Constraint, tool: Tool) -> Iterator[Diagnostic]:
    at = ("spec", "tools", g.index, "constraints", c.index)
    declared = _declared(tool.input_schema or {}, c.path)
    if declared is None:
        yield p.doc.error((*at, "param"), f"parameter {c.param!r} is not declared by the inputSchema of"
                          f" Tool {tool.name!r}"
                          f"{did_you_mean(c.param, _siblings(tool.input_schema or {}, c.path))}")
        return
    types = _types(declared)
    if types and any(k in c.rules for k in _NUMERIC) and not types & {"number", "integer"}:
        yield p.doc.error((*at, "param"), f"min/max on parameter {c.param!r}, which Tool {tool.name!r}"
                          f" declares as {'/'.join(sorted(types))}, not a number")
    if types and "pattern" in c.rules and "string" not in types:
        yield p.doc.error((*at, "pattern"), f"pattern on parameter {c.param!r}, which Tool"
                          f" {tool.name!r} declares as {'/'.join(sorted(types))}, not a string")


def constraint_rules(ps: PolicySet) -> Iterator[Diagnostic]:
    for p in ps.policies:
        for g in p.tools:
            for c in g.constraints:
                at = ("spec", "tools", g.index, "constraints", c.index)
                if not c.rules and not p.doc.is_damaged(at):
                    yield p.doc.error(at, f"constraint on {c.param!r} sets no rule (use required, forbidden,"
                                      " min, max, allowed_values, forbidden_values, pattern or max_length)")
                if c.rules.get("required") and c.rules.get("forbidden"):
                    yield p.doc.error((*at, "forbidden"),
                                      f"parameter {c.param!r} cannot be both required and forbidden")
                lo, hi = c.rules.get("min"), c.rules.get("max")
                for key in _NUMERIC:
                    v = c.rules.get(key)
                    if isinstance(v, float) and not math.isfinite(v):
                        yield p.doc.error((*at, key), f"{key} must be a finite number, got {v}")
                if lo is not None and hi is not None and lo > hi:
                    yield p.doc.error((*at, "max"), f"max {hi} is smaller than min {lo}")
                if "pattern" in c.rules:
                    yield from _pattern(p, (*at, "pattern"), c.rules["pattern"])


def _pattern(p: AgentPolicy, at: tuple[Any, ...], pattern: str) -> Iterator[Diagnostic]:
    try:
        re.compile(pattern)
    except re.error as exc:
        yield p.doc.error(at, f"invalid regular expression {pattern!r}: {exc.msg}")
        return
    if _NOT_RE2.search(pattern):
        yield p.doc.error(at, f"regular expression {pattern!r} uses look-around, back-references or"
                          " possessive/atomic groups, which OPA's RE2 engine does not support")


def _timezone(p: AgentPolicy, at: tuple[Any, ...], tz: str) -> Iterator[Diagnostic]:
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        yield p.doc.error(at, f"unknown time zone {tz!r} (use an IANA name such as 'Europe/Berlin')"
                          f"{did_you_mean(tz, _zones())}")


@functools.cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def conditions(ps: PolicySet) -> Iterator[Diagnostic]:
    for p in ps.policies:
        for g in p.tools:
            tw = g.conditions.time_window if g.conditions else None
            if tw is None:
                continue
            at = ("spec", "tools", g.index, "conditions", "time_window")
            for key in ("start", "end"):
                value = getattr(tw, key)
                if not _HHMM.match(value):
                    yield p.doc.error((*at, key),
                                      f"malformed time {value!r} (expected HH:MM, 00:00 to 24:00)")
            if tw.start == tw.end and _HHMM.match(tw.start):
                yield p.doc.error((*at, "end"), f"empty time window: start and end are both {tw.start}")
            yield from _timezone(p, (*at, "timezone"), tw.timezone)


def budgets(ps: PolicySet) -> Iterator[Diagnostic]:
    """Amounts must be finite, and a smaller window cannot allow more than a larger one."""
    order = ("per_request_usd", "daily_usd", "monthly_usd")
    for p in ps.policies:
        at = ("spec", "budget")
        amounts = {}
        for key in order:
            v = p.budget.get(key)
            if v is None:
                continue
            if isinstance(v, float) and not math.isfinite(v):
                yield p.doc.error((*at, key), f"malformed amount {key}: {v} (must be a finite number)")
                continue
            amounts[key] = v
        for small, large in itertools.combinations(order, 2):
            if small in amounts and large in amounts and amounts[small] > amounts[large]:
                yield p.doc.error((*at, small), f"{small} {amounts[small]} exceeds {large} {amounts[large]}")
        if "timezone" in p.budget:
            yield from _timezone(p, (*at, "timezone"), p.budget["timezone"])


def credential_actions(ps: PolicySet) -> Iterator[Diagnostic]:
    tools = _tools_by_resource(ps)
    for c in ps.credentials:
        tool = tools.get(c.resource)
        if tool is None or ("Tool", c.resource) in ps.incomplete:
            continue
        for s in c.scopes:
            for i, action in enumerate(s.actions):
                if action not in tool.actions:
                    yield c.doc.error(("spec", "scopes", s.name, "actions", i), _not_an_action(action, tool))


CHECKS = (credential_actions, duplicate_tools, tool_input_schemas, tool_references, constraint_rules,
          conditions, budgets)
