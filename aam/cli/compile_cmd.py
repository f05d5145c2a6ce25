"""``aam compile PATH... -o bundle.tar.gz``."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import TextIO

from compiler import CompileError, compile_paths


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compile", help="validate policies and build an OPA bundle")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    p.add_argument("-o", "--output", type=Path, default=Path("bundle.tar.gz"))
    p.set_defaults(func=run)


def write_atomic(path: Path, data: bytes) -> None:
    """Never leave a partial bundle: write a temp file, then rename over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def run(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    try:
        bundle = compile_paths(args.paths)
    except CompileError as exc:
        for d in exc.diagnostics:
            print(d, file=stderr)
        print(f"{len(exc.diagnostics)} error(s); no bundle written", file=stderr)
        return 1
    try:
        write_atomic(args.output, bundle.to_tar_gz())
    except OSError as exc:
        print(f"{args.output}: error: cannot write bundle: {exc.strerror}", file=stderr)
        return 1
    print(f"wrote {args.output} (revision {bundle.revision[:12]})", file=stdout)
    return 0
