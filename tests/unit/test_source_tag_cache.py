"""The YAML tag cache lives for one compile only (kept, it pinned the compile's memory)."""

from __future__ import annotations

from pathlib import Path

from compiler import compile_paths, source
from compiler.source import _Loader

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_tag_cache_is_used_within_a_compile_and_dropped_after() -> None:
    seen: list[int] = []
    resolve = _Loader.resolve

    def spy(self: _Loader, kind: type, value: object, implicit: object) -> str:
        if _Loader._tags is not None:
            seen.append(len(_Loader._tags))
        return resolve(self, kind, value, implicit)

    _Loader.resolve = spy  # type: ignore[method-assign]
    try:
        compile_paths([EXAMPLES])
    finally:
        _Loader.resolve = resolve  # type: ignore[method-assign]
    assert seen and max(seen) > 0  # scalars were resolved through the cache
    assert _Loader._tags is None  # and nothing of it outlives the compile


def test_documents_load_the_same_with_and_without_the_cache() -> None:
    text = "a: 1\nb: [true, null, x]\nc: {d: '2'}\n"
    plain, _ = source.load_text(text, "f.yaml")
    with source.tag_cache():
        cached, _ = source.load_text(text, "f.yaml")
        again, _ = source.load_text(text, "f.yaml")
    assert [d.value for d in plain] == [d.value for d in cached] == [d.value for d in again]
    assert plain[0].value == {"a": 1, "b": [True, None, "x"], "c": {"d": "2"}}
