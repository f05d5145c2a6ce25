"""The engine's side of the ledger: meter the request, reserve, describe state, audit.

:class:`Gate` composes the concerns that live beside it: what a request costs
(pricing.py), the limits and their cached state (limits.py) and audit rows with
their backlog (audit.py), all read from one revision's compiled view
(pdp/compiled.py). :class:`~pdp.ledger.noop.NullGate` is the same interface with
no ledger. Two ways through it:

- checked first (:meth:`Gate.admit`, then :meth:`Gate.finish`): reserve, let
  OPA decide on that exact state, release a denied decision's reservation and
  append its audit row;
- optimistic (:meth:`Gate.cached_state`, then :meth:`Gate.commit`): OPA decides
  on this PDP's last view of the state (:class:`StateCache`), and the ledger
  checks every limit again, atomically, when it reserves for the allow and
  writes its audit row in the same batch. A refusal writes nothing; the engine
  then decides again the checked way, so the answer is always the ledger's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol

from pdp.compiled import Compiled, CompiledPolicy, Revisions
from pdp.ledger import Ledger, audit, limits, pricing
from pdp.ledger.audit import BACKLOG, DEFAULT_RECORD
from pdp.ledger.limits import StateCache
from pdp.ledger.pricing import Quote
from pdp.ledger.types import Admission, Ask, AuditEntry, Settlement, usd, usd_to_micro

# Former names of what moved into pdp/compiled.py and the modules beside this one.
CompiledView = Revisions
__all__ = ["BACKLOG", "DEFAULT_RECORD", "CompiledView", "Gate", "LedgerGate", "Metered",
           "StateCache", "usd"]


@dataclass(frozen=True)
class Metered:
    """What the engine carries from admit() to finish()."""

    admission: Admission | None  # None: not reserved yet, or nothing to meter
    record: tuple[str, ...]
    route: str
    cost_micro: int
    tokens: int
    ask: Ask | None = None  # None: nothing to meter (no policy for the workload)

    def priced(self, cost_micro: int) -> Metered:
        """The same request at another price (the route's, once OPA has chosen it)."""
        ask = replace(self.ask, cost_micro=cost_micro) if self.ask is not None else None
        return replace(self, cost_micro=cost_micro, ask=ask)

    def recorded_as(self, policy: CompiledPolicy | None) -> Metered:
        """Audited as ``policy`` records (the policy of the revision OPA decided with)."""
        return replace(self, record=audit.record_of(policy))


class LedgerGate(Protocol):
    """What the engine asks of the ledger; :class:`Gate`, or NullGate when there is none."""

    revisions: Revisions  # the compiled views limits and prices are read from

    @property
    def optimistic(self) -> bool:
        """Whether OPA may decide on cached state before the ledger reserves."""
        ...

    def meter(self, decision_id: str, workload: str, model: str, tokens: int, cost_usd: float,
              quote_usd: float | None = None, tool: str = "",
              view: Compiled | None = None) -> Metered: ...

    def admit(self, decision_id: str, workload: str, model: str, tokens: int, cost_usd: float,
              quote: Quote | None = None, tool: str = "",
              view: Compiled | None = None) -> Metered: ...

    def state(self, m: Metered) -> dict[str, Any] | None:
        """``input.state`` (None: no ledger state, which budgets and rates deny)."""
        ...

    def cached_state(self, m: Metered) -> dict[str, Any] | None: ...

    def commit(self, m: Metered, decision_id: str, fields: dict[str, Any]) -> bool: ...

    def finish(self, m: Metered, decision_id: str, fields: dict[str, Any], allow: bool) -> None: ...

    def audit(self, decision_id: str, fields: dict[str, Any]) -> None: ...

    def defer(self, m: Metered | None, decision_id: str, fields: dict[str, Any]) -> None: ...

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
        # 0 turns the optimistic path off: every decision is checked first.
        self.cache = StateCache(state_ttl_s) if state_ttl_s > 0 else None
        self.backlog = audit.Backlog()

    @property
    def optimistic(self) -> bool:
        return self.cache is not None

    def estimate(self, model: str, tokens: int, cost_usd: float,
                 quote_usd: float | None = None, floor_usd: float = 0.0) -> tuple[int, int]:
        """(cost in micro-USD, tokens), as pricing.estimate prices them."""
        return pricing.estimate(model, tokens, cost_usd, self.default_tokens, quote_usd, floor_usd)

    def admit(self, decision_id: str, workload: str, model: str, tokens: int, cost_usd: float,
              quote: Quote | None = None, tool: str = "", view: Compiled | None = None) -> Metered:
        """Reserve before OPA decides; a model call is priced by ``quote`` first. Raises
        LedgerError when the store fails."""
        quote_usd = None
        if model and quote is not None:
            quote_usd = quote(tokens if tokens > 0 else self.default_tokens)
        m = self.meter(decision_id, workload, model, tokens, cost_usd, quote_usd, tool, view)
        if m.ask is None:
            return m
        admission = self.ledger.reserve(m.ask)
        if self.cache is not None:
            self.cache.put(m.ask, admission, admission.reserved)
        return replace(m, admission=admission)

    def meter(self, decision_id: str, workload: str, model: str, tokens: int, cost_usd: float,
              quote_usd: float | None = None, tool: str = "",
              view: Compiled | None = None) -> Metered:
        """Limits and price of a request from ``view`` (by default the active revision's);
        no ledger call."""
        compiled = view if view is not None else self.revisions.active.compiled
        policy = compiled.policy(workload)
        if policy is None:
            cost, tokens = self.estimate(model, tokens, cost_usd, quote_usd)
            return Metered(None, DEFAULT_RECORD, model, cost, tokens)
        cost, tokens = self.estimate(model, tokens, cost_usd, quote_usd,
                                     pricing.tool_price(policy, tool, model))
        route = compiled.route(model)
        ask = Ask(decision_id, workload, model if route else "", cost, tokens,
                  limits.limits_of(policy, route), self.ttl_s)
        return Metered(None, audit.record_of(policy), ask.route, cost, tokens, ask)

    def cached_state(self, m: Metered) -> dict[str, Any] | None:
        """``input.state`` from this PDP's last view, or None when there is no fresh one
        (or the optimistic path is off)."""
        if self.cache is None:
            return None
        if m.ask is None:
            return {}  # nothing to meter: OPA needs no state
        cached = self.cache.get(m.ask.workload, m.ask.route)
        return None if cached is None else limits.state(cached, m.ask.limits)

    def commit(self, m: Metered, decision_id: str, fields: dict[str, Any]) -> bool:
        """An allow decided on cached state: reserve (the ledger checks every limit again)
        and append its audit row in one durable batch. False: the ledger refused, and
        nothing was written."""
        assert m.ask is not None and self.cache is not None
        done = self.ledger.commit(m.ask, self._entry(m, decision_id, fields, True))
        self.cache.put(m.ask, done.admission, done.admission.reserved)
        if self.backlog:
            self.backlog.flush(self.ledger)
        return done.admission.reserved

    def state(self, m: Metered) -> dict[str, Any]:
        """``input.state``: spend and rates before this decision."""
        return {} if m.admission is None or m.ask is None else limits.state(m.admission, m.ask.limits)

    @staticmethod
    def _entry(m: Metered | None, decision_id: str, fields: dict[str, Any],
               allow: bool) -> AuditEntry:
        if m is None:
            return audit.entry(decision_id, fields, allow)
        return audit.entry(decision_id, fields, allow, m.record, m.cost_micro, m.tokens)

    def finish(self, m: Metered, decision_id: str, fields: dict[str, Any], allow: bool) -> None:
        """Release a denied reservation and chain the audit row; durable on return."""
        entry = self._entry(m, decision_id, fields, allow)
        released = not allow and m.admission is not None and m.admission.reserved
        self.ledger.finish(entry, release=released)
        if released and self.cache is not None and m.ask is not None and m.admission is not None:
            self.cache.put(m.ask, m.admission, False)
        if self.backlog:
            self.backlog.flush(self.ledger)

    def audit(self, decision_id: str, fields: dict[str, Any]) -> None:
        """A deny that metered nothing (refused before the policy was asked): its row."""
        self.finish(Metered(None, DEFAULT_RECORD, "", 0, 0), decision_id, fields, False)

    def defer(self, m: Metered | None, decision_id: str, fields: dict[str, Any]) -> None:
        """A decision answered ``ledger_unavailable``: audit it (and release what it may have
        reserved) after the next successful write."""
        reserved = m is not None and m.admission is not None and m.admission.reserved
        self.backlog.add(self._entry(m, decision_id, fields, False), reserved)

    def record_refusal(self, caller: str, asserted: str, code: str, message: str) -> None:
        """An identity refusal (no decision was made) as an audit row of its own."""
        self.ledger.finish(audit.refusal(caller, asserted, code, message), release=False)

    def settle(self, decision_id: str, tokens: int, cost_usd: float) -> Settlement:
        return self.ledger.settle(decision_id, tokens, usd_to_micro(cost_usd))
