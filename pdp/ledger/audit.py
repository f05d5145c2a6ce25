"""Audit rows as the engine writes them: a decision's body, an identity refusal, the backlog.

What a decision's row holds is what its policy records (``audit.record``), plus the
fields every row has. Rows of decisions answered ``ledger_unavailable`` wait in a
bounded in-memory :class:`Backlog` until the ledger takes a write again.
"""

from __future__ import annotations

import threading
import uuid
from collections import deque
from datetime import UTC, datetime
from typing import Any

from pdp.compiled import CompiledPolicy
from pdp.ledger import Ledger, LedgerError
from pdp.ledger.chain import canonical
from pdp.ledger.types import AuditEntry, usd

# Recorded when the policy does not say (or there is no policy).
DEFAULT_RECORD = ("identity", "policy", "action", "outcome", "reasons")
# Request items a decision is replayed from; named under "redacted" when the policy
# does not record one the request had.
REPLAYED = ("action", "params", "context")
# Decisions answered ledger_unavailable, kept to audit once the ledger is back.
BACKLOG = 10_000


def record_of(policy: CompiledPolicy | None) -> tuple[str, ...]:
    """The fields a decision under ``policy`` records."""
    return (policy.record or DEFAULT_RECORD) if policy is not None else DEFAULT_RECORD


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def entry(decision_id: str, fields: dict[str, Any], allow: bool,
          record: tuple[str, ...] = DEFAULT_RECORD, cost_micro: int = 0,
          tokens: int = 0) -> AuditEntry:
    """A decision's row: the ``record`` items of ``fields`` (the engine's audit fields),
    and what the ledger estimated when ``cost`` is one of them."""
    ts = _now()
    body = {"ts": ts, "decision_id": decision_id, "workload": fields["workload"],
            "outcome": "allow" if allow else "deny", "revision": fields.get("revision", "")}
    for item in record:
        if item == "identity":
            body["identity"] = {"spiffe_id": fields["workload"]}
        elif item == "cost":
            body["cost"] = {"estimate_usd": usd(cost_micro), "estimate_tokens": tokens}
        elif item in fields:
            body[item] = fields[item]
    if fields.get("lease_accessor"):
        body["lease_accessor"] = fields["lease_accessor"]
    # What OPA decided on besides the request, kept whatever the policy records, so
    # `aam replay` can decide the row again; the request items it may not keep are named.
    if "estimate" in fields:
        body["estimate"] = fields["estimate"]
    if fields.get("state") is not None:
        body["state"] = fields["state"]
    redacted = [item for item in REPLAYED if item not in record and fields.get(item)]
    if redacted:
        body["redacted"] = redacted
    if fields.get("shadow"):  # a shadow policy's disagreeing answer (pdp/shadow.py), always kept
        body["shadow"] = fields["shadow"]
    return AuditEntry(ts, decision_id, fields["workload"], body["outcome"], canonical(body))


def refusal(caller: str, asserted: str, code: str, message: str) -> AuditEntry:
    """An identity refusal (no decision was made) as a row of its own."""
    decision_id = uuid.uuid4().hex
    workload = asserted or caller or "unknown"
    ts = _now()
    body = {"ts": ts, "decision_id": decision_id, "workload": workload, "outcome": "deny",
            "event": "identity_refused", "caller": caller, "asserted": asserted,
            "reasons": [{"code": code, "message": message}]}
    return AuditEntry(ts, decision_id, workload, "deny", canonical(body))


class Backlog:
    """Rows (and reservations to release) of decisions the ledger could not take, written
    after its next successful write. In memory and bounded: best effort."""

    def __init__(self, size: int = BACKLOG) -> None:
        self._rows: deque[tuple[AuditEntry, bool]] = deque(maxlen=size)
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._rows)

    def add(self, row: AuditEntry, release: bool) -> None:
        with self._lock:
            self._rows.append((row, release))

    def flush(self, ledger: Ledger) -> None:
        """Write what waits, oldest first, until the ledger fails again."""
        while True:
            with self._lock:
                if not self._rows:
                    return
                row, release = self._rows.popleft()
            try:
                ledger.finish(row, release=release)  # idempotent per decision id
            except LedgerError:
                with self._lock:
                    self._rows.appendleft((row, release))
                return
