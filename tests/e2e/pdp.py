"""PDPs for the end-to-end tests: the full stack, or just Check over a chosen engine."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import secrets
import time
import urllib.parse
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc

from pdp.config import Settings, split_addr
from pdp.engine import Credential, Decision, Reason, Request
from pdp.extauthz import register
from pdp.identity import GATEWAY_TOKEN_HEADER, PlaintextIdentity
from pdp.opa import free_port
from pdp.stack import Stack
from pdp.tracing.tracer import OFF, Tracing
from tests.integration.pdp import EXAMPLES, Metadata, gateway_metadata, running_stack
from tests.vaultsetup import VaultSetup

FINANCE = "spiffe://prod/agent/finance-analyst"
Attrs = attribute_context_pb2.AttributeContext


class FakeBroker:
    """For engines built by hand (no Vault): a recognisable credential per tool and action."""

    header = "authorization"

    def attach(self, req: Request, decision: Decision) -> Decision:
        return dataclasses.replace(decision, credential=Credential(
            header=self.header, value=f"Bearer brokered-{req.tool}-{req.action}",
            expires_at=time.time() + 60))


@contextlib.contextmanager
def pdp_stack(vault: VaultSetup, **overrides: Any) -> Iterator[Stack]:
    """The PDP on the example policies, brokering credentials from the real OpenBao, with
    a fresh embedded ledger (budgets, rates, audit) unless ``ledger_url`` is given."""
    settings = {"shutdown_grace_s": 0.5, **vault.settings(), **overrides}
    with running_stack(Path(settings.pop("policies", EXAMPLES)), **settings) as stack:
        yield stack


def pdp_port(stack: Stack) -> int:
    addr = stack.settings.extauthz_addr or stack.settings.grpc_addr
    return split_addr(addr)[1]


def pdp_token(stack: Stack) -> str:
    """The gateway token Envoy presents to the stack's plaintext port."""
    return gateway_metadata(stack)[0][1]


# The gateway token of the servers serve() starts (Envoy presents it: run_envoy pdp_token).
SERVE_TOKEN = secrets.token_hex(32)


def serve(engine: Any) -> tuple[grpc.Server, external_auth_pb2_grpc.AuthorizationStub, int]:
    """Only the Authorization service, over an engine of the test's choosing; the stub
    presents the gateway token, as Envoy does."""
    token = SERVE_TOKEN
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    register(server, engine, Settings.load(env={}, plaintext=True),
             identity=PlaintextIdentity(token.encode()))
    port = server.add_insecure_port(f"127.0.0.1:{free_port()}")
    server.start()
    channel = grpc.intercept_channel(grpc.insecure_channel(f"127.0.0.1:{port}"),
                                     Metadata(((GATEWAY_TOKEN_HEADER, token),)))
    return server, external_auth_pb2_grpc.AuthorizationStub(channel), port


@dataclass
class Recording:
    """Wraps an engine (the real one, or a stand-in) and keeps the requests it was asked."""

    engine: Any
    seen: list[Request] = field(default_factory=list)
    tracing: Tracing = OFF

    def decide(self, req: Request) -> Decision:
        self.seen.append(req)
        return self.engine.decide(req)


class Throttling:
    """An engine that always denies for budget or rate (the ledger decides these in production)."""

    tracing = OFF

    def __init__(self, code: str, retry_after_s: float | None) -> None:
        self.code, self.retry_after_s = code, retry_after_s

    def decide(self, req: Request) -> Decision:
        return Decision(allow=False, reasons=(Reason(self.code, "over budget"),),
                        policy="p", decision_id="d-1", revision="r",
                        retry_after_s=self.retry_after_s)


def pem(svid_cert: Any) -> str:
    """As Envoy sends include_peer_certificate: the URL-encoded PEM."""
    return urllib.parse.quote(svid_cert.read_text(), safe="")


def check_request(*, principal: str = FINANCE, certificate: str = "", method: str = "POST",
                  path: str = "/tools/salesforce.accounts/read", body: Any = None,
                  headers: dict[str, str] | None = None,
                  context_extensions: dict[str, str] | None = None,
                  raw_headers: bool = False) -> external_auth_pb2.CheckRequest:
    raw = json.dumps(body).encode() if body is not None else b""
    hdrs = {":method": method, ":path": path, "content-type": "application/json",
            **(headers or {})}
    http = Attrs.HttpRequest(id="req-1", method=method, path=path, host="gw", raw_body=raw,
                             size=len(raw))
    if raw_headers:
        http.header_map.headers.extend(
            base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in hdrs.items())
    else:
        http.headers.update(hdrs)
    return external_auth_pb2.CheckRequest(attributes=Attrs(
        source=Attrs.Peer(principal=principal, certificate=certificate),
        request=Attrs.Request(http=http),
        context_extensions=context_extensions or {}))
