"""``aam status``: is a running PDP ready to decide, and if not, why (issue 19).

Asks gRPC health (overall, the decision service, each component the PDP reports) and,
with ``--http``, ``/readyz`` for each component's state and reason. Exit 0 ready
(degraded included), 1 not ready or unreachable.
"""

from __future__ import annotations

import argparse
from typing import TextIO

import grpc
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pdp.health import BROKER, BUNDLE_SERVER, ENGINE, LEDGER, READYZ_PATH
from pdp.server import SERVICE_NAME

OK, ERROR = 0, 1
COMPONENTS = (ENGINE, LEDGER, BROKER, BUNDLE_SERVER)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="is the PDP ready to decide? its components' states",
                       description="Ask a running PDP's gRPC health (overall, the decision "
                                   "service, each component) and, with --http, its /readyz. "
                                   "Exit 0 ready (degraded included), 1 not ready or unreachable.")
    p.add_argument("--addr", default="127.0.0.1:50051", help="PDP gRPC address (plaintext)")
    p.add_argument("--http", default="", metavar="URL",
                   help="the PDP's HTTP server (http_addr), e.g. http://127.0.0.1:8181, "
                        "for each component's state and reason from /readyz")
    p.add_argument("--timeout", type=float, default=5.0,
                   help="seconds to wait for each answer (default 5)")
    p.set_defaults(func=run_status)


def _grpc(addr: str, timeout_s: float, out: TextIO) -> bool:
    """Print gRPC health; True when the overall and decision service are SERVING."""
    with grpc.insecure_channel(addr) as channel:
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
                print(f"grpc {addr}: unreachable ({code.name.lower()})", file=out)
                return False
            name = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
            print(f"grpc {label}: {name}", file=out)
            if service in ("", SERVICE_NAME):
                ready = ready and resp.status == health_pb2.HealthCheckResponse.SERVING
        return ready


def _http(url: str, timeout_s: float, out: TextIO) -> bool:
    """Print /readyz's components; True on 200."""
    target = url.rstrip("/") + READYZ_PATH
    try:
        resp = requests.get(target, timeout=timeout_s)
        doc = resp.json()
    except (requests.RequestException, ValueError) as exc:
        print(f"http {target}: unreachable ({type(exc).__name__})", file=out)
        return False
    print(f"status: {doc.get('status', '?')}", file=out)
    for name, state in sorted((doc.get("components") or {}).items()):
        reason = state.get("reason") or ""
        print(f"  {name}: {state.get('state', '?')}" + (f" ({reason})" if reason else ""), file=out)
    return resp.status_code == 200


def run_status(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    ready = _grpc(args.addr, args.timeout, stdout)
    if args.http:
        ready = _http(args.http, args.timeout, stdout) and ready
    print("ready" if ready else "not ready", file=stdout)
    return OK if ready else ERROR
