"""The ledger: budgets with atomic reservations, rate windows and the audit chain.

Stores register by URL scheme behind the :class:`Ledger` protocol:
``postgresql://`` (or a libpq ``host=...`` string) for production and several
PDP replicas, ``sqlite:///path`` for the zero-config ``aam up``. An empty URL
or ``off`` means no ledger (budgets then deny with ``ledger_unavailable``; the
engine then meters through pdp/ledger/noop.py).
Audit rows are keyed under the audit keyring the store is opened with
(pdp/ledger/chain.py); a store opened without one writes no audit row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from pdp.ledger.keyring import Keyring
from pdp.ledger.types import (
    Admission,
    Ask,
    AuditEntry,
    AuditFilter,
    AuditRow,
    ChainHead,
    Committed,
    LedgerError,
    LedgerOff,
    LedgerUnavailable,
    Settlement,
)

__all__ = [
    "Admission", "Ask", "AuditEntry", "AuditFilter", "AuditRow", "Committed", "Ledger", "LedgerError",
    "LedgerOff", "LedgerUnavailable", "Settlement", "open_ledger",
]


class Ledger(Protocol):
    # The audit keyring new rows are keyed under (None: the store writes no audit row).
    keyring: Keyring | None
    # This process's chain head: its newest row, or what its anchor names before that.
    head: ChainHead | None

    def migrate(self, grant_role: str = "") -> list[str]:
        """Apply pending migrations (idempotent); return the names applied."""

    def reserve(self, ask: Ask) -> Admission:
        """Read budget and rate state and, if every limit allows, reserve: one atomic step."""

    def peek(self, ask: Ask) -> Admission:
        """The state ``reserve`` would check ``ask`` against, writing nothing (``reserved``
        is False): what OPA decides on before :meth:`commit` reserves."""

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

    def audit_hash(self, seq: int) -> str | None:
        """The hash the chain holds at ``seq`` (None: no such row)."""

    def ping(self) -> None:
        """Answer a trivial query or raise LedgerError: the health probe (issue 19)."""

    def close(self) -> None: ...


def open_ledger(url: str, pool_size: int = 8, timeout_s: float = 2.0,
                keyring: Keyring | None = None) -> Ledger | None:
    """The store for ``url``; ``None`` when the ledger is off. Without ``keyring`` the
    store reads, reserves and settles but refuses to append audit rows (decisions deny)."""
    scheme = url.split(":", 1)[0].lower() if "://" in url or url.startswith("sqlite:") else ""
    if url in ("", "off"):
        return None
    if scheme in _REGISTRY:
        return _REGISTRY[scheme](url, pool_size, timeout_s, keyring)
    if "=" in url:  # libpq key=value connection string
        return _REGISTRY["postgresql"](url, pool_size, timeout_s, keyring)
    raise LedgerError(f"unsupported ledger URL scheme {scheme or url.split(':', 1)[0]!r}"
                      " (use postgresql://..., sqlite:///path or off)")


def _postgres(url: str, pool_size: int, timeout_s: float, keyring: Keyring | None) -> Ledger:
    from pdp.ledger.postgres import PostgresLedger

    return PostgresLedger(url, pool_size, timeout_s, keyring)


def _sqlite(url: str, pool_size: int, timeout_s: float, keyring: Keyring | None) -> Ledger:
    from pdp.ledger.sqlite import SqliteLedger

    return SqliteLedger(url.removeprefix("sqlite://").removeprefix("sqlite:"), timeout_s,
                        keyring=keyring)


_REGISTRY: dict[str, Callable[[str, int, float, Keyring | None], Ledger]] = {
    "postgresql": _postgres, "postgres": _postgres, "sqlite": _sqlite,
}
