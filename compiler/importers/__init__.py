"""Importers: what a gateway already runs (LiteLLM, OpenRouter) -> AAM documents.

Each importer is registered by name with the loader of its file format and a
converter from a positioned document to routes and policy stubs. The pipeline
is the same for all: load (located errors) -> convert (every key mapped or
reported) -> render -> compile the rendered text, so an import never hands the
user documents that ``aam compile`` would reject.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from compiler import source
from compiler.errors import CompileError, Diagnostic
from compiler.importers import emit, jsonsource, litellm, openrouter
from compiler.importers.coverage import Coverage
from compiler.importers.types import ImportResult, PolicyStub, Route
from compiler.pipeline import load
from compiler.source import Document

Loader = Callable[[Path, str], tuple[Document | None, list[Diagnostic]]]
Converter = Callable[[Coverage, str | None], tuple[tuple[Route, ...], tuple[PolicyStub, ...]]]


def _one_yaml_document(path: Path, display: str) -> tuple[Document | None, list[Diagnostic]]:
    docs, errors = source.load_file(path, display)
    if errors:
        return None, errors
    if len(docs) != 1:
        where = docs[1] if len(docs) > 1 else None
        return None, [Diagnostic(display, where.line if where else 1, where.col if where else 1,
                                 f"expected one YAML document, found {len(docs)}")]
    return docs[0], []


@dataclass(frozen=True)
class Importer:
    label: str  # the source's name in messages: "LiteLLM"
    load: Loader
    convert: Converter


IMPORTERS: dict[str, Importer] = {
    "litellm": Importer("LiteLLM", _one_yaml_document, litellm.convert),
    "openrouter": Importer("OpenRouter", jsonsource.load_file, openrouter.convert),
}


def run(kind: str, path: Path, name: str | None = None) -> ImportResult:
    """Import ``path`` with the importer registered as ``kind``; never raises on bad input."""
    importer = IMPORTERS[kind]
    display = str(path)
    doc, errors = importer.load(path, display)
    if doc is None:
        return ImportResult(kind, display, (), (), tuple(sorted(set(errors))))
    cov = Coverage(doc, importer.label)
    routes, policies = importer.convert(cov, name)
    diagnostics, mapped = cov.finish()
    if not routes and not policies and not any(d.severity == "error" for d in diagnostics):
        diagnostics += (Diagnostic(display, doc.line, doc.col,
                                   f"nothing to import: no model routes, budgets or rate limits"
                                   f" in this {importer.label} file"),)
    if any(d.severity == "error" for d in diagnostics):
        routes, policies = (), ()
    return ImportResult(kind, display, routes, policies, tuple(sorted(diagnostics)), mapped)


def verify(text: str) -> list[Diagnostic]:
    """Compile the rendered documents exactly as ``aam compile`` would; [] when they compile."""
    with tempfile.TemporaryDirectory(prefix="aam-import-") as tmp:
        out = Path(tmp) / "imported.yaml"
        out.write_text(text)
        try:
            load([out])
        except CompileError as exc:
            return [Diagnostic("<generated>", d.line, d.col, d.message) for d in exc.diagnostics]
    return []


__all__ = ["IMPORTERS", "ImportResult", "emit", "run", "verify"]
