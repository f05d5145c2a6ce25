"""The flags and channel of a command that calls the PDP over gRPC: plaintext, or mTLS with
an X.509-SVID (``--cert``, ``--key``) and the trust bundle the PDP's SVID chains to (``--ca``)."""

from __future__ import annotations

import argparse
from pathlib import Path

import grpc


def add_tls_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cert", help="client X.509-SVID (PEM) for mTLS; plaintext without it")
    p.add_argument("--key", help="private key of --cert (PEM)")
    p.add_argument("--ca", help="trust bundle (PEM) to verify the PDP's certificate")


def channel(args: argparse.Namespace) -> grpc.Channel:
    """A channel to ``args.addr``; ValueError (a usage error) for half the TLS flags or an
    unreadable file."""
    if not (args.cert or args.key or args.ca):
        return grpc.insecure_channel(args.addr)
    if not (args.cert and args.key and args.ca):
        raise ValueError("mTLS needs all of --cert, --key and --ca")
    try:
        creds = grpc.ssl_channel_credentials(
            root_certificates=Path(args.ca).read_bytes(),
            private_key=Path(args.key).read_bytes(),
            certificate_chain=Path(args.cert).read_bytes())
    except OSError as exc:
        raise ValueError(f"{exc.filename}: {exc.strerror}") from None
    return grpc.secure_channel(args.addr, creds)
