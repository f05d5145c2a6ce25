"""``aam audit key init|rotate|list``: the audit keyring file (pdp/ledger/keyring.py).

No command prints a secret: only file names, key ids and creation times. Exit codes:
0 done, 1 the key file cannot be made, read or written (e.g. init refuses to overwrite),
2 usage (bad --config).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TextIO

from pdp.config import ConfigError, Settings
from pdp.ledger.keyring import Keyring, init_file, rotate_file
from pdp.ledger.startup import up_key_file


def register(asub: argparse._SubParsersAction) -> None:
    key = asub.add_parser("key", help="create, rotate or list the audit keyring")
    ksub = key.add_subparsers(dest="key_command", required=True, metavar="ACTION")
    for name, fn, text in (
            ("init", run_init, "create a keyring file (mode 0600) with one key"),
            ("rotate", run_rotate, "add a new current key, keeping the old ones"),
            ("list", run_list, "show the key ids (never the secrets)")):
        p = ksub.add_parser(name, help=text)
        p.add_argument("file", nargs="?", type=Path,
                       help="keyring file (default: audit_key_file, else aam up's "
                            f"{up_key_file()})")
        p.add_argument("--config", type=Path, metavar="FILE",
                       help="TOML settings file (for audit_key_file)")
        p.set_defaults(func=fn)


class _Usage(Exception):
    """The settings file (--config) is unusable: a usage error, not the key file's."""


def _file(args: argparse.Namespace) -> Path:
    if args.file is not None:
        return Path(args.file)
    try:
        settings = Settings.load(args.config)
    except ConfigError as exc:
        raise _Usage(str(exc)) from None
    return Path(settings.audit_key_file) if settings.audit_key_file else up_key_file()


def _failed(command: str, exc: Exception, stderr: TextIO) -> int:
    print(f"aam audit key {command}: error: {_message(exc)}", file=stderr)
    return 2 if isinstance(exc, _Usage) else 1


def run_init(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    try:
        path = _file(args)
        ring = init_file(path)
    except (_Usage, ConfigError, OSError) as exc:
        return _failed("init", exc, stderr)
    print(f"created {path} (mode 0600): audit key {ring.current().id} (current)", file=stdout)
    print("set audit_key_file to it on every PDP replica and keep a copy: without it the "
          "chain's rows cannot be verified", file=stdout)
    return 0


def run_rotate(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    try:
        path = _file(args)
        before, after = rotate_file(path)
    except (_Usage, ConfigError, OSError) as exc:
        return _failed("rotate", exc, stderr)
    old = before.current().id
    print(f"{path}: new current audit key {after.current().id}; kept {old} and every older "
          "key, so their rows still verify", file=stdout)
    print("running PDPs reading this file switch within a second; copy it to every replica",
          file=stdout)
    return 0


def run_list(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    try:
        path = _file(args)
        ring = Keyring.load(path)
    except (_Usage, ConfigError, OSError) as exc:
        return _failed("list", exc, stderr)
    current = ring.current().id
    for key_id in ring.ids():
        key = ring.get(key_id)
        assert key is not None
        print(f"{key_id}  created {key.created or '?'}{'  current' if key_id == current else ''}",
              file=stdout)
    return 0


def _message(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return f"{exc.filename or ''}: {exc.strerror}".lstrip(": ")
    return str(exc)
