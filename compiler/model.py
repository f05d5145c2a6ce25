"""Typed, validated policy documents: one frozen dataclass per kind.

Documents reach these classes only after schema validation, so the
constructors read fields without re-checking their types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from compiler.source import Document
from compiler.toolcredential import ToolCredential

# What one tool call reserves against a budget when neither the grant nor the
# Tool declares a price: small, but never zero, so a spent budget denies.
DEFAULT_TOOL_PRICE_USD = 0.001

CONSTRAINT_RULES = ("required", "forbidden", "min", "max", "allowed_values", "forbidden_values",
                    "pattern", "max_length")


@dataclass(frozen=True)
class Constraint:
    """One rule on a request parameter; ``rules`` holds only the keys the author set."""

    param: str
    rules: dict[str, Any]
    index: int  # position in spec.tools[i].constraints

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(self.param.split("."))


@dataclass(frozen=True)
class TimeWindow:
    start: str
    end: str
    days: tuple[str, ...]
    timezone: str


@dataclass(frozen=True)
class Conditions:
    time_window: TimeWindow | None = None
    environments: tuple[str, ...] = ()
    context: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    model_region: tuple[str, ...] = ()  # globs the conversation's model region must match

    @classmethod
    def from_spec(cls, raw: dict[str, Any] | None) -> Conditions | None:
        if raw is None:
            return None
        tw = raw.get("time_window")
        return cls(
            time_window=TimeWindow(tw["start"], tw["end"], tuple(tw.get("days", ())),
                                   tw.get("timezone", "UTC")) if tw else None,
            environments=tuple(raw.get("environments", ())),
            context={k: tuple(v) for k, v in raw.get("context", {}).items()},
            model_region=tuple(raw.get("model_region", ())),
        )


@dataclass(frozen=True)
class ToolGrant:
    resource: str
    actions: tuple[str, ...]
    deny: tuple[str, ...]
    index: int  # position in spec.tools, so messages can name the rule
    constraints: tuple[Constraint, ...] = ()
    conditions: Conditions | None = None
    price_usd: float | None = None  # None: the Tool's, else DEFAULT_TOOL_PRICE_USD

    @property
    def rule(self) -> str:
        return f"spec.tools[{self.index}]"


@dataclass(frozen=True)
class AgentPolicy:
    name: str
    workload: str
    binding: dict[str, str]  # owner, team, environment, deployment when given
    models: tuple[str, ...]
    daily_usd: float | None
    tools: tuple[ToolGrant, ...]
    audit_record: tuple[str, ...]
    doc: Document
    budget: dict[str, Any] = field(default_factory=dict)  # spec.budget as written
    rate: dict[str, int] = field(default_factory=dict)  # spec.rate as written
    model_regions: tuple[str, ...] = ()  # spec.models.regions: data residency
    rollout: str = "enforce"  # spec.rollout.mode: "enforce" decides, "shadow" is only compared

    @property
    def shadow(self) -> bool:
        return self.rollout == "shadow"

    @classmethod
    def from_doc(cls, doc: Document) -> AgentPolicy:
        spec: dict[str, Any] = doc.value["spec"]
        identity = spec["identity"]
        tools = tuple(
            ToolGrant(
                resource=t["resource"],
                actions=tuple(t.get("actions", ())),
                deny=tuple(t.get("deny", ())),
                index=i,
                constraints=tuple(
                    Constraint(c["param"], {k: c[k] for k in CONSTRAINT_RULES if k in c}, j)
                    for j, c in enumerate(t.get("constraints", ()))
                ),
                conditions=Conditions.from_spec(t.get("conditions")),
                price_usd=float(t["price_usd"]) if "price_usd" in t else None,
            )
            for i, t in enumerate(spec.get("tools", ()))
        )
        return cls(
            name=doc.value["metadata"]["name"],
            workload=identity["workload"],
            binding={k: identity[k] for k in ("owner", "team", "environment", "deployment")
                     if k in identity},
            models=tuple(spec.get("models", {}).get("allow", ())),
            daily_usd=spec.get("budget", {}).get("daily_usd"),
            tools=tools,
            audit_record=tuple(spec.get("audit", {}).get("record", ())),
            doc=doc,
            budget=dict(spec.get("budget", {})),
            rate=dict(spec.get("rate", {})),
            model_regions=tuple(spec.get("models", {}).get("regions", ())),
            rollout=spec.get("rollout", {}).get("mode", "enforce"),
        )


@dataclass(frozen=True)
class RouteTarget:
    provider: str
    model: str
    region: str
    input_price_per_mtok: float
    output_price_per_mtok: float
    context_window: int | None = None
    data_retention: bool = False


@dataclass(frozen=True)
class ModelRoute:
    """A model alias: targets in order plus the rules that narrow them per request."""

    name: str
    targets: tuple[RouteTarget, ...]
    allow_fallbacks: bool
    doc: Document
    rate: dict[str, int] = field(default_factory=dict)
    sort: str = "order"  # "order" | "price"
    only: tuple[str, ...] = ()  # providers.only
    ignore: tuple[str, ...] = ()  # providers.ignore
    regions: tuple[str, ...] = ()  # data residency globs, e.g. eu-*
    max_price: dict[str, float] = field(default_factory=dict)  # input_per_mtok, output_per_mtok
    data_collection: str = "allow"  # "deny" excludes data_retention targets

    @classmethod
    def from_doc(cls, doc: Document) -> ModelRoute:
        spec = doc.value["spec"]
        targets = tuple(
            RouteTarget(
                provider=t["provider"],
                model=t["model"],
                region=t.get("region", ""),
                input_price_per_mtok=float(t.get("input_price_per_mtok", 0)),
                output_price_per_mtok=float(t.get("output_price_per_mtok", 0)),
                context_window=t.get("context_window"),
                data_retention=t.get("data_retention", False),
            )
            for t in spec["targets"]
        )
        providers = spec.get("providers", {})
        return cls(doc.value["metadata"]["name"], targets, spec.get("allow_fallbacks", True), doc,
                   rate=dict(spec.get("rate", {})), sort=spec.get("sort", "order"),
                   only=tuple(providers.get("only", ())),
                   ignore=tuple(providers.get("ignore", ())),
                   regions=tuple(spec.get("regions", ())),
                   max_price={k: float(v) for k, v in spec.get("max_price", {}).items()},
                   data_collection=spec.get("data_collection", "allow"))


@dataclass(frozen=True)
class Tool:
    """A tool resource: its actions and the JSON Schema of its parameters."""

    name: str
    resource: str
    actions: tuple[str, ...]
    input_schema: dict[str, Any] | None
    doc: Document
    price_usd: float | None = None

    @classmethod
    def from_doc(cls, doc: Document) -> Tool:
        spec = doc.value["spec"]
        return cls(doc.value["metadata"]["name"], spec["resource"], tuple(spec["actions"]),
                   spec.get("inputSchema"), doc,
                   float(spec["price_usd"]) if "price_usd" in spec else None)


@dataclass(frozen=True)
class PolicySet:
    """Everything one compile run loaded, in source order."""

    policies: tuple[AgentPolicy, ...]
    routes: tuple[ModelRoute, ...]
    tools: tuple[Tool, ...] = ()
    credentials: tuple[ToolCredential, ...] = ()
    # ("ModelRoute", name) and ("Tool", resource) of documents a schema error left
    # unusable or cut down: a reference to one is not judged by what it lacks.
    incomplete: frozenset[tuple[str, str]] = frozenset()
