"""Property-based robustness: random YAML and mutated policies never crash the compiler.

Whatever the input, compiling either builds a bundle or raises CompileError
whose every diagnostic is located inside the file; never another exception.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from compiler import CompileError, compile_paths
from compiler.source import discover, load_file

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
VALID = [d.value for f in discover([EXAMPLES]) for d in load_file(f)[0]]
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
                    st.sampled_from(["spiffe://prod/agent/x", "25:00", "Europe/Berlin", "read", "(a", "",
                                     "reasoning-high", "salesforce.accounts", "{}", "[", "*a", "&a x"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)), max_leaves=12)


def compile_text(text: str) -> None:
    """Compile one file; assert the outcome is a bundle or located errors only."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            compile_paths([path])
        except CompileError as exc:
            assert exc.diagnostics
            # YAML breaks lines at \r, \r\n, NEL and the Unicode separators too.
            lines = len(re.split("\r\n|[\r\n\x85\u2028\u2029]", text)) + 1
            for d in exc.diagnostics:
                assert d.file == str(path), d
                assert 1 <= d.line <= lines and d.col >= 1, d
                assert str(d).startswith(f"{path}:{d.line}:{d.col}: error: "), d


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def _mutate(doc: Any, path: tuple[Any, ...], op: str, new: Any) -> Any:
    if not path:
        return new if op == "replace" else doc
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if op == "delete":
        del parent[last]
    elif op == "replace":
        parent[last] = new
    elif op == "wrap":
        parent[last] = [parent[last]]
    elif op == "add" and isinstance(parent[last], dict):
        parent[last]["x-" + str(new)[:8]] = new
    return doc


@st.composite
def mutated_policy_sets(draw: st.DrawFn) -> str:
    docs = [yaml.safe_load(yaml.safe_dump(d)) for d in VALID]
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(docs) - 1))
        path = draw(st.sampled_from(_paths(docs[i])))
        op = draw(st.sampled_from(["delete", "replace", "wrap", "add"]))
        docs[i] = _mutate(docs[i], path, op, draw(values)) if path or op == "replace" else docs[i]
    return yaml.safe_dump_all(docs, sort_keys=False, allow_unicode=True)


@FUZZ
@given(st.text(max_size=400))
def test_random_text(text: str) -> None:
    compile_text(text)


@FUZZ
@given(values)
def test_random_yaml_documents(value: Any) -> None:
    compile_text(yaml.safe_dump(value, allow_unicode=True))


@FUZZ
@given(mutated_policy_sets())
def test_mutated_valid_policies(text: str) -> None:
    compile_text(text)


@FUZZ
@given(st.sampled_from(["a: &a [*a]", "a: &a [x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                        "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c]",
                        "[" * 5000, "{a: " * 200, "<<: {a: 1}", "? [a]\n: b", "a: !!binary aGk=",
                        "\t", "\x00"]),
       st.text(max_size=20))
@example("a: &a [*a]", "\r0")  # a lone CR is a YAML line break: errors may sit past the last \n
def test_hostile_yaml(prefix: str, tail: str) -> None:
    compile_text(prefix + tail)


def test_unmutated_examples_compile() -> None:
    compile_text(yaml.safe_dump_all(VALID, sort_keys=False))


@FUZZ
@given(mutated_policy_sets())
def test_fast_schema_check_never_accepts_what_jsonschema_rejects(text: str) -> None:
    import fastjsonschema

    from compiler.schema import KINDS, fast_check, validator

    for doc in yaml.safe_load_all(text):
        kind = doc.get("kind") if isinstance(doc, dict) else None
        if not isinstance(kind, str) or kind not in KINDS:
            continue
        try:
            fast_check(kind)(doc)
        except fastjsonschema.JsonSchemaException:
            continue
        assert validator(kind).is_valid(doc), doc
