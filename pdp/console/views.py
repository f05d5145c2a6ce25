"""What each console page shows, read from the ledger and the compiled policies.

Every read is bounded and on an index: the newest N rows (the primary key, or
(workload, seq), (tool, seq), (model, seq) and the reason codes: generated columns of the
body, see the console migrations), a time window of denials counted in the database
((outcome, ts) with the reason codes), one workload's budget windows (the ledger's own
peek). Nothing here writes; nothing here can see a
credential's value (audit rows hold the lease accessor only) or a param the policy did
not record (rows hold only what ``audit.record`` names).
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from pdp.compiled import CompiledPolicy, Revisions
from pdp.console import charts
from pdp.console.chainstatus import ChainStatus
from pdp.console.history import RevisionLog
from pdp.ledger import Ask, AuditFilter, AuditRow, Ledger, LedgerError
from pdp.ledger.limits import limits_of
from pdp.ledger.types import FilterError, usd

DECISIONS = 100  # rows on the decisions page
WORKLOAD_RECENT = 25
LEASE_SCAN = 1_000  # a workload's newest rows searched for credential leases
SHADOW_SCAN = 5_000  # newest rows searched for shadow disagreements
FILTERS = ("workload", "outcome", "reason", "tool", "model", "since", "until")


class BadRequest(ValueError):
    """A filter value the page cannot use: shown to the user, nothing is queried."""


@dataclass
class Sources:
    ledger: Ledger | None
    revisions: Revisions
    history: RevisionLog
    chain: ChainStatus | None
    # The denials page's figures for a few seconds, by query: its chart (a second request
    # the browser makes at once) draws from them instead of reading the rows again.
    recent: dict[tuple[tuple[str, str], ...], tuple[float, dict[str, Any]]] = field(
        default_factory=dict)


def decision(r: AuditRow) -> dict[str, Any]:
    """One audit row as the pages show it (every value is escaped by the templates)."""
    try:
        body = r.record()
    except ValueError:
        body = {}
    action = body.get("action") or {}
    if body.get("event") == "identity_refused":
        target = "identity refused"
    elif action.get("model"):
        target = f"model {action['model']}"
    elif action.get("tool"):
        target = f"{action['tool']} / {action.get('action', '')}"
    else:
        target = ""
    shadow = body.get("shadow") or None
    return {
        "seq": r.seq, "ts": r.ts[:19].replace("T", " "), "workload": r.workload,
        "outcome": r.outcome, "target": target, "policy": body.get("policy", ""),
        "reasons": [(x.get("code", ""), x.get("message", "")) for x in body.get("reasons") or ()
                    if isinstance(x, Mapping)],
        "params": json.dumps(body["params"], sort_keys=True) if body.get("params") else "",
        "lease": body.get("lease_accessor", ""), "revision": str(body.get("revision", ""))[:12],
        "cost": None if r.cost_micro is None else usd(r.cost_micro), "settlement": r.settlement,
        "shadow": shadow, "decision_id": r.decision_id,
    }


def _filter(query: Mapping[str, str], **extra: Any) -> AuditFilter:
    try:
        flt = AuditFilter(workload=query.get("workload", "").strip(),
                          outcome=query.get("outcome", "").strip().lower(),
                          reason=query.get("reason", "").strip(), tool=query.get("tool", "").strip(),
                          model=query.get("model", "").strip(), since=query.get("since", "").strip(),
                          until=query.get("until", "").strip(), **extra)
        flt.bounds()
    except FilterError as exc:
        raise BadRequest(str(exc).replace("--", "")) from None
    if flt.outcome not in ("", "allow", "deny"):
        raise BadRequest("outcome must be allow or deny")
    return flt


def _rows(src: Sources, flt: AuditFilter) -> list[AuditRow]:
    if src.ledger is None:
        raise BadRequest("no ledger is configured (ledger_url): there are no decisions to show")
    try:
        return src.ledger.audit_rows(flt)
    except FilterError as exc:
        raise BadRequest(str(exc)) from None


def decisions(src: Sources, query: Mapping[str, str]) -> dict[str, Any]:
    rows = [decision(r) for r in reversed(_rows(src, _filter(query, limit=DECISIONS)))]
    filters = {k: query.get(k, "") for k in FILTERS}
    live = query.get("live") == "1"
    # Live: the page reloads itself (a meta refresh: no script, so the CSP stays script-free).
    toggle = urlencode({**{k: v for k, v in filters.items() if v}, **({} if live else {"live": "1"})})
    return {"rows": rows, "filters": filters, "limit": DECISIONS,
            "refresh_s": LIVE_REFRESH_S if live else 0, "live": live, "live_toggle": "/?" + toggle}


# Seconds between reloads of the live decisions page.
LIVE_REFRESH_S = 5


def find_policy(revisions: Revisions, workload: str) -> CompiledPolicy | None:
    compiled = revisions.active.compiled
    if workload.startswith("spiffe://"):
        return compiled.policy(workload)
    tail = "/" + workload.strip("/")
    found = [p for w, p in sorted(compiled.policies.items()) if w.endswith(tail)]
    return found[0] if len(found) == 1 else None


def workloads(src: Sources) -> list[dict[str, Any]]:
    return [{"workload": w, "policy": p.name}
            for w, p in sorted(src.revisions.active.compiled.policies.items())]


def workload(src: Sources, query: Mapping[str, str]) -> dict[str, Any]:
    wid = query.get("id", "").strip()
    if not wid:
        return {"workload": "", "all": workloads(src)}
    policy = find_policy(src.revisions, wid)
    if policy is not None:
        wid = policy.workload
    out: dict[str, Any] = {"workload": wid, "policy": policy, "all": []}
    if policy is not None:
        out["models"] = sorted(policy.models)
        out["tools"] = [{"resource": t.resource, "actions": sorted(t.actions), "deny": sorted(t.deny)}
                        for t in sorted(policy.tools.values(), key=lambda t: t.resource)]
    out["budget"] = budget(src, policy) if policy is not None else None
    if src.ledger is not None and wid.startswith("spiffe://"):
        recent = src.ledger.audit_rows(AuditFilter(workload=wid, limit=LEASE_SCAN))
        out["recent"] = [decision(r) for r in reversed(recent[-WORKLOAD_RECENT:])]
        out["leases"] = leases(recent)
        out["lease_scan"] = LEASE_SCAN
    return out


def budget(src: Sources, policy: CompiledPolicy) -> dict[str, Any] | None:
    """Today's and this month's spend (and open reservations) against the policy's budget,
    and its rate usage: the ledger's own state, read as a reservation would read it."""
    if src.ledger is None:
        return None
    limits = limits_of(policy, None)
    ask = Ask(f"console-{uuid.uuid4().hex}", policy.workload, "", 0, 0, limits, 1.0)
    try:
        a = src.ledger.peek(ask)
    except LedgerError as exc:
        return {"error": str(exc)}
    windows = [("today " + a.daily.key, usd(a.daily.spent_micro), usd(a.daily.reserved_micro),
                policy.budget.daily_usd),
               ("month " + a.monthly.key, usd(a.monthly.spent_micro), usd(a.monthly.reserved_micro),
                policy.budget.monthly_usd)]
    return {
        "windows": [{"label": w[0], "spent": w[1], "reserved": w[2], "limit": w[3],
                     "left": None if w[3] is None else max(0.0, w[3] - w[1] - w[2]),
                     "percent": None if not w[3] else round(100 * (w[1] + w[2]) / w[3], 1)}
                    for w in windows],
        "timezone": policy.budget.timezone,
        "rate": {"requests": a.workload_rate.requests, "tokens": a.workload_rate.tokens,
                 "rpm": policy.rate.requests_per_minute, "tpm": policy.rate.tokens_per_minute},
        "chart": windows,
    }


def leases(rows: list[AuditRow]) -> list[dict[str, Any]]:
    """Credential leases by accessor (never a value: rows hold the accessor only)."""
    by: dict[str, dict[str, Any]] = {}
    for r in rows:
        d = decision(r)
        if not d["lease"]:
            continue
        e = by.setdefault(d["lease"], {"accessor": d["lease"], "target": d["target"],
                                       "first": d["ts"], "last": d["ts"], "decisions": 0})
        e["last"] = d["ts"]
        e["decisions"] += 1
    return sorted(by.values(), key=lambda e: e["last"], reverse=True)


def _bucketing(since: datetime, until: datetime) -> tuple[timedelta, str]:
    span = until - since
    if span <= timedelta(hours=48):
        return timedelta(hours=1), "%m-%d %H:00"
    return timedelta(days=1), "%Y-%m-%d"


def denials(src: Sources, query: Mapping[str, str]) -> dict[str, Any]:
    """Denied decisions in a window (default the last 24 h), by reason code and time."""
    q = _denial_query(query)
    flt = _filter(q)
    since, until = flt.bounds()
    assert since is not None
    until = until or datetime.now(UTC)
    step, fmt = _bucketing(since, until)
    start = since.replace(minute=0, second=0, microsecond=0)
    if step >= timedelta(days=1):
        start = start.replace(hour=0)
    count = int((until - start) / step) + 1
    labels = [(start + i * step).strftime(fmt) for i in range(count)]
    series: dict[str, list[int]] = defaultdict(lambda: [0] * count)
    totals: Counter[str] = Counter()
    denied, counts = _counts(src, flt, start, step)
    for i, code, n in counts:
        if 0 <= i < count:
            series[code or "(none)"][i] += n
            totals[code or "(none)"] += n
    out = {"labels": labels, "series": dict(series), "totals": totals.most_common(),
           "denied": denied, "filters": {k: q.get(k, "") for k in FILTERS},
           "since": since.isoformat(timespec="seconds"), "until": until.isoformat(timespec="seconds")}
    now = time.monotonic()
    for k in [k for k, (t, _) in src.recent.items() if now - t >= CACHE_S]:
        src.recent.pop(k, None)
    src.recent[_key(q)] = (now, out)
    return out


CACHE_S = 5.0


def _denial_query(query: Mapping[str, str]) -> dict[str, str]:
    """The denials page's filters: denials only, the last 24 h unless ``since`` says."""
    return {**{k: v.strip() for k, v in query.items() if k in FILTERS}, "outcome": "deny",
            "since": query.get("since", "").strip() or "24h"}


def _key(q: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in q.items() if v))


def _counts(src: Sources, flt: AuditFilter, start: datetime, step: timedelta
            ) -> tuple[int, list[tuple[int, str, int]]]:
    """The matching rows, and rows per (bucket, reason code): counted by the ledger
    (``audit_counts``: an index of ts and the codes, no body read) or, for a ledger
    without it, from its rows."""
    if src.ledger is None:
        raise BadRequest("no ledger is configured (ledger_url): there are no decisions to show")
    count = getattr(src.ledger, "audit_counts", None)
    if count is not None:
        try:
            total, got = count(flt, start, int(step.total_seconds()))
        except FilterError as exc:
            raise BadRequest(str(exc)) from None
        return total, got
    rows = _rows(src, flt)
    by: Counter[tuple[int, str]] = Counter()
    for r in rows:
        i = (datetime.fromisoformat(r.ts).astimezone(UTC) - start) // step
        for code in _codes(r) or {""}:
            by[i, code] += 1
    return len(rows), [(i, c, n) for (i, c), n in by.items()]


def _codes(r: AuditRow) -> set[str]:
    try:
        reasons = json.loads(r.body).get("reasons") or ()
    except (ValueError, AttributeError):
        return set()
    return {str(x.get("code", "")) for x in reasons if isinstance(x, Mapping)}


def denials_chart(src: Sources, query: Mapping[str, str]) -> bytes:
    hit = src.recent.get(_key(_denial_query(query)))
    d = hit[1] if hit is not None and time.monotonic() - hit[0] < CACHE_S else denials(src, query)
    return charts.denials(d["labels"], d["series"])


def spend_chart(src: Sources, query: Mapping[str, str]) -> bytes:
    policy = find_policy(src.revisions, query.get("id", ""))
    b = budget(src, policy) if policy is not None else None
    return charts.spend(b["chart"] if b and "chart" in b else [])


def audit(src: Sources) -> dict[str, Any]:
    if src.chain is None:
        return {"configured": False}
    started = time.perf_counter()
    state = src.chain.catch_up()
    head = src.ledger.head if src.ledger is not None else None
    return {"configured": True, "state": state, "anchor": src.chain.anchor(),
            "keyed": src.chain.keyring is not None, "head": head,
            "checked_ms": round((time.perf_counter() - started) * 1000, 1),
            "checked_at": datetime.fromtimestamp(state.checked_at, UTC).isoformat(timespec="seconds")
            if state.checked_at else ""}


def _when(t: float | None) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if t else ""


def revisions(src: Sources) -> dict[str, Any]:
    active = src.history.active
    return {"active": active, "entries": [
        {"revision": e.revision, "published": _when(e.published_at), "activated": _when(e.active_at),
         "policies": e.policies, "current": e.revision == active}
        for e in src.history.entries()]}


def shadow(src: Sources, query: Mapping[str, str]) -> dict[str, Any]:
    """Decisions a shadow policy disagreed with, among the newest rows (``aam shadow report``
    reads them all)."""
    # The ledger looks through the newest rows and returns only those with a shadow
    # entry: the other 5,000 or so never leave the database.
    rows = [decision(r) for r in reversed(
        _rows(src, _filter(query, limit=SHADOW_SCAN, shadow_only=True)))]
    return {"rows": [r for r in rows if r["shadow"]], "scan": SHADOW_SCAN,
            "filters": {k: query.get(k, "") for k in FILTERS}}
