"""What-if replay: audited decisions decided again under a candidate policy set.

Each decision row is turned back into the input OPA decided it on (as
:meth:`pdp.engine.Engine.build_input` assembles it: identity, model/tool/action,
params, context, the estimate and ``input.state`` the engine recorded, with
``input.now`` pinned to the row's time so time windows judge the same moment),
asked of a real OPA serving the candidate bundle, and compared with the outcome
recorded. Nothing is guessed: a row whose input cannot be rebuilt exactly (written
before rows carried the estimate and state, or with params, context or action
withheld by ``audit.record``) is counted and named, never replayed on a stand-in.
Rows that record no policy decision (identity refusals; denies from the engine,
the ledger, the broker or the transport) are skipped and counted.

Each decision is replayed on the ledger state recorded with it, against the
candidate's limits: a budget window's ``limit_usd`` and ``remaining_usd`` are
worked out again from the candidate's budget, as the ledger would have
described the same spend to OPA under it. Replay does not model knock-on
effects: an allow the candidate would have denied still counts in the spend
later rows recorded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from compiler import Bundle
from compiler.bundle import DATA_PATH
from pdp.bundles import BundleStore, HttpServer
from pdp.compiled import Compiled, CompiledPolicy
from pdp.engine import LEDGER_REFUSED, Decision, Engine, Request, from_result
from pdp.ledger.types import usd, usd_to_micro
from pdp.opa import DECISION_PATH, OpaClient, OpaProcess

# Deny reasons that say the policy was never (or not alone) asked: the engine, the
# ledger, the broker or the transport answered. Replaying them would compare a
# policy with an outage.
INFRASTRUCTURE = frozenset({
    # pdp/engine.py: OPA or the ledger could not answer (budget.rego also says
    # ledger_unavailable when a policy sets a budget and there is no ledger state)
    "engine_unavailable", "ledger_unavailable",
    # pdp/broker/broker.py: the policy allowed; no credential could be issued
    "credential_unavailable",
    # pdp/httpmap.py, pdp/extauthz.py (Engine.refuse): the request could not be mapped
    "invalid_request", "route_not_mapped", "unauthenticated",
    # pdp/identity.py Refusal codes (their rows carry event identity_refused)
    "untrusted_domain", "not_self", "jwt_svid_invalid", "not_gateway", "gateway_token_invalid",
})
# What a row written before rows carried the estimate is "not replayable" for.
BEFORE_REPLAY = "recorded before replay support (no estimate)"
# A candidate that needs ledger state the recorded decision did not have.
NO_STATE = ("the candidate sets a budget or rate limit that the recorded decision had no "
            "ledger state for")
NOT_RECORDED = "(not recorded)"
EXAMPLES = 3

Direction = Literal["allow_to_deny", "deny_to_allow"]


@dataclass(frozen=True)
class Replayable:
    """A decision row with the exact input OPA decided it on."""

    decision_id: str
    allow: bool
    policy: str  # as recorded ("" when audit.record leaves it out)
    reasons: tuple[tuple[str, str], ...]  # (code, message) as recorded; () when not recorded
    workload: str
    input: dict[str, Any]


@dataclass(frozen=True)
class Unreplayable:
    decision_id: str
    why: str


@dataclass(frozen=True)
class Skipped:
    """Not a policy decision; ``why`` is the reason code (or event) that says so."""

    decision_id: str
    why: str


@dataclass(frozen=True)
class Flip:
    decision_id: str
    direction: Direction
    policy: str  # the candidate's policy, else the recorded one
    reason: str  # allow->deny: the candidate's first reason; deny->allow: the recorded first
    message: str


@dataclass(frozen=True)
class Group:
    direction: Direction
    policy: str
    reason: str
    decision_ids: tuple[str, ...]
    message: str  # the first flip's

    @property
    def examples(self) -> tuple[str, ...]:
        return self.decision_ids[:EXAMPLES]


@dataclass
class Report:
    replayed: int = 0
    unchanged: int = 0
    flips: list[Flip] = field(default_factory=list)
    not_replayable: list[Unreplayable] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def count(self, direction: Direction) -> int:
        return sum(1 for f in self.flips if f.direction == direction)

    @property
    def widening(self) -> bool:
        """Whether the candidate allows something that was denied (a CI gate fails on it)."""
        return any(f.direction == "deny_to_allow" for f in self.flips)

    def groups(self, direction: Direction) -> list[Group]:
        """Flips of one direction by (policy, reason): largest first, then by name."""
        by: dict[tuple[str, str], list[Flip]] = {}
        for f in self.flips:
            if f.direction == direction:
                by.setdefault((f.policy, f.reason), []).append(f)
        out = [Group(direction, p, r, tuple(f.decision_id for f in fs), fs[0].message)
               for (p, r), fs in by.items()]
        return sorted(out, key=lambda g: (-len(g.decision_ids), g.policy, g.reason))

    def unreplayable_by_why(self) -> dict[str, list[str]]:
        by: dict[str, list[str]] = {}
        for u in self.not_replayable:
            by.setdefault(u.why, []).append(u.decision_id)
        return by

    def skipped_by_why(self) -> dict[str, int]:
        by: dict[str, int] = {}
        for s in self.skipped:
            by[s.why] = by.get(s.why, 0) + 1
        return dict(sorted(by.items()))

    def totals(self) -> dict[str, int]:
        return {"replayed": self.replayed, "unchanged": self.unchanged,
                "allow_to_deny": self.count("allow_to_deny"),
                "deny_to_allow": self.count("deny_to_allow"),
                "not_replayable": len(self.not_replayable), "skipped": len(self.skipped)}

    def to_json(self) -> dict[str, Any]:
        return {
            "totals": self.totals(),
            "flips": [{"direction": g.direction, "policy": g.policy, "reason": g.reason,
                       "count": len(g.decision_ids), "message": g.message,
                       "decision_ids": list(g.decision_ids)}
                      for d in ("allow_to_deny", "deny_to_allow") for g in self.groups(d)],
            "not_replayable": [{"decision_id": u.decision_id, "why": u.why}
                               for u in self.not_replayable],
            "skipped": self.skipped_by_why(),
        }


def classify(body: Mapping[str, Any], candidate: Compiled | None = None
             ) -> Replayable | Unreplayable | Skipped:
    """What one audit row is to a replay. ``candidate`` (its compiled data) restates the
    recorded budget state against the candidate's limits."""
    decision_id = str(body.get("decision_id", "")) or "?"
    if body.get("event"):
        return Skipped(decision_id, str(body["event"]))
    outcome, workload, ts = body.get("outcome"), body.get("workload"), body.get("ts")
    if outcome not in ("allow", "deny") or not isinstance(workload, str) \
            or not isinstance(ts, str):
        return Unreplayable(decision_id, "malformed row (no outcome, workload or ts)")
    reasons = _reasons(body.get("reasons"))
    if outcome == "deny":
        infra = next((c for c, _ in reasons if c in INFRASTRUCTURE), None)
        if infra is not None:
            return Skipped(decision_id, infra)
        if (LEDGER_REFUSED.code, LEDGER_REFUSED.message) in reasons:
            return Skipped(decision_id, "ledger_refused_reservation")
        if not body.get("revision"):
            # Only the engine, ledger and transport deny without a bundle revision.
            return Skipped(decision_id, "no policy revision (engine, ledger or transport deny)")
    estimate = body.get("estimate")
    if not isinstance(estimate, Mapping):
        return Unreplayable(decision_id, BEFORE_REPLAY)
    redacted = body.get("redacted")
    if redacted:
        withheld = ", ".join(str(x) for x in redacted)
        return Unreplayable(decision_id, f"{withheld} withheld by audit.record (not recorded)")
    policy = candidate.policy(workload) if candidate is not None else None
    return Replayable(decision_id, outcome == "allow", str(body.get("policy", "")), reasons,
                      workload, rebuild_input(body, policy))


def rebuild_input(body: Mapping[str, Any], policy: CompiledPolicy | None = None) -> dict[str, Any]:
    """OPA's input for a replayable row, key for key what Engine.build_input assembled,
    plus ``now`` = the row's time. A field the row does not hold was empty (the row
    names what ``audit.record`` withheld, and :func:`classify` refuses those)."""
    action = body.get("action") or {}
    estimate = body["estimate"]
    req = Request(
        spiffe_id=body["workload"], model=action.get("model", ""), tool=action.get("tool", ""),
        action=action.get("action", ""), params=body.get("params") or {},
        context=body.get("context") or {}, estimated_tokens=estimate.get("tokens", 0),
        estimated_cost_usd=estimate.get("cost_usd", 0.0), mcp=action.get("mcp"),
        listing=action.get("list") or "")
    state = body.get("state")
    doc = Engine.build_input(req, None, restate(state, policy) if state is not None else None)
    doc["now"] = body["ts"]
    return doc


def restate(state: Mapping[str, Any], policy: CompiledPolicy | None) -> dict[str, Any]:
    """The recorded spend described against ``policy``'s budget, as
    pdp/ledger/limits.py ``state`` describes it (exact micro-dollars). Without a
    candidate policy for the workload the state stays as recorded."""
    out = dict(state)
    budget = state.get("budget")
    if policy is None or not isinstance(budget, Mapping):
        return out
    limits = {"daily": policy.budget.daily_usd, "monthly": policy.budget.monthly_usd}
    windows = {}
    for name, w in budget.items():
        if name not in limits or not isinstance(w, Mapping):
            windows[name] = w
            continue
        limit = limits[name]
        limit_micro = usd_to_micro(limit) if limit is not None else None
        spent = _micro(w.get("spent_usd"))
        reserved = _micro(w.get("reserved_usd"))
        windows[name] = {
            **w,
            "limit_usd": usd(limit_micro) if limit_micro is not None else None,
            "remaining_usd": usd(limit_micro - spent - reserved) if limit_micro is not None else None,
        }
    out["budget"] = windows
    return out


def compare(row: Replayable, candidate: Decision, compiled: Compiled | None = None
            ) -> Flip | Unreplayable | None:
    """The flip the candidate's answer makes of ``row`` (None: unchanged). ``compiled``
    (the candidate's data) tells a deny whose reasons were not recorded from one the
    broker may have given."""
    codes = [r.code for r in candidate.reasons]
    if not candidate.allow and "ledger_unavailable" in codes:
        return Unreplayable(row.decision_id, NO_STATE)
    if candidate.allow == row.allow:
        return None
    if not row.allow and not row.reasons:
        unsure = _unsure_deny(row, compiled)
        if unsure:
            return Unreplayable(row.decision_id, unsure)
    policy = candidate.policy or row.policy or "(no policy)"
    if row.allow:
        first = candidate.reasons[0]
        return Flip(row.decision_id, "allow_to_deny", policy, first.code, first.message)
    code, message = row.reasons[0] if row.reasons else (NOT_RECORDED, "")
    return Flip(row.decision_id, "deny_to_allow", policy, code, message)


def _unsure_deny(row: Replayable, compiled: Compiled | None) -> str:
    """Why a deny recorded without its reasons may not have been the policy's ("": it was)."""
    doc = row.input
    spec = compiled.credentials.get(doc["tool"]) if compiled is not None and doc["tool"] else None
    if spec is not None and spec.scope_for(doc["action"]) is not None:
        return ("reasons not recorded, and the action needs a brokered credential: the deny "
                "may have been the broker's (credential_unavailable)")
    state = doc.get("state")
    if isinstance(state, Mapping) and state.get("reserved") is False:
        return ("reasons not recorded, and the ledger refused the reservation: the deny may "
                "have been the ledger's")
    return ""


Decide = Callable[[dict[str, Any]], Decision]


def replay(bodies: Iterable[Mapping[str, Any]], decide: Decide,
           candidate: Compiled | None = None) -> Report:
    """Replay audit row bodies (oldest first) through ``decide`` (the candidate's OPA)."""
    report = Report()
    for body in bodies:
        got = classify(body, candidate)
        if isinstance(got, Skipped):
            report.skipped.append(got)
            continue
        if isinstance(got, Unreplayable):
            report.not_replayable.append(got)
            continue
        outcome = compare(got, decide(got.input), candidate)
        if isinstance(outcome, Unreplayable):
            report.not_replayable.append(outcome)
            continue
        report.replayed += 1
        if outcome is None:
            report.unchanged += 1
        else:
            report.flips.append(outcome)
    return report


def compiled_of(bundle: Bundle) -> Compiled:
    """The candidate's typed data (budgets for :func:`restate`)."""
    return Compiled.from_files(bundle.files, DATA_PATH)


@contextlib.contextmanager
def candidate_opa(bundle: Bundle, opa_binary: str, timeout_s: float = 10.0) -> Iterator[Decide]:
    """A real OPA on loopback serving ``bundle`` the way the PDP serves its own (the
    bundle endpoint, a managed OPA), as a decide function; stopped on exit."""
    store = BundleStore()
    store.publish(bundle)
    http = HttpServer("127.0.0.1", 0, store)
    http.start()
    opa = OpaProcess(opa_binary, "127.0.0.1:0", http.url)
    client: OpaClient | None = None
    try:
        opa.start()
        client = OpaClient(opa.url, timeout_s)
        query = client.query

        def decide(input_doc: dict[str, Any]) -> Decision:
            return from_result(query(DECISION_PATH, input_doc), "")

        yield decide
    finally:
        store.close()  # answer OPA's long poll, so it stops at once
        if client is not None:
            client.close()
        opa.stop()
        http.stop()


def _reasons(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list):
        return ()
    return tuple((str(r.get("code", "")), str(r.get("message", "")))
                 for r in value if isinstance(r, Mapping))


def _micro(value: Any) -> int:
    """Recorded USD (whole micro-dollars, pdp/ledger/types.py usd) back to micro-dollars."""
    return round(value * 1_000_000) if isinstance(value, int | float) else 0
