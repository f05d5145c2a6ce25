"""SPIRE registration entries against the policies' identity bindings (``aam identity check``).

A workload is allowed only what the AgentPolicy bound to its SPIFFE ID grants, and it gets
that SPIFFE ID only if SPIRE has a registration entry for it. The two are kept by different
people; this compares them: policies whose workload SPIRE never issues (dead policies, or a
typo in either), entries no policy binds (workloads that will be denied everything), and the
pairs that match. Entries come from ``spire-server entry show -output json`` (run here, or
saved to a file) and are never changed.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compiler.model import AgentPolicy
from pdp.settingbase import DEFAULT_TOOLS_DIR

MAX_ENTRIES_BYTES = 64 * 1024 * 1024  # a saved `entry show` is read whole: cap it


class EntriesError(Exception):
    """Registration entries that could not be read: SPIRE unreachable, or not its JSON."""


@dataclass(frozen=True)
class Entry:
    """One registration entry, as much of it as the check shows."""

    id: str
    spiffe_id: str
    parent_id: str
    selectors: tuple[str, ...]  # "type:value", e.g. k8s:ns:finance

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "spiffe_id": self.spiffe_id, "parent_id": self.parent_id,
                "selectors": list(self.selectors)}


@dataclass(frozen=True)
class Binding:
    """An AgentPolicy's identity binding: its name, workload SPIFFE ID and file."""

    policy: str
    workload: str
    file: str

    @classmethod
    def of(cls, policy: AgentPolicy) -> Binding:
        return cls(policy.name, policy.workload, policy.doc.file)


@dataclass(frozen=True)
class Match:
    binding: Binding
    entries: tuple[Entry, ...]


@dataclass(frozen=True)
class Report:
    matched: tuple[Match, ...]
    policies_without_entry: tuple[Binding, ...]
    entries_without_policy: tuple[Entry, ...]
    ignored: tuple[Entry, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.policies_without_entry and not self.entries_without_policy

    def to_json(self) -> dict[str, Any]:
        def binding(b: Binding) -> dict[str, str]:
            return {"policy": b.policy, "workload": b.workload, "file": b.file}

        return {
            "ok": self.ok,
            "matched": [{**binding(m.binding), "entries": [e.to_json() for e in m.entries]}
                        for m in self.matched],
            "policies_without_entry": [binding(b) for b in self.policies_without_entry],
            "entries_without_policy": [e.to_json() for e in self.entries_without_policy],
            "ignored": [e.to_json() for e in self.ignored],
        }


def _spiffe_id(value: Any) -> str:
    """``{"trust_domain": "prod", "path": "/agent/x"}`` (SPIRE's API shape) or a string."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("trust_domain"), str):
        return f"spiffe://{value['trust_domain']}{value.get('path') or ''}"
    raise EntriesError(f"not a SPIFFE ID: {value!r}")


def parse_entries(data: Any) -> list[Entry]:
    """The entries of ``spire-server entry show -output json`` (``{"entries": [...]}``), or a
    bare list of them; each must have an id and a SPIFFE ID."""
    raw = data.get("entries") if isinstance(data, dict) else data
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise EntriesError('expected the JSON of "spire-server entry show -output json" '
                           '(an object with "entries")')
    out = []
    for i, e in enumerate(raw):
        if not isinstance(e, dict) or "spiffe_id" not in e:
            raise EntriesError(f"entry {i}: not a registration entry (no spiffe_id)")
        selectors = tuple(sorted(f"{s.get('type')}:{s.get('value')}"
                                 for s in e.get("selectors") or () if isinstance(s, dict)))
        parent = e.get("parent_id")
        out.append(Entry(str(e.get("id", "")), _spiffe_id(e["spiffe_id"]),
                         _spiffe_id(parent) if parent else "", selectors))
    return out


def read_entries(path: Path) -> list[Entry]:
    """Entries saved from ``spire-server entry show -output json`` (``-`` not supported)."""
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_ENTRIES_BYTES + 1)
    except OSError as exc:
        raise EntriesError(f"{path}: cannot read: {exc.strerror}") from None
    if len(text) > MAX_ENTRIES_BYTES:
        raise EntriesError(f"{path}: larger than {MAX_ENTRIES_BYTES} bytes")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise EntriesError(f"{path}: not JSON: {exc}") from None
    try:
        return parse_entries(data)
    except EntriesError as exc:
        raise EntriesError(f"{path}: {exc}") from None


def spire_server_binary(configured: str = "") -> str:
    """``configured``, else ``spire-server`` on PATH, else the tools dir scripts/setup fills."""
    candidates = [configured] if configured else [
        shutil.which("spire-server") or "", str(DEFAULT_TOOLS_DIR / "bin" / "spire-server")]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    raise EntriesError("spire-server not found (looked in "
                       f"{', '.join(c for c in candidates if c) or 'PATH'}); "
                       "give --spire-server, or save the entries and give --entries")


def fetch_entries(socket: Path, binary: str = "", timeout_s: float = 30.0) -> list[Entry]:
    """Every entry of the SPIRE server behind its admin ``socket``, as
    ``spire-server entry show -output json -socketPath SOCKET`` lists them."""
    argv = [spire_server_binary(binary), "entry", "show", "-output", "json",
            "-socketPath", str(socket)]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EntriesError(f"spire-server entry show: {exc}") from None
    if out.returncode != 0:
        detail = (out.stderr or out.stdout).strip().splitlines()
        raise EntriesError(f"spire-server entry show failed (exit {out.returncode}): "
                           f"{detail[-1] if detail else 'no output'}")
    try:
        return parse_entries(json.loads(out.stdout))
    except ValueError as exc:
        raise EntriesError(f"spire-server entry show: not JSON: {exc}") from None


def check(policies: Iterable[AgentPolicy], entries: Sequence[Entry],
          ignore: Sequence[str] = ()) -> Report:
    """Compare bindings with entries by exact SPIFFE ID. ``ignore``: glob patterns of SPIFFE
    IDs that are not agents (the gateway, the PDP, ...): their entries need no policy."""
    bindings = sorted({Binding.of(p) for p in policies if not p.shadow},
                      key=lambda b: (b.workload, b.policy))
    by_id: dict[str, list[Entry]] = {}
    for e in sorted(entries, key=lambda e: (e.spiffe_id, e.id)):
        by_id.setdefault(e.spiffe_id, []).append(e)
    bound = {b.workload for b in bindings}
    matched = tuple(Match(b, tuple(by_id[b.workload])) for b in bindings if b.workload in by_id)
    missing = tuple(b for b in bindings if b.workload not in by_id)
    unbound = [e for sid, es in sorted(by_id.items()) if sid not in bound for e in es]
    ignored = tuple(e for e in unbound if any(fnmatch.fnmatchcase(e.spiffe_id, p) for p in ignore))
    return Report(matched, missing, tuple(e for e in unbound if e not in ignored), ignored)
