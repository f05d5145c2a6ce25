"""The audit hash chain: one formula shared by the stores, and its verifier.

Row N's hash is SHA-256 over the previous row's hash, N and the row's
canonical JSON body, so changing, deleting or moving any row breaks the chain
at that row. PostgreSQL computes the same formula in SQL (``aam_finish``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from pdp.ledger.types import GENESIS, AuditRow


def row_hash(prev_hash: str, seq: int, body: str) -> str:
    return hashlib.sha256(f"{prev_hash}\n{seq}\n{body}".encode()).hexdigest()


def canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


@dataclass(frozen=True)
class Problem:
    seq: int
    decision_id: str
    kind: str  # modified | deleted | reordered
    message: str

    def __str__(self) -> str:
        return f"seq {self.seq} (decision {self.decision_id or '?'}): {self.kind}: {self.message}"


def verify(rows: Iterable[AuditRow]) -> tuple[int, list[Problem]]:
    """Walk the chain in seq order; return the rows checked and every problem found."""
    rows = list(rows)
    by_hash = {r.hash: r.seq for r in rows}
    problems: list[Problem] = []
    prev_seq, prev_hash = 0, GENESIS
    for r in rows:
        own_ok = row_hash(r.prev_hash, r.seq, r.body) == r.hash and _columns_match(r)
        if r.seq != prev_seq + 1:
            missing = f"{prev_seq + 1}" if r.seq == prev_seq + 2 else f"{prev_seq + 1}..{r.seq - 1}"
            problems.append(Problem(r.seq, r.decision_id, "deleted",
                                    f"row(s) {missing} before this one are missing"))
        elif not own_ok:
            written_at = _written_at(r) if _columns_match(r) else None
            if written_at is not None:
                problems.append(Problem(r.seq, r.decision_id, "reordered",
                                        f"this row was written at seq {written_at}"))
            else:
                problems.append(Problem(r.seq, r.decision_id, "modified",
                                        "contents do not match the row's hash"))
        elif r.prev_hash != prev_hash:
            after = by_hash.get(r.prev_hash)
            if after is not None:
                problems.append(Problem(r.seq, r.decision_id, "reordered",
                                        f"chains to seq {after}, not to seq {prev_seq}"))
            else:
                problems.append(Problem(r.seq, r.decision_id, "modified",
                                        "does not chain to the previous row's hash"))
        prev_seq, prev_hash = r.seq, r.hash
    return len(rows), problems


def _written_at(r: AuditRow, reach: int = 64) -> int | None:
    """The seq an intact row that moved was written at (searched near where it is now)."""
    for seq in range(max(1, r.seq - reach), r.seq + reach + 1):
        if seq != r.seq and row_hash(r.prev_hash, seq, r.body) == r.hash:
            return seq
    return None


def _columns_match(r: AuditRow) -> bool:
    """The queryable columns must say what the hashed body says."""
    try:
        body = json.loads(r.body)
        same_ts = datetime.fromisoformat(body["ts"]) == datetime.fromisoformat(r.ts)
    except (ValueError, KeyError, TypeError):
        return False
    return same_ts and (body.get("decision_id"), body.get("workload"), body.get("outcome")) == (
        r.decision_id, r.workload, r.outcome)
