"""JSON with positions: every key and value located, bad JSON located, duplicates caught."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from compiler.importers.jsonsource import load_text

TEXT = """\
{
  "model": "a/b",
  "provider": {"order": ["x", "y\\"z"], "max_price": {"prompt": 1e2},
               "only": []},
  "esc\\u00e9": [ {"k": null}, true ]
}
"""


def test_keys_and_values_are_located() -> None:
    doc, errors = load_text(TEXT, "p.json")
    assert errors == [] and doc is not None
    assert doc.value["provider"]["max_price"]["prompt"] == 100.0  # json decides values: 1e2 is a number
    assert doc.key_positions[("model",)] == (2, 3)
    assert doc.positions[("model",)] == (2, 12)
    assert doc.key_positions[("provider", "order")] == (3, 16)
    assert doc.positions[("provider", "order", 1)] == (3, 31)  # "y\"z": escapes counted
    assert doc.key_positions[("provider", "max_price", "prompt")] == (3, 54)
    assert doc.key_positions[("provider", "only")] == (4, 16)
    assert doc.key_positions[("escé",)] == (5, 3)
    assert doc.key_positions[("escé", 0, "k")] == (5, 19)
    assert doc.positions[("escé", 1)] == (5, 31)
    assert (doc.line, doc.col) == (1, 1)


def test_invalid_json_is_located() -> None:
    doc, errors = load_text('{\n  "a": 1,\n  "b": }\n', "p.json")
    assert doc is None
    assert [str(e) for e in errors] == ["p.json:3:8: error: invalid JSON: Expecting value"]


def test_duplicate_keys_are_errors_not_last_one_wins() -> None:
    doc, errors = load_text('{"provider": {"sort": "price",\n "sort": "latency"}}', "p.json")
    assert doc is None
    assert [str(e) for e in errors] == [
        "p.json:2:2: error: duplicate key 'sort' (first defined at line 1)"]


def test_nan_and_deep_nesting_are_refused() -> None:
    assert [str(e) for e in load_text('{"a": NaN}', "p.json")[1]] == [
        "p.json:1:1: error: invalid JSON: NaN is not valid JSON"]
    assert "nesting" in str(load_text("[" * 100 + "]" * 100, "p.json")[1][0])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(json_values, st.sampled_from([None, 2]))
def test_scanner_agrees_with_json_on_every_key(value: object, indent: int | None) -> None:
    """Each recorded key position points at that key's own string literal."""
    text = json.dumps(value, indent=indent)
    doc, errors = load_text(text, "v.json")
    assert errors == [] and doc is not None
    lines = text.split("\n")
    for path, (line, col) in doc.key_positions.items():
        literal = json.dumps(path[-1])
        assert lines[line - 1][col - 1:].startswith(literal), (path, line, col)
