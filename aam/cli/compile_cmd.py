"""``aam compile PATH... -o bundle.tar.gz``."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import TextIO

from compiler import CompileError, compile_paths
from compiler.sign import ALGORITHMS, SigningError, sign


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compile", help="validate policies and build an OPA bundle")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                   help="policy YAML files, or directories of them")
    p.add_argument("--shadow", type=Path, action="append", default=[], metavar="PATH",
                   help="a candidate policy set compiled in shadow: its AgentPolicies are "
                        "evaluated beside the enforced ones and never decide (repeatable)")
    p.add_argument("-o", "--output", type=Path, default=Path("bundle.tar.gz"), metavar="FILE",
                   help="the bundle to write (default bundle.tar.gz)")
    p.add_argument("--sign-key", type=Path, metavar="FILE",
                   help="sign the bundle: PEM private key (RS256, ES256) or file holding the secret (HS256)")
    p.add_argument("--signing-alg", choices=ALGORITHMS, default="RS256",
                   help="JWS algorithm OPA verifies with (default RS256)")
    p.add_argument("--signing-key-id", default="default", metavar="ID",
                   help="key id in the JWS header; OPA's --verification-key-id (default 'default')")
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
        bundle = compile_paths(args.paths, args.shadow)
    except CompileError as exc:
        for d in exc.diagnostics:
            print(d, file=stderr)
        print(f"{len(exc.diagnostics)} error(s); no bundle written", file=stderr)
        return 1
    if args.sign_key is not None:
        try:
            bundle = sign(bundle, args.sign_key.read_bytes(), args.signing_alg, args.signing_key_id)
        except OSError as exc:
            print(f"{args.sign_key}: error: cannot read signing key: {exc.strerror}", file=stderr)
            return 1
        except SigningError as exc:
            print(f"{args.sign_key}: error: {exc}", file=stderr)
            return 1
    try:
        write_atomic(args.output, bundle.to_tar_gz())
    except OSError as exc:
        print(f"{args.output}: error: cannot write bundle: {exc.strerror}", file=stderr)
        return 1
    signed = f", signed {args.signing_alg}" if args.sign_key is not None else ""
    print(f"wrote {args.output} (revision {bundle.revision[:12]}{signed})", file=stdout)
    return 0
