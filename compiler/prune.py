"""A schema-invalid document cut down to the part semantic checks can trust.

One compile reports schema and semantic errors together, so a file with four
mistakes needs one run, not two. Semantic checks (and the model classes they
read) assume schema-valid input, so they must never see a value the schema
refused. Every refused value is therefore cut out, and what remains is
validated again: a cut can leave its parent short of a required field, and
then the parent goes too, up to the document itself (then it is unusable).

Only the schema errors of the document as written are reported; what the
re-validation finds are consequences of the cuts. Two kinds of error cut less:

- an unknown field has no meaning: only that key is cut, never its parent;
- a value of the right type that breaks a pattern or a bound (a name with
  upper-case letters, a negative price) is kept: the checks compare and print
  such a value without parsing it, and a check on it (a duplicate name, a
  reference to a misspelled model) is still worth reporting.

Other documents may name a document with a schema error (a ModelRoute by its
name, a Tool by its resource): ``PolicySet.incomplete`` lists those, and a
reference to one is not judged by what the cut-down copy lacks.

Cutting list items moves the items after them up; the copy keeps every node's
position from the file and its path as written (:meth:`Document.written`), and
which containers lost a part (:meth:`Document.is_damaged`), so a check that
judges a node by what it lacks ("sets no rule") can skip a node the cut emptied.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jsonschema

from compiler.source import MAX_DEPTH, Document, Path_

# Validators whose failure leaves a value of the right type that checks may read.
KEPT = frozenset({"pattern", "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum",
                  "exclusiveMaximum", "multipleOf"})

Validate = Callable[[Any], Iterable[jsonschema.ValidationError]]


def _cuts(err: jsonschema.ValidationError) -> list[Path_]:
    """The paths one schema error makes meaningless."""
    path = tuple(err.absolute_path)
    if "propertyNames" in err.absolute_schema_path:
        return []  # a badly spelled map key is still a string key
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = err.schema.get("properties", {})
        return [(*path, k) for k in err.instance if k not in allowed]
    if err.validator in KEPT:
        return []
    return [path]


def _rebuild(value: Any, cut: set[Path_]) -> tuple[Any, dict[Path_, Path_]]:
    """``value`` without the nodes at ``cut``, and each kept node's old path -> new path."""
    moved: dict[Path_, Path_] = {}

    def walk(v: Any, old: Path_, new: Path_) -> Any:
        moved[old] = new
        if isinstance(v, dict):
            return {k: walk(x, (*old, k), (*new, k)) for k, x in v.items() if (*old, k) not in cut}
        if isinstance(v, list):
            out: list[Any] = []
            for i, x in enumerate(v):
                if (*old, i) not in cut:
                    out.append(walk(x, (*old, i), (*new, len(out))))
            return out
        return v

    return walk(value, (), ()), moved


def usable_part(doc: Document, errors: Iterable[jsonschema.ValidationError],
                validate: Validate) -> Document | None:
    """The largest schema-valid part of ``doc`` (``doc`` itself when nothing needs
    cutting), or None when the document as a whole is unusable."""
    cut: set[Path_] = set()
    moved: dict[Path_, Path_] = {}  # path as written -> path in the cut-down value
    back: dict[Path_, Path_] = {}  # and back
    pending = list(errors)
    value = doc.value
    # Each round cuts at least one node closer to the root: depth bounds the rounds.
    for _ in range(MAX_DEPTH + 2):
        new = {_written(back, p) for err in pending for p in _cuts(err)} - cut
        if not new:
            break
        if () in new:
            return None
        cut |= new
        value, moved = _rebuild(doc.value, cut)
        back = {v: k for k, v in moved.items()}
        pending = list(validate(value))
    else:
        return None
    if not cut:
        return doc
    damaged = set()
    for p in cut:
        parent = p[:-1]
        while parent not in moved:
            parent = parent[:-1]
        damaged.add(moved[parent])
    return Document(
        doc.file, doc.index, value, doc.line, doc.col,
        positions={moved[p]: pos for p, pos in doc.positions.items() if p in moved},
        key_positions={moved[p]: pos for p, pos in doc.key_positions.items() if p in moved},
        bundle_name=doc.bundle_name,
        origin={new: old for old, new in moved.items() if new != old},
        damaged=frozenset(damaged),
    )


def _written(back: dict[Path_, Path_], path: Path_) -> Path_:
    """A path of the current cut-down value as written in the file."""
    for n in range(len(path), -1, -1):
        head = path[:n]
        if head in back:
            return back[head] + path[n:]
    return path
