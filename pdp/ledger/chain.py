"""The audit hash chain: the one formula both stores write with, and its verifier.

Row N (key id K, canonical JSON body B) stores, in hex::

    hash[N] = HMAC-SHA256(key K, "aam-audit-v1\\n" + hash[N-1] + "\\n" + N + "\\n" + K + "\\n" + B)

with ``hash[0]`` = 64 zeros. The key lives only in the PDP (``audit_key_file``):
the PDP computes every HMAC itself and sends the database the result, never
the key, so a database superuser who rewrites a row cannot compute a hash that
verifies; changing, deleting or moving any row breaks the chain at that row.

Rows written before the chain was keyed (key id ``""``, migrations postgres
0004 / sqlite 0002) keep the public formula ``SHA-256(hash[N-1] \\n N \\n B)``.
Anyone can recompute those, so verify reports them as legacy; the first keyed
row chains to the last legacy hash, which protects the legacy rows from then
on. An unkeyed row after a keyed one is never accepted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from pdp.ledger.keyring import AuditKey, Keyring
from pdp.ledger.types import GENESIS, AuditRow

LEGACY = ""  # the key id of rows written before the chain was keyed
# Bad rows searched for the seq they were written at (a move, not an edit): a chain
# re-hashed from some row on would otherwise cost 128 HMACs for every later row.
SEARCH_BUDGET = 1024
_TAG = "aam-audit-v1"


def keyed_hash(key: AuditKey, prev_hash: str, seq: int, body: str) -> str:
    """The hash of a new row: the only formula the PDP writes with."""
    return key.mac(f"{_TAG}\n{prev_hash}\n{seq}\n{key.id}\n{body}")


def legacy_hash(prev_hash: str, seq: int, body: str) -> str:
    """The public formula of rows written before keying (verify only)."""
    return hashlib.sha256(f"{prev_hash}\n{seq}\n{body}".encode()).hexdigest()


def canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


@dataclass(frozen=True)
class Link:
    """Where one new row goes in the chain."""

    seq: int
    prev_hash: str
    hash: str


def link(head_seq: int, head_hash: str, key: AuditKey, bodies: Iterable[str]) -> list[Link]:
    """Chain ``bodies`` after the head (seq, hash) under ``key``, in order."""
    out: list[Link] = []
    seq, prev = head_seq, head_hash
    for body in bodies:
        seq += 1
        h = keyed_hash(key, prev, seq, body)
        out.append(Link(seq, prev, h))
        prev = h
    return out


@dataclass(frozen=True)
class Problem:
    seq: int
    decision_id: str
    kind: str  # modified | deleted | reordered | unkeyed
    message: str

    def __str__(self) -> str:
        return f"seq {self.seq} (decision {self.decision_id or '?'}): {self.kind}: {self.message}"


@dataclass(frozen=True)
class Span:
    """A run of rows: how many, first and last seq."""

    count: int
    first: int
    last: int

    def __str__(self) -> str:
        return f"{self.count} row(s), seq {self.first}..{self.last}"


@dataclass
class Report:
    rows: int = 0
    problems: list[Problem] = field(default_factory=list)
    legacy: Span | None = None  # unkeyed rows before the first keyed row: public formula only
    unverified: Span | None = None  # keyed rows whose HMAC was not checked (no keyring)
    keys: dict[str, int] = field(default_factory=dict)  # keyed rows per key id
    at: dict[int, tuple[str, str]] = field(default_factory=dict)  # seq -> (hash, decision id)
    last_seq: int = 0


def verify(rows: Iterable[AuditRow], keyring: Keyring) -> tuple[int, list[Problem]]:
    """Walk the chain under ``keyring``; return the rows checked and every problem found."""
    report = check(rows, keyring)
    return report.rows, report.problems


def check(rows: Iterable[AuditRow], keyring: Keyring | None) -> Report:
    """Walk the chain in seq order. Without a keyring only the public structure of keyed
    rows (order, links, columns against bodies) is checked; ``unverified`` says which."""
    rows = list(rows)
    by_hash = {r.hash: r.seq for r in rows}
    rep = Report(rows=len(rows))
    prev_seq, prev_hash, prev_legacy = 0, GENESIS, False
    keyed_seen = False
    legacy: list[int] = []
    unverified: list[int] = []
    searches = SEARCH_BUDGET
    for r in rows:
        rep.at[r.seq] = (r.hash, r.decision_id)
        rep.last_seq = r.seq
        problem = _unkeyed(r, keyring, keyed_seen)
        keyed_seen = keyed_seen or r.key_id != LEGACY
        if problem is not None:
            rep.problems.append(problem)
            prev_seq, prev_hash, prev_legacy = r.seq, r.hash, False
            continue
        if r.key_id == LEGACY:
            legacy.append(r.seq)
        elif keyring is None:
            unverified.append(r.seq)
        else:
            rep.keys[r.key_id] = rep.keys.get(r.key_id, 0) + 1
        # Without a keyring a keyed row's own hash cannot be checked: only its columns.
        hash_ok = (keyring is None and r.key_id != LEGACY) or _hash_of(r, r.seq, keyring) == r.hash
        columns_ok = _columns_match(r)
        own_ok = hash_ok and columns_ok
        if r.seq != prev_seq + 1:
            missing = f"{prev_seq + 1}" if r.seq == prev_seq + 2 else f"{prev_seq + 1}..{r.seq - 1}"
            rep.problems.append(Problem(r.seq, r.decision_id, "deleted",
                                        f"row(s) {missing} before this one are missing"))
        elif not own_ok:
            written_at = None
            if searches > 0 and columns_ok:
                searches -= 1
                written_at = _written_at(r, keyring)
            if written_at is not None:
                rep.problems.append(Problem(r.seq, r.decision_id, "reordered",
                                            f"this row was written at seq {written_at}"))
            else:
                rep.problems.append(Problem(r.seq, r.decision_id, "modified",
                                            "contents do not match the row's hash"
                                            + _recomputed(r)))
        elif r.prev_hash != prev_hash:
            after = by_hash.get(r.prev_hash)
            if after is not None:
                rep.problems.append(Problem(r.seq, r.decision_id, "reordered",
                                            f"chains to seq {after}, not to seq {prev_seq}"))
            else:
                rep.problems.append(Problem(
                    r.seq, r.decision_id, "modified",
                    "does not chain to the previous row's hash"
                    + (f" (seq {prev_seq} or a legacy row before it was changed and re-hashed"
                       " with the public formula)" if prev_legacy and r.key_id != LEGACY else "")))
        prev_seq, prev_hash, prev_legacy = r.seq, r.hash, r.key_id == LEGACY
    rep.legacy = _span(legacy)
    rep.unverified = _span(unverified)
    return rep


def _unkeyed(r: AuditRow, keyring: Keyring | None, keyed_seen: bool) -> Problem | None:
    """A row not keyed by a known key: unkeyed after keyed rows, or an unknown key id."""
    if r.key_id == LEGACY and keyed_seen:
        return Problem(r.seq, r.decision_id, "unkeyed",
                       "an unkeyed row (public SHA-256 formula, which anyone can compute) "
                       "after keyed rows")
    if r.key_id != LEGACY and keyring is not None and keyring.get(r.key_id) is None:
        return Problem(r.seq, r.decision_id, "unkeyed",
                       f"key id {r.key_id!r} is not in the keyring")
    return None


def _hash_of(r: AuditRow, seq: int, keyring: Keyring | None) -> str | None:
    """What the row's hash should be if it had been written at ``seq``."""
    if r.key_id == LEGACY:
        return legacy_hash(r.prev_hash, seq, r.body)
    key = keyring.get(r.key_id) if keyring is not None else None
    return keyed_hash(key, r.prev_hash, seq, r.body) if key is not None else None


def _recomputed(r: AuditRow) -> str:
    if r.key_id != LEGACY and legacy_hash(r.prev_hash, r.seq, r.body) == r.hash:
        return " (its hash was recomputed with the public unkeyed formula)"
    return ""


def _written_at(r: AuditRow, keyring: Keyring | None, reach: int = 64) -> int | None:
    """The seq an intact row that moved was written at (searched near where it is now)."""
    if r.key_id != LEGACY and (keyring is None or keyring.get(r.key_id) is None):
        return None
    for seq in range(max(1, r.seq - reach), r.seq + reach + 1):
        if seq != r.seq and _hash_of(r, seq, keyring) == r.hash:
            return seq
    return None


def _span(seqs: list[int]) -> Span | None:
    return Span(len(seqs), seqs[0], seqs[-1]) if seqs else None


def _columns_match(r: AuditRow) -> bool:
    """The queryable columns must say what the hashed body says."""
    try:
        body = json.loads(r.body)
        same_ts = datetime.fromisoformat(body["ts"]) == datetime.fromisoformat(r.ts)
    except (ValueError, KeyError, TypeError):
        return False
    return same_ts and (body.get("decision_id"), body.get("workload"), body.get("outcome")) == (
        r.decision_id, r.workload, r.outcome)
