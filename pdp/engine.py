"""The decision engine: assemble OPA's input in one place, ask OPA, fail closed.

Transport layers (gRPC Authorize, Envoy Check) translate their messages to a
:class:`Request` and a :class:`Decision` back; all policy logic lives in Rego
and all input assembly lives here.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from pdp.ledger import LedgerError
from pdp.ledger.gate import Gate, Metered
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


class Engine:
    def __init__(self, opa: OpaClient, observers: Iterable[Observer] = (),
                 broker: CredentialHook | None = None, gate: Gate | None = None) -> None:
        self.opa = opa
        self.observers = list(observers)
        self.broker = broker
        self.gate = gate  # the ledger: budgets, rates, audit; None when off

    def build_input(self, req: Request, metered: Metered | None = None,
                    state: dict[str, Any] | None = None) -> dict[str, Any]:
        """OPA's input document: the only place it is assembled. ``state`` overrides
        the state of ``metered``'s admission (the optimistic path's cached view)."""
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
        if metered is not None and self.gate is not None:
            # Tokens as the ledger counted them; the cost stays the caller's, since
            # routes.rego prices each target itself (call_cost_usd).
            doc["estimate"] = {"tokens": metered.tokens, "cost_usd": req.estimated_cost_usd}
            doc["state"] = state if state is not None else self.gate.state(metered)
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

    def decide(self, req: Request) -> Decision:
        started = time.perf_counter()
        decision_id = new_decision_id()
        decision = None
        if self.gate is not None and self.gate.cache is not None and not req.explain:
            decision = self._decide_optimistic(req, decision_id)
        if decision is None:
            decision = self._decide_checked(req, decision_id)
        self._done(req, decision, started)
        return decision

    def refuse(self, req: Request, reason: Reason) -> Decision:
        """A deny given before the policy is asked (a transport could not map the
        request): logged, audited and counted like every other decision."""
        started = time.perf_counter()
        decision = Decision(allow=False, reasons=(reason,), policy="",
                            decision_id=new_decision_id(), revision="")
        if self.gate is not None:
            fields = _audit_fields(req, decision)
            try:
                self.gate.audit(decision.decision_id, fields)
            except LedgerError as exc:
                log.error("ledger unavailable", extra={"fields": {
                    "decision_id": decision.decision_id, "workload": req.spiffe_id,
                    "error": str(exc)}})
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

    def _decide_optimistic(self, req: Request, decision_id: str) -> Decision | None:
        """One OPA query on this PDP's cached ledger state, then one ledger batch that
        reserves for an allow (checking every limit again) and writes the audit row.

        None when the checked path must answer: no fresh cached state, a budget or rate
        deny (only ever given on the ledger's fresh state), no route price, or the
        ledger refused the reservation (it wrote nothing)."""
        gate = self.gate
        assert gate is not None
        m = gate.meter(decision_id, req.spiffe_id, req.model, req.estimated_tokens,
                       req.estimated_cost_usd, tool=_priced_tool(req))
        state = gate.cached_state(m)
        if state is None:
            return None
        decision, _ = self._evaluate(self.build_input(req, m, state), decision_id)
        if not decision.allow and any(r.code in LIMIT_REASONS for r in decision.reasons):
            return None
        if decision.allow and m.ask is not None and req.model:
            price = _reserve_price(decision)  # the one pricing rule: routes.rego's
            if price is None:
                return None
            m = m.priced(usd_to_micro(price))
        if decision.allow and req.tool and req.action and self.broker is not None:
            decision = self.broker.attach(req, decision)  # may turn the allow into a deny
        fields = _audit_fields(req, decision)
        try:
            if decision.allow and m.ask is not None:
                if not gate.commit(m, decision_id, fields):
                    return None
            else:
                gate.finish(m, decision_id, fields, decision.allow)
        except LedgerError as exc:
            return self._ledger_unavailable(req, decision_id, exc)
        return decision

    def _decide_checked(self, req: Request, decision_id: str) -> Decision:
        """Reserve first, let OPA decide on exactly that state, then audit (and release
        a denied decision's reservation)."""
        metered = None
        quote_error: EngineUnavailable | None = None
        if self.gate is not None:
            quote = None
            try:
                quote = self._quote(req)
            except EngineUnavailable as exc:
                quote_error = exc  # answered engine_unavailable below, and audited
            try:  # reserve before deciding: one ledger round trip
                metered = self.gate.admit(decision_id, req.spiffe_id, req.model,
                                          req.estimated_tokens, req.estimated_cost_usd, quote,
                                          tool=_priced_tool(req))
            except LedgerError as exc:
                return self._ledger_unavailable(req, decision_id, exc)
        input_doc = self.build_input(req, metered)
        decision, matched = self._evaluate(input_doc, decision_id, req.explain, quote_error)
        if decision.allow and req.tool and req.action and self.broker is not None:
            decision = self.broker.attach(req, decision)
        if self.gate is not None and metered is not None:
            decision = self._record(req, decision, metered)
        if req.explain:
            decision = _with_explanation(decision, input_doc, matched)
        return decision

    def _record(self, req: Request, decision: Decision, metered: Metered) -> Decision:
        """Audit durably before answering; an allow the ledger could not reserve is a deny."""
        assert self.gate is not None
        try:
            metered = self._reprice(req, decision, metered)
        except LedgerError as exc:
            return self._ledger_unavailable(req, decision.decision_id, exc, metered)
        if decision.allow and metered.admission is not None and not metered.admission.reserved:
            decision = Decision(**{**decision.__dict__, "allow": False, "route": None, "reasons": (
                Reason("budget_exhausted", "the ledger refused the reservation (limits changed)"),)})
        try:
            self.gate.finish(metered, decision.decision_id, _audit_fields(req, decision),
                             decision.allow)
        except LedgerError as exc:
            return self._ledger_unavailable(req, decision.decision_id, exc, metered)
        return decision

    def _quote(self, req: Request) -> float | None:
        """What the ledger reserves for a model call: routes.rego's price of the chain
        (``reserve_usd``), asked before the budget state is known. One pricing rule for
        route selection and reservation; a caller's estimate can raise it, never lower
        it. None for a tool call (priced from its grant by the Gate)."""
        if not req.model or self.gate is None:
            return None
        tokens = req.estimated_tokens if req.estimated_tokens > 0 else self.gate.default_tokens
        value = self.opa.query(QUOTE_PATH, self.build_input(replace(req, estimated_tokens=tokens)))
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise EngineUnavailable("policy returned a malformed route price")
        return float(value)

    def _reprice(self, req: Request, decision: Decision, metered: Metered) -> Metered:
        """The ledger refused the quote (the budget could not cover the dearest target),
        but routes.rego found a cheaper chain that fits: reserve that chain's price."""
        a = metered.admission
        if not (decision.allow and decision.route and a is not None and not a.reserved):
            return metered
        assert self.gate is not None
        price = _reserve_price(decision)
        if price is None:
            return metered
        return self.gate.admit(decision.decision_id, req.spiffe_id, req.model, metered.tokens,
                               req.estimated_cost_usd, price)

    def _ledger_unavailable(self, req: Request, decision_id: str, exc: Exception,
                            metered: Metered | None = None) -> Decision:
        log.error("ledger unavailable", extra={"fields": {
            "decision_id": decision_id, "workload": req.spiffe_id, "error": str(exc)}})
        decision = Decision(
            allow=False,
            reasons=(Reason("ledger_unavailable",
                            "the ledger (budgets, rate limits, audit) is unavailable; try again"),),
            policy="", decision_id=decision_id, revision="", retry_after_s=1.0,
        )
        if self.gate is not None:  # audit it, and release its reservation, once the ledger is back
            self.gate.defer(metered, decision_id, _audit_fields(req, decision))
        return decision


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


def _reserve_price(decision: Decision) -> float | None:
    """The price routes.rego put on the allowed route's chain (``route.limits.reserve_usd``)."""
    limits = (decision.route or {}).get("limits")
    price = limits.get("reserve_usd") if isinstance(limits, dict) else None
    if isinstance(price, bool) or not isinstance(price, int | float):
        return None
    return float(price)


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
