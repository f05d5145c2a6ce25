"""The PDP on a real SPIRE and a real OPA (issue 20): its own X.509-SVID and trust bundle
from the Workload API (spiffe_endpoint_socket), rotating under load without a restart;
agents with SPIRE-issued SVIDs allowed what their policies grant; expired, foreign and
unissued identities refused; JWT-SVIDs verified against the Workload API's JWT bundle.

The PDP is ``aam serve`` in a group of its own (tests/spirepdp.py), attested by SPIRE as
any workload is. Groups used here: 53001-53099 (other SPIRE tests use their own).
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from aam.v1 import pdp_pb2
from pdp.devpki import TrustDomain
from tests.servers import wait_until
from tests.spire import Spire
from tests.spirepdp import (
    CLAIMS,
    FINANCE,
    PDP_ID,
    Creds,
    SpirePdp,
    as_group,
    ask,
    authorize_stub,
    channel,
    fetch,
    fetch_x509,
    jwt_svid,
    pdp_env,
    policies_without_vault,
    run_load,
    serve_argv,
    served_certificate,
    spire_pdp,
    uri_san,
)

GID_PDP, GID_GATEWAY, GID_AGENT, GID_NOBODY, GID_SHORT = 53001, 53002, 53003, 53004, 53005
GID_UNREGISTERED_PDP, GID_CLAIMS, GID_WORKERS_PDP, GID_WORKERS_GATEWAY = 53006, 53007, 53008, 53009
# Why the PDP's TLS refused a handshake, as gRPC core (BoringSSL) logs it.
NO_CERT = "PEER_DID_NOT_RETURN_A_CERTIFICATE"
EXPIRED = "CERTIFICATE_VERIFY_FAILED: certificate has expired"
UNKNOWN_CA = "CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate"
PDP_TTL_S = 30  # SPIRE renews at half the lifetime: a new PDP SVID about every 15 s
AGENT_TTL_S = 30


@pytest.fixture(scope="module")
def pdp(spire: Spire, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpirePdp]:
    tmp = tmp_path_factory.mktemp("spire-pdp")
    spire.register(FINANCE, [f"unix:gid:{GID_AGENT}"], x509_ttl_s=AGENT_TTL_S)
    spire.register(CLAIMS, [f"unix:gid:{GID_CLAIMS}"])
    with spire_pdp(spire, tmp, GID_PDP, GID_GATEWAY, pdp_ttl_s=PDP_TTL_S,
                   require_jwt_svid="true") as p:
        yield p


@pytest.fixture(scope="module")
def agent(spire: Spire, pdp: SpirePdp, tmp_path_factory: pytest.TempPathFactory) -> Creds:
    """finance-analyst's SVID, as its workload (GID_AGENT) fetched it."""
    return fetch(spire, tmp_path_factory.mktemp("agent"), GID_AGENT)


def decide(pdp: SpirePdp, creds: Creds, workload: str, **fields: str) -> pdp_pb2.AuthorizeResponse:
    with channel(pdp.addr, creds, fresh=True) as ch:
        return authorize_stub(ch).Authorize(ask(workload, **fields), timeout=10)


def refused(pdp: SpirePdp, creds: Creds, workload: str = FINANCE) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        decide(pdp, creds, workload, tool="salesforce.accounts", action="read")
    return info.value


def refused_at_handshake(pdp: SpirePdp, why: str, before: int) -> None:
    """The PDP's TLS layer (gRPC core's log line) refused a handshake for ``why`` once
    more than the ``before`` times it had."""
    wait_until(lambda: pdp.log_text().count(why) > before, 10, f"a handshake refused: {why}",
               pdp.proc, pdp.log)


def test_the_pdp_serves_its_spire_issued_svid(pdp: SpirePdp, spire: Spire) -> None:
    cert = served_certificate(pdp.addr, pdp.gateway)  # verified against SPIRE's bundle
    assert uri_san(cert) == [PDP_ID]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime <= dt.timedelta(seconds=PDP_TTL_S + 60)  # the entry's TTL, not a file's
    assert pdp.health("identity") == 1  # SERVING: the identity component is ok
    assert pdp.gateway.bundle.strip() == spire.bundle.read_bytes().strip()
    assert f'"event": "workload_svid", "spiffe_id": "{PDP_ID}"' in pdp.log_text()


def test_an_agent_with_a_spire_svid_is_allowed_what_its_policy_grants(
        pdp: SpirePdp, agent: Creds) -> None:
    assert uri_san(agent.leaf) == [FINANCE]
    read = decide(pdp, agent, FINANCE, tool="salesforce.accounts", action="read")
    assert (read.decision, read.policy) == (pdp_pb2.DECISION_ALLOW, "finance-analyst-readonly"), \
        read.reasons
    export = decide(pdp, agent, FINANCE, tool="salesforce.accounts", action="export")
    assert export.decision == pdp_pb2.DECISION_DENY
    assert export.policy == "finance-analyst-readonly"
    model = decide(pdp, agent, FINANCE, model="reasoning-high")
    assert model.decision == pdp_pb2.DECISION_ALLOW and model.route.targets
    # an agent may only ask about itself
    exc = refused(pdp, agent, CLAIMS)
    assert exc.code() == grpc.StatusCode.PERMISSION_DENIED and "only ask about itself" in exc.details()


def test_a_workload_without_a_registration_entry_gets_no_svid_and_no_access(
        pdp: SpirePdp, spire: Spire, tmp_path: Path) -> None:
    nobody = fetch_x509(spire, tmp_path / "nobody", GID_NOBODY)
    assert nobody.returncode != 0 and "no identity issued" in nobody.stderr
    assert not (tmp_path / "nobody" / "svid.0.pem").exists()
    # so all it can do is connect without a client certificate: refused at the handshake
    before = pdp.log_text().count(NO_CERT)
    bundle_only = grpc.ssl_channel_credentials(spire.bundle.read_bytes())
    with grpc.secure_channel(pdp.addr, bundle_only,
                             options=[("grpc.ssl_target_name_override", "localhost")]) as ch, \
            pytest.raises(grpc.RpcError) as info:
        authorize_stub(ch).Authorize(ask(FINANCE, tool="salesforce.accounts", action="read"),
                                     timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    refused_at_handshake(pdp, NO_CERT, before)


def test_an_expired_spire_svid_is_refused(pdp: SpirePdp, spire: Spire, tmp_path: Path) -> None:
    spire.register(FINANCE, [f"unix:gid:{GID_SHORT}"], x509_ttl_s=10)
    short = fetch(spire, tmp_path / "short", GID_SHORT)
    assert uri_san(short.leaf) == [FINANCE]
    ok = decide(pdp, short, FINANCE, tool="salesforce.accounts", action="read")
    assert ok.decision == pdp_pb2.DECISION_ALLOW  # valid: allowed
    wait = (short.leaf.not_valid_after_utc - dt.datetime.now(dt.UTC)).total_seconds() + 1.5
    assert wait < 15
    time.sleep(max(wait, 0))
    before = pdp.log_text().count(EXPIRED)
    exc = refused(pdp, short)  # the same files, now past NotAfter
    assert exc.code() == grpc.StatusCode.UNAVAILABLE  # the TLS handshake fails
    refused_at_handshake(pdp, EXPIRED, before)


def test_a_foreign_trust_domain_svid_is_refused(pdp: SpirePdp, tmp_path: Path) -> None:
    elsewhere = TrustDomain(tmp_path, "elsewhere")
    for stem, uri in (("foreign", "spiffe://elsewhere/agent/finance-analyst"),
                      ("impostor", FINANCE)):  # prod's name, signed by another CA
        svid = elsewhere.issue(stem, uri)
        d = tmp_path / stem
        d.mkdir()
        (d / "svid.0.pem").write_bytes(svid.cert.read_bytes())
        (d / "svid.0.key").write_bytes(svid.key.read_bytes())
        (d / "bundle.0.pem").write_bytes(pdp.gateway.bundle)  # it trusts the PDP's CA
        before = pdp.log_text().count(UNKNOWN_CA)
        exc = refused(pdp, Creds(d), uri)
        assert exc.code() == grpc.StatusCode.UNAVAILABLE, stem
        refused_at_handshake(pdp, UNKNOWN_CA, before)  # not chained to SPIRE's prod bundle


def test_a_gateway_forwards_a_jwt_svid_verified_against_the_workload_apis_bundle(
        pdp: SpirePdp, spire: Spire, agent: Creds) -> None:
    token = jwt_svid(spire, GID_AGENT, "aam-pdp")
    resp = decide(pdp, pdp.gateway, FINANCE, jwt_svid=token, tool="salesforce.accounts",
                  action="read")
    assert (resp.decision, resp.policy) == (pdp_pb2.DECISION_ALLOW, "finance-analyst-readonly")
    other = jwt_svid(spire, GID_AGENT, "someone-else")
    with pytest.raises(grpc.RpcError) as info:
        decide(pdp, pdp.gateway, FINANCE, jwt_svid=other, tool="salesforce.accounts",
               action="read")
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "audience" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:  # required: none is refused
        decide(pdp, pdp.gateway, FINANCE, tool="salesforce.accounts", action="read")
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # a JWT-SVID of another workload does not speak for this one
    claims = jwt_svid(spire, GID_CLAIMS, "aam-pdp")
    with pytest.raises(grpc.RpcError) as info:
        decide(pdp, pdp.gateway, FINANCE, jwt_svid=claims, tool="salesforce.accounts",
               action="read")
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_the_pdp_and_agent_svids_rotate_under_load_without_a_failed_decision(
        pdp: SpirePdp, spire: Spire, agent: Creds, tmp_path: Path) -> None:
    jwt = {FINANCE: jwt_svid(spire, GID_AGENT, "aam-pdp"),
           CLAIMS: jwt_svid(spire, GID_CLAIMS, "aam-pdp")}
    load = run_load(pdp, spire, tmp_path, GID_AGENT, duration_s=2.2 * PDP_TTL_S / 2 + 5, jwt=jwt)
    assert load.failures == []
    assert load.ok > 100
    assert len(load.pdp_serials) >= 2, "the PDP's certificate did not rotate"
    assert len(load.agent_serials) >= 2, "the agent's SVID did not rotate"
    assert "workload api svid rotated" in pdp.log_text()


def test_a_pdp_without_a_registration_entry_refuses_to_start(spire: Spire, tmp_path: Path) -> None:
    r = subprocess.run(as_group(GID_UNREGISTERED_PDP, serve_argv(
        policies_without_vault(tmp_path / "p"), "127.0.0.1:0")),
        env=pdp_env(spire, tmp_path, spiffe_start_timeout_s="3"), capture_output=True,
        text=True, timeout=60)
    assert r.returncode == 1
    assert f"no X.509-SVID from the Workload API at {spire.endpoint}" in r.stderr
    assert "no identity issued" in r.stderr
    assert "Traceback" not in r.stderr


def test_each_worker_process_takes_its_own_svid_from_the_workload_api(
        spire: Spire, tmp_path: Path) -> None:
    with spire_pdp(spire, tmp_path, GID_WORKERS_PDP, GID_WORKERS_GATEWAY, workers="2",
                   ledger_url="off") as p:
        cert = served_certificate(p.addr, p.gateway)
        assert uri_san(cert) == [PDP_ID]
        assert p.health("identity") == 1

        def starts() -> set[str]:  # one Workload API source per worker process
            return {json.loads(line).get("worker", "") for line in p.log_text().splitlines()
                    if '"event": "workload_svid"' in line}

        wait_until(lambda: len(starts()) == 2, 60, "both workers' SVIDs", p.proc, p.log)
        assert starts() == {0, 1}
