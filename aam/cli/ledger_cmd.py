"""``aam migrate`` and ``aam audit query|verify|key``: thin calls into pdp.ledger.

Every command here (and ``aam replay`` and ``aam shadow report``, through ``_call``) reads
the ledger read-only: a SQLite path that does not exist is "no ledger at PATH", never a new
empty file. ``aam migrate`` alone opens it for writing.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TextIO, TypeVar

from aam.cli import audit_key
from pdp.config import DEFAULT_SQLITE_LEDGER, LAST_UP_LEDGER, ConfigError, Settings
from pdp.ledger import AuditFilter, Ledger, LedgerError, open_ledger
from pdp.ledger import anchor as anchors
from pdp.ledger.chain import Report, check
from pdp.ledger.keyring import Keyring
from pdp.ledger.sqlite import READ_ONLY
from pdp.ledger.startup import up_anchor_file, up_key_file
from pdp.ledger.types import FilterError, parse_time

T = TypeVar("T")


def register(sub: argparse._SubParsersAction) -> None:
    mg = sub.add_parser("migrate", help="apply pending ledger schema migrations")
    _ledger_args(mg)
    mg.add_argument("--grant-role", default="",
                    help="grant this database role what the PDP needs (never UPDATE/DELETE on audit)")
    mg.set_defaults(func=run_migrate)

    au = sub.add_parser("audit", help="query or verify the audit log")
    asub = au.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    q = asub.add_parser("query", help="audit rows by workload, time, outcome, policy, reason, "
                                      "tool or decision id",
                        description="Print audit rows, oldest first. Filters combine (AND). "
                                    "With --limit N, the newest N matching rows (like tail -n).")
    _ledger_args(q)
    _audit_filter_args(q)
    q.add_argument("--outcome", type=str.lower, choices=["allow", "deny"],
                   help="allow or deny (any case)")
    q.add_argument("--decision-id", metavar="ID", help="one decision, by the id it was answered with")
    q.add_argument("--policy", metavar="NAME", help="decided by this policy (metadata.name)")
    q.add_argument("--reason", metavar="CODE",
                   help="carries this reason code, e.g. budget_exhausted or action_denied")
    q.add_argument("--tool", metavar="RESOURCE", help="tool calls on this resource, e.g. "
                                                      "salesforce.accounts")
    q.add_argument("--model", metavar="ALIAS", help="model calls for this alias, e.g. reasoning-high")
    q.add_argument("--limit", type=_count, metavar="N",
                   help="only the newest N matching rows (still printed oldest first)")
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
    p.add_argument("--config", type=Path, metavar="FILE", help="TOML settings file (for ledger_url)")
    p.add_argument("--ledger-url", metavar="URL",
                   help="postgresql://..., sqlite:///path (default: settings, else the embedded "
                        "ledger of aam up)")


def _audit_filter_args(p: argparse.ArgumentParser) -> None:
    """What every command that reads decisions back filters by: when, and whose."""
    _time_args(p)
    p.add_argument("--workload", metavar="ID|NAME",
                   help="a full SPIFFE ID (exact), or a workload name: the ID's last path "
                        "segment(s), e.g. github-triage for spiffe://prod/agent/github-triage")


def _time_args(p: argparse.ArgumentParser) -> None:
    """--since/--until as every audit-reading command should take them (a bad value exits 2)."""
    p.add_argument("--since", type=_time, metavar="TIME",
                   help="from this time, inclusive: ISO 8601 (no zone means UTC), a date "
                        "(2026-12-01) or a duration back from now (30m, 1h, 2d)")
    p.add_argument("--until", type=_time, metavar="TIME", help="before this time, exclusive; "
                                                               "same forms as --since")


def _time(text: str) -> str:
    """argparse type: the bound resolved now, in UTC, so a bad one is a usage error (exit 2)."""
    try:
        return parse_time(text).isoformat()
    except FilterError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (0, 1, 2, ...)")
    return n


def _url(settings: Settings) -> str:
    """The configured ledger, else the latest ``aam up``'s (each policy directory has its
    own), else the one ``aam up`` kept before ledgers were per project."""
    url = settings.ledger_url
    if not url and LAST_UP_LEDGER.exists():
        url = LAST_UP_LEDGER.read_text().strip()
    if not url and DEFAULT_SQLITE_LEDGER.exists():
        url = f"sqlite://{DEFAULT_SQLITE_LEDGER}"
    return url


class _Exit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def _sqlite_path(url: str) -> str | None:
    """The file of a sqlite: URL (as open_ledger reads it), None for other stores."""
    if not url.startswith("sqlite:"):
        return None
    return url.removeprefix("sqlite://").removeprefix("sqlite:")


def _open(args: argparse.Namespace, stderr: TextIO, command: str = "", write: bool = False) -> Ledger:
    """The ledger of --ledger-url / --config / aam up's. Read-only unless ``write``: reading
    never creates a SQLite file (a mistyped path says so instead of reading an empty ledger).
    Bad settings or URL: usage, _Exit(2); a missing file: _Exit(1)."""
    try:
        settings = Settings.load(args.config, ledger_url=args.ledger_url)
        url = _url(settings)
        path = _sqlite_path(url)
        if path is not None and not write and path != ":memory:":
            if not Path(path).is_file():
                print(f"aam {command or 'audit'}: error: no ledger at {path} (aam up creates it; "
                      "check --ledger-url)", file=stderr)
                raise _Exit(1)
            url += READ_ONLY
        ledger = open_ledger(url, 1, settings.ledger_timeout_ms / 1000)
    except (ConfigError, LedgerError) as exc:
        print(f"aam: error: {exc}", file=stderr)
        raise _Exit(2) from None
    if ledger is None:
        print("aam: error: no ledger configured (--ledger-url, --config or AAM_LEDGER_URL; "
              "aam up creates one)", file=stderr)
        raise _Exit(2)
    return ledger


def _call(args: argparse.Namespace, stderr: TextIO, command: str, fn: Callable[[Ledger], T],
          write: bool = False) -> T:
    """Open the ledger (read-only unless ``write``), make one call, close it; a failure is
    one error line and _Exit: 2 for a bad filter value, 1 for the ledger's own failure."""
    ledger = _open(args, stderr, command, write)
    try:
        return fn(ledger)
    except FilterError as exc:  # e.g. a malformed --since from a command that did not parse it
        print(f"aam {command}: error: {exc}", file=stderr)
        raise _Exit(2) from None
    except (LedgerError, ValueError) as exc:
        print(f"aam {command}: error: {exc}", file=stderr)
        raise _Exit(1) from None
    finally:
        ledger.close()


def run_migrate(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    try:
        applied = _call(args, stderr, "migrate", lambda ledger: ledger.migrate(args.grant_role),
                        write=True)
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
                      until=args.until or "", limit=args.limit, policy=args.policy or "",
                      reason=args.reason or "", tool=args.tool or "", model=args.model or "")
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
    """Exit 0: intact (every keyed row's HMAC checked); 1: broken, or no ledger at the path
    given; 2: cannot tell (no key, unreadable key or anchor, no ledger configured)."""
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
