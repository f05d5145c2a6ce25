"""``aam replay --candidate PATH``: what a policy change would have decided differently.

Re-decides audited decisions under a candidate policy set (pdp/replay.py) and
prints the flips. Exit codes: 0 no deny-to-allow flip (or ``--allow-widening``),
4 a deny-to-allow flip (the candidate widens access: a CI job gates on it),
1 error (a candidate that does not compile prints its diagnostics), 2 usage.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from typing import Any, TextIO

from aam.cli.ledger_cmd import _audit_filter_args, _call, _Exit, _ledger_args
from compiler import Bundle, CompileError, compile_paths
from pdp import replay
from pdp.config import ConfigError, Settings
from pdp.engine import Decision
from pdp.ledger import AuditFilter, AuditRow
from pdp.opa import EngineUnavailable

WIDENING = 4


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="re-decide audited decisions under candidate policies; "
                                      "print what flips")
    p.add_argument("--candidate", type=Path, action="append", required=True, metavar="PATH",
                   help="candidate policy file or directory (repeatable), compiled as aam compile does")
    _ledger_args(p)
    _audit_filter_args(p)
    p.add_argument("--allow-widening", action="store_true",
                   help="exit 0 even when a denied decision would now be allowed")
    p.add_argument("--json", action="store_true", help="one JSON report")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    try:
        bundle = compile_paths(args.candidate)
    except CompileError as exc:
        for d in exc.diagnostics:
            print(d, file=stderr)
        print(f"{len(exc.diagnostics)} error(s) in the candidate; nothing replayed", file=stderr)
        return 1
    flt = AuditFilter(workload=args.workload or "", since=args.since or "", until=args.until or "")
    try:
        rows = _call(args, stderr, "replay", lambda ledger: ledger.audit_rows(flt))
    except _Exit as done:
        return done.code
    bodies = [_body(r) for r in rows]
    try:
        with contextlib.ExitStack() as stack:
            report = replay.replay(bodies, _lazy(stack, args, bundle), replay.compiled_of(bundle))
    except ConfigError as exc:
        print(f"aam replay: error: {exc}", file=stderr)
        return 1
    except (EngineUnavailable, RuntimeError, OSError) as exc:
        print(f"aam replay: error: candidate OPA: {exc}", file=stderr)
        return 1
    if args.json:
        print(json.dumps({"candidate": {"paths": [str(p) for p in args.candidate],
                                        "revision": bundle.revision}, **report.to_json()},
                         sort_keys=True), file=stdout)
    else:
        _print(report, bundle.revision, stdout)
    if report.widening and not args.allow_widening:
        print(f"aam replay: {report.count('deny_to_allow')} denied decision(s) would be allowed "
              "by the candidate (pass --allow-widening to accept)", file=stderr)
        return WIDENING
    return 0


def _body(row: AuditRow) -> dict[str, Any]:
    try:
        return row.record()
    except ValueError:
        return {"decision_id": row.decision_id}  # named as malformed, not guessed


def _lazy(stack: contextlib.ExitStack, args: argparse.Namespace, bundle: Bundle) -> replay.Decide:
    """The candidate's OPA, started on the first row there is to replay (none: no OPA)."""
    started: list[replay.Decide] = []

    def decide(input_doc: dict[str, Any]) -> Decision:
        if not started:
            binary = Settings.load(args.config, ledger_url=args.ledger_url).opa_path()
            started.append(stack.enter_context(replay.candidate_opa(bundle, binary)))
        return started[0](input_doc)

    return decide


def _print(report: replay.Report, revision: str, out: TextIO) -> None:
    t = report.totals()
    print(f"candidate revision {revision[:12]}: {t['replayed']} replayed, {t['unchanged']} unchanged, "
          f"{t['allow_to_deny']} allow->deny, {t['deny_to_allow']} deny->allow, "
          f"{t['not_replayable']} not replayable, {t['skipped']} skipped", file=out)
    for direction, title, whose in (("allow_to_deny", "allow -> deny", "candidate's reason"),
                                    ("deny_to_allow", "deny -> allow", "recorded reason")):
        groups = report.groups(direction)
        if not groups:
            continue
        print(f"\n{title} ({report.count(direction)}), by policy and {whose}:", file=out)
        for g in groups:
            more = len(g.decision_ids) - len(g.examples)
            print(f"  {len(g.decision_ids):>5}  {g.policy}  {g.reason}  e.g. "
                  + ", ".join(g.examples) + (f" (+{more} more)" if more else ""), file=out)
            if g.message:
                print(f"         {g.message}", file=out)
    by_why = report.unreplayable_by_why()
    if by_why:
        print(f"\nnot replayable ({len(report.not_replayable)}):", file=out)
        for why, ids in by_why.items():
            print(f"  {len(ids):>5}  {why}:", file=out)
            for decision_id in ids:
                print(f"         {decision_id}", file=out)
    skipped = report.skipped_by_why()
    if skipped:
        print(f"\nskipped, not policy decisions ({len(report.skipped)}): "
              + ", ".join(f"{why} {n}" for why, n in skipped.items()), file=out)
