"""Issue 20: spiffe_endpoint_socket, the PDP's identity from the SPIFFE Workload API, is
refused in a bad shape and beside the file identity it replaces; its JWT verifier looks
keys up in the Workload API's bundle of the subject's trust domain; its health says when
renewal stalls. (The real Workload API: tests/integration/test_spire_pdp.py.)"""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from typing import Any

import pytest

from pdp.config import ConfigError, Settings
from pdp.identity import JwtSvidInvalid, WorkloadJwtVerifier
from pdp.workloadapi import Material, WorkloadApiSource
from tests.certs import JwtIssuer

SOCKET = "unix:///run/spire/agent/api.sock"


@pytest.mark.parametrize("value", ["/run/spire/agent/api.sock", "unix://relative/api.sock",
                                   "unix:///", "tcp://127.0.0.1:8081", "unix:///a:b"])
def test_the_endpoint_must_be_an_absolute_unix_socket(value: str) -> None:
    with pytest.raises(ConfigError) as exc:
        Settings.load(env={}, spiffe_endpoint_socket=value)
    assert str(exc.value).startswith("setting spiffe_endpoint_socket: must be unix:///")


@pytest.mark.parametrize("name", ["tls_cert", "tls_key", "tls_client_ca", "jwt_bundle"])
def test_the_endpoint_is_not_combined_with_files(name: str) -> None:
    with pytest.raises(ConfigError) as exc:
        Settings.load(env={}, spiffe_endpoint_socket=SOCKET, **{name: "/etc/aam/x.pem"})
    assert str(exc.value).startswith(f"setting spiffe_endpoint_socket: cannot be combined with "
                                     f"{name}")


def test_the_endpoint_is_not_combined_with_plaintext() -> None:
    with pytest.raises(ConfigError, match=r"^AAM_SPIFFE_ENDPOINT_SOCKET: cannot be combined with "
                                           "plaintext"):
        Settings.load(env={"AAM_PLAINTEXT": "true", "AAM_SPIFFE_ENDPOINT_SOCKET": SOCKET})


def test_require_jwt_svid_is_satisfied_by_the_workload_api() -> None:
    s = Settings.load(env={}, spiffe_endpoint_socket=SOCKET, require_jwt_svid=True)
    assert s.spiffe_endpoint_socket == SOCKET
    with pytest.raises(ConfigError, match=r"needs jwt_bundle .* or spiffe_endpoint_socket"):
        Settings.load(env={}, require_jwt_svid=True)


def test_the_start_timeout_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="spiffe_start_timeout_s: must be positive"):
        Settings.load(env={}, spiffe_start_timeout_s=0)


class FakeSource:
    """A Workload API source serving the JWT bundle of ``prod`` only."""

    def __init__(self, keys: dict[str, Any]) -> None:
        self.keys = keys
        self.asked: list[str] = []

    def jwt_keys(self, trust_domain: str) -> dict[str, Any] | None:
        self.asked.append(trust_domain)
        return self.keys if trust_domain == "prod" else None


def test_jwt_svids_verify_against_the_current_bundle_of_the_subjects_trust_domain() -> None:
    issuer = JwtIssuer()
    subject = "spiffe://prod/agent/finance-analyst"
    source = FakeSource({})
    verifier = WorkloadJwtVerifier(source, "aam-pdp")  # type: ignore[arg-type]
    token = issuer.token(subject, aud="aam-pdp")
    with pytest.raises(JwtSvidInvalid, match="not in the trust bundle"):
        verifier.verify(token, subject)  # the key is not (yet) in the bundle
    source.keys = {issuer.kid: issuer.key.public_key()}  # the agent rotated it in
    verifier.verify(token, subject)
    with pytest.raises(JwtSvidInvalid, match="no JWT bundle for trust domain 'elsewhere'"):
        verifier.verify(token, "spiffe://elsewhere/agent/finance-analyst")
    assert source.asked == ["prod", "prod", "elsewhere"]


class Stream:
    def __init__(self, closed: bool = False) -> None:
        self.closed = closed

    def is_closed(self) -> bool:
        return self.closed


def source_at(not_before: dt.datetime, lifetime_s: float, closed: bool = False) -> WorkloadApiSource:
    """A source as the Workload API left it (no socket: only its state)."""
    source = WorkloadApiSource.__new__(WorkloadApiSource)
    source.endpoint = SOCKET
    source._lock = threading.Lock()
    source._x509, source._jwt = Stream(closed), None
    source._material = Material("spiffe://prod/aam/pdp", b"", b"", b"", 0xAB, not_before,
                                not_before + dt.timedelta(seconds=lifetime_s))
    return source


def test_identity_health_says_when_the_workload_api_stops_renewing() -> None:
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    at = lambda s: t0 + dt.timedelta(seconds=s)  # noqa: E731
    assert source_at(t0, 100).health(at(50)) == (True, "")  # SPIRE renews about now
    ok, reason = source_at(t0, 100).health(at(80))
    assert not ok and "not renewed by the Workload API at " + SOCKET in reason
    ok, reason = source_at(t0, 100).health(at(100))
    assert not ok and "expired at 2026-01-01T00:01:40Z" in reason
    ok, reason = source_at(t0, 100, closed=True).health(at(10))
    assert not ok and "stream" in reason and "stopped" in reason
    assert source_at(t0, 100).material.trust_domain == "prod"


def test_no_workload_api_at_start_is_a_config_error_naming_the_socket(tmp_path: Path) -> None:
    endpoint = f"unix://{tmp_path}/missing/api.sock"
    with pytest.raises(ConfigError, match=f"spiffe_endpoint_socket {endpoint}: .*does not exist"):
        WorkloadApiSource(endpoint, timeout_s=1)
