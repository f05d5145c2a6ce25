"""Located compile diagnostics.

Every problem found in a policy run becomes a :class:`Diagnostic` pointing at
the offending YAML node. They are collected (never stop at the first), sorted
and de-duplicated, so a run prints every error in file order.
"""

from __future__ import annotations

import difflib
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


def closest(word: object, candidates: Iterable[str], cutoff: float = 0.75) -> str | None:
    """The candidate ``word`` most likely misspells, or None when none is close.

    Nothing is returned for a far miss, or for a prefix several candidates share,
    where any guess would mislead."""
    if not isinstance(word, str) or not word:
        return None
    options = sorted(set(candidates) - {word})
    match = difflib.get_close_matches(word, options, n=1, cutoff=cutoff)
    if not match:  # a unit suffix left out: spent -> spent_usd
        match = [c for c in options if c.startswith(f"{word}_")]
    return match[0] if len(match) == 1 else None


def did_you_mean(word: object, candidates: Iterable[str], cutoff: float = 0.75) -> str:
    """``'; did you mean "x"?'`` for the closest candidate, or ``""``.

    Appended to "unknown X" messages: a near miss is almost always a typo, and
    naming the intended word saves a trip to the docs."""
    match = closest(word, candidates, cutoff)
    return f'; did you mean "{match}"?' if match is not None else ""
