"""YAML loading with a source position for every node.

PyYAML's composer gives node marks; we build plain Python values from the
node graph ourselves so that every value and every mapping key keeps its
``line:col``, duplicate keys are caught, and hostile input (alias bombs,
recursive anchors, huge nesting) is refused with a located error instead of
a hang or a traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from compiler.errors import Diagnostic

try:  # LibYAML is much faster on large policy sets; fall back when absent.
    _Base: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on the PyYAML build
    _Base = yaml.SafeLoader


class _Loader(_Base):  # type: ignore[misc,valid-type]
    """Caches implicit tag resolution within a :func:`tag_cache` block: policy sets
    repeat the same keys and values thousands of times, and PyYAML resolves each
    scalar with regexes."""

    _tags: ClassVar[dict[tuple[str, tuple[bool, bool]], str] | None] = None

    def resolve(self, kind: type, value: Any, implicit: Any) -> str:
        # No path resolvers are registered, so collections get the default tags.
        if kind is yaml.MappingNode:
            return self.DEFAULT_MAPPING_TAG
        if kind is yaml.SequenceNode:
            return self.DEFAULT_SEQUENCE_TAG
        tags = self._tags
        if tags is not None and implicit is not None and len(value) < 64:
            key = (value, tuple(implicit))
            tag = tags.get(key)
            if tag is None:
                tag = super().resolve(kind, value, implicit)
                if len(tags) < 65536:
                    tags[key] = tag
            return tag
        return super().resolve(kind, value, implicit)


@contextlib.contextmanager
def tag_cache() -> Iterator[None]:
    """Cache tag resolution for one compile, and drop the cache after it.

    Kept for the life of the process, its keys (scalar values from every file)
    pinned the compile's memory: pymalloc returns an arena to the system only
    once every object in it is gone. A PDP that compiled 10,000 policies kept
    236 MB; without the cache past the compile, 83 MB (bench.run "scale")."""
    _Loader._tags = {}
    try:
        yield
    finally:
        _Loader._tags = None

MAX_NODES = 1_000_000
MAX_DEPTH = 64
MAX_FILE_BYTES = 16 * 1024 * 1024

Path_ = tuple[str | int, ...]
_STR = "tag:yaml.org,2002:str"
_SCALAR_TYPES = {
    "tag:yaml.org,2002:null": lambda v: None,
    "tag:yaml.org,2002:bool": lambda v: v.lower() in ("true", "yes", "on"),
    "tag:yaml.org,2002:str": str,
}


@dataclass
class Document:
    """One YAML document of a policy file, with positions by path."""

    file: str
    index: int
    value: Any
    line: int
    col: int
    positions: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    key_positions: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    # The file's name inside the policy set (relative to the directory compiled),
    # for the source map in the bundle; "" means the base name of ``file``.
    bundle_name: str = ""
    # Set on a copy cut down to its schema-valid part (compiler/prune.py): paths of
    # that copy -> paths as written, and the containers that lost a part.
    origin: dict[Path_, Path_] | None = None
    damaged: frozenset[Path_] = frozenset()

    def at(self, path: Path_, *, key: bool = False) -> tuple[int, int]:
        """Position of the node at ``path``, or of its closest ancestor."""
        table = self.key_positions if key else self.positions
        p = tuple(path)
        while p:
            if p in table:
                return table[p]
            if key and p in self.positions:
                return self.positions[p]
            p = p[:-1]
        return (self.line, self.col)

    def error(self, path: Path_, message: str, *, key: bool = False) -> Diagnostic:
        line, col = self.at(path, key=key)
        return Diagnostic(self.file, line, col, message)

    def written(self, path: Path_) -> str:
        """``path`` as the author wrote it (``spec.tools[2]``), also in a cut-down copy
        whose list items moved up when an invalid one before them was cut."""
        original = self.origin.get(tuple(path), tuple(path)) if self.origin is not None else path
        out = ""
        for part in original:
            out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
        return out

    def is_damaged(self, prefix: Path_ = ()) -> bool:
        """Whether a schema error cut something out of the node at ``prefix`` or below:
        checks that judge a node by what it lacks skip such a node."""
        n = len(prefix)
        return any(d[:n] == tuple(prefix) for d in self.damaged)

    @property
    def source_name(self) -> str:
        return self.bundle_name or Path(self.file).name


class _Builder:
    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.nodes = 0
        self.errors: list[Diagnostic] = []
        self.scalar = yaml.constructor.SafeConstructor()

    def _pos(self, node: yaml.Node) -> tuple[int, int]:
        return (node.start_mark.line + 1, node.start_mark.column + 1)

    def _fail(self, node: yaml.Node, message: str) -> None:
        line, col = self._pos(node)
        self.errors.append(Diagnostic(self.doc.file, line, col, message))

    def build(self, node: yaml.Node, path: Path_, active: set[int]) -> Any:
        # The hot loop of a compile (one call per YAML node): kept flat on purpose.
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _Abort(node, f"document expands to more than {MAX_NODES} nodes (alias bomb?)")
        if len(path) > MAX_DEPTH:
            raise _Abort(node, f"nesting deeper than {MAX_DEPTH} levels")
        mark = node.start_mark
        self.doc.positions[path] = (mark.line + 1, mark.column + 1)
        cls = node.__class__
        if cls is yaml.ScalarNode:
            if node.tag == _STR:
                return node.value
            return self._scalar(node)
        key = id(node)
        if key in active:
            raise _Abort(node, "recursive YAML alias")
        active.add(key)
        try:
            if cls is yaml.MappingNode:
                return self._mapping(node, path, active)
            return [self.build(item, (*path, i), active) for i, item in enumerate(node.value)]
        finally:
            active.discard(key)

    def _mapping(self, node: yaml.MappingNode, path: Path_, active: set[int]) -> dict:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                self._fail(key_node, "YAML merge keys ('<<') are not supported in policies")
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self._fail(key_node, "mapping keys must be plain strings")
                continue
            key = str(key_node.value)
            if key in out:
                first = self.doc.key_positions[(*path, key)]
                self._fail(key_node, f"duplicate key {key!r} (first defined at line {first[0]})")
                continue
            mark = key_node.start_mark
            child = (*path, key)
            self.doc.key_positions[child] = (mark.line + 1, mark.column + 1)
            out[key] = self.build(value_node, child, active)
        return out

    def _scalar(self, node: yaml.ScalarNode) -> Any:
        convert = _SCALAR_TYPES.get(node.tag)
        if convert is not None:
            return convert(node.value)
        if node.tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float"):
            try:
                return self.scalar.construct_object(node)
            except (ValueError, yaml.YAMLError):
                self._fail(node, f"invalid number {node.value!r}")
                return None
        # Timestamps, binary and custom tags stay as their source text: policies
        # have no use for them and strings produce clear schema errors.
        return str(node.value)


class _Abort(Exception):
    def __init__(self, node: yaml.Node, message: str) -> None:
        self.node = node
        self.message = message


def _line_col(text: str, position: int) -> tuple[int, int]:
    before = text[:position]
    return before.count("\n") + 1, position - (before.rfind("\n") + 1) + 1


def _source_line(text: str, mark: Any) -> str:
    lines = text.split("\n")
    return lines[mark.line] if mark is not None and 0 <= mark.line < len(lines) else ""


def _lined_up(mark: Any) -> str:
    return f", lined up with line {mark.line + 1} (column {mark.column + 1})" if mark is not None else ""


def _opened(opener: str, mark: Any) -> str:
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"unclosed {opener}{where}"


# (words of PyYAML's problem or context, the sentence a user needs), first match wins;
# the phrases of both the C parser (LibYAML) and the pure-Python one, since the C one
# is used when present.
_PLAIN: tuple[tuple[str, str], ...] = (
    ("sequence entries are not allowed",
     "a list item ('- ') is not allowed here (put the list on its own lines, indented under its key)"),
    ("node content", "a value is missing here (is a '[' or '{' left unclosed, or is there a stray ','?)"),
    ("unexpected end of stream", "the file ends in the middle of a value"),
    ("undefined alias", "undefined alias: a '*name' needs an '&name' anchor before it"
     " (quote a value that starts with '*')"),
    ("duplicate anchor", "duplicate anchor name"),
    ("escape character", "unknown escape sequence in a double-quoted string"
     " (write \\\\ for a backslash, or use single quotes)"),
    ("alphabetic or numeric character", "an anchor or alias needs a name"
     " (quote a value that starts with '&' or '*')"),
    ("could not find expected ':'", "this key has no ':' (or a key spans more than one line)"),
    ("block scalar", "bad block scalar header after '|' or '>'"),
    ("tag handle", "unknown tag (quote a value that starts with '!')"),
    ("directive", "unknown directive (quote a value that starts with '%')"),
    ("document start", "content after the end of a document (is a '---' missing, or a line indented"
     " wrongly?)"),
)


def _syntax_message(exc: yaml.MarkedYAMLError, text: str) -> tuple[Any, str]:
    """The mark to report and one plain sentence for a YAML syntax error.

    PyYAML's own text ("expected <block end>, but found '<block mapping
    start>'", LibYAML's "did not find expected key") names parser states, not
    the mistake; these are the mistakes that produce each."""
    problem, context = exc.problem or "", exc.context or ""
    mark, start = exc.problem_mark, exc.context_mark
    line = _source_line(text, mark)
    col = mark.column if mark is not None else 0
    head, rest = line[:col], line[col:]
    block_end = "expected <block end>" in problem
    if "tab" in problem or rest.startswith("\t"):
        return mark, "a tab character where YAML needs spaces (indent with spaces only)"
    if "mapping values are not allowed" in problem:
        if ": " in head or head.rstrip().endswith(":"):
            return mark, ("a second ': ' on this line (quote a value that contains ': ',"
                          " or put a nested mapping on its own indented lines)")
        return mark, ("a mapping value is not allowed here (is a colon missing a space, or missing"
                      " on the line above, or is the line indented wrongly?)")
    if "did not find expected key" in problem or (block_end and "block mapping" in context):
        if rest.lstrip().startswith("-"):
            return mark, ("bad indentation: a list item where a mapping entry ('key: value')"
                          f" was expected{_lined_up(start)}")
        return mark, f"bad indentation: expected a mapping entry ('key: value'){_lined_up(start)}"
    if "expected '-' indicator" in problem or (block_end and "block collection" in context):
        return mark, f"bad indentation: expected a list item ('- ...'){_lined_up(start)}"
    for opener, closer in (("'['", "']'"), ("'{'", "'}'")):
        if f"',' or {closer}" in problem:
            if rest.startswith(":") and start is not None and start.line == mark.line:
                return mark, f"a second ':' inside {opener}...{closer} (quote a value that contains ': ')"
            return mark, f"{_opened(opener, start)}: expected ',' or {closer}"
    if "unexpected end of stream" in problem and "quoted scalar" in context:
        return start or mark, "unclosed quote: this string never ends"
    if "cannot start any token" in problem:
        return mark, f"{rest[:1] or '?'!r} cannot start a plain value (quote the value)"
    for words, sentence in _PLAIN:
        if words in problem or words in context:
            return mark or start, sentence
    first = (problem or context or "unreadable").strip().splitlines()[0]
    return mark or start, f"invalid YAML: {first}"


def syntax_error(exc: yaml.MarkedYAMLError, text: str, file: str) -> Diagnostic:
    """One located, one-line diagnostic for a YAML syntax error, never PyYAML's dump."""
    mark, message = _syntax_message(exc, text)
    line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    return Diagnostic(file, line, col, message)


def load_text(text: str, file: str) -> tuple[list[Document], list[Diagnostic]]:
    """Parse a multi-document YAML text; return documents and located errors."""
    docs: list[Document] = []
    errors: list[Diagnostic] = []
    try:
        nodes = list(yaml.compose_all(text, Loader=_Loader))
    except yaml.MarkedYAMLError as exc:
        return [], [syntax_error(exc, text, file)]
    except yaml.reader.ReaderError as exc:
        line, col = _line_col(text, exc.position)
        return [], [Diagnostic(file, line, col, f"character U+{exc.character:04X} is not allowed in YAML"
                               " (control characters must be escaped in a double-quoted string)")]
    except (yaml.YAMLError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
        return [], [Diagnostic(file, 1, 1, f"invalid YAML: {first}")]
    except RecursionError:
        return [], [Diagnostic(file, 1, 1, "invalid YAML: nesting too deep")]
    for index, node in enumerate(nodes):
        if node is None:
            continue
        line, col = node.start_mark.line + 1, node.start_mark.column + 1
        doc = Document(file, index, None, line, col)
        builder = _Builder(doc)
        try:
            doc.value = builder.build(node, (), set())
        except _Abort as abort:
            builder._fail(abort.node, abort.message)
        except RecursionError:
            builder._fail(node, f"nesting deeper than {MAX_DEPTH} levels")
        errors.extend(builder.errors)
        if not builder.errors:
            docs.append(doc)
    return docs, errors


def load_file(path: Path, display: str | None = None) -> tuple[list[Document], list[Diagnostic]]:
    name = display or str(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            return [], [Diagnostic(name, 1, 1, f"file is larger than {MAX_FILE_BYTES} bytes")]
        raw = path.read_bytes()
    except OSError as exc:
        return [], [Diagnostic(name, 1, 1, f"cannot read file: {exc.strerror}")]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [], [Diagnostic(name, 1, 1, f"file is not valid UTF-8 (byte {exc.start})")]
    return load_text(text, name)


def discover(paths: list[Path]) -> list[Path]:
    """Policy files under the given paths, sorted so output is reproducible.

    Hidden files and directories are not policies: a Kubernetes ConfigMap volume holds
    each file twice, as ``name.yaml`` and inside the kubelet's ``..data`` /
    ``..<timestamp>`` directories, and editors leave ``.name.yaml.swp``-style files."""
    found: set[Path] = set()
    for p in paths:
        if p.is_dir():
            found.update(
                f for f in p.rglob("*") if f.suffix in (".yaml", ".yml") and f.is_file()
                and not f.name.endswith((".test.yaml", ".test.yml"))
                and "tests" not in f.relative_to(p).parts[:-1]
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
        else:
            found.add(p)
    return sorted(found)
