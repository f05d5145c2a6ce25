"""Typed, validated policy documents: one frozen dataclass per kind.

Documents reach these classes only after schema validation, so the
constructors read fields without re-checking their types.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from compiler.source import Document
from compiler.toolcredential import ToolCredential


@dataclass(frozen=True)
class ToolGrant:
    resource: str
    actions: tuple[str, ...]
    deny: tuple[str, ...]
    index: int  # position in spec.tools, so messages can name the rule

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
        )


@dataclass(frozen=True)
class RouteTarget:
    provider: str
    model: str
    region: str
    input_price_per_mtok: float
    output_price_per_mtok: float


@dataclass(frozen=True)
class ModelRoute:
    name: str
    targets: tuple[RouteTarget, ...]
    allow_fallbacks: bool
    doc: Document

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
            )
            for t in spec["targets"]
        )
        return cls(doc.value["metadata"]["name"], targets, spec.get("allow_fallbacks", True), doc)


@dataclass(frozen=True)
class PolicySet:
    """Everything one compile run loaded, in source order."""

    policies: tuple[AgentPolicy, ...]
    routes: tuple[ModelRoute, ...]
    credentials: tuple[ToolCredential, ...] = ()
