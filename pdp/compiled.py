"""The compiled data of a bundle, typed once per revision, and which revision a step reads.

``data.aam.compiled`` (compiler/codegen.py) is parsed into frozen dataclasses when
a bundle is published, never per request; every Python reader (ledger limits and
tool prices, the broker's grants and credentials, the MCP tools a workload sees)
goes through :class:`Compiled`, so a type checker finds them all. Only this module
reads the document's keys.

Python's view and OPA's bundle change at different moments: the PDP publishes,
OPA pulls later. :class:`Revisions` keeps the last few published views and picks
one so that a decision never mixes two revisions. The rule:

- a step after OPA's answer reads the view of the revision that answer names
  (``Decision.revision``; :meth:`Revisions.decided`), or, when that revision is
  not one kept here, the view the decision's earlier steps read;
- a step before OPA's answer (limits and prices for the ledger) reads the
  *active* view: the revision of the newest decision OPA has answered with,
  or the newest published until OPA has answered once. ``active`` only moves
  forward in publish order, so a straggling answer on an older revision does
  not move it back.

OPA may activate a new bundle between those two steps. The decision then starts
again on the new view: nothing is reserved or written before OPA's answer, so
its limits, price and audit record all come from the revision OPA decided with
(see pdp/engine.py).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Published revisions whose views are kept for decisions still on them. OPA pulls
# within a poll or two, so it is rarely more than one behind; the active one is
# kept whatever its age.
KEEP = 4


@dataclass(frozen=True)
class Budget:
    """``policies[w].budget`` as the ledger enforces it (USD; None: no limit)."""

    daily_usd: float | None = None
    monthly_usd: float | None = None
    timezone: str = "UTC"


@dataclass(frozen=True)
class Rate:
    """Requests and tokens per minute (None: no limit)."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None


@dataclass(frozen=True)
class ToolGrant:
    """``policies[w].tools[resource]``: granted and denied actions, and the declared price."""

    resource: str
    actions: frozenset[str]
    deny: frozenset[str]
    price_usd: float = 0.0
    # What an MCP tools/list may show: granted minus denied, computed once here.
    visible: frozenset[str] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "visible", self.actions - self.deny)


@dataclass(frozen=True)
class CompiledPolicy:
    """One workload's compiled AgentPolicy, as Python reads it (OPA reads the rest)."""

    workload: str
    name: str
    models: frozenset[str] = frozenset()
    tools: Mapping[str, ToolGrant] = field(default_factory=dict, hash=False)
    budget: Budget = Budget()
    rate: Rate = Rate()
    record: tuple[str, ...] = ()  # what its audit rows record; () when the policy does not say

    @classmethod
    def from_data(cls, workload: str, doc: Mapping[str, Any]) -> CompiledPolicy:
        tools = {r: ToolGrant(r, frozenset(t.get("actions") or {}), frozenset(t.get("deny") or {}),
                              _number(t.get("price_usd")) or 0.0)
                 for r, t in (doc.get("tools") or {}).items() if isinstance(t, Mapping)}
        budget = doc.get("budget") or {}
        return cls(
            workload=workload, name=str(doc.get("name", "")),
            models=frozenset(doc.get("models") or {}), tools=tools,
            budget=Budget(_number(budget.get("daily_usd")), _number(budget.get("monthly_usd")),
                          str(budget.get("timezone") or "UTC")),
            rate=_rate(doc.get("rate")),
            record=tuple((doc.get("audit") or {}).get("record") or ()),
        )


@dataclass(frozen=True)
class CompiledRoute:
    """``routes[alias]``: what the ledger needs of a ModelRoute (OPA prices and orders it)."""

    alias: str
    rate: Rate = Rate()


@dataclass(frozen=True)
class Scope:
    """One action scope of a ToolCredential: what the backend issues for these actions."""

    name: str
    actions: frozenset[str]
    path: str = ""
    key: str = ""
    role: str = ""
    policies: tuple[str, ...] = ()
    num_uses: int = 0


@dataclass(frozen=True)
class CredentialSpec:
    """``data.aam.compiled.credentials[resource]``, typed."""

    name: str
    resource: str
    engine: str  # kv | database | token
    mount: str
    ttl_s: int
    header: str
    scheme: str
    delivery: str  # value | wrapped
    scopes: dict[str, Scope] = field(hash=False)
    by_action: dict[str, str] = field(hash=False)

    @classmethod
    def from_compiled(cls, doc: Mapping[str, Any]) -> CredentialSpec:
        scopes = {
            name: Scope(
                name=name, actions=frozenset(s.get("actions", {})), path=s.get("path", ""),
                key=s.get("key", ""), role=s.get("role", ""),
                policies=tuple(s.get("policies", ())), num_uses=int(s.get("num_uses", 0)),
            )
            for name, s in doc["scopes"].items()
        }
        inject = doc["inject"]
        return cls(
            name=doc["name"], resource=doc["resource"], engine=doc["engine"], mount=doc["mount"],
            ttl_s=int(doc["ttl_s"]), header=inject["header"], scheme=inject.get("scheme", ""),
            delivery=inject.get("delivery", "value"), scopes=scopes, by_action=dict(doc["actions"]),
        )

    def scope_for(self, action: str) -> Scope | None:
        name = self.by_action.get(action)
        return self.scopes.get(name) if name else None

    def reusable(self, scope: Scope) -> bool:
        """Single-use deliveries (wrapping tokens, counted-use tokens) are never handed out twice."""
        return self.delivery != "wrapped" and not (self.engine == "token" and scope.num_uses > 0)


@dataclass(frozen=True)
class Compiled:
    """One bundle's ``data.aam.compiled``, typed: policies by workload, routes by alias,
    credentials by tool resource."""

    revision: str = ""
    policies: Mapping[str, CompiledPolicy] = field(default_factory=dict, hash=False)
    routes: Mapping[str, CompiledRoute] = field(default_factory=dict, hash=False)
    credentials: Mapping[str, CredentialSpec] = field(default_factory=dict, hash=False)

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Compiled:
        return cls(
            revision=str(data.get("revision", "")),
            policies={w: CompiledPolicy.from_data(w, p)
                      for w, p in (data.get("policies") or {}).items()},
            routes={a: CompiledRoute(a, _rate(r.get("rate")))
                    for a, r in (data.get("routes") or {}).items()},
            credentials={r: CredentialSpec.from_compiled(c)
                         for r, c in (data.get("credentials") or {}).items()},
        )

    @classmethod
    def from_files(cls, files: Mapping[str, bytes], data_path: str) -> Compiled:
        """From a bundle's files (compiler/bundle.py DATA_PATH names the data file)."""
        return cls.from_data(json.loads(files[data_path]))

    def policy(self, workload: str) -> CompiledPolicy | None:
        return self.policies.get(workload)

    def route(self, alias: str) -> CompiledRoute | None:
        return self.routes.get(alias) if alias else None


@dataclass(frozen=True, eq=False)
class Revision:
    """A published bundle as Python sees it: its revision id and its typed data."""

    id: str
    compiled: Compiled
    seq: int  # publish order: 1 for the first bundle, 0 before any


class Revisions:
    """The views of the last :data:`KEEP` published revisions, and the one OPA decides with.

    Written by the publisher (a reload) and by every decision (:meth:`decided`);
    a decision on the active revision takes no lock.
    """

    def __init__(self, keep: int = KEEP) -> None:
        self.keep = keep
        self._kept: OrderedDict[str, Revision] = OrderedDict()
        self._newest = Revision("", Compiled(), 0)
        self._active: Revision | None = None  # None until OPA has answered with a kept one
        self._lock = threading.Lock()

    def update(self, files: Mapping[str, bytes], data_path: str) -> Revision:
        """Parse a bundle's data (once, here) and publish its view; OPA has not pulled it yet."""
        compiled = Compiled.from_files(files, data_path)
        with self._lock:
            rev = Revision(compiled.revision, compiled, self._newest.seq + 1)
            self._kept.pop(rev.id, None)
            self._kept[rev.id] = rev
            while len(self._kept) > self.keep:
                self._kept.popitem(last=False)
            self._newest = rev
        return rev

    @property
    def newest(self) -> Revision:
        return self._newest

    @property
    def active(self) -> Revision:
        """The view OPA is known to decide with (the newest published until it has answered)."""
        return self._active or self._newest

    def get(self, revision: str) -> Revision | None:
        """The view published as ``revision``, if it is still kept (the active one always is)."""
        active = self._active
        if active is not None and active.id == revision:
            return active
        return self._kept.get(revision)

    def decided(self, revision: str) -> Revision | None:
        """OPA answered a decision on ``revision``: its view (None: not one published here,
        or no bundle at all), which becomes the active one if it is newer."""
        active = self._active
        if active is not None and active.id == revision:
            return active  # the steady state: no lock
        rev = self._kept.get(revision) if revision else None
        if rev is None:
            return None
        with self._lock:
            if self._active is None or rev.seq > self._active.seq:
                self._active = rev
        return rev

    def for_decision(self, revision: str) -> Revision:
        """The view for a step after a decision whose revision is all it knows (the response
        processor reads it from Envoy's metadata): that revision's, else the active one."""
        return self.get(revision) or self.active


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _rate(doc: Any) -> Rate:
    rate = doc if isinstance(doc, Mapping) else {}
    rpm, tpm = rate.get("requests_per_minute"), rate.get("tokens_per_minute")
    return Rate(int(rpm) if isinstance(rpm, int | float) else None,
                int(tpm) if isinstance(tpm, int | float) else None)
