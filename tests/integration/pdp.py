"""A running PDP stack (managed real OPA + gRPC) for integration tests."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from aam.v1 import pdp_pb2, pdp_pb2_grpc
from pdp.config import Settings
from pdp.opa import free_port
from pdp.stack import Stack
from tests.servers import opa_binary

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FINANCE = "spiffe://prod/agent/finance-analyst"


@contextlib.contextmanager
def running_stack(policies: Path = EXAMPLES, **overrides: Any) -> Iterator[Stack]:
    """The stack on an embedded SQLite ledger unless ``ledger_url`` is given, like aam up."""
    overrides = {"plaintext": True, **overrides}
    with tempfile.TemporaryDirectory(prefix="aam-test-ledger-") as tmp:
        overrides.setdefault("ledger_url", f"sqlite://{tmp}/ledger.sqlite3")
        overrides.setdefault("ledger_migrate", True)
        settings = Settings.load(
            env={}, grpc_addr=f"127.0.0.1:{free_port()}",
            policies=str(policies), opa_binary=opa_binary(), **overrides)
        stack = Stack(settings)
        stack.start()
        try:
            yield stack
        finally:
            stack.stop()


def stub(stack: Stack) -> tuple[grpc.Channel, pdp_pb2_grpc.PolicyDecisionServiceStub]:
    channel = grpc.insecure_channel(stack.settings.grpc_addr)
    return channel, pdp_pb2_grpc.PolicyDecisionServiceStub(channel)


def request(workload: str = FINANCE, **fields: Any) -> pdp_pb2.AuthorizeRequest:
    params = fields.pop("params", None)
    context = fields.pop("context", None)
    req = pdp_pb2.AuthorizeRequest(identity=pdp_pb2.Identity(spiffe_id=workload), **fields)
    if params:
        req.params.update(params)
    if context:
        req.context.update(context)
    return req
