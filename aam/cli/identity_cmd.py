"""``aam identity check``: do the policies' identity bindings match SPIRE's registration entries?

Compiles the policies, reads the entries (from the SPIRE server's admin socket, or a saved
``spire-server entry show -output json``), and prints the policies with an entry, the
policies with none and the entries with no policy (pdp/registration.py). Exit 0 when
everything matches, 1 when something is unmatched or cannot be read, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TextIO

from compiler import CompileError, load
from pdp.registration import EntriesError, Entry, Report, check, fetch_entries, read_entries

OK, ERROR = 0, 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("identity", help="workload identity: policies against SPIRE")
    isub = p.add_subparsers(dest="identity_command", required=True, metavar="COMMAND")
    c = isub.add_parser(
        "check", help="list SPIRE registration entries with no policy and policies with no entry",
        description="Compare the AgentPolicies' spec.identity.workload SPIFFE IDs with SPIRE's "
                    "registration entries. Exit 0 when every policy has an entry and every "
                    "entry a policy (or is --ignore'd), 1 when not, or on an error.")
    c.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                   help="policy YAML files, or directories of them")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--spire-server-socket", type=Path, metavar="PATH",
                     help="the SPIRE server's admin socket: runs spire-server entry show "
                          "-output json -socketPath PATH")
    src.add_argument("--entries", type=Path, metavar="FILE",
                     help="the output of spire-server entry show -output json, saved")
    c.add_argument("--spire-server", default="", metavar="BIN",
                   help="the spire-server binary (default: PATH, then the tools dir)")
    c.add_argument("--ignore", action="append", default=[], metavar="PATTERN",
                   help="SPIFFE IDs that need no policy (glob, repeatable), e.g. the gateway "
                        "and the PDP: 'spiffe://prod/gateway/*'")
    c.add_argument("--json", action="store_true", help="print the report as one JSON document")
    c.set_defaults(func=run_check)


def _selectors(e: Entry) -> str:
    return ", ".join(e.selectors) or "no selectors"


def render(report: Report) -> str:
    lines = [f"policies with a registration entry ({len(report.matched)}):"]
    lines += [f"  {m.binding.workload}  policy {m.binding.policy}  entry "
              + "; ".join(f"{e.id} ({_selectors(e)})" for e in m.entries) for m in report.matched]
    lines.append(f"policies with no registration entry ({len(report.policies_without_entry)}):")
    lines += [f"  {b.workload}  policy {b.policy}  ({b.file})" for b in report.policies_without_entry]
    lines.append(f"registration entries with no policy ({len(report.entries_without_policy)}):")
    lines += [f"  {e.spiffe_id}  entry {e.id} ({_selectors(e)})" for e in report.entries_without_policy]
    if report.ignored:
        lines.append(f"ignored entries ({len(report.ignored)}): "
                     + ", ".join(sorted({e.spiffe_id for e in report.ignored})))
    lines.append("identity check: " + ("ok" if report.ok else
                 f"{len(report.policies_without_entry)} policy(ies) with no entry, "
                 f"{len(report.entries_without_policy)} entry(ies) with no policy"))
    return "\n".join(lines)


def run_check(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    try:
        policies = load(args.paths).policies
    except CompileError as exc:
        for d in exc.diagnostics:
            print(d, file=stderr)
        print(f"{len(exc.diagnostics)} error(s) in the policies; nothing checked", file=stderr)
        return ERROR
    try:
        entries = (read_entries(args.entries) if args.entries is not None
                   else fetch_entries(args.spire_server_socket, args.spire_server))
    except EntriesError as exc:
        print(f"aam identity check: error: {exc}", file=stderr)
        return ERROR
    report = check(policies, entries, args.ignore)
    print(json.dumps(report.to_json(), indent=2) if args.json else render(report), file=stdout)
    return OK if report.ok else ERROR
