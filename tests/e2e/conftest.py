"""Fixtures for end-to-end tests: real OPA + PDP, real Envoy, a recording upstream."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pdp.stack import Stack
from tests.e2e.agents import AgentUpstream
from tests.e2e.envoy import Envoy, PdpTls, Tls, run_envoy
from tests.e2e.pdp import FINANCE, pdp_port, pdp_stack, pdp_token
from tests.e2e.pki import Svid, TrustDomain
from tests.e2e.upstream import RecordingUpstream
from tests.vaultsetup import VaultSetup

STRANGER = "spiffe://prod/agent/stranger"
ENVOY_ID = "spiffe://prod/gateway/envoy"
PDP_ID = "spiffe://prod/aam/pdp"


@dataclass(frozen=True)
class Pki:
    domain: TrustDomain
    envoy: Svid
    finance: Svid
    stranger: Svid
    two_uris: Svid
    foreign: Svid  # a valid SVID of another trust domain
    pdp: Svid

    @property
    def tls(self) -> Tls:
        return Tls(self.envoy.cert, self.envoy.key, self.domain.bundle)

    @property
    def pdp_tls(self) -> PdpTls:
        """Envoy's side of the mTLS hop to the PDP."""
        return PdpTls(self.envoy.cert, self.envoy.key, self.domain.bundle, PDP_ID)

    def pdp_settings(self, *gateways: str) -> dict[str, Any]:
        """The PDP's side: its SVID, the bundle, and which callers are gateways."""
        return {"plaintext": False, "tls_cert": str(self.pdp.cert), "tls_key": str(self.pdp.key),
                "tls_client_ca": str(self.domain.bundle), "trusted_gateways": gateways}


@pytest.fixture(scope="session")
def pki() -> Iterator[Pki]:
    with tempfile.TemporaryDirectory(prefix="aam-test-pki-") as tmp:
        d = TrustDomain(Path(tmp), "prod")
        other = TrustDomain(Path(tmp), "elsewhere")
        yield Pki(
            domain=d,
            envoy=d.issue("envoy", ENVOY_ID, server=True),
            finance=d.issue("finance", FINANCE),
            stranger=d.issue("stranger", STRANGER),
            two_uris=d.issue("two", STRANGER, FINANCE),
            foreign=other.issue("foreign", "spiffe://elsewhere/agent/finance-analyst"),
            pdp=d.issue("pdp", PDP_ID, server=True),
        )


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    with RecordingUpstream() as u:
        yield u


@pytest.fixture(scope="module")
def stack(vault: VaultSetup) -> Iterator[Stack]:
    with pdp_stack(vault) as s:
        yield s


@pytest.fixture(scope="module")
def envoy(pki: Pki, stack: Stack, upstream: RecordingUpstream) -> Iterator[Envoy]:
    with run_envoy(pdp_port=pdp_port(stack), upstream_port=upstream.port, tls=pki.tls,
                   pdp_token=pdp_token(stack)) as e:
        yield e


@pytest.fixture(scope="module")
def agent_upstream() -> Iterator[AgentUpstream]:
    """The MCP SDK's server and an OpenAI-compatible API, recording what reaches them."""
    with AgentUpstream() as u:
        yield u


@pytest.fixture(scope="module")
def agent_envoy(pki: Pki, stack: Stack, agent_upstream: AgentUpstream) -> Iterator[Envoy]:
    """The shipped Envoy config in front of the agent upstream, the stack deciding."""
    with run_envoy(pdp_port=pdp_port(stack), upstream_port=agent_upstream.port, tls=pki.tls,
                   pdp_token=pdp_token(stack)) as e:
        yield e
