"""No ledger (``ledger_url = off``): the gate that meters, reserves and audits nothing.

OPA gets no ``input.state``, so a policy with a budget or a rate limit is denied
``ledger_unavailable`` (budgets fail closed), and nothing is reserved. Recording
usage has nowhere to go: :meth:`NullGate.settle` raises
:class:`~pdp.ledger.types.LedgerOff` (RecordUsage answers UNIMPLEMENTED).
"""

from __future__ import annotations

from typing import Any

from pdp.compiled import Compiled, Revisions
from pdp.ledger.audit import DEFAULT_RECORD
from pdp.ledger.gate import Metered
from pdp.ledger.types import Admission, LedgerOff, Settlement


class NullGate:
    def __init__(self, revisions: Revisions | None = None) -> None:
        self.revisions = revisions if revisions is not None else Revisions()

    def meter(self, decision_id: str, workload: str, model: str, tokens: int, cost_usd: float,
              tool: str = "", view: Compiled | None = None) -> Metered:
        """Nothing to meter: the caller's tokens as they are."""
        return Metered(None, DEFAULT_RECORD, model, 0, tokens)

    def read_state(self, m: Metered, fresh: bool = False) -> tuple[Metered, bool]:
        return m, True

    def state(self, m: Metered) -> None:
        return None

    def commit(self, m: Metered, decision_id: str, fields: dict[str, Any]) -> Admission:
        raise AssertionError("nothing is metered without a ledger, so nothing commits")

    def finish(self, m: Metered, decision_id: str, fields: dict[str, Any], allow: bool) -> None:
        return None

    def audit(self, decision_id: str, fields: dict[str, Any]) -> None:
        return None

    def defer(self, m: Metered | None, decision_id: str, fields: dict[str, Any],
              release: bool = False) -> None:
        return None

    def record_refusal(self, caller: str, asserted: str, code: str, message: str) -> None:
        return None

    def settle(self, decision_id: str, tokens: int, cost_usd: float) -> Settlement:
        raise LedgerOff("usage recording needs the ledger, which is not configured")
