"""``aam migrate`` and ``aam audit query|verify|key``: thin calls into pdp.ledger."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TextIO, TypeVar

from aam.cli import audit_key
from pdp.config import DEFAULT_SQLITE_LEDGER, ConfigError, Settings
from pdp.ledger import AuditFilter, Ledger, LedgerError, open_ledger
from pdp.ledger import anchor as anchors
from pdp.ledger.chain import Report, check
from pdp.ledger.keyring import Keyring
from pdp.ledger.startup import up_anchor_file, up_key_file

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
    v = asub.add_parser("verify", help="check the keyed hash chain and its anchors; name every "
                                       "bad row and a cut tail")
    _ledger_args(v)
    v.add_argument("--key-file", type=Path,
                   help="audit keyring (default: audit_key_file, else aam up's, if present)")
    v.add_argument("--anchor", type=Path, action="append", metavar="FILE",
                   help="an anchor a PDP wrote; repeat for each replica's (default: "
                        "audit_anchor_file, else aam up's for this ledger, if present)")
    v.set_defaults(func=run_verify)
    audit_key.register(asub)


def _ledger_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML settings file (for ledger_url)")
    p.add_argument("--ledger-url", help="postgresql://..., sqlite:///path (default: settings,"
                                        " else the embedded ledger of aam up)")


def _url(settings: Settings) -> str:
    url = settings.ledger_url
    if not url and DEFAULT_SQLITE_LEDGER.exists():  # what a local `aam up` wrote
        url = f"sqlite://{DEFAULT_SQLITE_LEDGER}"
    return url


def _open(args: argparse.Namespace, stderr: TextIO) -> Ledger | None:
    try:
        settings = Settings.load(args.config, ledger_url=args.ledger_url)
        ledger = open_ledger(_url(settings), 1, settings.ledger_timeout_ms / 1000)
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
    """Exit 0: intact (every keyed row's HMAC checked); 1: broken; 2: cannot tell (no key,
    unreadable key or anchor, no ledger)."""
    try:
        settings = Settings.load(args.config, ledger_url=args.ledger_url)
        url = _url(settings)
        keyring = _verify_keyring(args, settings)
        anchored = _verify_anchors(args, settings, url, stderr)
    except ConfigError as exc:
        print(f"aam audit verify: error: {exc}", file=stderr)
        return 2
    try:
        report = _call(args, stderr, "audit verify",
                       lambda ledger: check(ledger.audit_rows(AuditFilter()), keyring))
    except _Exit as done:
        return done.code
    problems = [str(p) for p in report.problems]
    notes = _legacy_note(report)
    for path, a in anchored:
        bad = anchors.signature_problem(a, keyring) if keyring is not None else None
        if bad is not None:
            problems.append(f"anchor {path}: {bad}")
            continue
        found, matched = anchors.check(a, str(path), report)
        problems += found
        if matched:
            notes.append(matched + ("" if keyring else " (its signature is unchecked: no key)"))
    if keyring is not None and report.keys == {} and any(
            p.kind == "unkeyed" and "not in the keyring" in p.message for p in report.problems):
        notes.append(f"note: no row is keyed by a key in {keyring.path}: is it this ledger's "
                     "audit keyring?")
    for line in problems + notes:
        print(line, file=stdout)
    if problems:
        print(f"audit chain BROKEN: {len(problems)} problem(s) in {report.rows} row(s)", file=stdout)
        return 1
    if report.unverified is not None:
        print(f"audit chain NOT VERIFIED: {report.unverified} are keyed; without the audit key "
              "only their public structure (order, links, columns) was checked, and it holds",
              file=stdout)
        print("aam audit verify: error: no audit key: pass --key-file (or set audit_key_file) "
              "to check the rows' HMACs", file=stderr)
        return 2
    if not anchored and report.rows:
        print("aam audit verify: warning: no anchor (--anchor, audit_anchor_file): rows cut from "
              "the end of the chain cannot be seen", file=stderr)
    print(f"audit chain intact: {report.rows} row(s)", file=stdout)
    return 0


def _verify_keyring(args: argparse.Namespace, settings: Settings) -> Keyring | None:
    if args.key_file is not None:
        return Keyring.load(args.key_file, "--key-file")
    if settings.audit_key_file:
        return Keyring.load(settings.audit_key_file)
    return Keyring.load(up_key_file()) if up_key_file().exists() else None


def _verify_anchors(args: argparse.Namespace, settings: Settings, url: str,
                    stderr: TextIO) -> list[tuple[Path, anchors.Anchor]]:
    if args.anchor:
        return [(p, anchors.read(p, "--anchor")) for p in args.anchor]
    if settings.audit_anchor_file:
        path = Path(settings.audit_anchor_file)
        if not path.exists():
            print(f"aam audit verify: warning: audit_anchor_file {path} does not exist (yet)",
                  file=stderr)
            return []
        return [(path, anchors.read(path))]
    path = up_anchor_file(url)
    return [(path, anchors.read(path))] if path.exists() else []


def _legacy_note(report: Report) -> list[str]:
    if report.legacy is None:
        return []
    after = ("the first keyed row chains to the last of them, which protects them from then on"
             if report.keys or report.unverified else "no keyed row protects them yet")
    return [f"legacy: {report.legacy} predate the keyed chain and were checked with the public "
            f"SHA-256 formula only; {after}"]
