"""The compile pipeline: load -> validate -> model -> check -> generate -> bundle."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator, Sequence
from dataclasses import replace
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


def load(paths: Sequence[Path], shadow: Sequence[Path] = ()) -> PolicySet:
    """Load and check every policy file under ``paths``; raise with all errors.

    ``shadow`` names a whole candidate policy set evaluated beside the enforced one:
    each of its AgentPolicies is compiled as ``rollout: {mode: shadow}``. It decides
    with the enforced routes, tools and credentials, so any other document in it must
    be the same as the enforced one of its name (compare route changes with
    ``aam replay``)."""
    with _gc_paused():
        return _load(paths, shadow)


def _load(paths: Sequence[Path], shadow: Sequence[Path] = ()) -> PolicySet:
    errors: list[Diagnostic] = []
    files = source.discover(list(paths))
    candidate = [f for f in source.discover(list(shadow)) if f not in files]
    for p in (*paths, *shadow):
        if not p.exists():
            errors.append(Diagnostic(str(p), 1, 1, "no such file or directory"))
    if not files and not errors:
        errors.append(Diagnostic(str(paths[0]) if paths else ".", 1, 1, "no policy files found"))
    names = bundle_names(paths, files)
    names.update({f: f"shadow/{n}" for f, n in bundle_names(shadow, candidate).items()})
    in_shadow = set(candidate)
    by_kind: dict[str, list] = {kind: [] for kind in _KIND_CLASS}
    alongside: list[source.Document] = []  # a candidate's other kinds: must match the enforced
    incomplete: set[tuple[str, str]] = set()
    with source.tag_cache():
        for f in (*files, *candidate):
            docs, load_errors = source.load_file(f)
            errors.extend(load_errors)
            for doc in docs:
                doc.bundle_name = names.get(f, f.name)
                doc_errors, usable = schema.check(doc)
                errors.extend(doc_errors)
                if doc_errors:
                    incomplete.update(_identity(doc.value))
                if usable is None:
                    continue
                kind = doc.value["kind"]
                if f in in_shadow and kind != "AgentPolicy":
                    alongside.append(usable)
                    continue
                item = _KIND_CLASS[kind].from_doc(usable)
                by_kind[kind].append(replace(item, rollout="shadow") if f in in_shadow else item)
    errors.extend(_same_as_enforced(alongside, by_kind))
    ps = PolicySet(tuple(by_kind["AgentPolicy"]), tuple(by_kind["ModelRoute"]), tuple(by_kind["Tool"]),
                   credentials=tuple(by_kind["ToolCredential"]), incomplete=frozenset(incomplete))
    # Semantic checks run on every usable document, also when some have schema
    # errors: one run reports all the mistakes of a file.
    errors.extend(checks.run(ps))
    if errors:
        raise CompileError(errors)
    return ps


def _same_as_enforced(alongside: list[source.Document],
                      by_kind: dict[str, list]) -> Iterator[Diagnostic]:
    """A shadow candidate's routes, tools and credentials are the enforced ones: a
    shadow policy decides with what is enforced, so a different one would not be
    what the candidate means."""
    enforced = {(kind, item.name): item.doc.value for kind, items in by_kind.items()
                if kind != "AgentPolicy" for item in items}
    for doc in alongside:
        kind, name = doc.value["kind"], doc.value["metadata"]["name"]
        if enforced.get((kind, name)) != doc.value:
            yield doc.error(("metadata", "name"), (
                f"{kind} {name!r} of the shadow candidate is not the enforced one: shadow "
                "policies decide with the enforced routes, tools and credentials (leave it "
                "out, or compare the change with `aam replay --candidate`)"))


def _identity(value: object) -> list[tuple[str, str]]:
    """What other documents may name a document by: a route's name, a tool's resource."""
    if not isinstance(value, dict):
        return []
    kind, meta, spec = value.get("kind"), value.get("metadata"), value.get("spec")
    if kind == "ModelRoute" and isinstance(meta, dict) and isinstance(meta.get("name"), str):
        return [("ModelRoute", meta["name"])]
    if kind == "Tool" and isinstance(spec, dict) and isinstance(spec.get("resource"), str):
        return [("Tool", spec["resource"])]
    return []


def bundle_names(paths: Sequence[Path], files: Sequence[Path]) -> dict[Path, str]:
    """Each file's name in the bundle's source map: relative to the directory
    compiled (a file named directly: its base name). Never an absolute path, so
    the same policies give the same bundle (and revision) wherever they live."""
    out: dict[Path, str] = {}
    for root in paths:
        if root.is_dir():
            for f in files:
                if f not in out and f.is_relative_to(root):
                    out[f] = f.relative_to(root).as_posix()
        elif root in files:
            out.setdefault(root, root.name)
    return out


def build(ps: PolicySet) -> Bundle:
    """The bundle of a loaded, checked policy set."""
    with _gc_paused():
        return Bundle.build(codegen.generate(ps), rego_library())


def compile_paths(paths: Sequence[Path], shadow: Sequence[Path] = ()) -> Bundle:
    return build(load(paths, shadow))
