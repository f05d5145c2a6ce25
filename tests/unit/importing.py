"""Shared helpers of the importer tests: run an importer on text, walk a fixture's keys."""

from __future__ import annotations

from pathlib import Path

from compiler.importers import IMPORTERS, ImportResult, run
from compiler.importers.coverage import dotted
from compiler.source import Path_

FIXTURES = Path(__file__).resolve().parents[1] / "testdata" / "import"
LITELLM = FIXTURES / "litellm-config.yaml"
OPENROUTER = FIXTURES / "openrouter-prefs.json"
OPENROUTER_MODELS = FIXTURES / "openrouter-models.json"


def imported(tmp_path: Path, kind: str, text: str, name: str | None = None) -> ImportResult:
    """Import ``text`` as ``c.yaml`` / ``p.json`` in ``tmp_path`` (the cwd), so messages read short."""
    path = Path("c.yaml" if kind == "litellm" else "p.json")
    (tmp_path / path).write_text(text)
    return run(kind, path, name)


def messages(result: ImportResult) -> list[str]:
    return [str(d) for d in result.diagnostics]


def unaccounted(kind: str, path: Path, result: ImportResult) -> list[str]:
    """Keys of the source neither mapped nor named (themselves or an ancestor) by a warning
    located at that key and starting with its dotted path."""
    doc, errors = IMPORTERS[kind].load(path, str(path))
    assert doc is not None and not errors

    def at(p: Path_) -> tuple[int, int]:
        return doc.at(p, key=isinstance(p[-1], str))

    named = {(d.line, d.col, d.message.split(": ", 1)[0]) for d in result.warnings}
    missing = []
    for key in doc.key_positions:
        if key in result.mapped:
            continue
        if not any((*at(key[:i]), dotted(key[:i])) in named for i in range(1, len(key) + 1)):
            missing.append(dotted(key))
    return missing
