"""The compile pipeline: load -> validate -> model -> check -> generate -> bundle."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator, Sequence
from pathlib import Path

from compiler import checks, codegen, schema, source
from compiler.bundle import Bundle, rego_library
from compiler.errors import CompileError, Diagnostic
from compiler.model import AgentPolicy, ModelRoute, PolicySet, Tool
from compiler.toolcredential import ToolCredential

_KIND_CLASS = {"AgentPolicy": AgentPolicy, "ModelRoute": ModelRoute, "Tool": Tool}
_KIND_CLASS["ToolCredential"] = ToolCredential


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Loading allocates millions of small acyclic objects; the cyclic GC
    re-scanning them as they pile up more than doubles the compile time of a
    large policy set. Reference counting still frees everything."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def load(paths: Sequence[Path]) -> PolicySet:
    """Load and check every policy file under ``paths``; raise with all errors."""
    with _gc_paused():
        return _load(paths)


def _load(paths: Sequence[Path]) -> PolicySet:
    errors: list[Diagnostic] = []
    files = source.discover(list(paths))
    for p in paths:
        if not p.exists():
            errors.append(Diagnostic(str(p), 1, 1, "no such file or directory"))
    if not files and not errors:
        errors.append(Diagnostic(str(paths[0]) if paths else ".", 1, 1, "no policy files found"))
    by_kind: dict[str, list] = {kind: [] for kind in _KIND_CLASS}
    with source.tag_cache():
        for f in files:
            docs, load_errors = source.load_file(f)
            errors.extend(load_errors)
            for doc in docs:
                doc_errors = list(schema.validate(doc))
                errors.extend(doc_errors)
                if not doc_errors:
                    kind = doc.value["kind"]
                    by_kind[kind].append(_KIND_CLASS[kind].from_doc(doc))
    ps = PolicySet(tuple(by_kind["AgentPolicy"]), tuple(by_kind["ModelRoute"]), tuple(by_kind["Tool"]),
                   credentials=tuple(by_kind["ToolCredential"]))
    errors.extend(checks.run(ps))
    if errors:
        raise CompileError(errors)
    return ps


def compile_paths(paths: Sequence[Path]) -> Bundle:
    ps = load(paths)
    with _gc_paused():
        return Bundle.build(codegen.generate(ps), rego_library())
