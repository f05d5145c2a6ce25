"""``aam migrate`` and ``aam audit query|verify``: thin calls into pdp.ledger."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TextIO, TypeVar

from pdp.config import DEFAULT_SQLITE_LEDGER, ConfigError, Settings
from pdp.ledger import AuditFilter, Ledger, LedgerError, open_ledger
from pdp.ledger.chain import verify

T = TypeVar("T")


def register(sub: argparse._SubParsersAction) -> None:
    mg = sub.add_parser("migrate", help="apply pending ledger schema migrations")
    _ledger_args(mg)
    mg.add_argument("--grant-role", default="",
                    help="grant this database role what the PDP needs (never UPDATE/DELETE on audit)")
    mg.set_defaults(func=run_migrate)

    au = sub.add_parser("audit", help="query or verify the audit log")
    asub = au.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    q = asub.add_parser("query", help="audit rows by workload, time, outcome or decision id")
    _ledger_args(q)
    q.add_argument("--workload")
    q.add_argument("--outcome", choices=["allow", "deny"])
    q.add_argument("--decision-id")
    q.add_argument("--since", help="ISO 8601 time, inclusive")
    q.add_argument("--until", help="ISO 8601 time, exclusive")
    q.add_argument("--limit", type=int)
    q.add_argument("--json", action="store_true", help="one JSON object per line")
    q.set_defaults(func=run_query)
    v = asub.add_parser("verify", help="check the hash chain; name every bad row")
    _ledger_args(v)
    v.set_defaults(func=run_verify)


def _ledger_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML settings file (for ledger_url)")
    p.add_argument("--ledger-url", help="postgresql://..., sqlite:///path (default: settings,"
                                        " else the embedded ledger of aam up)")


def _open(args: argparse.Namespace, stderr: TextIO) -> Ledger | None:
    try:
        settings = Settings.load(args.config, ledger_url=args.ledger_url)
        url = settings.ledger_url
        if not url and DEFAULT_SQLITE_LEDGER.exists():  # what a local `aam up` wrote
            url = f"sqlite://{DEFAULT_SQLITE_LEDGER}"
        ledger = open_ledger(url, 1, settings.ledger_timeout_ms / 1000)
    except (ConfigError, LedgerError) as exc:
        print(f"aam: error: {exc}", file=stderr)
        return None
    if ledger is None:
        print("aam: error: no ledger configured (--ledger-url or AAM_LEDGER_URL)", file=stderr)
    return ledger


class _Exit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def _call(args: argparse.Namespace, stderr: TextIO, command: str, fn: Callable[[Ledger], T]) -> T:
    """Open the ledger, make one call, close it; a failure is one error line and _Exit."""
    ledger = _open(args, stderr)
    if ledger is None:
        raise _Exit(2)
    try:
        return fn(ledger)
    except (LedgerError, ValueError) as exc:  # ValueError: a malformed --since/--until
        print(f"aam {command}: error: {exc}", file=stderr)
        raise _Exit(1) from None
    finally:
        ledger.close()


def run_migrate(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    try:
        applied = _call(args, stderr, "migrate", lambda ledger: ledger.migrate(args.grant_role))
    except _Exit as done:
        return done.code
    for name in applied:
        print(f"applied {name}", file=stdout)
    print("ledger schema up to date" + (f"; granted to {args.grant_role}" if args.grant_role else ""),
          file=stdout)
    return 0


def run_query(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    flt = AuditFilter(workload=args.workload or "", outcome=args.outcome or "",
                      decision_id=args.decision_id or "", since=args.since or "",
                      until=args.until or "", limit=args.limit)
    try:
        rows = _call(args, stderr, "audit query", lambda ledger: ledger.audit_rows(flt))
    except _Exit as done:
        return done.code
    for r in rows:
        cost = None if r.cost_micro is None else r.cost_micro / 1_000_000
        if args.json:
            print(json.dumps({"seq": r.seq, **r.record(), "settlement": r.settlement,
                              "cost_usd": cost}, sort_keys=True), file=stdout)
            continue
        rec = r.record()
        what = rec.get("action") or {}
        target = what.get("model") or f"{what.get('tool', '')}/{what.get('action', '')}" if what else ""
        reasons = ",".join(x.get("code", "") for x in rec.get("reasons", ()))
        print(f"{r.seq:>6}  {r.ts}  {r.outcome.upper():5}  {r.workload}  {target}"
              f"  decision={r.decision_id}"
              + (f"  policy={rec['policy']}" if rec.get("policy") else "")
              + (f"  reasons={reasons}" if reasons else "")
              + (f"  cost={cost:.6f} USD" if cost is not None else "")
              + (f"  [{r.settlement}]" if r.settlement else ""), file=stdout)
    return 0


def run_verify(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    try:
        checked, problems = _call(args, stderr, "audit verify",
                                  lambda ledger: verify(ledger.audit_rows(AuditFilter())))
    except _Exit as done:
        return done.code
    for p in problems:
        print(p, file=stdout)
    if problems:
        print(f"audit chain BROKEN: {len(problems)} problem(s) in {checked} row(s)", file=stdout)
        return 1
    print(f"audit chain intact: {checked} row(s)", file=stdout)
    return 0
