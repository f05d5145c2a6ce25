"""The ledger as the health registry sees it (issue 19): every call's outcome is reported.

:class:`WatchedLedger` wraps the store the gate calls: a call that raises
:class:`~pdp.ledger.types.LedgerError` reports the ledger degraded (the decision itself
still denies ``ledger_unavailable``, pdp/engine.py), a call that answers reports it ok.
:meth:`WatchedLedger.ping` is the cheap probe (``SELECT 1``) run every
``health_probe_interval_s`` so the state recovers when the database is back, without traffic.
Reasons name the failed step and the error's class, never the connection string: a
:class:`LedgerError`'s message carries no secret by contract, and the registry scrubs
every reason again (pdp/health.py ``safe_reason``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

from pdp.ledger.types import LedgerError, LedgerUnavailable

T = TypeVar("T")
# (ok, reason): reason "" when ok.
Report = Callable[[bool, str], None]


def reason_of(exc: LedgerError) -> str:
    kind = "ledger unreachable" if isinstance(exc, LedgerUnavailable) else "ledger error"
    return f"{kind}: {str(exc).removeprefix('ledger ')}"


class WatchedLedger:
    """A :class:`~pdp.ledger.Ledger` whose calls report to ``report``; anything else
    (``keyring``, ``head``, ``migrate``, ``close`` ...) is the wrapped store's."""

    def __init__(self, ledger: Any, report: Report) -> None:
        self.__dict__["_ledger"] = ledger
        self.__dict__["_report"] = report
        # Whether the last call answered: an answer after an answer reports nothing, so
        # the decision path takes no registry lock while the ledger is well.
        self.__dict__["_ok"] = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._ledger, name, value)  # head: the store's own

    def _watch(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            out = fn(*args)
        except LedgerError as exc:
            self.__dict__["_ok"] = False
            self._report(False, reason_of(exc))
            raise
        if self._ok is not True:
            self.__dict__["_ok"] = True
            self._report(True, "")
        return out

    def reserve(self, ask: Any) -> Any:
        return self._watch(self._ledger.reserve, ask)

    def peek(self, ask: Any) -> Any:
        return self._watch(self._ledger.peek, ask)

    def commit(self, ask: Any, entry: Any) -> Any:
        return self._watch(self._ledger.commit, ask, entry)

    def finish(self, entry: Any, release: bool) -> int:
        return self._watch(self._ledger.finish, entry, release)

    def settle(self, decision_id: str, tokens: int, cost_micro: int, owner: str = "") -> Any:
        return self._watch(self._ledger.settle, decision_id, tokens, cost_micro, owner)

    def ping(self) -> None:
        """The probe: the store's ``ping`` (a store without one is taken as answering)."""
        ping = getattr(self._ledger, "ping", None)
        if ping is None:
            return
        with contextlib.suppress(LedgerError):  # reported; the probe raises nothing
            self._watch(ping)
