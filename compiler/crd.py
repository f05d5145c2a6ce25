"""Kubernetes CRDs generated from the policy JSON Schemas (one source of truth).

Kubernetes wants a *structural* OpenAPI v3 schema: no ``$ref``, no
``const``, one ``type`` per node, no ``uniqueItems``, no
``additionalProperties: false`` (the API server prunes unknown fields, or
rejects them under ``fieldValidation=Strict``), ``items`` on every array, and
no ``type`` inside ``anyOf`` but for the int-or-string form. This module
rewrites the JSON Schemas into that form; a test fails when ``deploy/crds/``
drifts from what it generates, and tests/integration/test_kubernetes_crds.py
posts them to a real kube-apiserver.

Regenerate with ``.venv/bin/python -m compiler.crd`` (or ``scripts/gen-crds``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

from compiler.schema import API_VERSION, KINDS, SCHEMA_DIR

GROUP, VERSION = API_VERSION.split("/")
CRD_DIR = Path(__file__).resolve().parent.parent / "deploy" / "crds"
_DROP = {"$schema", "$id", "$defs", "default"}
_PLURALS = {"AgentPolicy": "agentpolicies"}


# What pdp/kubesource.py writes: conditions Accepted/Ready, the generation they are about,
# and the bundle revision that carries the resource.
STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "observedGeneration": {"type": "integer"},
        "bundleRevision": {"type": "string"},
        "conditions": {
            "type": "array",
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
            "items": {
                "type": "object",
                "required": ["type", "status"],
                "properties": {
                    "type": {"type": "string"},
                    "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                    "reason": {"type": "string"},
                    "message": {"type": "string"},
                    "observedGeneration": {"type": "integer"},
                    "lastTransitionTime": {"type": "string", "format": "date-time"},
                },
            },
        },
    },
}


def _load(name: str) -> dict[str, Any]:
    return json.loads((SCHEMA_DIR / name).read_text())


def _resolve(ref: str, current: str) -> tuple[dict[str, Any], str]:
    file, _, pointer = ref.partition("#")
    file = file or current
    node: Any = _load(file)
    for part in filter(None, pointer.split("/")):
        node = node[part]
    return node, file


def structural(node: Any, file: str) -> Any:
    """The Kubernetes-structural form of one JSON Schema node."""
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target, target_file = _resolve(node["$ref"], file)
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return structural(merged, target_file)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP or (key == "additionalProperties" and value is False):
            continue
        if key == "const":
            out["enum"] = [value]
        elif key == "properties":
            out[key] = {k: structural(v, file) for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = structural(value, file)
        elif key in ("uniqueItems", "propertyNames"):  # not in Kubernetes' schema; the compiler checks
            continue
        elif key in ("oneOf", "anyOf"):
            out.update(_int_or_string([structural(b, file) for b in value]))
        else:
            out[key] = value
    if out.get("x-kubernetes-int-or-string"):
        pass
    elif isinstance(out.get("type"), list) or ("type" not in out and "enum" not in out):
        out.pop("type", None)
        out["x-kubernetes-preserve-unknown-fields"] = True
    elif "enum" in out and "type" not in out:
        out["type"] = _enum_type(out["enum"])
    if out.get("type") == "array" and "items" not in out:
        # Any JSON value per element (allowed_values): structural, still a list.
        out["items"] = {"x-kubernetes-preserve-unknown-fields": True}
    if node.get("uniqueItems") and _scalar_items(out.get("items", {})):
        out["x-kubernetes-list-type"] = "set"
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


_NUMERIC = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}


def _int_or_string(branches: list[dict[str, Any]]) -> dict[str, Any]:
    """An integer-or-string junctor in the one form a structural schema allows.

    Kubernetes accepts only ``anyOf: [{type: integer}, {type: string}]``
    beside ``x-kubernetes-int-or-string``, with nothing else in the branches,
    so each branch's bounds and pattern move into one CEL rule (a type
    switch) rather than being lost. Any other junctor fails the generator.
    """
    by_type = {b.get("type"): b for b in branches}
    if len(branches) != 2 or set(by_type) != {"integer", "string"}:
        raise ValueError(f"no structural form for anyOf/oneOf {branches!r}")
    rules: dict[str, list[str]] = {"integer": [], "string": []}
    words: dict[str, list[str]] = {"integer": [], "string": []}
    for typ, branch in by_type.items():
        for key, bound in branch.items():
            if key in ("type", "description"):
                continue
            if typ == "integer" and key in _NUMERIC:
                rules[typ].append(f"self {_NUMERIC[key]} {json.dumps(bound)}")
                words[typ].append(f"{_NUMERIC[key]} {bound}")
            elif typ == "string" and key == "pattern":
                rules[typ].append(f"self.matches({json.dumps(bound)})")
                words[typ].append(f"matching {bound}")
            elif typ == "string" and key in ("minLength", "maxLength"):
                op = ">=" if key == "minLength" else "<="
                rules[typ].append(f"size(self) {op} {int(bound)}")
                words[typ].append(f"of length {op} {int(bound)}")
            else:
                raise ValueError(f"{key} in an int-or-string branch has no CEL translation")
    out: dict[str, Any] = {"x-kubernetes-int-or-string": True,
                           "anyOf": [{"type": "integer"}, {"type": "string"}]}
    if rules["integer"] or rules["string"]:
        ints, strs = (" && ".join(rules[t]) or "true" for t in ("integer", "string"))
        out["x-kubernetes-validations"] = [{
            "rule": f"type(self) == int ? ({ints}) : ({strs})",
            "message": (f"must be an integer {', '.join(words['integer']) or 'of any value'}"
                        f" or a string {', '.join(words['string']) or 'of any value'}"),
        }]
    return out


def _enum_type(values: list[Any]) -> str:
    kinds = {type(v) for v in values}
    if kinds <= {str}:
        return "string"
    if kinds <= {bool}:
        return "boolean"
    return "number" if kinds <= {int, float} else "string"


def _scalar_items(items: dict[str, Any]) -> bool:
    return items.get("type") in ("string", "integer", "number", "boolean")


def _plural(kind: str) -> str:
    return _PLURALS.get(kind, kind.lower() + "s")


def crd(kind: str) -> dict[str, Any]:
    name = KINDS[kind]
    schema = _load(name)
    body = structural(schema, name)
    body["properties"]["apiVersion"] = {"type": "string"}
    body["properties"]["kind"] = {"type": "string"}
    body["properties"]["metadata"] = {"type": "object"}
    body["properties"]["status"] = STATUS_SCHEMA
    body["required"] = [r for r in body.get("required", []) if r not in ("apiVersion", "kind", "metadata")]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{_plural(kind)}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": _plural(kind),
                      "singular": kind.lower()},
            "scope": "Namespaced",
            # The status subresource: the PDP (pdp/kubesource.py) writes each resource's
            # compile outcome there, and a spec writer cannot forge it (nor the PDP the spec).
            "versions": [{"name": VERSION, "served": True, "storage": True,
                          "schema": {"openAPIV3Schema": body},
                          "subresources": {"status": {}}}],
        },
    }


def render(kind: str) -> str:
    header = (f"# Generated from compiler/schemas/{KINDS[kind]} by `python -m compiler.crd`; do not edit.\n")
    return header + yaml.safe_dump(crd(kind), sort_keys=False, width=110)


def files() -> dict[Path, str]:
    return {CRD_DIR / f"{_plural(kind)}.yaml": render(kind) for kind in sorted(KINDS)}


def main() -> None:
    CRD_DIR.mkdir(parents=True, exist_ok=True)
    for path, text in files().items():
        path.write_text(text)
        print(f"wrote {path.relative_to(CRD_DIR.parent.parent)}", file=sys.stdout)


if __name__ == "__main__":
    main()
