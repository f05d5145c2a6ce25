"""``aam migrate`` and ``aam audit query|verify``: thin calls into pdp.ledger."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TextIO

from pdp.config import DEFAULT_SQLITE_LEDGER, ConfigError, Settings
from pdp.ledger import AuditFilter, Ledger, LedgerError, open_ledger
from pdp.ledger.chain import verify


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


def run_migrate(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    ledger = _open(args, stderr)
    if ledger is None:
        return 2
    try:
        applied = ledger.migrate(args.grant_role)
    except LedgerError as exc:
        print(f"aam migrate: error: {exc}", file=stderr)
        return 1
    finally:
        ledger.close()
    for name in applied:
        print(f"applied {name}", file=stdout)
    print("ledger schema up to date" + (f"; granted to {args.grant_role}" if args.grant_role else ""),
          file=stdout)
    return 0


def run_query(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    ledger = _open(args, stderr)
    if ledger is None:
        return 2
    flt = AuditFilter(workload=args.workload or "", outcome=args.outcome or "",
                      decision_id=args.decision_id or "", since=args.since or "",
                      until=args.until or "", limit=args.limit)
    try:
        rows = ledger.audit_rows(flt)
    except (LedgerError, ValueError) as exc:
        print(f"aam audit query: error: {exc}", file=stderr)
        return 1
    finally:
        ledger.close()
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
    ledger = _open(args, stderr)
    if ledger is None:
        return 2
    try:
        checked, problems = verify(ledger.audit_rows(AuditFilter()))
    except LedgerError as exc:
        print(f"aam audit verify: error: {exc}", file=stderr)
        return 1
    finally:
        ledger.close()
    for p in problems:
        print(p, file=stdout)
    if problems:
        print(f"audit chain BROKEN: {len(problems)} problem(s) in {checked} row(s)", file=stdout)
        return 1
    print(f"audit chain intact: {checked} row(s)", file=stdout)
    return 0
