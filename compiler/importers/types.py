"""What an importer produces: the AAM documents to write, and every diagnostic.

Frozen, so the importers, the emitter and the CLI share one value and nothing
downstream can change what an importer decided.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from compiler.errors import Diagnostic

# A trust domain reserved for examples (RFC 2606): a valid SPIFFE ID, so the
# output compiles, that no real workload presents, so a stub grants nothing
# until someone binds it.
PLACEHOLDER_PREFIX = "spiffe://example.org/replace-me/"


@dataclass(frozen=True)
class Rate:
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None

    def __bool__(self) -> bool:
        return self.requests_per_minute is not None or self.tokens_per_minute is not None


@dataclass(frozen=True)
class Target:
    provider: str
    model: str
    region: str | None = None
    input_price_per_mtok: Decimal | None = None
    output_price_per_mtok: Decimal | None = None
    context_window: int | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        """What the compiler calls the same target (``duplicate_targets``)."""
        return (self.provider, self.model, self.region or "")

    def label(self) -> str:
        return f"{self.provider}/{self.model} @ {self.region or 'any region'}"


@dataclass(frozen=True)
class Route:
    name: str
    targets: tuple[Target, ...]
    source: str  # file:line:col of the source entry, written as an annotation
    allow_fallbacks: bool | None = None  # None: the schema's default
    sort: str | None = None
    only: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    max_input_per_mtok: Decimal | None = None
    max_output_per_mtok: Decimal | None = None
    data_collection: str | None = None
    rate: Rate = field(default_factory=Rate)


@dataclass(frozen=True)
class PolicyStub:
    """An AgentPolicy carrying a budget or rate limit, bound to a placeholder workload."""

    name: str
    source: str
    models: tuple[str, ...]
    team: str | None = None
    daily_usd: Decimal | None = None
    monthly_usd: Decimal | None = None
    rate: Rate = field(default_factory=Rate)

    @property
    def workload(self) -> str:
        return PLACEHOLDER_PREFIX + self.name


@dataclass(frozen=True)
class ImportResult:
    kind: str  # the importer's name, e.g. "litellm"
    source: str  # the input file as the user named it
    routes: tuple[Route, ...]
    policies: tuple[PolicyStub, ...]
    diagnostics: tuple[Diagnostic, ...]  # sorted: errors and warnings by position
    mapped: frozenset[tuple[str | int, ...]] = frozenset()  # source key paths carried over

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.severity == "error")

    @property
    def warnings(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.severity == "warning")
