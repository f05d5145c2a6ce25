"""The ledger: budgets with atomic reservations, rate windows and the audit chain.

Stores register by URL scheme behind the :class:`Ledger` protocol:
``postgresql://`` (or a libpq ``host=...`` string) for production and several
PDP replicas, ``sqlite:///path`` for the zero-config ``aam up``. An empty URL
or ``off`` means no ledger (budgets then deny with ``ledger_unavailable``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from pdp.ledger.types import (
    Admission,
    Ask,
    AuditEntry,
    AuditFilter,
    AuditRow,
    Committed,
    LedgerError,
    LedgerUnavailable,
    Settlement,
)

__all__ = [
    "Admission", "Ask", "AuditEntry", "AuditFilter", "AuditRow", "Committed", "Ledger", "LedgerError",
    "LedgerUnavailable", "Settlement", "open_ledger",
]


class Ledger(Protocol):
    def migrate(self, grant_role: str = "") -> list[str]:
        """Apply pending migrations (idempotent); return the names applied."""

    def reserve(self, ask: Ask) -> Admission:
        """Read budget and rate state and, if every limit allows, reserve: one atomic step."""

    def finish(self, entry: AuditEntry, release: bool) -> int:
        """Release the decision's reservation (a deny) and append its audit row durably."""

    def commit(self, ask: Ask, entry: AuditEntry) -> Committed:
        """An allow decided before reserving: check every limit and reserve, and append its
        audit row, in one durable step; when a limit refuses, write nothing."""

    def settle(self, decision_id: str, tokens: int, cost_micro: int, owner: str = "") -> Settlement:
        """Settle a reservation with the actual cost; a repeat changes nothing.

        With ``owner``, only that workload's decisions are found (an agent may
        settle its own usage; a gateway settles anyone's)."""

    def audit_rows(self, flt: AuditFilter) -> list[AuditRow]:
        """Audit rows in chain order, with the settled cost of each decision."""

    def close(self) -> None: ...


def open_ledger(url: str, pool_size: int = 8, timeout_s: float = 2.0) -> Ledger | None:
    """The store for ``url``; ``None`` when the ledger is off."""
    scheme = url.split(":", 1)[0].lower() if "://" in url or url.startswith("sqlite:") else ""
    if url in ("", "off"):
        return None
    if scheme in _REGISTRY:
        return _REGISTRY[scheme](url, pool_size, timeout_s)
    if "=" in url:  # libpq key=value connection string
        return _REGISTRY["postgresql"](url, pool_size, timeout_s)
    raise LedgerError(f"unsupported ledger URL scheme {scheme or url.split(':', 1)[0]!r}"
                      " (use postgresql://..., sqlite:///path or off)")


def _postgres(url: str, pool_size: int, timeout_s: float) -> Ledger:
    from pdp.ledger.postgres import PostgresLedger

    return PostgresLedger(url, pool_size, timeout_s)


def _sqlite(url: str, pool_size: int, timeout_s: float) -> Ledger:
    from pdp.ledger.sqlite import SqliteLedger

    return SqliteLedger(url.removeprefix("sqlite://").removeprefix("sqlite:"), timeout_s)


_REGISTRY: dict[str, Callable[[str, int, float], Ledger]] = {
    "postgresql": _postgres, "postgres": _postgres, "sqlite": _sqlite,
}
