"""The credential broker against a real OpenBao dev server and a real PostgreSQL."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import hvac
import hvac.exceptions
import psycopg
import pytest
import requests
from google.protobuf import json_format

from aam.cli import main as cli_main
from aam.v1 import pdp_pb2
from compiler import load
from compiler.codegen import generate
from pdp import logs
from pdp.broker import Broker, CredentialSpec, CredentialUnavailable
from pdp.broker.vault import RootTokenRefused, VaultBackend
from pdp.bundles import BUNDLE_PATH
from pdp.engine import Decision, Request
from pdp.ledger import AuditFilter
from pdp.opa import free_port
from pdp.stack import Stack
from tests import vaultsetup
from tests.forwarder import Forwarder
from tests.integration.pdp import request, running_stack, stub
from tests.servers import OpenBao, Postgres

CRM = "spiffe://prod/agent/crm"
CRM2 = "spiffe://prod/agent/crm-2"


@pytest.fixture(scope="module")
def stack(vault: vaultsetup.VaultSetup, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    pol = vaultsetup.policies(tmp_path_factory.mktemp("policies"))
    with running_stack(pol, **vault.settings()) as s:
        yield s


def authorize(stack: Stack, workload: str = CRM, **fields: object) -> pdp_pb2.AuthorizeResponse:
    """As the gateway asks (the only caller that receives credential values)."""
    channel, pdp = stub(stack, gateway=True)
    with channel:
        return pdp.Authorize(request(workload, **fields), timeout=10)


def db_login(pg: Postgres, value: str) -> psycopg.Connection:
    user, _, password = value.partition(":")
    return psycopg.connect(host=pg.host, port=pg.port, dbname=pg.dbname, user=user,
                           password=password, connect_timeout=5, autocommit=True)


def test_read_credential_can_select_and_cannot_update(stack: Stack, postgres: Postgres) -> None:
    resp = authorize(stack, tool="crm.accounts", action="read")
    assert resp.decision == pdp_pb2.DECISION_ALLOW, resp.reasons
    assert resp.credential.header == "x-db-credential"
    assert resp.credential.lease_accessor.startswith(f"{vaultsetup.DB_MOUNT}/creds/crm-read/")
    assert resp.credential.expires_at.seconds > 0
    with db_login(postgres, resp.credential.value) as conn:
        names = [r[0] for r in conn.execute(f"SELECT name FROM {vaultsetup.TABLE} ORDER BY id")]
        assert names == ["Acme", "Globex"]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"UPDATE {vaultsetup.TABLE} SET name = 'x' WHERE id = 1")


def test_write_scope_gets_the_write_role(stack: Stack, postgres: Postgres) -> None:
    resp = authorize(stack, tool="crm.accounts", action="update")
    assert resp.decision == pdp_pb2.DECISION_ALLOW, resp.reasons
    assert "/creds/crm-write/" in resp.credential.lease_accessor
    with db_login(postgres, resp.credential.value) as conn:
        conn.execute(f"UPDATE {vaultsetup.TABLE} SET name = name WHERE id = 1")


def test_lease_is_reused_per_workload_resource_scope(stack: Stack) -> None:
    first = authorize(stack, tool="crm.accounts", action="read").credential
    again = authorize(stack, tool="crm.accounts", action="read").credential
    other = authorize(stack, CRM2, tool="crm.accounts", action="read").credential
    assert again.lease_accessor == first.lease_accessor
    assert again.value == first.value
    assert other.lease_accessor != first.lease_accessor


def test_revoked_lease_no_longer_logs_in(stack: Stack, vault: vaultsetup.VaultSetup,
                                         postgres: Postgres) -> None:
    cred = authorize(stack, CRM2, tool="crm.accounts", action="read").credential
    db_login(postgres, cred.value).close()
    vault.root.sys.revoke_lease(cred.lease_accessor)
    with pytest.raises(psycopg.OperationalError):
        db_login(postgres, cred.value)


def test_kv_secret_is_injected_as_a_header(stack: Stack, vault: vaultsetup.VaultSetup) -> None:
    resp = authorize(stack, tool="salesforce.accounts", action="read")
    assert resp.decision == pdp_pb2.DECISION_ALLOW, resp.reasons
    assert resp.credential.header == "authorization"
    assert resp.credential.value == f"Bearer {vault.kv_secret}"
    assert resp.credential.lease_accessor.startswith(f"kv:secret/{vaultsetup.KV_PATH}@v")


def test_wrapped_token_unwraps_once(stack: Stack, vault: vaultsetup.VaultSetup) -> None:
    one = authorize(stack, tool="salesforce.contacts", action="read").credential
    two = authorize(stack, tool="salesforce.contacts", action="read").credential
    assert one.header == "x-vault-wrapped"
    assert one.value != two.value  # single-use deliveries are never cached
    gateway = hvac.Client(url=vault.addr, token=one.value)  # what the gateway does with it
    unwrapped = gateway.sys.unwrap()
    assert unwrapped["data"]["data"]["api_token"] == vault.kv_secret
    with pytest.raises(hvac.exceptions.VaultError):
        gateway.sys.unwrap()


def test_child_token_covers_only_the_resource_path(stack: Stack, vault: vaultsetup.VaultSetup) -> None:
    cred = authorize(stack, tool="salesforce.vault", action="read").credential
    info = vault.root.auth.token.lookup_accessor(cred.lease_accessor)["data"]
    assert info["policies"] == [vaultsetup.CHILD_POLICY]  # no default policy either
    assert 0 < info["ttl"] <= 120
    assert info["num_uses"] == 2
    child = hvac.Client(url=vault.addr, token=cred.value)
    with pytest.raises(hvac.exceptions.Forbidden):
        child.secrets.kv.v2.read_secret_version(path="aam-other/private", raise_on_deleted_version=True)
    read = child.secrets.kv.v2.read_secret_version(path=vaultsetup.KV_PATH, raise_on_deleted_version=True)
    assert read["data"]["data"]["api_token"] == vault.kv_secret
    with pytest.raises(hvac.exceptions.Forbidden):  # the two uses are spent
        child.secrets.kv.v2.read_secret_version(path=vaultsetup.KV_PATH, raise_on_deleted_version=True)


def test_missing_role_denies_only_that_action(stack: Stack) -> None:
    resp = authorize(stack, tool="crm.reports", action="read")
    assert resp.decision == pdp_pb2.DECISION_DENY
    assert [r.code for r in resp.reasons] == ["credential_unavailable"]
    assert "crm-missing" in resp.reasons[0].message
    assert not resp.HasField("credential")
    assert authorize(stack, tool="web.search", action="query").decision == pdp_pb2.DECISION_ALLOW


def test_removed_grant_revokes_its_leases(vault: vaultsetup.VaultSetup, postgres: Postgres,
                                          tmp_path: Path) -> None:
    pol = vaultsetup.policies(tmp_path)
    with running_stack(pol, **vault.settings()) as s:
        cred = authorize(s, tool="crm.accounts", action="read").credential
        kept = authorize(s, CRM2, tool="crm.accounts", action="read").credential
        db_login(postgres, cred.value).close()
        vaultsetup.policies(tmp_path, grant_crm=False)
        assert s.reload()
        with pytest.raises(psycopg.OperationalError):
            db_login(postgres, cred.value)
        db_login(postgres, kept.value).close()  # crm-2 still holds its grant
        assert s.broker is not None and s.broker.stats["revoked"] == 1


def test_vault_down_denies_credentialed_and_serves_the_rest(
        vault: vaultsetup.VaultSetup, tmp_path: Path) -> None:
    pol = vaultsetup.policies(tmp_path)
    down = vault.settings(vault_addr=f"http://127.0.0.1:{free_port()}", vault_timeout_ms=500)
    with running_stack(pol, **down) as s:
        for tool in ("crm.accounts", "salesforce.accounts", "salesforce.contacts", "salesforce.vault"):
            resp = authorize(s, tool=tool, action="read")
            assert resp.decision == pdp_pb2.DECISION_DENY, tool
            assert [r.code for r in resp.reasons] == ["credential_unavailable"]
            assert "unavailable" in resp.reasons[0].message
            assert not resp.HasField("credential")
        assert authorize(s, tool="web.search", action="query").decision == pdp_pb2.DECISION_ALLOW


def test_root_token_is_refused(openbao: OpenBao, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(openbao.root_token)
    backend = VaultBackend(openbao.addr, token_file=str(token_file))
    with pytest.raises(RootTokenRefused):
        backend.login()
    pol = vaultsetup.policies(tmp_path)
    with pytest.raises(RootTokenRefused), running_stack(
            pol, broker="vault", vault_addr=openbao.addr, vault_token_file=str(token_file)):
        pass


def test_token_file_login_with_a_scoped_token(vault: vaultsetup.VaultSetup, tmp_path: Path) -> None:
    token = vault.root.auth.token.create(policies=[vaultsetup.PDP_POLICY], ttl="10m")["auth"]
    token_file = tmp_path / "token"
    token_file.write_text(token["client_token"])
    pol = vaultsetup.policies(tmp_path)
    with running_stack(pol, broker="vault", vault_addr=vault.addr, vault_token_file=str(token_file)) as s:
        resp = authorize(s, tool="salesforce.accounts", action="read")
    assert resp.decision == pdp_pb2.DECISION_ALLOW, resp.reasons
    assert resp.credential.value == f"Bearer {vault.kv_secret}"


def test_no_secret_in_logs_audit_cli_or_agent_facing_fields(
        vault: vaultsetup.VaultSetup, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A full flow with known secrets, then every surface is searched for them.

    Surfaces: every log line of the PDP (debug level) and everything written to the
    process's stdout/stderr, every field of every response an agent gets (all of
    them: the credential's value must be empty), every gateway response but the
    credential value, every audit row and `aam audit query` output, the `aam
    authorize` output (text, --json, --explain, and as the gateway) and every route
    the PDP's HTTP side serves besides the bundle (/metrics).
    """
    buf = io.StringIO()
    aam_log = logging.getLogger("aam")
    saved = (aam_log.handlers[:], aam_log.level, aam_log.propagate)
    logs.configure("debug", buf)
    gateway_seen: list[pdp_pb2.AuthorizeResponse] = []
    agent_seen: list[pdp_pb2.AuthorizeResponse] = []
    cli_out = io.StringIO()
    scraped: list[str] = []
    audit_rows: list[str] = []
    try:
        with running_stack(vaultsetup.policies(tmp_path), **vault.settings()) as s:
            for tool, action in [("crm.accounts", "read"), ("crm.accounts", "update"),
                                 ("salesforce.accounts", "read"), ("salesforce.contacts", "read"),
                                 ("salesforce.vault", "read"), ("crm.reports", "read"),
                                 ("web.search", "query"), ("salesforce.accounts", "delete")]:
                for explain in (False, True):
                    gateway_seen.append(authorize(s, tool=tool, action=action, explain=explain,
                                                  params={"q": "x"}))
                    channel, agent = stub(s)
                    with channel:
                        agent_seen.append(agent.Authorize(request(
                            CRM, tool=tool, action=action, explain=explain, params={"q": "x"}),
                            timeout=10))
            for extra in ([], ["--json"], ["--explain"],
                          ["--gateway-token-file", s.settings.gateway_token_file],
                          ["--json", "--gateway-token-file", s.settings.gateway_token_file]):
                cli_main.run(["authorize", "--addr", s.settings.grpc_addr, "--workload", CRM,
                              "--tool", "salesforce.accounts", "--action", "read", *extra],
                             cli_out, cli_out)
            assert s.http is not None
            for path in sorted(set(s.http.routes) - {BUNDLE_PATH}):
                scraped.append(requests.get(s.http.url + path, timeout=5).text)
            vaultsetup.policies(tmp_path, grant_crm=False)
            assert s.reload()  # revocation logs too
            assert s.ledger is not None
            audit_rows = [r.body for r in s.ledger.audit_rows(AuditFilter())]
            # The PDP's own secrets must not leak either: the gateway token, the audit keys.
            own = {Path(s.settings.gateway_token_file).read_text().strip(),
                   *(k["secret"] for k in json.loads(Path(s.settings.audit_key_file).read_text())["keys"])}
            for extra in ([], ["--json"]):
                cli_main.run(["audit", "query", "--ledger-url", s.settings.ledger_url, *extra],
                             cli_out, cli_out)
            assert cli_main.run(["audit", "verify", "--ledger-url", s.settings.ledger_url,
                                 "--key-file", s.settings.audit_key_file], cli_out, cli_out) == 0
            cli_main.run(["audit", "key", "list", s.settings.audit_key_file], cli_out, cli_out)
    finally:
        aam_log.handlers[:], aam_log.level, aam_log.propagate = saved

    issued = [r.credential.value for r in gateway_seen if r.HasField("credential")]
    assert f"Bearer {vault.kv_secret}" in issued  # the flow really handled the secret
    assert any(r.HasField("credential") and r.credential.withheld for r in agent_seen)
    secrets_ = {vault.kv_secret, *own}
    assert all(len(x) >= 32 for x in own)
    for value in issued:
        if value:
            secrets_.add(value)
            secrets_.update(p for p in value.replace("Bearer ", "").split(":") if len(p) >= 8)
    shown_to_gateway = []
    for r in gateway_seen:
        shown = pdp_pb2.AuthorizeResponse()
        shown.CopyFrom(r)
        shown.credential.ClearField("value")
        shown_to_gateway.append(json_format.MessageToJson(shown))
    log_text = buf.getvalue()
    assert any('aam_broker_credentials_total{event="issued"}' in text for text in scraped)
    assert "credential issued" in log_text and "lease_accessor" in log_text
    assert "lease revoked" in log_text
    assert len(audit_rows) >= len(gateway_seen) + len(agent_seen)
    out, err = capfd.readouterr()
    surfaces = {"logs": log_text, "process stdout/stderr": out + err,
                "agent responses": "\n".join(json_format.MessageToJson(r) for r in agent_seen),
                "gateway responses but the value": "\n".join(shown_to_gateway),
                "audit rows": "\n".join(audit_rows),
                "aam CLI output": cli_out.getvalue(), "http routes": "\n".join(scraped)}
    hits = {name: sum(text.count(sec) for sec in secrets_) for name, text in surfaces.items()}
    assert hits == dict.fromkeys(surfaces, 0)


def _direct_broker(vault: vaultsetup.VaultSetup, tmp_path: Path, db_ttl: str = "5m") -> Broker:
    backend = VaultBackend(vault.addr, role_id=vault.role_id, secret_id_file=str(vault.secret_id_file))
    broker = Broker(backend, min_remaining_s=30)
    broker.on_bundle(generate(load([vaultsetup.policies(tmp_path, db_ttl=db_ttl)])))
    return broker


def _allow(policy: str = "crm-agent") -> Decision:
    return Decision(allow=True, reasons=(), policy=policy, decision_id="d", revision="r")


def test_lease_near_expiry_is_renewed_in_vault(vault: vaultsetup.VaultSetup, tmp_path: Path) -> None:
    broker = _direct_broker(vault, tmp_path, db_ttl="2s")  # reuse floor: 1 s
    read = Request(spiffe_id=CRM, tool="crm.accounts", action="read")
    first = broker.attach(read, _allow()).credential
    assert first is not None
    time.sleep(1.2)  # under a second left: the next call must renew, not reuse as is
    again = broker.attach(read, _allow()).credential
    assert again is not None and again.lease_accessor == first.lease_accessor
    assert again.expires_at > first.expires_at
    assert broker.stats["renewed"] == 1 and broker.stats["issued"] == 1
    lease = vault.root.sys.read_lease(first.lease_accessor)["data"]
    assert lease["last_renewal"] is not None


def test_pdp_logs_in_again_when_its_token_is_revoked(vault: vaultsetup.VaultSetup, tmp_path: Path) -> None:
    broker = _direct_broker(vault, tmp_path)
    backend = broker.backend
    assert isinstance(backend, VaultBackend)
    backend.login()
    vault.root.auth.token.revoke(backend.client.token)
    d = broker.attach(Request(spiffe_id=CRM, tool="salesforce.accounts", action="read"), _allow())
    assert d.allow and d.credential is not None
    assert d.credential.value == f"Bearer {vault.kv_secret}"


def test_credentials_come_back_by_themselves_when_vault_does(
        vault: vaultsetup.VaultSetup, tmp_path: Path) -> None:
    forwarder = Forwarder.to(vault.addr)
    settings = vault.settings(vault_addr=forwarder.url, vault_timeout_ms=1000)
    with running_stack(vaultsetup.policies(tmp_path), **settings) as s:
        down = authorize(s, tool="salesforce.accounts", action="read")
        assert [r.code for r in down.reasons] == ["credential_unavailable"]
        forwarder.start()
        try:
            deadline = time.monotonic() + 30
            while True:  # the fail-fast window passes, then the PDP logs in and issues
                up = authorize(s, tool="salesforce.accounts", action="read")
                if up.decision == pdp_pb2.DECISION_ALLOW or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        finally:
            forwarder.cut()
    assert up.decision == pdp_pb2.DECISION_ALLOW, up.reasons
    assert up.credential.value == f"Bearer {vault.kv_secret}"


def test_a_path_outside_the_pdp_policy_is_refused_without_new_logins(
        vault: vaultsetup.VaultSetup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = VaultBackend(vault.addr, role_id=vault.role_id, secret_id_file=str(vault.secret_id_file))
    logins = []
    real = backend._login
    monkeypatch.setattr(backend, "_login", lambda: (logins.append(1), real())[1])
    spec = CredentialSpec.from_compiled({
        "name": "x", "resource": "x.y", "engine": "kv", "mount": "secret", "ttl_s": 60,
        "inject": {"header": "x"}, "actions": {"read": "read"},
        "scopes": {"read": {"actions": {"read": True}, "path": "aam-other/private", "key": "x"}}})
    for _ in range(3):
        with pytest.raises(CredentialUnavailable, match="vault refused"):
            backend.issue(spec, spec.scopes["read"], CRM)
    assert len(logins) == 1
