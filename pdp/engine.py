"""The decision pipeline: one request through named steps, failing closed at each.

Transport layers (gRPC Authorize, Envoy Check) check the caller's identity and
translate their messages to a :class:`Request` and a :class:`Decision` back; all
policy logic lives in Rego and all input assembly lives here. :meth:`Engine.decide`
runs the steps in this order:

    obligations (price, limits) -> evaluate (OPA) -> credential (the broker)
    -> admit + audit (the ledger)

Obligations are read from the compiled view of the revision OPA is known to have
active, every step after OPA's answer from the view of the revision it answered
with (the rule is pdp/compiled.py's). The ledger takes part in one of two ways,
and :class:`Way` is the only place they differ: :data:`CHECKED` reserves before
OPA decides, on exactly that state; :data:`OPTIMISTIC` lets OPA decide on this
PDP's cached state and reserves after, checking every limit again. Without a
ledger the gate is pdp/ledger/noop.py's and the steps are the same.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, Protocol

from pdp.compiled import Revision
from pdp.ledger import LedgerError
from pdp.ledger.gate import LedgerGate, Metered
from pdp.ledger.noop import NullGate
from pdp.ledger.pricing import route_price
from pdp.ledger.types import usd_to_micro
from pdp.opa import DECISION_PATH, EXPLAIN_PATH, EngineUnavailable, OpaClient

# The price routes.rego gives a model call's chain (see Engine._quote).
QUOTE_PATH = "/v1/data/aam/authz/reserve_usd"
# Denies that depend on the ledger's state: given only on the ledger's fresh state.
LIMIT_REASONS = frozenset({"budget_exhausted", "rate_limited", "ledger_unavailable"})

log = logging.getLogger("aam.decision")


@dataclass(frozen=True)
class Request:
    spiffe_id: str
    model: str = ""
    tool: str = ""
    action: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    request_id: str = ""
    estimated_tokens: int = 0
    estimated_cost_usd: float = 0.0
    explain: bool = False
    # On an MCP route, what the JSON-RPC body is (pdp/mcp.py): OPA's input.mcp.
    mcp: dict[str, str] | None = None
    # A discovery request: "models" lists the aliases the workload may call (input.list).
    listing: str = ""


@dataclass(frozen=True)
class Reason:
    code: str
    message: str


@dataclass(frozen=True)
class Credential:
    """A brokered credential for the gateway to inject. Never shown to the agent."""

    header: str
    value: str = field(repr=False)
    expires_at: float  # unix seconds
    lease_accessor: str = ""


@dataclass(frozen=True)
class Decision:
    allow: bool
    reasons: tuple[Reason, ...]
    policy: str
    decision_id: str
    revision: str
    route: dict[str, Any] | None = None
    explanation: dict[str, Any] | None = None
    credential: Credential | None = None
    retry_after_s: float | None = None
    models: tuple[str, ...] = ()  # a models listing: the aliases the workload may call


def new_decision_id() -> str:
    return uuid.uuid4().hex


# Called after every decision with the request, the decision and the seconds it took.
Observer = Callable[[Request, Decision, float], None]


class CredentialHook(Protocol):
    """Called after an allow: adds the gateway's credential or turns the allow into a deny."""

    def attach(self, req: Request, decision: Decision) -> Decision: ...


class NoCredentials:
    """The hook when no broker is given: no action needs a brokered credential."""

    def attach(self, req: Request, decision: Decision) -> Decision:
        return decision


class Obligations(NamedTuple):
    """What a decision owes the ledger, worked out before OPA answers: its price and
    limits (``metered``), the ``input.state`` OPA decides on (None: no ledger state), and
    the revision they were read from. A tuple: built on every decision."""

    revision: Revision
    metered: Metered
    state: dict[str, Any] | None
    error: EngineUnavailable | None = None  # pricing failed: the decision is engine_unavailable


class Engine:
    def __init__(self, opa: OpaClient, observers: Iterable[Observer] = (),
                 broker: CredentialHook | None = None, gate: LedgerGate | None = None) -> None:
        self.opa = opa
        self.observers = list(observers)
        self.broker: CredentialHook = broker if broker is not None else NoCredentials()
        # The ledger: budgets, rates, audit, and the compiled views they read.
        self.gate: LedgerGate = gate if gate is not None else NullGate()

    def decide(self, req: Request) -> Decision:
        """Decide ``req`` (its identity is the transport's to check): on this PDP's cached
        ledger state when the gate keeps one, else, or when that cannot answer, checked."""
        started = time.perf_counter()
        decision_id = new_decision_id()
        decision = None
        if self.gate.optimistic and not req.explain:
            decision = self._through(OPTIMISTIC, req, decision_id)
        if decision is None:
            decision = self._through(CHECKED, req, decision_id)
        assert decision is not None  # the checked way always answers
        self._done(req, decision, started)
        return decision

    def _through(self, way: Way, req: Request, decision_id: str) -> Decision | None:
        """The steps, in order; None when ``way`` cannot answer (it wrote nothing, and the
        checked way then decides). Obligations come before OPA's answer because OPA
        decides on the ledger state they describe."""
        # 1. obligations: price and limits, from the revision OPA is known to decide with
        try:
            ob = way.obligations(self, req, decision_id, self.gate.revisions.active)
        except LedgerError as exc:
            return self._ledger_unavailable(req, decision_id, exc)
        if ob is None:
            return None
        # 2. evaluate: OPA decides; every later step reads the revision it answered with
        input_doc = self.build_input(req, ob.metered, ob.state)
        decision, matched = self._evaluate(input_doc, decision_id, req.explain, ob.error)
        revision = self.gate.revisions.decided(decision.revision) or ob.revision
        ob = way.confirm(req, decision, ob, revision)
        if ob is None:
            return None
        # 3. credential: the broker's, for an allowed tool action
        decision = self._credential(req, decision)
        # 4. admit + audit: durable before the answer
        concluded = way.conclude(self, req, decision, ob, revision)
        if concluded is not None and req.explain:
            return _with_explanation(concluded, input_doc, matched)
        return concluded

    def build_input(self, req: Request, metered: Metered | None = None,
                    state: dict[str, Any] | None = None) -> dict[str, Any]:
        """OPA's input document: the only place it is assembled. With ``metered``, the
        tokens as the ledger counted them; ``state`` is ``input.state`` (None: none)."""
        doc = {
            "identity": {"spiffe_id": req.spiffe_id},
            "model": req.model,
            "tool": req.tool,
            "action": req.action,
            "params": req.params,
            "context": req.context,
            "estimate": {"tokens": req.estimated_tokens, "cost_usd": req.estimated_cost_usd},
        }
        if req.mcp is not None:
            doc["mcp"] = req.mcp
        if req.listing:
            doc["list"] = req.listing
        if metered is not None:
            # The cost stays the caller's, since routes.rego prices each target itself
            # (call_cost_usd).
            doc["estimate"] = {"tokens": metered.tokens, "cost_usd": req.estimated_cost_usd}
        if state is not None:
            doc["state"] = state
        return doc

    def _query(self, input_doc: dict[str, Any], explain: bool) -> tuple[Any, Any]:
        """The decision, and with ``explain`` the matched rules from the same query
        (so both come from one bundle revision)."""
        if not explain:
            return self.opa.query(DECISION_PATH, input_doc), None
        result = self.opa.query(EXPLAIN_PATH, input_doc)
        if not isinstance(result, dict):
            return None, None
        return result.get("decision"), result.get("matched")

    def _evaluate(self, input_doc: dict[str, Any], decision_id: str, explain: bool = False,
                  error: EngineUnavailable | None = None) -> tuple[Decision, Any]:
        """OPA's decision (and matched rules), or engine_unavailable: never an exception."""
        try:
            if error is not None:
                raise error
            result, matched = self._query(input_doc, explain)
            return _from_result(result, decision_id), matched
        except EngineUnavailable as exc:
            return Decision(
                allow=False,
                reasons=(Reason("engine_unavailable", f"policy engine unavailable: {exc}"),),
                policy="",
                decision_id=decision_id,
                revision="",
            ), None

    def _quote(self, req: Request, tokens: int) -> float:
        """What the ledger reserves for a model call: routes.rego's price of the chain
        (``reserve_usd``) at ``tokens``, asked before the budget state is known. One
        pricing rule for route selection and reservation; a caller's estimate can raise
        it, never lower it."""
        value = self.opa.query(QUOTE_PATH, self.build_input(replace(req, estimated_tokens=tokens)))
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise EngineUnavailable("policy returned a malformed route price")
        return float(value)

    def _credential(self, req: Request, decision: Decision) -> Decision:
        """The gateway's credential for an allowed tool action (or a deny without one)."""
        if decision.allow and req.tool and req.action:
            return self.broker.attach(req, decision)
        return decision

    def refuse(self, req: Request, reason: Reason) -> Decision:
        """A deny given before the policy is asked (a transport could not map the
        request): logged, audited and counted like every other decision."""
        started = time.perf_counter()
        decision = Decision(allow=False, reasons=(reason,), policy="",
                            decision_id=new_decision_id(), revision="")
        fields = _audit_fields(req, decision)
        try:
            self.gate.audit(decision.decision_id, fields)
        except LedgerError as exc:
            _log_ledger_down(req, decision.decision_id, exc)
            self.gate.defer(None, decision.decision_id, fields)
        self._done(req, decision, started)
        return decision

    def _done(self, req: Request, decision: Decision, started: float) -> None:
        log.info(
            "decision",
            extra={"fields": {
                "decision_id": decision.decision_id, "request_id": req.request_id,
                "workload": req.spiffe_id, "model": req.model, "tool": req.tool,
                "action": req.action, "allow": decision.allow, "policy": decision.policy,
                "reasons": [r.code for r in decision.reasons], "revision": decision.revision,
                "lease_accessor": decision.credential.lease_accessor if decision.credential else "",
            }},
        )
        elapsed = time.perf_counter() - started
        for observe in self.observers:
            observe(req, decision, elapsed)

    def _ledger_unavailable(self, req: Request, decision_id: str, exc: Exception,
                            metered: Metered | None = None) -> Decision:
        _log_ledger_down(req, decision_id, exc)
        decision = Decision(
            allow=False,
            reasons=(Reason("ledger_unavailable",
                            "the ledger (budgets, rate limits, audit) is unavailable; try again"),),
            policy="", decision_id=decision_id, revision="", retry_after_s=1.0,
        )
        # Audit it, and release its reservation, once the ledger is back.
        self.gate.defer(metered, decision_id, _audit_fields(req, decision))
        return decision


class _Quote:
    """routes.rego's price for a model call, asked by a gate that reserves (NullGate never
    asks); an engine failure is kept, for the decision to answer engine_unavailable."""

    def __init__(self, engine: Engine, req: Request) -> None:
        self.engine = engine
        self.req = req
        self.error: EngineUnavailable | None = None

    def __call__(self, tokens: int) -> float | None:
        try:
            return self.engine._quote(self.req, tokens)
        except EngineUnavailable as exc:
            self.error = exc
            return None


class Way(Protocol):
    """When the ledger reserves for a decision: the one place the two ways differ."""

    def obligations(self, engine: Engine, req: Request, decision_id: str,
                    revision: Revision) -> Obligations | None:
        """Price and limits from ``revision``'s view, and OPA's ``input.state``."""
        ...

    def confirm(self, req: Request, decision: Decision, ob: Obligations,
                revision: Revision) -> Obligations | None:
        """Before the credential: whether OPA's answer (on ``revision``) can stand, at
        which price."""
        ...

    def conclude(self, engine: Engine, req: Request, decision: Decision, ob: Obligations,
                 revision: Revision) -> Decision | None:
        """Admit and audit durably before answering."""
        ...


class Checked:
    """Reserve first, let OPA decide on exactly that state, then audit (and release a
    denied decision's reservation)."""

    def obligations(self, engine: Engine, req: Request, decision_id: str,
                    revision: Revision) -> Obligations:
        quote = _Quote(engine, req)  # a failed price is answered engine_unavailable, and audited
        metered = engine.gate.admit(decision_id, req.spiffe_id, req.model, req.estimated_tokens,
                                    req.estimated_cost_usd, quote, _priced_tool(req),
                                    revision.compiled)  # reserve before deciding: one round trip
        return Obligations(revision, metered, engine.gate.state(metered), quote.error)

    def confirm(self, req: Request, decision: Decision, ob: Obligations,
                revision: Revision) -> Obligations:
        """The reservation stands. When OPA activated a newer revision after it was made,
        the row records what that revision's policy records (pdp/compiled.py)."""
        if revision.id == ob.revision.id:
            return ob
        return ob._replace(revision=revision,
                           metered=ob.metered.recorded_as(revision.compiled.policy(req.spiffe_id)))

    def conclude(self, engine: Engine, req: Request, decision: Decision, ob: Obligations,
                 revision: Revision) -> Decision:
        """An allow the ledger could not reserve is a deny."""
        metered = ob.metered
        try:
            metered = self._reprice(engine, req, decision, metered, revision)
        except LedgerError as exc:
            return engine._ledger_unavailable(req, decision.decision_id, exc, metered)
        if decision.allow and metered.admission is not None and not metered.admission.reserved:
            decision = replace(decision, allow=False, route=None, reasons=(
                Reason("budget_exhausted", "the ledger refused the reservation (limits changed)"),))
        try:
            engine.gate.finish(metered, decision.decision_id, _audit_fields(req, decision),
                               decision.allow)
        except LedgerError as exc:
            return engine._ledger_unavailable(req, decision.decision_id, exc, metered)
        return decision

    @staticmethod
    def _reprice(engine: Engine, req: Request, decision: Decision, metered: Metered,
                 revision: Revision) -> Metered:
        """The ledger refused the quote (the budget could not cover the dearest target),
        but routes.rego found a cheaper chain that fits: reserve that chain's price."""
        a = metered.admission
        if not (decision.allow and decision.route and a is not None and not a.reserved):
            return metered
        price = route_price(decision.route)
        if price is None:
            return metered
        return engine.gate.admit(decision.decision_id, req.spiffe_id, req.model, metered.tokens,
                                 req.estimated_cost_usd, lambda _tokens: price,
                                 view=revision.compiled)


class Optimistic:
    """One OPA query on this PDP's cached ledger state, then one ledger batch that
    reserves for an allow (checking every limit again) and writes the audit row.

    None, so the checked way answers, when there is no fresh cached state, OPA answered
    on another revision than the one the state was read against, a budget or rate deny
    (only ever given on the ledger's fresh state), no route price, or the ledger refused
    the reservation (it wrote nothing)."""

    def obligations(self, engine: Engine, req: Request, decision_id: str,
                    revision: Revision) -> Obligations | None:
        m = engine.gate.meter(decision_id, req.spiffe_id, req.model, req.estimated_tokens,
                              req.estimated_cost_usd, tool=_priced_tool(req), view=revision.compiled)
        state = engine.gate.cached_state(m)
        return None if state is None else Obligations(revision, m, state)

    def confirm(self, req: Request, decision: Decision, ob: Obligations,
                revision: Revision) -> Obligations | None:
        if revision.id != ob.revision.id:
            return None  # OPA moved on: decide again on its view
        if not decision.allow and any(r.code in LIMIT_REASONS for r in decision.reasons):
            return None
        if decision.allow and ob.metered.ask is not None and req.model:
            price = route_price(decision.route)  # the one pricing rule: routes.rego's
            if price is None:
                return None
            return Obligations(ob.revision, ob.metered.priced(usd_to_micro(price)), ob.state)
        return ob

    def conclude(self, engine: Engine, req: Request, decision: Decision, ob: Obligations,
                 revision: Revision) -> Decision | None:
        m = ob.metered
        fields = _audit_fields(req, decision)
        try:
            if decision.allow and m.ask is not None:
                if not engine.gate.commit(m, decision.decision_id, fields):
                    return None
            else:
                engine.gate.finish(m, decision.decision_id, fields, decision.allow)
        except LedgerError as exc:
            return engine._ledger_unavailable(req, decision.decision_id, exc)
        return decision


CHECKED: Way = Checked()
OPTIMISTIC: Way = Optimistic()


def _log_ledger_down(req: Request, decision_id: str, exc: Exception) -> None:
    log.error("ledger unavailable", extra={"fields": {
        "decision_id": decision_id, "workload": req.spiffe_id, "error": str(exc)}})


def _priced_tool(req: Request) -> str:
    """The tool whose declared price the ledger reserves: none for an MCP message that
    calls no tool (mcp.rego prices those at nothing too)."""
    return req.tool if req.mcp is None or req.mcp.get("method") == "tools/call" else ""


def _audit_fields(req: Request, decision: Decision) -> dict[str, Any]:
    action: dict[str, Any] = {"model": req.model, "tool": req.tool, "action": req.action}
    if req.mcp is not None:
        action["mcp"] = req.mcp
    if req.listing:
        action["list"] = req.listing
    return {
        "workload": req.spiffe_id or "unknown", "policy": decision.policy, "revision": decision.revision,
        "action": action,
        "reasons": [{"code": r.code, "message": r.message} for r in decision.reasons],
        "params": req.params, "context": req.context,
        "route": (decision.route or {}).get("alias", "") if decision.allow else "",
        "lease_accessor": decision.credential.lease_accessor if decision.credential else "",
    }


def _from_result(result: Any, decision_id: str) -> Decision:
    """Map OPA's decision object; anything unexpected is a deny, never an allow."""
    if not isinstance(result, dict) or not isinstance(result.get("allow"), bool):
        raise EngineUnavailable("policy returned a malformed decision")
    reasons = tuple(
        Reason(str(r.get("code", "unknown")), str(r.get("message", "")))
        for r in result.get("reasons", ()) if isinstance(r, dict)
    )
    allow = result["allow"] is True and not reasons
    if not allow and not reasons:
        reasons = (Reason("denied", "denied by policy"),)
    route = result.get("route")
    retry = result.get("retry_after_s")
    models = result.get("models")
    return Decision(
        allow=allow,
        reasons=reasons,
        policy=str(result.get("policy", "")),
        decision_id=decision_id,
        revision=str(result.get("revision", "")),
        route=route if isinstance(route, dict) else None,
        retry_after_s=float(retry) if isinstance(retry, int | float) and not allow else None,
        models=tuple(m for m in models if isinstance(m, str)) if allow and isinstance(models, list)
        else (),
    )


def _with_explanation(decision: Decision, input_doc: dict[str, Any], matched: Any = None) -> Decision:
    explanation = {
        "input": input_doc,
        "reasons": [{"code": r.code, "message": r.message} for r in decision.reasons],
        # Rules that matched, as Rego reports them: {rule, source} pairs.
        "matched": matched if isinstance(matched, list) else [],
        "policy": decision.policy,
        "revision": decision.revision,
    }
    return Decision(**{**decision.__dict__, "explanation": explanation})
