"""Entry point of ``aam``: parse arguments, dispatch, map failures to exit codes.

Exit codes: 0 success (or ALLOW for ``authorize``), 1 error, 2 usage error,
3 DENY from ``authorize``, 4 a deny-to-allow flip from ``replay``. No command prints
a traceback (``AAM_DEBUG=1`` shows one for an unexpected error).
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib import metadata
from typing import TextIO

from aam.cli import (
    authorize,
    compile_cmd,
    identity_cmd,
    import_cmd,
    ledger_cmd,
    replay_cmd,
    serve,
    shadow_cmd,
    status_cmd,
    test_cmd,
)

OK, ERROR, USAGE, DENY, WIDENING = 0, 1, 2, 3, 4
DISTRIBUTION = "agent-access-manager"  # [project] name in pyproject.toml
SHELLS = ("bash", "zsh", "tcsh")


def version() -> str:
    """The installed package's version: one source of truth, pyproject.toml."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # run from a tree that was never pip-installed
        return "unknown (not installed)"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aam", description="Agent Access Manager",
        epilog="exit codes: 0 success (ALLOW for authorize), 1 error, 2 usage error, 3 DENY, "
               "4 a deny-to-allow flip (replay)")
    p.add_argument("--version", action="version", version=f"aam {version()}",
                   help="print aam's version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    compile_cmd.register(sub)
    import_cmd.register(sub)
    serve.register(sub)
    authorize.register(sub)
    status_cmd.register(sub)
    test_cmd.register(sub)
    ledger_cmd.register(sub)
    replay_cmd.register(sub)
    shadow_cmd.register(sub)
    identity_cmd.register(sub)
    c = sub.add_parser(
        "completion", help="print a shell completion script (bash, zsh, tcsh)",
        description="Print a completion script for aam's commands and flags, generated from "
                    "this parser (shtab). Install it, e.g.: aam completion bash > "
                    "~/.local/share/bash-completion/completions/aam; aam completion zsh > "
                    "\"${fpath[1]}/_aam\"; tcsh: eval `aam completion tcsh`.")
    c.add_argument("shell", choices=SHELLS, help="the shell to complete for")
    c.set_defaults(func=run_completion)
    return p


def run_completion(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    """Static generation: no runtime hook, so completing costs the shell nothing per key."""
    import shtab

    stdout.write(shtab.complete(parser(), shell=args.shell))
    return OK


def run(argv: list[str], stdout: TextIO, stderr: TextIO) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # argparse printed usage (2), or --help / --version (0)
        return exc.code if isinstance(exc.code, int) else (USAGE if exc.code else OK)
    try:
        return int(args.func(args, stdout, stderr))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        raise  # the reader left (aam ... | head): main() ends quietly
    except Exception as exc:  # a bug: one line, not a traceback, unless asked for
        if os.environ.get("AAM_DEBUG"):
            raise
        print(f"aam {args.command}: internal error: {type(exc).__name__}: {exc} "
              "(AAM_DEBUG=1 shows the traceback; please report it)", file=stderr)
        return ERROR


def main() -> None:
    try:
        code = run(sys.argv[1:], sys.stdout, sys.stderr)
        sys.stdout.flush()
    except BrokenPipeError:
        # What the reader took is all it wanted; say nothing more (Python's own advice:
        # point stdout at /dev/null so the interpreter's final flush cannot fail again).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = ERROR
    sys.exit(code)


if __name__ == "__main__":
    main()
