"""mTLS with X.509-SVIDs on the gRPC port, against a real OPA: who may ask about whom."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from aam.v1 import pdp_pb2, pdp_pb2_grpc
from pdp.stack import Stack
from tests.certs import CA, DAY, NOW, JwtIssuer, Pair
from tests.integration.pdp import FINANCE, request, running_stack

GATEWAY = "spiffe://prod/gateway/envoy"
OTHER = "spiffe://prod/agent/other"


@dataclass
class Pki:
    ca: CA
    jwt: JwtIssuer
    stack: Stack
    dir: Path


@contextlib.contextmanager
def mtls_stack(d: Path, issuer: JwtIssuer, **settings: Any) -> Iterator[Pki]:
    """The stack over mTLS with a fresh CA in ``d``; GATEWAY is its trusted gateway."""
    ca = CA("prod")
    server = ca.svid("spiffe://prod/aam/pdp", server=True)
    (d / "ca.pem").write_bytes(ca.pem)
    (d / "pdp.pem").write_bytes(server.cert_pem)
    (d / "pdp.key").write_bytes(server.key_pem)
    with running_stack(plaintext=False, tls_cert=str(d / "pdp.pem"), tls_key=str(d / "pdp.key"),
                       tls_client_ca=str(d / "ca.pem"), trusted_gateways=(GATEWAY,),
                       **settings) as stack:
        yield Pki(ca, issuer, stack, d)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    d = tmp_path_factory.mktemp("pki")
    issuer = JwtIssuer()
    issuer.write_bundle(d / "jwks.json")
    with mtls_stack(d, issuer, require_jwt_svid=True, jwt_bundle=str(d / "jwks.json")) as pki:
        yield pki


@pytest.fixture
def refusals() -> Iterator[list[logging.LogRecord]]:
    """Identity refusals as the default audit hook reports them."""
    records: list[logging.LogRecord] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("aam.identity")
    handler = Catch(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def call(pki: Pki, client: Pair | None, req: pdp_pb2.AuthorizeRequest,
         root: bytes | None = None) -> pdp_pb2.AuthorizeResponse:
    creds = grpc.ssl_channel_credentials(
        root_certificates=root or pki.ca.pem,
        private_key=client.key_pem if client else None,
        certificate_chain=client.cert_pem if client else None)
    with grpc.secure_channel(pki.stack.settings.grpc_addr, creds) as channel:
        return pdp_pb2_grpc.PolicyDecisionServiceStub(channel).Authorize(req, timeout=10)


def refused(pki: Pki, client: Pair | None, req: pdp_pb2.AuthorizeRequest,
            root: bytes | None = None) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(pki, client, req, root)
    return info.value


def test_agent_asks_about_itself(pki: Pki) -> None:
    resp = call(pki, pki.ca.svid(FINANCE), request(model="reasoning-high"))
    assert resp.decision == pdp_pb2.DECISION_ALLOW
    assert resp.policy == "finance-analyst-readonly"


def test_agent_asking_about_another_workload_is_refused_and_audited(
        pki: Pki, refusals: list[logging.LogRecord]) -> None:
    err = refused(pki, pki.ca.svid(OTHER), request(model="reasoning-high"))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert err.details() == f"caller {OTHER} may only ask about itself, not {FINANCE}"
    [event] = [r.fields for r in refusals]  # type: ignore[attr-defined]
    assert event["event"] == "identity_refused"
    assert (event["caller"], event["asserted"], event["code"]) == (OTHER, FINANCE, "not_self")


def test_wrong_trust_domain_is_refused(pki: Pki, refusals: list[logging.LogRecord]) -> None:
    evil = "spiffe://evil/agent/finance-analyst"
    err = refused(pki, pki.ca.svid(evil), request(workload=evil, model="reasoning-high"))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert err.details() == (f"caller {evil} is in trust domain 'evil', which is not trusted "
                             "(trusted: prod)")
    assert [r.fields["code"] for r in refusals] == ["untrusted_domain"]  # type: ignore[attr-defined]


def test_two_uri_sans_are_refused(pki: Pki) -> None:
    err = refused(pki, pki.ca.svid(FINANCE, OTHER), request(model="reasoning-high"))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert err.details() == (
        "client certificate has 2 URI SANs; an X.509-SVID carries exactly one")


def test_no_uri_san_is_refused(pki: Pki) -> None:
    err = refused(pki, pki.ca.svid(), request(model="reasoning-high"))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert err.details() == (
        "client certificate has no URI SAN; an X.509-SVID carries exactly one SPIFFE ID")


def test_uri_san_that_is_not_a_spiffe_id_is_refused(pki: Pki) -> None:
    err = refused(pki, pki.ca.svid("https://prod/agent/x"), request(model="reasoning-high"))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "URI SAN is not a SPIFFE ID" in err.details()


def test_expired_svid_fails_the_tls_handshake(pki: Pki, capfd: pytest.CaptureFixture[str]) -> None:
    """TLS 1.3 gives the client only a closed socket; the PDP's log says why."""
    expired = pki.ca.svid(FINANCE, not_before=NOW - 3 * DAY, not_after=NOW - DAY)
    err = refused(pki, expired, request(model="reasoning-high"))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "certificate has expired" in capfd.readouterr().err


def test_svid_from_another_ca_fails_the_tls_handshake(pki: Pki) -> None:
    err = refused(pki, CA("prod").svid(FINANCE), request(model="reasoning-high"))
    assert err.code() == grpc.StatusCode.UNAVAILABLE


def test_no_client_certificate_fails_the_tls_handshake(pki: Pki) -> None:
    err = refused(pki, None, request(model="reasoning-high"))
    assert err.code() == grpc.StatusCode.UNAVAILABLE


def test_plaintext_client_cannot_talk_to_the_tls_port(pki: Pki) -> None:
    with grpc.insecure_channel(pki.stack.settings.grpc_addr) as channel, \
            pytest.raises(grpc.RpcError) as info:
        pdp_pb2_grpc.PolicyDecisionServiceStub(channel).Authorize(
            request(model="reasoning-high"), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


# --- trusted gateways and JWT-SVIDs -------------------------------------------

def on_behalf(token: str | None, workload: str = FINANCE, **fields: object) -> pdp_pb2.AuthorizeRequest:
    req = request(workload=workload, **fields)
    if token is not None:
        req.identity.jwt_svid = token
    return req


def test_gateway_asks_for_an_agent_with_its_jwt_svid(pki: Pki) -> None:
    resp = call(pki, pki.ca.svid(GATEWAY),
                on_behalf(pki.jwt.token(FINANCE), tool="salesforce.accounts", action="export"))
    assert resp.decision == pdp_pb2.DECISION_DENY
    assert [r.code for r in resp.reasons] == ["action_denied"]


@pytest.mark.parametrize(("token", "message"), [
    (None, f"identity.jwt_svid: required when gateway {GATEWAY} asks for {FINANCE}"),
    ("not-a-jwt", "identity.jwt_svid: not a JWT"),
    ("expired", "identity.jwt_svid: expired"),
    ("wrong-aud", "identity.jwt_svid: audience does not include 'aam-pdp'"),
    ("wrong-sub", f"identity.jwt_svid: subject '{OTHER}' is not the asserted workload '{FINANCE}'"),
    ("unknown-key", "identity.jwt_svid: key id 'k2' is not in the trust bundle"),
    ("forged", "identity.jwt_svid: signature does not verify"),
], ids=["missing", "garbage", "expired", "wrong-aud", "wrong-sub", "unknown-key", "forged"])
def test_gateway_with_a_bad_jwt_svid_is_refused(
        pki: Pki, refusals: list[logging.LogRecord], token: str | None, message: str) -> None:
    tokens = {
        "expired": pki.jwt.token(FINANCE, ttl=-dt.timedelta(minutes=1)),
        "wrong-aud": pki.jwt.token(FINANCE, aud="someone-else"),
        "wrong-sub": pki.jwt.token(OTHER),
        "unknown-key": JwtIssuer("k2").token(FINANCE),
        "forged": JwtIssuer("k1").token(FINANCE),
    }
    raw = tokens.get(token or "", token)
    err = refused(pki, pki.ca.svid(GATEWAY), on_behalf(raw, model="reasoning-high"))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert err.details() == message
    assert [r.fields["code"] for r in refusals] == ["jwt_svid_invalid"]  # type: ignore[attr-defined]
    if raw:
        assert all(raw not in str(r.fields) for r in refusals)  # type: ignore[attr-defined]


def test_record_usage_requires_an_authenticated_caller(pki: Pki) -> None:
    creds = grpc.ssl_channel_credentials(pki.ca.pem, *(lambda p: (p.key_pem, p.cert_pem))(
        pki.ca.svid()))
    with grpc.secure_channel(pki.stack.settings.grpc_addr, creds) as channel, \
            pytest.raises(grpc.RpcError) as info:
        pdp_pb2_grpc.PolicyDecisionServiceStub(channel).RecordUsage(
            pdp_pb2.RecordUsageRequest(decision_id="d1"), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_tls_without_certificates_is_a_config_error(tmp_path: Path) -> None:
    from pdp.config import ConfigError

    with pytest.raises(ConfigError, match="mTLS needs tls_cert, tls_key, tls_client_ca"), \
            running_stack(plaintext=False):
        pass


def test_aam_authorize_over_mtls(pki: Pki) -> None:
    import io

    from aam.cli.main import run

    agent = pki.ca.svid(FINANCE)
    (pki.dir / "agent.pem").write_bytes(agent.cert_pem)
    (pki.dir / "agent.key").write_bytes(agent.key_pem)
    out, err = io.StringIO(), io.StringIO()
    code = run(["authorize", "--addr", pki.stack.settings.grpc_addr, "--workload", FINANCE,
                "--model", "reasoning-high", "--cert", str(pki.dir / "agent.pem"),
                "--key", str(pki.dir / "agent.key"), "--ca", str(pki.dir / "ca.pem")], out, err)
    assert code == 0, err.getvalue()
    assert out.getvalue().startswith("ALLOW  policy=finance-analyst-readonly")
    code = run(["authorize", "--addr", pki.stack.settings.grpc_addr, "--workload", OTHER,
                "--model", "reasoning-high", "--cert", str(pki.dir / "agent.pem"),
                "--key", str(pki.dir / "agent.key"), "--ca", str(pki.dir / "ca.pem")], out, err)
    assert code == 1
    assert "PERMISSION_DENIED: caller spiffe://prod/agent/finance-analyst may only ask about itself" \
        in err.getvalue()


def test_grpcurl_over_mtls_as_the_agent(pki: Pki) -> None:
    import json
    import subprocess

    from pdp.config import DEFAULT_TOOLS_DIR
    from tests.servers import require_binary

    agent = pki.ca.svid(FINANCE)
    (pki.dir / "curl.pem").write_bytes(agent.cert_pem)
    (pki.dir / "curl.key").write_bytes(agent.key_pem)
    binary = require_binary("grpcurl", str(DEFAULT_TOOLS_DIR / "bin" / "grpcurl"))
    tls = ["-cacert", str(pki.dir / "ca.pem"), "-cert", str(pki.dir / "curl.pem"),
           "-key", str(pki.dir / "curl.key")]
    r = subprocess.run([binary, *tls, "-d", json.dumps({"identity": {"spiffe_id": FINANCE},
                                                        "model": "reasoning-high"}),
                        pki.stack.settings.grpc_addr, "aam.v1.PolicyDecisionService/Authorize"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["decision"] == "DECISION_ALLOW"
    r = subprocess.run([binary, *tls, "-d", json.dumps({"identity": {"spiffe_id": OTHER},
                                                        "model": "reasoning-high"}),
                        pki.stack.settings.grpc_addr, "aam.v1.PolicyDecisionService/Authorize"],
                       capture_output=True, text=True, timeout=30)
    assert "Code: PermissionDenied" in r.stderr
