"""Entry point of ``aam``: parse arguments, dispatch, map failures to exit codes.

Exit codes: 0 success (or ALLOW for ``authorize``), 1 error, 2 usage error,
3 DENY from ``authorize``, 4 a deny-to-allow flip from ``replay``. No command prints
a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from aam.cli import authorize, compile_cmd, import_cmd, ledger_cmd, replay_cmd, serve, shadow_cmd, test_cmd


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aam", description="Agent Access Manager")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    compile_cmd.register(sub)
    import_cmd.register(sub)
    serve.register(sub)
    authorize.register(sub)
    test_cmd.register(sub)
    ledger_cmd.register(sub)
    replay_cmd.register(sub)
    shadow_cmd.register(sub)
    return p


def run(argv: list[str], stdout: TextIO, stderr: TextIO) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage
        return int(exc.code or 0)
    try:
        return int(args.func(args, stdout, stderr))
    except KeyboardInterrupt:
        return 130


def main() -> None:
    sys.exit(run(sys.argv[1:], sys.stdout, sys.stderr))


if __name__ == "__main__":
    main()
