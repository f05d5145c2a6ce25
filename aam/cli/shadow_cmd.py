"""``aam shadow report``: where shadow policies disagree with the enforced ones, from the audit log.

Each decision a shadow policy answered differently carries ``shadow`` in its audit row
(pdp/shadow.py); this groups those rows by shadow policy, enforced -> shadow outcome and
first reason code, so a rollout can be judged before the policy is enforced. It reads the
ledger the way ``aam audit query`` does (aam/cli/ledger_cmd.py).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any, TextIO

from aam.cli.ledger_cmd import _audit_filter_args, _call, _Exit, _ledger_args
from pdp.ledger import AuditFilter
from pdp.ledger.types import AuditRow


def register(sub: argparse._SubParsersAction) -> None:
    sh = sub.add_parser("shadow", help="shadow policies (rollout: {mode: shadow})")
    ssub = sh.add_subparsers(dest="shadow_command", required=True, metavar="ACTION")
    r = ssub.add_parser("report", help="disagreements of shadow policies with the enforced ones,"
                                       " grouped by policy and reason")
    _ledger_args(r)
    _audit_filter_args(r)
    r.add_argument("--json", action="store_true", help="one JSON object per group per line")
    r.set_defaults(func=run_report)


@dataclass
class Group:
    policy: str
    enforced: str  # allow | deny
    shadow: str  # allow | deny
    reason: str  # the shadow's first reason code on a deny, else the enforced one's
    count: int = 0
    example: str = ""  # a decision id, the newest seen
    first_ts: str = ""
    last_ts: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"policy": self.policy, "enforced": self.enforced, "shadow": self.shadow,
                "reason": self.reason, "count": self.count, "example_decision_id": self.example,
                "first_ts": self.first_ts, "last_ts": self.last_ts}


def _first_code(reasons: Any) -> str:
    if isinstance(reasons, list) and reasons and isinstance(reasons[0], dict):
        return str(reasons[0].get("code", ""))
    return ""


def groups(rows: list[AuditRow]) -> list[Group]:
    """Rows with a shadow disagreement, grouped; by policy, then largest group first."""
    out: dict[tuple[str, str, str, str], Group] = {}
    for row in rows:
        try:
            body = row.record()
        except ValueError:  # not this command's to judge; `aam audit verify` reports it
            continue
        sh = body.get("shadow") if isinstance(body, dict) else None
        if not isinstance(sh, dict):
            continue
        shadow = str(sh.get("outcome", ""))
        reason = _first_code(sh.get("reasons")) if shadow == "deny" else _first_code(body.get("reasons"))
        key = (str(sh.get("policy", "")), row.outcome, shadow, reason)
        g = out.setdefault(key, Group(*key, first_ts=row.ts))
        g.count += 1
        g.example, g.last_ts = row.decision_id, row.ts
    return sorted(out.values(), key=lambda g: (g.policy, -g.count, g.enforced, g.shadow, g.reason))


def run_report(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    flt = AuditFilter(workload=args.workload or "", since=args.since or "", until=args.until or "")
    try:
        rows = _call(args, stderr, "shadow report", lambda ledger: ledger.audit_rows(flt))
    except _Exit as done:
        return done.code
    found = groups(rows)
    if args.json:
        for g in found:
            print(json.dumps(g.to_json(), sort_keys=True), file=stdout)
        return 0
    total = sum(g.count for g in found)
    span = f" since {args.since}" if args.since else ""
    if not found:
        print(f"no shadow disagreements{span} ({len(rows)} decision(s) read)", file=stdout)
        return 0
    print(f"{total} shadow disagreement(s){span} in {len(rows)} decision(s), {len(found)} group(s)",
          file=stdout)
    width = max(len(g.policy) for g in found)
    reason_width = max(len(g.reason or "-") for g in found)
    for g in found:
        print(f"{g.policy:<{width}}  {g.enforced.upper():5} -> {g.shadow.upper():5}"
              f"  {g.reason or '-':<{reason_width}}  {g.count:>7}  e.g. decision={g.example}",
              file=stdout)
    return 0
