"""JSON loading with a source position for every key and value.

The stdlib ``json`` module parses but forgets positions. We let it decide
what the document is (validity, numbers, escapes: it is the reference), then
walk the same, now known-valid, text with a small scanner that only tracks
structure (``{ } [ ] , :`` and string boundaries) to record where each key
and value starts. Reading JSON as YAML instead would be wrong: PyYAML is
YAML 1.1 and reads ``1e5`` as a string. A third-party source-map package
would work too, but this keeps the importer free of a new dependency and the
scanner is short because it never has to reject anything ``json`` accepted.
Duplicate keys (which ``json`` silently collapses) are found by the scanner.
"""

from __future__ import annotations

import bisect
import json
from pathlib import Path
from typing import Any

from compiler.errors import Diagnostic
from compiler.source import MAX_DEPTH, MAX_FILE_BYTES, Document, Path_

_WS = " \t\r\n"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class _Lines:
    """Offset -> 1-based (line, column), column counted in characters."""

    def __init__(self, text: str) -> None:
        self.starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]

    def __call__(self, offset: int) -> tuple[int, int]:
        line = bisect.bisect_right(self.starts, offset) - 1
        return line + 1, offset - self.starts[line] + 1


def _string_end(text: str, i: int) -> int:
    """Index just past the string literal starting at ``text[i] == '"'``."""
    i += 1
    while True:
        c = text[i]
        if c == "\\":
            i += 2
        elif c == '"':
            return i + 1
        else:
            i += 1


def _scan(text: str, doc: Document) -> list[Diagnostic]:
    """Record positions of every value and key of valid JSON ``text`` into ``doc``."""
    where = _Lines(text)
    errors: list[Diagnostic] = []
    # Each frame: [path, kind, next array index, keys seen, current key or None]
    stack: list[list[Any]] = []
    path: Path_ = ()
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in _WS or c in ",:":
            i += 1
            continue
        if c in "}]":
            stack.pop()
            i += 1
            continue
        if c == '"' and stack and stack[-1][1] == "object" and stack[-1][4] is None:
            # In an object, a string is a key unless a key is waiting for its value.
            end = _string_end(text, i)
            key = json.loads(text[i:end])
            frame = stack[-1]
            key_path = (*frame[0], key)
            if key in frame[3]:
                line, col = where(i)
                first = doc.key_positions[key_path][0]
                errors.append(Diagnostic(doc.file, line, col,
                                         f"duplicate key {key!r} (first defined at line {first})"))
            else:
                frame[3].add(key)
                doc.key_positions[key_path] = where(i)
            frame[4] = key
            i = end
            continue
        # A value: its path is the current key or array slot of the innermost frame.
        if stack:
            frame = stack[-1]
            if frame[1] == "object":
                path = (*frame[0], frame[4])
                frame[4] = None
            else:
                path = (*frame[0], frame[2])
                frame[2] += 1
        else:
            path = ()
        if path not in doc.positions:  # a duplicate key keeps its first value's position
            doc.positions[path] = where(i)
        if c == "{":
            stack.append([path, "object", 0, set(), None])
            i += 1
        elif c == "[":
            stack.append([path, "array", 0, set(), None])
            i += 1
        elif c == '"':
            i = _string_end(text, i)
        else:  # number, true, false, null
            while i < n and text[i] not in _WS and text[i] not in ",]}":
                i += 1
    return errors


def _depth(value: Any) -> int:
    depth, level = 0, [value]
    while level:
        depth += 1
        level = [v for x in level if isinstance(x, dict | list)
                 for v in (x.values() if isinstance(x, dict) else x)]
    return depth


def load_text(text: str, file: str) -> tuple[Document | None, list[Diagnostic]]:
    """Parse one JSON document; return it with positions, or located errors."""
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        return None, [Diagnostic(file, exc.lineno, exc.colno, f"invalid JSON: {exc.msg}")]
    except ValueError as exc:
        return None, [Diagnostic(file, 1, 1, f"invalid JSON: {exc}")]
    except RecursionError:
        return None, [Diagnostic(file, 1, 1, "invalid JSON: nesting too deep")]
    if _depth(value) > MAX_DEPTH:
        return None, [Diagnostic(file, 1, 1, f"invalid JSON: nesting deeper than {MAX_DEPTH} levels")]
    start = len(text) - len(text.lstrip(_WS))
    line, col = _Lines(text)(start)
    doc = Document(file, 0, value, line, col)
    errors = _scan(text, doc)
    return (None if errors else doc), errors


def load_file(path: Path, display: str | None = None) -> tuple[Document | None, list[Diagnostic]]:
    name = display or str(path)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return None, [Diagnostic(name, 1, 1, f"file is larger than {MAX_FILE_BYTES} bytes")]
        raw = path.read_bytes()
    except OSError as exc:
        return None, [Diagnostic(name, 1, 1, f"cannot read file: {exc.strerror}")]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, [Diagnostic(name, 1, 1, f"file is not valid UTF-8 (byte {exc.start})")]
    return load_text(text, name)
