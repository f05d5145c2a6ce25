"""Shadow policies as the PDP sees them: OPA's ``decision.shadow``, compared and recorded.

An AgentPolicy with ``rollout: {mode: shadow}`` is evaluated by OPA in the same query
as the enforced decision (rego/aam/shadow.rego) and answered beside it as
``decision.shadow``: ``{"policy", "allow", "reasons"}``, or null when the workload
has no shadow policy. Nothing here can change the enforced answer: :func:`parse`
never raises and maps anything malformed to None (no shadow), and only decisions
that :func:`disagrees` calls different are audited (:func:`audit_field`) and
counted (``aam_shadow_disagreements_total``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# The key of a disagreeing decision's audit row body (pdp/ledger/audit.py copies it).
AUDIT_KEY = "shadow"


@dataclass(frozen=True)
class ShadowReason:
    code: str
    message: str


@dataclass(frozen=True)
class Shadow:
    """What the workload's shadow policy would have answered."""

    policy: str
    allow: bool
    reasons: tuple[ShadowReason, ...] = ()

    @property
    def outcome(self) -> str:
        return "allow" if self.allow else "deny"

    @property
    def codes(self) -> frozenset[str]:
        return frozenset(r.code for r in self.reasons)


def parse(result: Any) -> Shadow | None:
    """The ``shadow`` of OPA's decision object; None when absent, null or malformed.

    Read like the enforced decision (an allow only when ``allow`` is true and no reason
    is given, a deny without reasons gets ``denied``) so the two compare like for like,
    but a problem here is never an error: a shadow must not touch the answer."""
    try:
        raw = result.get("shadow") if isinstance(result, dict) else None
        if not isinstance(raw, dict) or not isinstance(raw.get("allow"), bool):
            return None
        items = raw.get("reasons")
        reasons = tuple(
            ShadowReason(str(r.get("code", "unknown")), str(r.get("message", "")))
            for r in (items if isinstance(items, list) else ()) if isinstance(r, dict)
        )
        allow = raw["allow"] is True and not reasons
        if not allow and not reasons:
            reasons = (ShadowReason("denied", "denied by policy"),)
        return Shadow(policy=str(raw.get("policy", "")), allow=allow, reasons=reasons)
    except Exception:  # whatever OPA sent, the enforced answer stands
        return None


def disagrees(shadow: Shadow | None, allow: bool, reason_codes: Iterable[str]) -> bool:
    """Whether the shadow answered differently: another outcome, or both denied for a
    different set of reason codes (messages may differ: they name the policy)."""
    if shadow is None:
        return False
    if shadow.allow != allow:
        return True
    return not allow and shadow.codes != frozenset(reason_codes)


def audit_field(shadow: Shadow) -> dict[str, Any]:
    """The audit row's ``shadow`` value for a disagreeing decision (the row's own
    ``outcome`` and ``reasons`` are the enforced ones)."""
    return {
        "policy": shadow.policy,
        "outcome": shadow.outcome,
        "reasons": [{"code": r.code, "message": r.message} for r in shadow.reasons],
    }


def first_code(shadow: Shadow) -> str:
    """The reason code a report groups a shadow answer by ("" for an allow)."""
    return shadow.reasons[0].code if shadow.reasons else ""
