"""The PDP behind the real Envoy: what reaches the upstream, and what never does."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import requests
import yaml
from envoy.service.auth.v3 import external_auth_pb2_grpc

from pdp.opa import free_port
from tests.e2e.conftest import ENVOY_ID, FINANCE, Pki, Svid
from tests.e2e.envoy import Envoy, PdpTls, render, run_envoy
from tests.e2e.pdp import (
    SERVE_TOKEN,
    Throttling,
    check_request,
    pdp_port,
    pdp_stack,
    pdp_token,
    pem,
    serve,
)
from tests.e2e.upstream import RecordingUpstream
from tests.integration.pdp import EXAMPLES
from tests.servers import VENV_BIN
from tests.vaultsetup import VaultSetup

pytestmark = pytest.mark.integration


def client(pki: Pki, svid: Svid | None) -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # no proxies, and REQUESTS_CA_BUNDLE must not replace our bundle
    s.verify = str(pki.domain.bundle)
    if svid is not None:
        s.cert = (str(svid.cert), str(svid.key))
    return s


@pytest.fixture()
def finance(pki: Pki) -> Iterator[requests.Session]:
    with client(pki, pki.finance) as s:
        yield s


def denial(resp: requests.Response) -> tuple[str, list[str]]:
    """(decision id, reason codes) of a denial in any of its shapes: AAM's own body, an
    OpenAI error object around it (model routes), a JSON-RPC error (MCP routes)."""
    body = resp.json()
    if "jsonrpc" in body:
        own = body["error"]["data"]
        assert body["error"]["message"].startswith(own["reasons"][0]["code"] + ":")
    else:
        own = body
        assert set(body) - {"error"} == {"decision_id", "reasons"}
        if "error" in body:
            assert body["error"]["code"] == body["reasons"][0]["code"]
    assert resp.headers["x-aam-decision-id"] == own["decision_id"]
    return own["decision_id"], [r["code"] for r in own["reasons"]]


def test_allowed_tool_call_reaches_upstream_with_brokered_credential_only(
        envoy: Envoy, upstream: RecordingUpstream, finance: requests.Session,
        vault: VaultSetup) -> None:
    path = "/tools/salesforce.accounts/read"
    resp = finance.post(envoy.url + path, json={"account": "001"}, headers={
        "authorization": "Bearer agent-own-key", "x-api-key": "agent-api-key",
        "x-aam-route-provider": "spoofed"})
    assert resp.status_code == 200, resp.text
    (got,) = upstream.find(path)
    assert got.headers["authorization"] == f"Bearer {vault.kv_secret}"  # from OpenBao
    assert "x-api-key" not in got.headers
    assert "x-aam-route-provider" not in got.headers
    assert got.headers["x-aam-decision-id"] == resp.headers["x-aam-decision-id"]
    assert json.loads(got.body) == {"account": "001"}
    assert vault.kv_secret not in resp.text and vault.kv_secret not in str(resp.headers)
    assert vault.kv_secret not in envoy.log.read_text()


def test_denied_tool_call_gets_403_reasons_and_never_reaches_upstream(
        envoy: Envoy, upstream: RecordingUpstream, finance: requests.Session) -> None:
    path = "/tools/salesforce.accounts/export"
    resp = finance.post(envoy.url + path, json={"account": "001"})
    assert resp.status_code == 403
    _, codes = denial(resp)
    assert codes == ["action_denied"]
    assert upstream.find(path) == []


def test_model_call_carries_route_and_fallback_chain(
        envoy: Envoy, upstream: RecordingUpstream, finance: requests.Session) -> None:
    resp = finance.post(envoy.url + "/v1/chat/completions", json={
        "model": "reasoning-high", "max_tokens": 64,
        "messages": [{"role": "user", "content": "hello"}]})
    assert resp.status_code == 200, resp.text
    got = upstream.find("/v1/chat/completions")[-1]
    assert got.headers["x-aam-route-alias"] == "reasoning-high"
    assert (got.headers["x-aam-route-provider"], got.headers["x-aam-route-model"]) == \
        ("anthropic", "claude-sonnet-4-5")
    assert got.headers["x-ai-eg-fallback-chain"] == \
        "anthropic:claude-sonnet-4-5,openai:gpt-5,bedrock:anthropic.claude-sonnet-4-5"


def test_model_not_allowed_is_403(envoy: Envoy, finance: requests.Session) -> None:
    resp = finance.post(envoy.url + "/v1/chat/completions", json={"model": "gpt-unlisted"})
    assert resp.status_code == 403
    assert denial(resp)[1] == ["model_not_allowed"]


def test_mcp_tools_call_is_authorized_per_tool(
        envoy: Envoy, upstream: RecordingUpstream, finance: requests.Session,
        vault: VaultSetup) -> None:
    def call(name: str) -> requests.Response:
        return finance.post(envoy.url + "/mcp/salesforce.accounts", json={
            "jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": name, "arguments": {"query": "acme"}}},
            headers={"authorization": "Bearer agent-own-key"})

    before = len(upstream.find("/mcp/salesforce.accounts"))
    assert call("read").status_code == 200
    assert call("search").status_code == 200
    got = upstream.find("/mcp/salesforce.accounts")
    assert len(got) == before + 2
    # read has a ToolCredential scope: OpenBao's secret. search has none: nothing, and
    # never the agent's own key.
    assert got[-2].headers["authorization"] == f"Bearer {vault.kv_secret}"
    assert "authorization" not in got[-1].headers
    assert json.loads(got[-1].body)["params"]["name"] == "search"
    resp = call("delete")
    assert resp.status_code == 403
    assert denial(resp)[1] == ["action_denied"]
    assert len(upstream.find("/mcp/salesforce.accounts")) == before + 2


def test_unmapped_route_and_unknown_workload_are_denied(
        envoy: Envoy, upstream: RecordingUpstream, pki: Pki, finance: requests.Session) -> None:
    resp = finance.get(envoy.url + "/admin/everything")
    assert resp.status_code == 403
    assert denial(resp)[1] == ["route_not_mapped"]
    with client(pki, pki.stranger) as s:
        resp = s.post(envoy.url + "/tools/salesforce.accounts/search", json={})
    assert resp.status_code == 403
    assert denial(resp)[1] == ["no_policy"]
    assert upstream.find("/admin/everything") == []


@pytest.mark.parametrize(("path", "status"), [
    ("/tools//salesforce.accounts/export", 403),  # merged slashes: export is denied
    ("/tools/salesforce.accounts%2Fexport/read", 400),  # escaped slash: Envoy rejects
])
def test_paths_are_normalized_before_the_pdp_sees_them(
        envoy: Envoy, upstream: RecordingUpstream, finance: requests.Session, path: str,
        status: int) -> None:
    before = len(upstream.received)
    resp = finance.post(envoy.url + path, json={})
    assert resp.status_code == status
    if status == 403:
        assert denial(resp)[1] == ["action_denied"]
    assert len(upstream.received) == before


def test_svid_with_two_uri_sans_is_refused_though_envoy_accepts_it(
        envoy: Envoy, upstream: RecordingUpstream, pki: Pki) -> None:
    path = "/tools/salesforce.accounts/search?two"
    with client(pki, pki.two_uris) as s:
        resp = s.post(envoy.url + path, json={})
    assert resp.status_code == 403
    assert denial(resp)[1] == ["unauthenticated"]
    assert upstream.find(path) == []


@pytest.mark.parametrize("who", ["none", "foreign"])
def test_listener_requires_an_svid_of_the_trust_domain(
        envoy: Envoy, upstream: RecordingUpstream, pki: Pki, who: str) -> None:
    path = f"/tools/salesforce.accounts/read?{who}"
    with client(pki, None if who == "none" else pki.foreign) as s, \
            pytest.raises(requests.exceptions.ConnectionError):
        s.post(envoy.url + path, json={})
    assert upstream.find(path) == []


def test_agent_cannot_claim_an_identity_by_header(
        envoy: Envoy, upstream: RecordingUpstream, pki: Pki) -> None:
    path = "/tools/salesforce.accounts/read?xfcc"
    with client(pki, pki.stranger) as s:
        resp = s.post(envoy.url + path, json={},
                      headers={"x-forwarded-client-cert": f"URI={FINANCE}"})
    assert resp.status_code == 403
    assert denial(resp)[1] == ["no_policy"]
    assert upstream.find(path) == []


def test_pdp_down_means_envoy_denies(pki: Pki, upstream: RecordingUpstream,
                                     vault: VaultSetup) -> None:
    with pdp_stack(vault) as stack, \
            run_envoy(pdp_port=pdp_port(stack), upstream_port=upstream.port, tls=pki.tls,
                      pdp_token=pdp_token(stack)) as envoy, \
            client(pki, pki.finance) as s:
        assert s.post(envoy.url + "/tools/salesforce.accounts/read?up", json={}).status_code == 200
        stack.stop()
        resp = s.post(envoy.url + "/tools/salesforce.accounts/read?down", json={})
        assert resp.status_code == 403
        assert "Traceback" not in resp.text
        # MCP routes: ext_authz's 403 meets a response processor that is down too: 500.
        mcp = s.post(envoy.url + "/mcp/salesforce.accounts?down", json={
            "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "read"}})
        assert mcp.status_code == 500
    assert upstream.find("/tools/salesforce.accounts/read?down") == []
    assert upstream.find("/mcp/salesforce.accounts?down") == []


def test_plaintext_listener_behind_trusted_proxy_takes_xfcc(
        tmp_path: Path, upstream: RecordingUpstream, vault: VaultSetup) -> None:
    mapping = tmp_path / "mapping.toml"
    mapping.write_text("trust_xfcc = true\n")
    with pdp_stack(vault, extauthz_mapping=str(mapping), extauthz_addr="127.0.0.1:0") as stack:
        port = stack.extauthz.port if stack.extauthz else 0
        with run_envoy(pdp_port=port, upstream_port=upstream.port, tls=None,
                       pdp_token=pdp_token(stack)) as envoy, \
                requests.Session() as s:
            s.trust_env = False
            path = "/tools/salesforce.accounts/read?plain"
            ok = s.post(envoy.url + path, json={},
                        headers={"x-forwarded-client-cert": f"By=spiffe://prod/gw;URI={FINANCE}"})
            assert ok.status_code == 200, ok.text
            missing = s.post(envoy.url + path + "-anon", json={})
            assert missing.status_code == 403
            assert denial(missing)[1] == ["unauthenticated"]
    assert len(upstream.find(path)) == 1
    assert upstream.find(path + "-anon") == []


def test_throttled_model_call_is_429_with_retry_after_through_envoy(
        pki: Pki, upstream: RecordingUpstream) -> None:
    """Until the ledger decides budgets, a stand-in engine says budget_exhausted: this
    checks what Envoy makes of the PDP's 429 (status, retry-after, body)."""
    server, _, port = serve(Throttling("budget_exhausted", 30.0))
    try:
        with run_envoy(pdp_port=port, upstream_port=upstream.port, tls=pki.tls,
                       pdp_token=SERVE_TOKEN) as envoy, \
                client(pki, pki.finance) as s:
            path = "/v1/chat/completions?throttled"
            resp = s.post(envoy.url + path, json={"model": "reasoning-high", "max_tokens": 10})
    finally:
        server.stop(0)
    assert resp.status_code == 429
    assert resp.headers["retry-after"] == "30"
    assert denial(resp) == ("d-1", ["budget_exhausted"])
    assert upstream.find(path) == []


def test_shipped_config_with_mtls_to_the_pdp_validates(pki: Pki, tmp_path: Path) -> None:
    """Envoy's own validation of deploy/envoy/envoy.yaml with every TLS part in place."""
    pdp_tls = PdpTls(pki.envoy.cert, pki.envoy.key, pki.domain.bundle, "spiffe://prod/aam/pdp")
    conf = render(listen_port=free_port(), admin_port=free_port(), pdp_port=free_port(),
                  upstream_port=free_port(), tls=pki.tls, pdp_tls=pdp_tls)
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(conf))
    out = subprocess.run([str(VENV_BIN / "envoy"), "--mode", "validate", "-c", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    broken = tmp_path / "broken.yaml"
    conf["static_resources"]["clusters"][0]["transport_socket"]["typed_config"]["bogus"] = 1
    broken.write_text(yaml.safe_dump(conf))
    out = subprocess.run([str(VENV_BIN / "envoy"), "--mode", "validate", "-c", str(broken)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0


def test_mtls_to_the_pdp_envoy_as_trusted_gateway(pki: Pki, upstream: RecordingUpstream,
                                                  vault: VaultSetup) -> None:
    with pdp_stack(vault, **pki.pdp_settings(ENVOY_ID)) as stack, \
            run_envoy(pdp_port=pdp_port(stack), upstream_port=upstream.port, tls=pki.tls,
                      pdp_tls=pki.pdp_tls) as envoy, client(pki, pki.finance) as s:
        path = "/tools/salesforce.accounts/read?mtls-pdp"
        resp = s.post(envoy.url + path, json={}, headers={"authorization": "Bearer agent"})
        assert resp.status_code == 200, resp.text
        denied = s.post(envoy.url + "/tools/salesforce.accounts/export?mtls-pdp", json={})
        assert denied.status_code == 403 and denial(denied)[1] == ["action_denied"]
        # The response processor takes Envoy's SVID as a gateway's too (a tools/list is processed).
        listed = s.post(envoy.url + "/mcp/salesforce.accounts?mtls-pdp",
                        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert listed.status_code == 200 and listed.json() == {"upstream": "ok"}, listed.text
    (got,) = upstream.find(path)
    assert got.headers["authorization"] == f"Bearer {vault.kv_secret}"


def test_only_trusted_gateways_may_call_check(pki: Pki, upstream: RecordingUpstream,
                                             vault: VaultSetup) -> None:
    """An agent asking Check itself could name any workload and read its credential."""
    with pdp_stack(vault, **pki.pdp_settings()) as stack:
        creds = grpc.ssl_channel_credentials(
            pki.domain.bundle.read_bytes(), pki.finance.key.read_bytes(),
            pki.finance.cert.read_bytes())
        with grpc.secure_channel(stack.settings.grpc_addr, creds) as channel:
            req = check_request(principal=FINANCE, certificate=pem(pki.finance.cert))
            with pytest.raises(grpc.RpcError) as err:
                external_auth_pb2_grpc.AuthorizationStub(channel).Check(req, timeout=10)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # Envoy is not configured as a gateway here either: it gets the same answer, and denies.
        with run_envoy(pdp_port=pdp_port(stack), upstream_port=upstream.port, tls=pki.tls,
                       pdp_tls=pki.pdp_tls) as envoy, client(pki, pki.finance) as s:
            path = "/tools/salesforce.accounts/read?untrusted-envoy"
            assert s.post(envoy.url + path, json={}).status_code == 403
    assert upstream.find(path) == []


def test_access_log_carries_the_pdps_dynamic_metadata(
        envoy: Envoy, finance: requests.Session) -> None:
    allowed = finance.post(envoy.url + "/v1/chat/completions?logged",
                           json={"model": "reasoning-high", "max_tokens": 1})
    denied = finance.post(envoy.url + "/tools/salesforce.accounts/export?logged", json={})
    lines = {}
    for _ in range(100):  # Envoy flushes its access log asynchronously
        for line in envoy.log.read_text().splitlines():
            if line.startswith("{") and "?logged" in line:
                entry = json.loads(line)
                lines[entry["status"]] = entry
        if len(lines) == 2:
            break
        time.sleep(0.1)
    assert lines[200]["decision_id"] == allowed.headers["x-aam-decision-id"]
    assert (lines[200]["allow"], lines[200]["route"], lines[200]["peer"]) == \
        (True, "reasoning-high", FINANCE)
    assert lines[403]["decision_id"] == denied.json()["decision_id"]
    assert lines[403]["reasons"] == ["action_denied"]
    assert lines[403]["policy"] == "finance-analyst-readonly"


def test_budget_exhausted_model_call_is_429_from_the_real_ledger(
        pki: Pki, upstream: RecordingUpstream, vault: VaultSetup, tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(EXAMPLES, policies, ignore=shutil.ignore_patterns("tests"))
    finance = policies / "finance-analyst-readonly.yaml"
    finance.write_text(finance.read_text().replace("daily_usd: 75", "daily_usd: 0.01"))
    with pdp_stack(vault, policies=str(policies)) as stack, \
            run_envoy(pdp_port=pdp_port(stack), upstream_port=upstream.port, tls=pki.tls,
                      pdp_token=pdp_token(stack)) as envoy, \
            client(pki, pki.finance) as s:
        cheap = s.post(envoy.url + "/v1/chat/completions?cheap",
                       json={"model": "reasoning-high", "max_tokens": 1})
        dear = s.post(envoy.url + "/v1/chat/completions?dear",
                      json={"model": "reasoning-high", "max_tokens": 100000})
    assert cheap.status_code == 200, cheap.text
    assert dear.status_code == 429
    assert denial(dear)[1] == ["budget_exhausted"]
    assert 0 < int(dear.headers["retry-after"]) <= 86400  # until the daily window resets
    assert len(upstream.find("/v1/chat/completions?cheap")) == 1
    assert upstream.find("/v1/chat/completions?dear") == []
