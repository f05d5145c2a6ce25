"""JSON Schemas of the policy kinds, and validation with located errors.

The schemas in ``compiler/schemas/`` are the one source of truth for the
policy language: the compiler validates with them, editors use them through
``yaml-language-server``, and the Kubernetes CRDs are generated from them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import fastjsonschema
import jsonschema
from referencing import Registry, Resource

from compiler import prune
from compiler.errors import Diagnostic, did_you_mean
from compiler.source import Document

API_VERSION = "access.envisionai.dev/v1"
SCHEMA_DIR = Path(__file__).parent / "schemas"
KINDS = {"AgentPolicy": "agentpolicy.json", "ModelRoute": "modelroute.json", "Tool": "tool.json"}
KINDS["ToolCredential"] = "toolcredential.json"


@cache
def _registry() -> Registry:
    resources = []
    for path in sorted(SCHEMA_DIR.glob("*.json")):
        contents = json.loads(path.read_text())
        resources.append((path.name, Resource.from_contents(contents)))
        resources.append((contents["$id"], Resource.from_contents(contents)))
    return Registry().with_resources(resources)


@cache
def validator(kind: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMA_DIR / KINDS[kind]).read_text())
    return jsonschema.Draft202012Validator(schema, registry=_registry())


def _inline(node: Any, file: str) -> Any:
    """The schema with every ``$ref`` replaced by its target (our schemas are not recursive)."""
    if isinstance(node, list):
        return [_inline(x, file) for x in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target_file, _, pointer = node["$ref"].partition("#")
        target_file = target_file or file
        target: Any = json.loads((SCHEMA_DIR / target_file).read_text())
        for part in filter(None, pointer.split("/")):
            target = target[part]
        return _inline({**target, **{k: v for k, v in node.items() if k != "$ref"}}, target_file)
    return {k: _inline(v, file) for k, v in node.items() if k not in ("$defs", "$schema", "$id")}


@cache
def fast_check(kind: str) -> Callable[[Any], Any]:
    """A code-generated validator (fastjsonschema) that only answers valid or not.

    Validating 10,000 policies with jsonschema costs seconds; the generated
    check is about 10x cheaper. Only documents it rejects go through
    jsonschema, whose errors are the ones reported, so messages and
    positions do not depend on it.
    """
    schema = _inline(json.loads((SCHEMA_DIR / KINDS[kind]).read_text()), KINDS[kind])
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"  # same keywords, fastest supported draft
    return fastjsonschema.compile(schema)


def _dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "document"


def validate(doc: Document) -> Iterator[Diagnostic]:
    """Every schema violation of one document, each at its node."""
    yield from check(doc)[0]


def check(doc: Document) -> tuple[list[Diagnostic], Document | None]:
    """Every schema violation of one document, and the part of it semantic checks
    may read: the document itself when valid, a cut-down copy when a schema error
    leaves the rest usable (compiler/prune.py), None when nothing is."""
    value = doc.value
    if not isinstance(value, dict):
        return [doc.error((), "a policy document must be a mapping with apiVersion, kind, metadata,"
                          " spec")], None
    api, kind = value.get("apiVersion"), value.get("kind")
    if api != API_VERSION:
        return [doc.error(("apiVersion",), f"apiVersion must be {API_VERSION!r}, got {api!r}")], None
    if not isinstance(kind, str) or kind not in KINDS:
        known = ", ".join(sorted(KINDS))
        hint = did_you_mean(kind, KINDS)
        return [doc.error(("kind",), f"unknown kind {kind!r} (known kinds: {known}){hint}")], None
    try:
        fast_check(kind)(value)
        return [], doc
    except fastjsonschema.JsonSchemaException:
        pass  # report every error, located, from the reference validator
    errors = list(validator(kind).iter_errors(value))
    diagnostics = [d for err in errors for d in _located(doc, err)]
    return diagnostics, prune.usable_part(doc, errors, validator(kind).iter_errors)


def _located(doc: Document, err: jsonschema.ValidationError) -> Iterator[Diagnostic]:
    path = tuple(err.absolute_path)
    where = _dotted(path)
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = set(err.schema.get("properties", {}))
        for key in sorted(k for k in err.instance if k not in allowed):
            hint = f" (allowed: {', '.join(sorted(allowed))})" if allowed else ""
            yield doc.error((*path, key), f"{_dotted((*path, key))}: unknown field{hint}"
                            f"{did_you_mean(key, allowed)}", key=True)
        return
    if err.validator in ("anyOf", "oneOf") and err.context:
        best = jsonschema.exceptions.best_match(err.context)
        yield doc.error(path, f"{where}: {best.message}")
        return
    if err.validator == "const":
        yield doc.error(path, f"{where}: must be {json.dumps(err.validator_value)}")
        return
    if err.validator == "pattern":
        yield doc.error(path, f"{where}: {err.instance!r} is not a valid {path[-1] if path else 'value'}"
                        f" (must match {err.validator_value})")
        return
    if err.validator == "enum" and isinstance(err.validator_value, list):
        options = [v for v in err.validator_value if isinstance(v, str)]
        yield doc.error(path, f"{where}: {err.message}{did_you_mean(err.instance, options)}")
        return
    yield doc.error(path, f"{where}: {err.message}")
