"""The ToolCredential kind: model, semantic checks and compiled form.

A ToolCredential tells the broker how to get the minimum credential for one
tool resource, per action scope (``read`` -> a SELECT-only database role),
and how the gateway injects it. Kept in one module so the kind can evolve
without touching the other kinds' code.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from compiler.errors import Diagnostic
from compiler.source import Document
from compiler.unique import repeats

if TYPE_CHECKING:
    from compiler.model import PolicySet

DEFAULT_MOUNT = {"kv": "secret", "database": "database", "token": "token"}
DEFAULT_TTL_S = 300
_UNIT_S = {"s": 1, "m": 60, "h": 3600}
MAX_TTL_S = 86400
# Per engine: the scope fields it needs, and the ones that make no sense for it.
_REQUIRED = {"kv": ("path",), "database": ("role",), "token": ("policies",)}
_ALLOWED = {"kv": {"path", "key"}, "database": {"role"}, "token": {"policies", "role", "num_uses"}}


def ttl_seconds(raw: int | str | None) -> int:
    if raw is None:
        return DEFAULT_TTL_S
    if isinstance(raw, int):
        return raw
    return int(raw[:-1]) * _UNIT_S[raw[-1]]


@dataclass(frozen=True)
class CredentialScope:
    name: str
    actions: tuple[str, ...]
    fields: dict[str, Any]  # engine-specific: path, key, role, policies, num_uses


@dataclass(frozen=True)
class ToolCredential:
    name: str
    resource: str
    engine: str
    mount: str
    ttl_s: int
    header: str
    scheme: str
    delivery: str
    scopes: tuple[CredentialScope, ...]
    doc: Document

    @classmethod
    def from_doc(cls, doc: Document) -> ToolCredential:
        spec: dict[str, Any] = doc.value["spec"]
        inject = spec["inject"]
        scopes = tuple(
            CredentialScope(name, tuple(s["actions"]), {k: v for k, v in s.items() if k != "actions"})
            for name, s in spec["scopes"].items()
        )
        return cls(
            name=doc.value["metadata"]["name"],
            resource=spec["resource"],
            engine=spec["engine"],
            mount=spec.get("mount", DEFAULT_MOUNT[spec["engine"]]),
            ttl_s=ttl_seconds(spec.get("ttl")),
            header=inject["header"],
            scheme=inject.get("scheme", ""),
            delivery=inject.get("delivery", "value"),
            scopes=scopes,
            doc=doc,
        )


# --- semantic checks -----------------------------------------------------------

def unique(ps: PolicySet) -> Iterator[Diagnostic]:
    """One ToolCredential per resource: the broker must not guess (unique names:
    checks.duplicate_names)."""
    for c, first in repeats(ps.credentials, lambda c: c.resource):
        yield c.doc.error(("spec", "resource"), f"tool resource {c.resource!r} already has a"
                          f" ToolCredential ({first.name!r}); merge the two")


def engine_fields(ps: PolicySet) -> Iterator[Diagnostic]:
    """Each scope carries exactly what its engine needs; wrapping is a KV delivery."""
    for c in ps.credentials:
        if c.doc.is_damaged():
            continue  # a field a schema error cut out would be reported missing
        if c.delivery == "wrapped" and c.engine != "kv":
            yield c.doc.error(("spec", "inject", "delivery"),
                              f"delivery 'wrapped' is only for engine 'kv', not {c.engine!r}")
        if c.delivery == "wrapped" and c.scheme:
            yield c.doc.error(("spec", "inject", "scheme"),
                              "a wrapped delivery injects the wrapping token as is; drop the scheme")
        for s in c.scopes:
            path = ("spec", "scopes", s.name)
            for req in _REQUIRED[c.engine]:
                if req not in s.fields:
                    yield c.doc.error(path, f"scope {s.name!r}: engine {c.engine!r} needs {req!r}",
                                      key=True)
            for extra in sorted(set(s.fields) - _ALLOWED[c.engine]):
                yield c.doc.error((*path, extra), f"scope {s.name!r}: {extra!r} has no meaning"
                                  f" for engine {c.engine!r}", key=True)
            if c.engine == "kv" and c.delivery == "value" and "key" not in s.fields:
                yield c.doc.error(path, f"scope {s.name!r}: a kv value delivery needs 'key'"
                                  " (the field of the secret to inject)", key=True)
        if c.ttl_s > MAX_TTL_S:
            yield c.doc.error(("spec", "ttl"), f"ttl {c.ttl_s}s is longer than {MAX_TTL_S}s;"
                              " brokered credentials are short-lived")


def scope_actions(ps: PolicySet) -> Iterator[Diagnostic]:
    """An action belongs to one scope: two credentials for one action would be a guess.

    Scopes are deliberately not checked against the AgentPolicy grants: revoking a
    grant (or a policy) must never fail to compile because a ToolCredential still
    names the action; an ungranted action is denied by OPA and never reaches the broker.
    """
    for c in ps.credentials:
        owner: dict[str, str] = {}
        for s in c.scopes:
            for i, action in enumerate(s.actions):
                if action in owner:
                    yield c.doc.error(("spec", "scopes", s.name, "actions", i),
                                      f"action {action!r} is already in scope {owner[action]!r};"
                                      " an action has one credential scope")
                owner.setdefault(action, s.name)


CHECKS = (unique, engine_fields, scope_actions)


# --- compiled form (data.aam.compiled.credentials[resource]) -------------------

def compiled(c: ToolCredential) -> dict[str, Any]:
    scopes = {
        s.name: {"actions": dict.fromkeys(sorted(s.actions), True), **dict(sorted(s.fields.items()))}
        for s in sorted(c.scopes, key=lambda s: s.name)
    }
    return {
        "name": c.name,
        "resource": c.resource,
        "engine": c.engine,
        "mount": c.mount,
        "ttl_s": c.ttl_s,
        "inject": {"header": c.header, "scheme": c.scheme, "delivery": c.delivery},
        "scopes": scopes,
        "actions": {a: s.name for s in c.scopes for a in sorted(s.actions)},
    }


def generate(ps: PolicySet) -> dict[str, Any]:
    return {c.resource: compiled(c) for c in sorted(ps.credentials, key=lambda c: c.resource)}
