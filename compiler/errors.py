"""Located compile diagnostics.

Every problem found in a policy run becomes a :class:`Diagnostic` pointing at
the offending YAML node. They are collected (never stop at the first), sorted
and de-duplicated, so a run prints every error in file order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True, order=True)
class Diagnostic:
    """One problem at a place in a source file (1-based line and column).

    Compiles only ever report errors; ``aam import`` also reports warnings for
    what it could not carry over, in the same located form."""

    file: str
    line: int
    col: int
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.severity}: {self.message}"


class CompileError(Exception):
    """Raised with every diagnostic of a failed compile, sorted."""

    def __init__(self, diagnostics: Iterable[Diagnostic]) -> None:
        self.diagnostics: list[Diagnostic] = sorted(set(diagnostics))
        super().__init__("\n".join(str(d) for d in self.diagnostics))
