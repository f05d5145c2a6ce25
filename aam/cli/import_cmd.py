"""``aam import {litellm,openrouter} FILE [-o OUT]``: a gateway's config -> AAM documents.

Exit codes: 0 written (warnings allowed), 1 the input has errors (nothing
written), 2 usage error.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TextIO

from aam.cli.compile_cmd import write_atomic
from compiler.importers import IMPORTERS, emit, run, verify
from compiler.importers.values import NAME

_HELP = {
    "litellm": ("a LiteLLM proxy config.yaml", "CONFIG.yaml"),
    "openrouter": ("OpenRouter provider routing preferences (JSON)", "PREFS.json"),
}


def _route_name(raw: str) -> str:
    if not NAME.match(raw):
        raise argparse.ArgumentTypeError(f"{raw!r} is not an AAM name (lower-case letters, digits,"
                                         " '.', '-'; at most 63)")
    return raw


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="turn a LiteLLM or OpenRouter config into AAM documents")
    kinds = p.add_subparsers(dest="source_kind", required=True, metavar="SOURCE")
    for kind in IMPORTERS:
        what, metavar = _HELP[kind]
        k = kinds.add_parser(kind, help=f"import {what}")
        k.add_argument("path", type=Path, metavar=metavar, help=f"the file to import: {what}")
        k.add_argument("-o", "--output", type=Path, metavar="FILE",
                       help="write the YAML here (default: standard output)")
        if kind == "openrouter":
            k.add_argument("--name", type=_route_name, metavar="NAME",
                           help="the ModelRoute's name (default: from the first model)")
        k.set_defaults(func=run_cmd)


def run_cmd(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    result = run(args.source_kind, args.path, getattr(args, "name", None))
    for d in result.diagnostics:
        print(d, file=stderr)
    if result.errors:
        print(f"{len(result.errors)} error(s), {len(result.warnings)} warning(s); nothing written",
              file=stderr)
        return 1
    text = emit.render(result)
    problems = verify(text)
    if problems:
        for d in problems:
            print(d, file=stderr)
        print("internal error: the imported documents do not compile; nothing written (please report)",
              file=stderr)
        return 1
    summary = (f"{len(result.routes)} ModelRoute(s), {len(result.policies)} AgentPolicy stub(s),"
               f" {len(result.warnings)} warning(s)")
    if args.output is None:
        stdout.write(text)
        print(f"imported {summary}", file=stderr)
        return 0
    try:
        write_atomic(args.output, text.encode())
    except OSError as exc:
        print(f"{args.output}: error: cannot write: {exc.strerror}", file=stderr)
        return 1
    print(f"wrote {args.output}: {summary}", file=stdout)
    return 0
