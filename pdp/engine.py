"""The decision pipeline: one request through named steps, failing closed at each.

Transport layers (gRPC Authorize, Envoy Check) check the caller's identity and
translate their messages to a :class:`Request` and a :class:`Decision` back; all
policy logic lives in Rego and all input assembly lives here. :meth:`Engine.decide`
runs the steps in this order, one way for every decision:

    obligations (limits, price floor, ledger state) -> evaluate (one OPA query,
    which prices the route) -> credential (the broker) -> admit + audit (one
    ledger batch: reservation and audit row together, durable before the answer)

Obligations are read from the compiled view of the revision OPA is known to have
active, every step after OPA's answer from the view of the revision it answered
with (the rule is pdp/compiled.py's). The state OPA decides on is this PDP's cached
view of the ledger when it has a fresh one, else the ledger's own (one read that
writes nothing). OPA is asked again only when its answer cannot stand: it answered
on another revision, it denied a budget or rate on the cached view (such denies are
given only on the ledger's own state), or the ledger refused the reservation (it
wrote nothing and returned its state). Without a ledger the gate is
pdp/ledger/noop.py's and the steps are the same.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from pdp.compiled import Revision
from pdp.ledger import LedgerError
from pdp.ledger.gate import LedgerGate, Metered
from pdp.ledger.noop import NullGate
from pdp.ledger.pricing import route_price
from pdp.ledger.types import usd_to_micro
from pdp.opa import DECISION_PATH, EXPLAIN_PATH, EngineUnavailable, OpaClient
from pdp.shadow import Shadow, audit_field, disagrees
from pdp.shadow import parse as parse_shadow
from pdp.tracing.tracer import (
    COMMIT_SPAN,
    CREDENTIAL_SPAN,
    EVALUATE_SPAN,
    FINISH_SPAN,
    OFF,
    STATE_SPAN,
    Tracing,
)

# Denies that depend on the ledger's state: given only on the ledger's fresh state.
LIMIT_REASONS = frozenset({"budget_exhausted", "rate_limited", "ledger_unavailable"})
# OPA evaluations one decision may take: the first, then again on the revision OPA
# answered with or on the ledger's own state (a reload, a stale cached view, a race
# for the last of a budget). Past that the decision is a deny.
MAX_EVALUATIONS = 3

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


# The deny when the policy allowed and the ledger kept refusing the reservation (other
# decisions took the budget meanwhile): the ledger's answer, not the policy's, so
# `aam replay` does not decide it again.
LEDGER_REFUSED = Reason("budget_exhausted", "the ledger refused the reservation (limits changed "
                        "while deciding); try again")


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
    # What the workload's shadow policy answered in the same query (pdp/shadow.py);
    # never part of the answer, only of the audit row and metrics when it disagrees.
    shadow: Shadow | None = None


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


class Engine:
    def __init__(self, opa: OpaClient, observers: Iterable[Observer] = (),
                 broker: CredentialHook | None = None, gate: LedgerGate | None = None,
                 tracing: Tracing = OFF) -> None:
        self.opa = opa
        # A span per decision and per step (pdp/tracing/), or nothing.
        self.tracing = tracing
        self.observers = list(observers)
        self.broker: CredentialHook = broker if broker is not None else NoCredentials()
        # The ledger: budgets, rates, audit, and the compiled views they read.
        self.gate: LedgerGate = gate if gate is not None else NullGate()
        # Ledger and broker steps are traced only when there is one to wait for.
        self._ledger_tracing = tracing if gate is not None and not isinstance(gate, NullGate) else OFF
        self._broker_tracing = tracing if broker is not None else OFF

    def decide(self, req: Request) -> Decision:
        """Decide ``req`` (its identity is the transport's to check)."""
        started = time.perf_counter()
        with self.tracing.decision() as span:
            decision = self._decide(req, new_decision_id())
            self.tracing.conclude(span, req, decision)
        self._done(req, decision, started)
        return decision

    def _decide(self, req: Request, decision_id: str) -> Decision:
        """The steps, in order (see the module docstring); never raises."""
        # 1. obligations: limits and price floor from the revision OPA is known to
        #    decide with, and the ledger state OPA decides on (an explanation shows
        #    the ledger's own)
        revision = self.gate.revisions.active
        m = self._meter(req, decision_id, revision)
        try:
            with self._ledger_tracing.step(STATE_SPAN):
                m, fresh = self.gate.read_state(m, fresh=req.explain)
        except LedgerError as exc:
            return self._ledger_unavailable(req, decision_id, exc, m)
        again = Reason("engine_unavailable", "the policy changed during the decision; try again")
        for _ in range(MAX_EVALUATIONS):
            # 2. evaluate: one OPA query, which prices the route as well
            state = self.gate.state(m)
            input_doc = self.build_input(req, m, state)
            decision, matched = self._evaluate(input_doc, decision_id, req.explain)
            decided = self.gate.revisions.decided(decision.revision) or revision
            if decided.id != revision.id:  # OPA moved on: its limits and prices, same state
                revision = decided
                m = replace(self._meter(req, decision_id, decided), admission=m.admission)
                continue
            if not fresh and not decision.allow and any(
                    r.code in LIMIT_REASONS for r in decision.reasons):
                try:  # limit denies are given only on the ledger's own state
                    with self._ledger_tracing.step(STATE_SPAN):
                        m, fresh = self.gate.read_state(m, fresh=True)
                except LedgerError as exc:
                    return self._ledger_unavailable(req, decision_id, exc, m)
                continue
            # 3. credential: the broker's, for an allowed tool action
            decision = self._credential(req, decision)
            fields = _audit_fields(req, decision, m, state)
            # 4. admit + audit: one durable batch before the answer
            if not decision.allow or m.ask is None:
                return self._conclude(req, decision, m, fields, input_doc, matched)
            priced = self._priced(req, decision, m)
            if priced is None:
                decision = _engine_unavailable(decision_id, "policy returned no route price")
                return self._conclude(req, decision, m, _audit_fields(req, decision, m, state))
            try:
                with self._ledger_tracing.step(COMMIT_SPAN) as span:
                    admission = self.gate.commit(priced, decision_id, fields)
                    span.set_attribute("aam.reserved", admission.reserved)
            except LedgerError as exc:
                return self._ledger_unavailable(req, decision_id, exc, priced, release=True)
            if admission.reserved:
                return _explained(req, decision, input_doc, matched)
            # The ledger refused (limits changed since the state was read) and wrote
            # nothing: decide again on the state it checked against.
            m, fresh = replace(m, admission=admission), True
            again = LEDGER_REFUSED
        decision = Decision(allow=False, reasons=(again,), policy="", decision_id=decision_id,
                            revision=revision.id, retry_after_s=1.0)
        return self._conclude(req, decision, m, _audit_fields(req, decision, m, self.gate.state(m)))

    def _meter(self, req: Request, decision_id: str, revision: Revision) -> Metered:
        return self.gate.meter(decision_id, req.spiffe_id, req.model, req.estimated_tokens,
                               req.estimated_cost_usd, _priced_tool(req), revision.compiled)

    @staticmethod
    def _priced(req: Request, decision: Decision, m: Metered) -> Metered | None:
        """An allowed model call at routes.rego's price for the chosen chain (None: the
        policy gave none); anything else at its metered price."""
        if not req.model:
            return m
        price = route_price(decision.route)
        return None if price is None else m.priced(usd_to_micro(price))

    def _conclude(self, req: Request, decision: Decision, m: Metered, fields: dict[str, Any],
                  input_doc: dict[str, Any] | None = None, matched: Any = None) -> Decision:
        """A decision that reserves nothing: its audit row, durable before the answer."""
        try:
            with self._ledger_tracing.step(FINISH_SPAN):
                self.gate.finish(m, decision.decision_id, fields, decision.allow)
        except LedgerError as exc:
            return self._ledger_unavailable(req, decision.decision_id, exc, m)
        return _explained(req, decision, input_doc, matched)

    @staticmethod
    def build_input(req: Request, metered: Metered | None = None,
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

    def _evaluate(self, input_doc: dict[str, Any], decision_id: str,
                  explain: bool = False) -> tuple[Decision, Any]:
        """OPA's decision (and matched rules), or engine_unavailable: never an exception."""
        try:
            with self.tracing.step(EVALUATE_SPAN) as span:
                result, matched = self._query(input_doc, explain)
                decision = from_result(result, decision_id)
                span.set_attribute("aam.bundle_revision", decision.revision)
            return decision, matched
        except EngineUnavailable as exc:
            return _engine_unavailable(decision_id, str(exc)), None

    def _credential(self, req: Request, decision: Decision) -> Decision:
        """The gateway's credential for an allowed tool action (or a deny without one)."""
        if decision.allow and req.tool and req.action:
            with self._broker_tracing.step(CREDENTIAL_SPAN) as span:
                attached = self.broker.attach(req, decision)
                span.set_attribute("aam.issued", attached.credential is not None)
            return attached
        return decision

    def refuse(self, req: Request, reason: Reason) -> Decision:
        """A deny given before the policy is asked (a transport could not map the
        request): logged, audited and counted like every other decision."""
        started = time.perf_counter()
        decision = Decision(allow=False, reasons=(reason,), policy="",
                            decision_id=new_decision_id(), revision="")
        fields = _audit_fields(req, decision)
        with self.tracing.decision() as span:
            try:
                with self._ledger_tracing.step(FINISH_SPAN):
                    self.gate.audit(decision.decision_id, fields)
            except LedgerError as exc:
                _log_ledger_down(req, decision.decision_id, exc)
                self.gate.defer(None, decision.decision_id, fields)
            self.tracing.conclude(span, req, decision)
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
                            metered: Metered | None = None, release: bool = False) -> Decision:
        _log_ledger_down(req, decision_id, exc)
        decision = Decision(
            allow=False,
            reasons=(Reason("ledger_unavailable",
                            "the ledger (budgets, rate limits, audit) is unavailable; try again"),),
            policy="", decision_id=decision_id, revision="", retry_after_s=1.0,
        )
        # Audit it once the ledger is back (and release what a failed commit may hold).
        self.gate.defer(metered, decision_id, _audit_fields(req, decision, metered), release)
        return decision


def _log_ledger_down(req: Request, decision_id: str, exc: Exception) -> None:
    log.error("ledger unavailable", extra={"fields": {
        "decision_id": decision_id, "workload": req.spiffe_id, "error": str(exc)}})


def _priced_tool(req: Request) -> str:
    """The tool whose declared price the ledger reserves: none for an MCP message that
    calls no tool (mcp.rego prices those at nothing too)."""
    return req.tool if req.mcp is None or req.mcp.get("method") == "tools/call" else ""


def _engine_unavailable(decision_id: str, why: str) -> Decision:
    return Decision(allow=False, reasons=(Reason("engine_unavailable",
                                                 f"policy engine unavailable: {why}"),),
                    policy="", decision_id=decision_id, revision="")


def _explained(req: Request, decision: Decision, input_doc: dict[str, Any] | None,
               matched: Any) -> Decision:
    if req.explain and input_doc is not None:
        return _with_explanation(decision, input_doc, matched)
    return decision


def _audit_fields(req: Request, decision: Decision, m: Metered | None = None,
                  state: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the audit row may hold (pdp/ledger/audit.py keeps what the policy records,
    and always the estimate and state OPA decided on, for ``aam replay``)."""
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
        "estimate": {"tokens": m.tokens if m is not None else req.estimated_tokens,
                     "cost_usd": req.estimated_cost_usd},
        "state": state,
        "shadow": audit_field(decision.shadow) if shadow_disagrees(decision) else None,
    }


def shadow_disagrees(decision: Decision) -> bool:
    """Whether the shadow policy answered otherwise than the answer given."""
    return disagrees(decision.shadow, decision.allow, (r.code for r in decision.reasons))


def from_result(result: Any, decision_id: str) -> Decision:
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
        shadow=parse_shadow(result),
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
