"""Fixtures for end-to-end tests: real OPA + PDP, real Envoy, a recording upstream."""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pdp.config import Settings, split_addr
from pdp.engine import Credential, Decision, Request
from pdp.opa import free_port
from pdp.stack import Stack
from tests.e2e.envoy import Envoy, Tls, run_envoy
from tests.e2e.pki import Svid, TrustDomain
from tests.e2e.upstream import RecordingUpstream
from tests.integration.pdp import EXAMPLES
from tests.servers import opa_binary

FINANCE = "spiffe://prod/agent/finance-analyst"
STRANGER = "spiffe://prod/agent/stranger"


class FakeBroker:
    """Stands in for the Vault broker: a recognisable credential per tool and action."""

    header = "authorization"

    def issue(self, req: Request, decision: Decision) -> Credential | None:
        return Credential(header=self.header, value=f"Bearer brokered-{req.tool}-{req.action}",
                          expires_at=time.time() + 60)


@dataclass(frozen=True)
class Pki:
    domain: TrustDomain
    envoy: Svid
    finance: Svid
    stranger: Svid
    two_uris: Svid
    foreign: Svid  # a valid SVID of another trust domain

    @property
    def tls(self) -> Tls:
        return Tls(self.envoy.cert, self.envoy.key, self.domain.bundle)


@pytest.fixture(scope="session")
def pki() -> Iterator[Pki]:
    with tempfile.TemporaryDirectory(prefix="aam-test-pki-") as tmp:
        d = TrustDomain(Path(tmp), "prod")
        other = TrustDomain(Path(tmp), "elsewhere")
        yield Pki(
            domain=d,
            envoy=d.issue("envoy", "spiffe://prod/gateway/envoy", server=True),
            finance=d.issue("finance", FINANCE),
            stranger=d.issue("stranger", STRANGER),
            two_uris=d.issue("two", STRANGER, FINANCE),
            foreign=other.issue("foreign", "spiffe://elsewhere/agent/finance-analyst"),
        )


@contextlib.contextmanager
def pdp_stack(**overrides: Any) -> Iterator[Stack]:
    settings = Settings.load(
        env={}, grpc_addr=f"127.0.0.1:{free_port()}", plaintext=True, policies=str(EXAMPLES),
        opa_binary=opa_binary(), shutdown_grace_s=0.5, **overrides)
    stack = Stack(settings, broker=FakeBroker())
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def pdp_port(stack: Stack) -> int:
    addr = stack.settings.extauthz_addr or stack.settings.grpc_addr
    return split_addr(addr)[1]


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    with RecordingUpstream() as u:
        yield u


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with pdp_stack() as s:
        yield s


@pytest.fixture(scope="module")
def envoy(pki: Pki, stack: Stack, upstream: RecordingUpstream) -> Iterator[Envoy]:
    with run_envoy(pdp_port=pdp_port(stack), upstream_port=upstream.port, tls=pki.tls) as e:
        yield e
