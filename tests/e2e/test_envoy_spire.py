"""Envoy's identity from a real SPIRE agent over SDS, in front of the PDP, real OPA and Vault.

The shipped deploy/envoy/envoy.yaml as it runs in production: Envoy (a workload of its own
group) asks the SPIRE agent for its SVID (spiffe://prod/gateway/envoy) and for the bundle of
``prod`` over SDS, for its listener and for its mTLS hop to the PDP. Agents present SVIDs
SPIRE issued them over the Workload API; what they are allowed is what their policy grants,
and the decision names the workload SPIRE attested. An SVID that expired, one of another
trust domain or of another CA, and a workload SPIRE has no entry for, get nothing. SPIRE
rotates Envoy's short-lived SVID under load: no call fails, every decision names the agent.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from cryptography import x509

from pdp.ledger.types import AuditFilter
from pdp.opa import free_port
from pdp.stack import Stack
from tests.e2e.conftest import ENVOY_ID, FINANCE, PDP_ID
from tests.e2e.envoy import TEMPLATE, Envoy, Sds, render, run_envoy
from tests.e2e.pdp import pdp_port, pdp_stack
from tests.e2e.pki import TrustDomain
from tests.e2e.upstream import RecordingUpstream
from tests.servers import VENV_BIN
from tests.spire import Spire, wait_for_svid
from tests.vaultsetup import VaultSetup

pytestmark = pytest.mark.integration

# Workloads are told apart by group (tests/spire.py); this module's groups.
ENVOY_GID, FINANCE_GID, PDP_GID, NOBODY_GID, EXPIRING_GID, ROTATING_ENVOY_GID = (
    54001, 54002, 54003, 54004, 54005, 54006)
UNREGISTERED_ENVOY_GID = 54007


@dataclass(frozen=True)
class SvidFiles:
    """What ``spire-agent api fetch x509 -write`` leaves: the SVID, its key, the bundle."""

    dir: Path

    @property
    def cert(self) -> Path:
        return self.dir / "svid.0.pem"

    @property
    def key(self) -> Path:
        return self.dir / "svid.0.key"

    @property
    def bundle(self) -> Path:
        return self.dir / "bundle.0.pem"

    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert.read_bytes())


@dataclass(frozen=True)
class Registered:
    finance: SvidFiles
    pdp: SvidFiles
    dir: Path


def uri_sans(cert: x509.Certificate) -> list[str]:
    return cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier)


@pytest.fixture(scope="module")
def registered(spire: Spire, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registered]:
    """Entries for Envoy, the finance agent and the PDP (each its own group), and the SVIDs
    the agent and the PDP fetched over the Workload API."""
    tmp = tmp_path_factory.mktemp("spire-svids")
    ids = [spire.register(ENVOY_ID, [f"unix:gid:{ENVOY_GID}"], dns=["localhost"]),
           spire.register(FINANCE, [f"unix:gid:{FINANCE_GID}"]),
           spire.register(PDP_ID, [f"unix:gid:{PDP_GID}"], dns=["localhost"])]
    try:
        finance = SvidFiles(wait_for_svid(spire, tmp / "finance", gid=FINANCE_GID))
        pdp = SvidFiles(wait_for_svid(spire, tmp / "pdp", gid=PDP_GID))
        yield Registered(finance, pdp, tmp)
    finally:
        for entry in ids:
            spire.delete(entry)


@contextlib.contextmanager
def spire_stack(vault: VaultSetup, reg: Registered) -> Iterator[Stack]:
    """The PDP over mTLS with the SVID SPIRE issued it, trusting SPIRE's bundle, Envoy's
    SPIFFE ID as its gateway."""
    with pdp_stack(vault, plaintext=False, tls_cert=str(reg.pdp.cert), tls_key=str(reg.pdp.key),
                   tls_client_ca=str(reg.pdp.bundle), trusted_gateways=(ENVOY_ID,)) as stack:
        yield stack


@pytest.fixture(scope="module")
def stack(vault: VaultSetup, registered: Registered) -> Iterator[Stack]:
    with spire_stack(vault, registered) as s:
        yield s


@pytest.fixture(scope="module")
def envoy(spire: Spire, stack: Stack, upstream: RecordingUpstream,
          registered: Registered) -> Iterator[Envoy]:
    sds = Sds(spire.workload_socket)
    with run_envoy(pdp_port=pdp_port(stack), upstream_port=upstream.port, tls=sds, pdp_tls=sds,
                   group=ENVOY_GID) as e:
        first_served(e, registered.finance)
        yield e


def url(envoy: Envoy, path: str) -> str:
    # SPIRE's SVIDs carry DNS SANs, not IP SANs: Envoy's is for localhost.
    return f"https://localhost:{envoy.port}{path}"


def client(bundle: Path, cert: Path | None = None, key: Path | None = None) -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    s.verify = str(bundle)
    if cert is not None:
        s.cert = (str(cert), str(key))
    return s


def agent(svid: SvidFiles) -> requests.Session:
    return client(svid.bundle, svid.cert, svid.key)


def served_certificate(envoy: Envoy, svid: SvidFiles) -> x509.Certificate:
    """The certificate Envoy serves, read in a handshake that verifies it against SPIRE's
    bundle (the caller presents ``svid``: the listener wants a client certificate)."""
    ctx = ssl.create_default_context(cafile=str(svid.bundle))
    ctx.load_cert_chain(str(svid.cert), str(svid.key))
    with socket.create_connection(("127.0.0.1", envoy.port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def first_served(envoy: Envoy, svid: SvidFiles, timeout_s: float = 30.0) -> x509.Certificate:
    """The certificate Envoy serves once it serves one: Envoy is ready before SDS has
    delivered an SVID whose entry is new (the agent syncs entries every ~5 s), and until
    then its listener closes every handshake."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return served_certificate(envoy, svid)
        except (ssl.SSLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def log_details(conf: dict[str, Any]) -> dict[str, Any]:
    """Envoy's access log with why a request ended as it did (flags, code details)."""
    (chain,) = conf["static_resources"]["listeners"][0]["filter_chains"]
    (log,) = chain["filters"][0]["typed_config"]["access_log"]
    log["typed_config"]["log_format"]["json_format"].update(
        flags="%RESPONSE_FLAGS%", details="%RESPONSE_CODE_DETAILS%",
        upstream_failure="%UPSTREAM_TRANSPORT_FAILURE_REASON%")
    return conf


def audited_workload(stack: Stack, decision_id: str) -> str:
    assert stack.ledger is not None
    (row,) = stack.ledger.audit_rows(AuditFilter(decision_id=decision_id))
    return row.workload


def test_envoy_serves_the_svid_spire_issued_it(envoy: Envoy, registered: Registered,
                                               spire: Spire) -> None:
    cert = served_certificate(envoy, registered.finance)
    assert uri_sans(cert) == [ENVOY_ID]
    spire_ca = x509.load_pem_x509_certificates(spire.bundle.read_bytes())
    assert cert.issuer in {ca.subject for ca in spire_ca}


def test_agent_with_a_spire_svid_is_allowed_what_its_policy_grants(
        envoy: Envoy, stack: Stack, upstream: RecordingUpstream, registered: Registered,
        vault: VaultSetup) -> None:
    assert uri_sans(registered.finance.certificate()) == [FINANCE]
    with agent(registered.finance) as s:
        path = "/tools/salesforce.accounts/read?spire"
        resp = s.post(url(envoy, path), json={"account": "001"},
                      headers={"authorization": "Bearer agent-own"})
        assert resp.status_code == 200, resp.text
        denied = s.post(url(envoy, "/tools/salesforce.accounts/export?spire"), json={})
    (got,) = upstream.find(path)
    decision = resp.headers["x-aam-decision-id"]
    assert got.headers["x-aam-decision-id"] == decision
    assert got.headers["authorization"] == f"Bearer {vault.kv_secret}"  # brokered, not the agent's
    assert audited_workload(stack, decision) == FINANCE
    assert denied.status_code == 403
    assert [r["code"] for r in denied.json()["reasons"]] == ["action_denied"]
    assert audited_workload(stack, denied.json()["decision_id"]) == FINANCE
    assert upstream.find("/tools/salesforce.accounts/export?spire") == []


def test_a_workload_with_no_entry_gets_no_svid_and_no_access(
        envoy: Envoy, spire: Spire, upstream: RecordingUpstream, registered: Registered) -> None:
    nobody = spire.fetch_x509(registered.dir / "nobody", gid=NOBODY_GID, timeout_s=5)
    assert nobody.returncode != 0 and "no identity issued" in nobody.stderr
    assert not (registered.dir / "nobody" / "svid.0.pem").exists()
    path = "/tools/salesforce.accounts/read?no-entry"
    with client(registered.finance.bundle) as s, \
            pytest.raises(requests.exceptions.ConnectionError):
        s.post(url(envoy, path), json={})
    assert upstream.find(path) == []


def test_an_expired_spire_svid_is_refused(envoy: Envoy, spire: Spire, upstream: RecordingUpstream,
                                          registered: Registered) -> None:
    entry = spire.register(FINANCE, [f"unix:gid:{EXPIRING_GID}"], x509_ttl_s=10)
    try:
        svid = SvidFiles(wait_for_svid(spire, registered.dir / "expiring", gid=EXPIRING_GID))
    finally:
        spire.delete(entry)  # the files stay; SPIRE issues no more
    not_after = svid.certificate().not_valid_after_utc.timestamp()
    assert not_after - time.time() <= 10
    with agent(svid) as s:
        assert s.post(url(envoy, "/tools/salesforce.accounts/read?fresh"), json={}).status_code == 200
    time.sleep(max(0.0, not_after - time.time()) + 1.5)
    path = "/tools/salesforce.accounts/read?expired"
    with agent(svid) as s, pytest.raises(requests.exceptions.ConnectionError):
        s.post(url(envoy, path), json={})
    assert upstream.find(path) == []


def test_an_envoy_with_no_entry_lets_no_one_in(spire: Spire, stack: Stack,
                                               upstream: RecordingUpstream,
                                               registered: Registered) -> None:
    """SPIRE gives an Envoy it has no entry for nothing over SDS: once Envoy stops waiting for
    it (SDS initial_fetch_timeout, 15 s), its listener completes no handshake."""
    sds = Sds(spire.workload_socket)
    path = "/tools/salesforce.accounts/read?unregistered-envoy"
    with run_envoy(pdp_port=pdp_port(stack), upstream_port=upstream.port, tls=sds, pdp_tls=sds,
                   group=UNREGISTERED_ENVOY_GID) as envoy, agent(registered.finance) as s, \
            pytest.raises(requests.exceptions.ConnectionError):
        s.post(url(envoy, path), json={})
    assert upstream.find(path) == []


@pytest.mark.parametrize("who", ["foreign-trust-domain", "other-ca-same-trust-domain"])
def test_svids_spire_did_not_issue_are_refused(envoy: Envoy, upstream: RecordingUpstream,
                                               registered: Registered, tmp_path: Path,
                                               who: str) -> None:
    if who == "foreign-trust-domain":
        svid = TrustDomain(tmp_path, "elsewhere").issue("f", "spiffe://elsewhere/agent/finance-analyst")
    else:  # a CA of its own that calls itself "prod": not in SPIRE's bundle
        svid = TrustDomain(tmp_path, "prod").issue("f", FINANCE)
    path = f"/tools/salesforce.accounts/read?{who}"
    with client(registered.finance.bundle, svid.cert, svid.key) as s, \
            pytest.raises(requests.exceptions.ConnectionError):
        s.post(url(envoy, path), json={})
    assert upstream.find(path) == []


def short_pdp_connections(conf: dict[str, Any]) -> dict[str, Any]:
    """The shipped 600 s cap on a connection to the PDP, scaled to a 20 s SVID (under half)."""
    (pdp,) = [c for c in conf["static_resources"]["clusters"] if c["name"] == "aam_pdp"]
    options = pdp["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert options["common_http_protocol_options"] == {"max_connection_duration": "600s"}
    options["common_http_protocol_options"]["max_connection_duration"] = "4s"
    return log_details(conf)


def test_envoys_svid_rotates_under_load_with_no_failed_or_misattributed_decision(
        spire: Spire, stack: Stack, upstream: RecordingUpstream, registered: Registered) -> None:
    """Envoy's entry has a 20 s TTL: the agent renews the SVID at half its life and pushes it
    over SDS, to the listener and to the hop to the PDP. Fresh agent connections all along;
    the load runs past the first SVID's expiry, which the PDP (checking Envoy's certificate
    on every call) would refuse on a connection to it older than that."""
    ttl_s = 20
    entry = spire.register(ENVOY_ID, [f"unix:gid:{ROTATING_ENVOY_GID}"], dns=["localhost"],
                           x509_ttl_s=ttl_s)
    sds = Sds(spire.workload_socket)
    serials: list[int] = []
    decisions: list[str] = []
    failures: list[str] = []
    failures_at_rotation: list[str] = []
    try:
        with run_envoy(pdp_port=pdp_port(stack), upstream_port=upstream.port, tls=sds,
                       pdp_tls=sds, group=ROTATING_ENVOY_GID, edit=short_pdp_connections) as envoy:
            first = first_served(envoy, registered.finance).not_valid_after_utc.timestamp()
            deadline = time.monotonic() + 75
            n = 0
            while time.monotonic() < deadline and (len(set(serials)) < 3 or
                                                   time.time() < first + 5):
                cert = served_certificate(envoy, registered.finance)
                assert uri_sans(cert) == [ENVOY_ID]
                if not serials or serials[-1] != cert.serial_number:
                    serials.append(cert.serial_number)
                    failures_at_rotation.append(f"rotation {len(serials)} at call {n}")
                for _ in range(5):
                    n += 1
                    with agent(registered.finance) as s:  # a new connection each call
                        resp = s.post(url(envoy, f"/tools/salesforce.accounts/read?rot={n}"),
                                      json={}, headers={"connection": "close"})
                    if resp.status_code != 200:
                        failures.append(f"{n}: {resp.status_code} {resp.text[:200]}")
                    else:
                        decisions.append(resp.headers["x-aam-decision-id"])
                time.sleep(0.2)
            time.sleep(1.5 if failures else 0)  # Envoy flushes its access log each second
            log = envoy.log.read_text()
    finally:
        spire.delete(entry)
    assert failures == [], "\n".join(
        [*failures_at_rotation, *failures,
         *[line for line in log.splitlines() if '"status":200' not in line][-25:]])
    assert len(set(serials)) >= 3, f"Envoy's SVID did not rotate twice: serials {serials}"
    assert time.time() > first, "the load did not outlast Envoy's first SVID"
    assert len(decisions) == n and n > 50
    assert all(audited_workload(stack, d) == FINANCE for d in decisions)
    reached = [r for r in upstream.received if r.path.startswith("/tools/salesforce.accounts/read?rot=")]
    assert sorted(r.headers["x-aam-decision-id"] for r in reached) == sorted(decisions)


def test_the_shipped_sds_config_validates_as_shipped_and_rendered(tmp_path: Path) -> None:
    """Envoy's own validation of deploy/envoy/envoy.yaml unchanged (SDS from the SPIRE agent
    at /run/spire/sockets/agent.sock) and re-addressed to another socket."""
    envoy_bin = str(VENV_BIN / "envoy")
    out = subprocess.run([envoy_bin, "--mode", "validate", "-c", str(TEMPLATE)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    sds = Sds(tmp_path / "agent.sock")
    conf = render(listen_port=free_port(), admin_port=free_port(), pdp_port=free_port(),
                  upstream_port=free_port(), tls=sds, pdp_tls=sds)
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(conf))
    out = subprocess.run([envoy_bin, "--mode", "validate", "-c", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
