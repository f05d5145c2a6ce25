"""A running PDP stack (managed real OPA + gRPC) for integration tests."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aam.v1 import pdp_pb2, pdp_pb2_grpc
from pdp.bundlesigner import BundleSigner
from pdp.config import Settings
from pdp.health import READYZ_PATH
from pdp.identity import GATEWAY_TOKEN_HEADER
from pdp.ledger.keyring import ensure_file
from pdp.opa import free_port
from pdp.secretfile import ensure_secret, write_secret
from pdp.stack import Stack
from tests.servers import opa_binary

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FINANCE = "spiffe://prod/agent/finance-analyst"


@contextlib.contextmanager
def running_stack(policies: Path = EXAMPLES, **overrides: Any) -> Iterator[Stack]:
    """The stack on an embedded SQLite ledger unless ``ledger_url`` is given, like aam up.

    One process unless ``workers`` is given: tests read the stack's in-process state
    (stack.engine, stack.ledger, stack.grpc), and a PostgreSQL ledger would otherwise start
    one worker process per CPU (tests/integration/test_workers.py runs several)."""
    overrides = {"plaintext": True, "workers": 1, **overrides}
    with tempfile.TemporaryDirectory(prefix="aam-test-ledger-") as tmp:
        overrides.setdefault("ledger_url", f"sqlite://{tmp}/ledger.sqlite3")
        overrides.setdefault("ledger_migrate", True)
        if overrides["ledger_url"] not in ("", "off"):  # keyed and anchored, as aam up does
            overrides.setdefault("audit_key_file", str(audit_key_file(Path(tmp))))
            overrides.setdefault("audit_anchor_file", f"{tmp}/audit.anchor")
        if overrides["plaintext"]:  # the proof a plaintext gateway sends, as aam up writes it
            overrides.setdefault("gateway_token_file", str(gateway_token_file(Path(tmp))))
        settings = Settings.load(
            env={}, grpc_addr=f"127.0.0.1:{free_port()}",
            policies=str(policies), opa_binary=opa_binary(), **overrides)
        stack = Stack(settings)
        stack.start()
        try:
            yield stack
        finally:
            stack.stop()


def audit_key_file(directory: Path) -> Path:
    """A fresh audit keyring (0600) in ``directory``, for audit_key_file."""
    path = directory / "audit.key"
    ensure_file(path)
    return path


def gateway_token_file(directory: Path) -> Path:
    """A fresh gateway token, written as aam up writes its own."""
    path = directory / "gateway.token"
    ensure_secret(path)
    return path


def signing_key_file(directory: Path, algorithm: str = "ES256") -> Path:
    """A fresh private key (or HMAC secret) in a 0600 file, for bundle_signing_key."""
    path = directory / f"bundle-signing-{algorithm.lower()}.key"
    write_secret(path, BundleSigner.ephemeral(algorithm).private)
    return path


def gateway_metadata(stack: Stack) -> tuple[tuple[str, str], ...]:
    """What a gateway sends on the stack's plaintext port to be trusted as one."""
    token = Path(stack.settings.gateway_token_file).read_text().strip()
    return ((GATEWAY_TOKEN_HEADER, token),)


class Metadata(grpc.UnaryUnaryClientInterceptor):
    """Adds fixed metadata to every unary call (the gateway's proof)."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        details = details._replace(metadata=(*(details.metadata or ()), *self.metadata))
        return continuation(details, request)


def gateway_channel(stack: Stack) -> grpc.Channel:
    """A plaintext channel that presents the gateway token on every call."""
    return grpc.intercept_channel(grpc.insecure_channel(stack.settings.grpc_addr),
                                  Metadata(gateway_metadata(stack)))


def stub(stack: Stack, gateway: bool = False
         ) -> tuple[grpc.Channel, pdp_pb2_grpc.PolicyDecisionServiceStub]:
    """A client of the stack: an agent's (no proof), or with ``gateway`` a trusted gateway's."""
    channel = gateway_channel(stack) if gateway else grpc.insecure_channel(stack.settings.grpc_addr)
    return channel, pdp_pb2_grpc.PolicyDecisionServiceStub(channel)


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health_status(stack: Stack, service: str = "") -> int:
    """gRPC health of ``service`` ("" overall, a component's name) as an orchestrator asks."""
    with grpc.insecure_channel(stack.settings.grpc_addr) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5).status


def readyz(stack: Stack) -> requests.Response:
    assert stack.http is not None
    return requests.get(stack.http.url + READYZ_PATH, timeout=10)


def request(workload: str = FINANCE, **fields: Any) -> pdp_pb2.AuthorizeRequest:
    params = fields.pop("params", None)
    context = fields.pop("context", None)
    req = pdp_pb2.AuthorizeRequest(identity=pdp_pb2.Identity(spiffe_id=workload), **fields)
    if params:
        req.params.update(params)
    if context:
        req.context.update(context)
    return req
