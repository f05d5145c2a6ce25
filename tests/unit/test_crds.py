"""deploy/crds/ is generated from compiler/schemas/ and must not drift; CRDs must be structural."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from compiler import crd
from compiler.source import discover, load_file

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_committed_crds_match_the_schemas() -> None:
    expected = crd.files()
    committed = {p for p in crd.CRD_DIR.glob("*.yaml")}
    assert committed == set(expected), "deploy/crds/ has extra or missing files; run scripts/gen-crds"
    for path, text in expected.items():
        assert path.read_text() == text, f"{path.name} drifted from compiler/schemas/; run scripts/gen-crds"


def _nodes(schema: dict[str, Any], where: str = "$") -> Iterator[tuple[str, dict[str, Any]]]:
    yield where, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _nodes(sub, f"{where}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from _nodes(schema[key], f"{where}[{key}]")


@pytest.mark.parametrize("kind", sorted(crd.KINDS))
def test_crd_schema_is_structural(kind: str) -> None:
    schema = crd.crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for where, node in _nodes(schema):
        assert not {"$ref", "const", "uniqueItems", "$defs", "oneOf", "propertyNames"} & set(node), where
        assert node.get("additionalProperties") is not False, where
        if "anyOf" in node:
            # The one anyOf a structural schema allows beside int-or-string, verbatim.
            assert node.get("x-kubernetes-int-or-string") and "type" not in node, where
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], where
            continue
        if node.get("type") == "array":
            assert isinstance(node.get("items"), dict), f"{where}: an array needs items"
        assert isinstance(node.get("type"), str) or node.get("x-kubernetes-preserve-unknown-fields"), where


def test_examples_validate_against_the_crds() -> None:
    schemas = {kind: crd.crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"] for kind in crd.KINDS}
    docs = [d for f in discover([EXAMPLES]) for d in load_file(f)[0]]
    assert {d.value["kind"] for d in docs} >= {"AgentPolicy", "ModelRoute", "Tool"}
    for d in docs:
        jsonschema.Draft202012Validator(schemas[d.value["kind"]]).validate(d.value)


def test_crd_rejects_what_the_schema_rejects() -> None:
    schema = crd.crd("AgentPolicy")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    bad = yaml.safe_load((EXAMPLES / "finance-analyst-readonly.yaml").read_text())
    bad["spec"]["credentials"]["expose_to_agent"] = True
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(bad)


def test_int_or_string_bounds_become_one_cel_rule() -> None:
    out = crd._int_or_string([{"type": "integer", "minimum": 1, "maximum": 9},
                              {"type": "string", "pattern": "^[0-9]+s$"}])
    assert out["anyOf"] == [{"type": "integer"}, {"type": "string"}]
    [rule] = out["x-kubernetes-validations"]
    assert rule["rule"] == 'type(self) == int ? (self >= 1 && self <= 9) : (self.matches("^[0-9]+s$"))'


def test_a_junctor_without_structural_form_fails_the_generator() -> None:
    with pytest.raises(ValueError, match="no structural form"):
        crd._int_or_string([{"type": "string"}, {"type": "boolean"}])
    with pytest.raises(ValueError, match="no CEL translation"):
        crd._int_or_string([{"type": "integer", "multipleOf": 2}, {"type": "string"}])
