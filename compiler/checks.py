"""Semantic checks over a whole policy set, each a small generator.

Schema validation sees one document at a time; these rules see all of them
(references between kinds, uniqueness) and the parts JSON Schema cannot
express (SPIFFE ID syntax).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from compiler import language_checks, route_checks, spiffe, toolcredential
from compiler.errors import Diagnostic, did_you_mean
from compiler.model import PolicySet
from compiler.source import Document
from compiler.unique import repeats

Check = Callable[[PolicySet], Iterator[Diagnostic]]


def _first(doc: Document) -> str:
    return f"{doc.file}:{doc.at(('metadata', 'name'))[0]}"


def duplicate_names(ps: PolicySet) -> Iterator[Diagnostic]:
    """Names are unique per kind: AgentPolicy, ModelRoute, Tool, ToolCredential. An
    enforced and a shadow AgentPolicy may share one (the next version of a policy)."""
    kinds = (("AgentPolicy", ps.policies), ("ModelRoute", ps.routes), ("Tool", ps.tools),
             ("ToolCredential", ps.credentials))
    for kind, items in kinds:
        for item, first in repeats(items, lambda i: (i.name, getattr(i, "rollout", ""))):
            yield item.doc.error(
                ("metadata", "name"),
                f"duplicate {kind} name {item.name!r} (first defined at {_first(first.doc)})",
            )


def workload_ids(ps: PolicySet) -> Iterator[Diagnostic]:
    for p in ps.policies:
        try:
            spiffe.parse(p.workload)
        except spiffe.InvalidSpiffeID as exc:
            yield p.doc.error(("spec", "identity", "workload"), f"invalid workload: {exc}")


def duplicate_workloads(ps: PolicySet) -> Iterator[Diagnostic]:
    """A workload has at most one enforced and at most one shadow policy."""
    seen: dict[tuple[str, str], str] = {}
    for p in ps.policies:
        key = (p.workload, p.rollout)
        if key in seen and seen[key] != p.name:
            where = ("spec", "rollout", "mode") if p.shadow else ("spec", "identity", "workload")
            kind = "shadow policy" if p.shadow else "policy"
            yield p.doc.error(
                where,
                f"workload {p.workload} is already claimed by {'shadow ' if p.shadow else ''}"
                f"AgentPolicy {seen[key]!r} (one {kind} per workload)",
            )
        seen.setdefault(key, p.name)


def model_references(ps: PolicySet) -> Iterator[Diagnostic]:
    routes = {r.name for r in ps.routes} | {name for kind, name in ps.incomplete if kind == "ModelRoute"}
    for p in ps.policies:
        for i, model in enumerate(p.models):
            if model not in routes:
                yield p.doc.error(
                    ("spec", "models", "allow", i),
                    f"model {model!r} is not defined by any ModelRoute{did_you_mean(model, routes)}",
                )


def tool_grants(ps: PolicySet) -> Iterator[Diagnostic]:
    for p in ps.policies:
        first_index: dict[str, int] = {}
        for grant in p.tools:
            path = ("spec", "tools", grant.index)
            if grant.resource in first_index:
                yield p.doc.error(
                    (*path, "resource"),
                    f"tool resource {grant.resource!r} is already granted by"
                    f" {p.doc.written(('spec', 'tools', first_index[grant.resource]))};"
                    " merge the two entries",
                )
            first_index.setdefault(grant.resource, grant.index)
            for j, action in enumerate(grant.deny):
                if action in grant.actions:
                    yield p.doc.error(
                        (*path, "deny", j),
                        f"action {action!r} on {grant.resource!r} is both allowed and denied",
                    )


CHECKS: tuple[Check, ...] = (
    duplicate_names,
    workload_ids,
    duplicate_workloads,
    model_references,
    tool_grants,
    *toolcredential.CHECKS,
    *language_checks.CHECKS,
    *route_checks.CHECKS,
)


def run(ps: PolicySet) -> list[Diagnostic]:
    return [d for check in CHECKS for d in check(ps)]
