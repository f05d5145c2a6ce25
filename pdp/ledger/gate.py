"""The engine's side of the ledger: meter the request, read state, reserve and audit.

:class:`Gate` composes the concerns that live beside it: what a request costs
(pricing.py), the limits and their cached state (limits.py) and audit rows with
their backlog (audit.py), all read from one revision's compiled view
(pdp/compiled.py). :class:`~pdp.ledger.noop.NullGate` is the same interface with
no ledger. One way through it, whatever the decision:

1. :meth:`Gate.meter`: the request's limits and price floor, no ledger call;
2. :meth:`Gate.read_state`: the state OPA decides on, from this PDP's cache
   (:class:`StateCache`, a hint kept for ``ledger_state_ttl_ms``) or, when there
   is none or the engine asks for it fresh, from the ledger (one read that writes
   nothing);
3. :meth:`Gate.commit` for a metered allow: the ledger checks every limit again,
   atomically, reserves and appends the audit row in one durable batch (group
   commit). A refusal writes nothing and returns the ledger's state at that
   moment, for OPA to decide again on. Anything else: :meth:`Gate.finish` appends
   the audit row.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol

from pdp.compiled import Compiled, Revisions
from pdp.ledger import Ledger, audit, limits, pricing
from pdp.ledger.audit import BACKLOG, DEFAULT_RECORD
from pdp.ledger.limits import StateCache
from pdp.ledger.types import Admission, Ask, AuditEntry, Settlement, usd, usd_to_micro

# Former names of what moved into pdp/compiled.py and the modules beside this one.
CompiledView = Revisions
__all__ = ["BACKLOG", "DEFAULT_RECORD", "CompiledView", "Gate", "LedgerGate", "Metered",
           "StateCache", "usd"]


@dataclass(frozen=True)
class Metered:
    """A request as the ledger meters it, carried from meter() to commit() or finish()."""

    # The ledger state OPA decides on, before this decision (read_state); None: not
    # read yet, or nothing to meter.
    admission: Admission | None
    record: tuple[str, ...]
    route: str
    cost_micro: int
    tokens: int
    ask: Ask | None = None  # None: nothing to meter (no policy for the workload)

    def priced(self, cost_micro: int) -> Metered:
        """The same request at another price (the route's, once OPA has chosen it)."""
        ask = replace(self.ask, cost_micro=cost_micro) if self.ask is not None else None
        return replace(self, cost_micro=cost_micro, ask=ask)


class LedgerGate(Protocol):
    """What the engine asks of the ledger; :class:`Gate`, or NullGate when there is none."""

    revisions: Revisions  # the compiled views limits and prices are read from

    def meter(self, decision_id: str, workload: str, model: str, tokens: int, cost_usd: float,
              tool: str = "", view: Compiled | None = None) -> Metered: ...

    def read_state(self, m: Metered, fresh: bool = False) -> tuple[Metered, bool]:
        """``m`` with the state OPA decides on, and whether that is the ledger's own
        (fresh) rather than this PDP's cached view. Raises LedgerError."""
        ...

    def state(self, m: Metered) -> dict[str, Any] | None:
        """``input.state`` for ``m``'s state (None: no ledger state, which budgets and rates
        deny)."""
        ...

    def commit(self, m: Metered, decision_id: str, fields: dict[str, Any]) -> Admission: ...

    def finish(self, m: Metered, decision_id: str, fields: dict[str, Any], allow: bool) -> None: ...

    def audit(self, decision_id: str, fields: dict[str, Any]) -> None: ...

    def defer(self, m: Metered | None, decision_id: str, fields: dict[str, Any],
              release: bool = False) -> None: ...

    def record_refusal(self, caller: str, asserted: str, code: str, message: str) -> None: ...

    def settle(self, decision_id: str, tokens: int, cost_usd: float) -> Settlement:
        """Settle with the actual cost; only ever for a trusted gateway (the transport checks)."""
        ...


class Gate:
    def __init__(self, ledger: Ledger, view: Revisions, reservation_ttl_s: float,
                 default_tokens: int, state_ttl_s: float = 0.0) -> None:
        self.ledger = ledger
        self.revisions = view
        self.ttl_s = reservation_ttl_s
        self.default_tokens = default_tokens
        # 0: no cached view, every decision reads the ledger's state first.
        self.cache = StateCache(state_ttl_s) if state_ttl_s > 0 else None
        self.backlog = audit.Backlog()

    def meter(self, decision_id: str, workload: str, model: str, tokens: int, cost_usd: float,
              tool: str = "", view: Compiled | None = None) -> Metered:
        """Limits and price floor of a request from ``view`` (by default the active
        revision's); no ledger call. A model call's price is routes.rego's, set with
        :meth:`Metered.priced` once OPA has chosen the route."""
        compiled = view if view is not None else self.revisions.active.compiled
        policy = compiled.policy(workload)
        if policy is None:
            cost, tokens = pricing.estimate(model, tokens, cost_usd, self.default_tokens)
            return Metered(None, DEFAULT_RECORD, model, cost, tokens)
        cost, tokens = pricing.estimate(model, tokens, cost_usd, self.default_tokens,
                                        floor_usd=pricing.tool_price(policy, tool, model))
        route = compiled.route(model)
        ask = Ask(decision_id, workload, model if route else "", cost, tokens,
                  limits.limits_of(policy, route), self.ttl_s)
        return Metered(None, audit.record_of(policy), ask.route, cost, tokens, ask)

    def read_state(self, m: Metered, fresh: bool = False) -> tuple[Metered, bool]:
        if m.ask is None:
            return m, True  # nothing to meter: OPA needs no state
        if not fresh and self.cache is not None:
            cached = self.cache.get(m.ask.workload, m.ask.route)
            if cached is not None:
                return replace(m, admission=cached), False
        admission = self.ledger.peek(m.ask)
        if self.cache is not None:
            self.cache.put(m.ask, admission, False)
        return replace(m, admission=admission), True

    def state(self, m: Metered) -> dict[str, Any]:
        """``input.state``: spend and rates before this decision."""
        return {} if m.admission is None or m.ask is None else limits.state(m.admission, m.ask.limits)

    def commit(self, m: Metered, decision_id: str, fields: dict[str, Any]) -> Admission:
        """A metered allow: reserve (the ledger checks every limit again) and append its
        audit row in one durable batch. ``reserved`` False: the ledger refused, nothing
        was written, and the admission is the ledger's state to decide again on."""
        assert m.ask is not None
        done = self.ledger.commit(m.ask, self._entry(m, decision_id, fields, True))
        if self.cache is not None:
            self.cache.put(m.ask, done.admission, done.admission.reserved)
        if self.backlog:
            self.backlog.flush(self.ledger)
        return done.admission

    @staticmethod
    def _entry(m: Metered | None, decision_id: str, fields: dict[str, Any],
               allow: bool) -> AuditEntry:
        if m is None:
            return audit.entry(decision_id, fields, allow)
        return audit.entry(decision_id, fields, allow, m.record, m.cost_micro, m.tokens)

    def finish(self, m: Metered, decision_id: str, fields: dict[str, Any], allow: bool) -> None:
        """Chain a decision's audit row (nothing was reserved for it); durable on return."""
        self.ledger.finish(self._entry(m, decision_id, fields, allow), release=False)
        if self.backlog:
            self.backlog.flush(self.ledger)

    def audit(self, decision_id: str, fields: dict[str, Any]) -> None:
        """A deny that metered nothing (refused before the policy was asked): its row."""
        self.finish(Metered(None, DEFAULT_RECORD, "", 0, 0), decision_id, fields, False)

    def defer(self, m: Metered | None, decision_id: str, fields: dict[str, Any],
              release: bool = False) -> None:
        """A decision answered ``ledger_unavailable``: audit it after the next successful
        write, and with ``release`` (its commit failed midway) release what it may hold."""
        self.backlog.add(self._entry(m, decision_id, fields, False), release)

    def record_refusal(self, caller: str, asserted: str, code: str, message: str) -> None:
        """An identity refusal (no decision was made) as an audit row of its own."""
        self.ledger.finish(audit.refusal(caller, asserted, code, message), release=False)

    def settle(self, decision_id: str, tokens: int, cost_usd: float) -> Settlement:
        return self.ledger.settle(decision_id, tokens, usd_to_micro(cost_usd))
