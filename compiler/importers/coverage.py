"""Accounting for every key of an imported file: mapped, or named in a diagnostic.

Importers mark what they carry over (:meth:`Coverage.mapped`) and report what
they do not (:meth:`Coverage.drop`). :meth:`Coverage.finish` then warns about
every key nobody looked at, so a setting an importer does not know is still
reported, never dropped silently. Messages start with the key's dotted path and
never quote a value that is not a name (see ``values.shown``): a source file
holds API keys and environment references that must not reach a terminal or a
CI log.
"""

from __future__ import annotations

from typing import Any

from compiler.errors import Diagnostic, Severity
from compiler.source import Document, Path_


def dotted(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "document"


class Coverage:
    def __init__(self, doc: Document, source_name: str) -> None:
        self.doc = doc
        self.source_name = source_name  # "LiteLLM", "OpenRouter": used in generic messages
        self._mapped: set[Path_] = set()
        self._covered: set[Path_] = set()  # subtrees a diagnostic already accounts for
        self._diagnostics: list[Diagnostic] = []

    # --- positions -----------------------------------------------------------

    def at(self, path: Path_) -> tuple[int, int]:
        """A key's own position; a list element's value position."""
        key = bool(path) and isinstance(path[-1], str)
        return self.doc.at(path, key=key)

    def where(self, path: Path_) -> str:
        line, col = self.at(path)
        return f"{self.doc.file}:{line}:{col}"

    # --- marking -------------------------------------------------------------

    def mapped(self, *paths: Path_) -> None:
        self._mapped.update(paths)

    def _add(self, path: Path_, message: str, severity: Severity) -> None:
        line, col = self.at(path)
        self._diagnostics.append(Diagnostic(self.doc.file, line, col, f"{dotted(path)}: {message}",
                                            severity))

    def drop(self, path: Path_, why: str) -> None:
        """Warn that the setting at ``path`` (and all under it) is not carried over."""
        self._covered.add(path)
        self._add(path, f"not carried: {why}", "warning")

    def warn(self, path: Path_, message: str) -> None:
        """Warn about how a carried-over setting changes meaning; covers nothing by itself."""
        self._add(path, message, "warning")

    def error(self, path: Path_, message: str) -> None:
        """The input is malformed at ``path``; nothing under it is carried."""
        self._covered.add(path)
        self._add(path, message, "error")

    @property
    def failed(self) -> bool:
        return any(d.severity == "error" for d in self._diagnostics)

    # --- the sweep -----------------------------------------------------------

    def accounted(self, path: Path_) -> bool:
        """Mapped, or under a key a diagnostic already named."""
        if path in self._mapped:
            return True
        return any(path[:i] in self._covered for i in range(len(path) + 1))

    def finish(self) -> tuple[tuple[Diagnostic, ...], frozenset[Path_]]:
        """Warn about every key not accounted for; return sorted diagnostics and mapped keys."""
        for path in sorted(self.doc.key_positions, key=self.at):
            if not self.accounted(path):
                self.drop(path, f"no AAM equivalent for this {self.source_name} setting")
        return tuple(sorted(set(self._diagnostics))), frozenset(self._mapped)


def mapping(cov: Coverage, value: Any, path: Path_, what: str) -> dict[str, Any] | None:
    """``value`` if it is a mapping, else a located error."""
    if isinstance(value, dict):
        return value
    cov.error(path, f"{what} must be a mapping, got {type_name(value)}")
    return None


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)
