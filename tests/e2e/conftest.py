"""Fixtures for end-to-end tests: real OPA + PDP, real Envoy, a recording upstream."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pdp.stack import Stack
from tests.e2e.envoy import Envoy, Tls, run_envoy
from tests.e2e.pdp import pdp_port, pdp_stack
from tests.e2e.pki import Svid, TrustDomain
from tests.e2e.upstream import RecordingUpstream

FINANCE = "spiffe://prod/agent/finance-analyst"
STRANGER = "spiffe://prod/agent/stranger"


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
