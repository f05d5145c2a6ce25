"""``aam status``: is a running PDP ready to decide, and if not, why (issue 19).

Asks gRPC health (overall, the decision service, each component the PDP reports) and,
with ``--http``, ``/readyz`` for each component's state, reason and detail (the engine's
and the bundle server's revision). ``--json``: the same as one JSON document. Exit 0
ready (degraded included), 1 not ready or unreachable.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, TextIO

import grpc
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aam.cli.grpcargs import add_tls_args
from aam.cli.grpcargs import channel as grpc_channel
from pdp.health import BROKER, BUNDLE_SERVER, ENGINE, LEDGER, READYZ_PATH
from pdp.server import SERVICE_NAME

OK, ERROR, USAGE = 0, 1, 2
COMPONENTS = (ENGINE, LEDGER, BROKER, BUNDLE_SERVER)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="is the PDP ready to decide? its components' states",
                       description="Ask a running PDP's gRPC health (overall, the decision "
                                   "service, each component) and, with --http, its /readyz "
                                   "(each component's state, reason and revision). "
                                   "Exit 0 ready (degraded included), 1 not ready or unreachable.")
    p.add_argument("addr_arg", nargs="?", metavar="ADDR",
                   help="PDP gRPC address, host:port (the same as --addr)")
    p.add_argument("--addr", default="127.0.0.1:50051", help="PDP gRPC address")
    add_tls_args(p)
    p.add_argument("--http", default="", metavar="URL",
                   help="the PDP's HTTP server (http_addr), e.g. http://127.0.0.1:8181, "
                        "for each component's state, reason and revision from /readyz")
    p.add_argument("--timeout", type=float, default=5.0,
                   help="seconds to wait for each answer (default 5)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON document: {ready, grpc: {SERVICE: STATUS}, readyz}")
    p.set_defaults(func=run_status)


def _grpc(args: argparse.Namespace) -> tuple[bool, dict[str, str], str]:
    """gRPC health of every service the PDP reports: (ready, {label: status}, error).
    Ready when the overall and the decision service are SERVING."""
    found: dict[str, str] = {}
    timeout_s = args.timeout
    with grpc_channel(args) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        ready = True
        for label, service in (("overall", ""), (SERVICE_NAME, SERVICE_NAME),
                               *((c, c) for c in COMPONENTS)):
            try:
                resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
            except grpc.RpcError as exc:
                code = exc.code()  # type: ignore[attr-defined]
                if code == grpc.StatusCode.NOT_FOUND:  # a component this PDP does not report
                    continue
                return False, found, f"unreachable ({code.name.lower()})"
            found[label] = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
            if service in ("", SERVICE_NAME):
                ready = ready and resp.status == health_pb2.HealthCheckResponse.SERVING
        return ready, found, ""


def _http(url: str, timeout_s: float) -> tuple[bool, dict[str, Any], str]:
    """/readyz: (ready: HTTP 200, its document, error)."""
    target = url.rstrip("/") + READYZ_PATH
    try:
        resp = requests.get(target, timeout=timeout_s)
        doc = resp.json()
    except (requests.RequestException, ValueError) as exc:
        return False, {}, f"unreachable ({type(exc).__name__})"
    if not isinstance(doc, dict):
        return False, {}, "unreachable (not a /readyz document)"
    return resp.status_code == 200, doc, ""


def _print_readyz(doc: dict[str, Any], out: TextIO) -> None:
    print(f"status: {doc.get('status', '?')}", file=out)
    for name, state in sorted((doc.get("components") or {}).items()):
        reason = state.get("reason") or ""
        detail = state.get("detail") or {}
        extra = "".join(f" {k}={v}" for k, v in sorted(detail.items()))
        print(f"  {name}: {state.get('state', '?')}{extra}" + (f" ({reason})" if reason else ""),
              file=out)


def run_status(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    args.addr = args.addr_arg or args.addr
    try:
        ready, services, grpc_error = _grpc(args)
    except ValueError as exc:
        print(f"aam status: error: {exc}", file=stderr)
        return USAGE
    doc: dict[str, Any] = {"addr": args.addr, "grpc": services}
    if grpc_error:
        doc["grpc_error"] = grpc_error
    http_ready, readyz, http_error = True, {}, ""
    if args.http:
        http_ready, readyz, http_error = _http(args.http, args.timeout)
        doc["readyz"] = readyz
        if http_error:
            doc["readyz_error"] = http_error
    ready = ready and http_ready
    if args.json:
        print(json.dumps({"ready": ready, **doc}, indent=2, sort_keys=True), file=stdout)
        return OK if ready else ERROR
    for label, status in services.items():
        print(f"grpc {label}: {status}", file=stdout)
    if grpc_error:
        print(f"grpc {args.addr}: {grpc_error}", file=stdout)
    if args.http:
        if http_error:
            print(f"http {args.http.rstrip('/') + READYZ_PATH}: {http_error}", file=stdout)
        else:
            _print_readyz(readyz, stdout)
    print("ready" if ready else "not ready", file=stdout)
    return OK if ready else ERROR
