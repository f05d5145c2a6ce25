"""``aam test PATH... [--filter REGEX] [--junit FILE]``."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import TextIO

from aam.cli.compile_cmd import write_atomic
from compiler.testsuite import SuiteError, junit_xml, report, run
from pdp.config import ConfigError, Settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("test", help="run YAML policy test suites against a real OPA")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                   help="suite files, or directories holding tests/*.yaml or *.test.yaml")
    p.add_argument("--filter", metavar="REGEX", type=_regex,
                   help="run only cases whose 'suite/case' name matches")
    p.add_argument("--junit", type=Path, metavar="FILE", help="also write JUnit XML for CI")
    p.add_argument("--opa-binary", metavar="PATH", help="OPA to run (default: the one scripts/setup built)")
    p.set_defaults(func=run_cmd)


def _regex(text: str) -> str:
    """A bad pattern is a usage error (exit 2), said before any OPA starts."""
    try:
        re.compile(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a regular expression: {exc}") from None
    return text


def run_cmd(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    try:
        binary = Settings.load(opa_binary=args.opa_binary).opa_path()
        outcomes = run(args.paths, binary, args.filter)
    except ConfigError as exc:
        print(f"error: {exc}", file=stderr)
        return 1
    except SuiteError as exc:
        for d in exc.diagnostics:
            print(d, file=stderr)
        print(f"{len(exc.diagnostics)} error(s); no test ran", file=stderr)
        return 1
    if not outcomes:
        print("no test case matched" + (f" --filter {args.filter!r}" if args.filter else ""), file=stderr)
        return 1
    print(report(outcomes), file=stdout)
    if args.junit is not None:
        try:
            write_atomic(args.junit, junit_xml(outcomes))
        except OSError as exc:
            print(f"{args.junit}: error: cannot write JUnit XML: {exc.strerror}", file=stderr)
            return 1
    return 0 if all(o.passed for o in outcomes) else 1
