"""Component states beyond the engine (issue 19), with real servers: a PostgreSQL ledger
that stops and starts again, an OpenBao broker cut off and back, the engine's and the
bundle server's revision across a policy change, and no secret in any reason."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aam.cli.main import run
from aam.v1 import pdp_pb2
from pdp.health import BROKER, BUNDLE_SERVER, ENGINE, LEDGER
from pdp.procs import wait_until
from pdp.server import SERVICE_NAME
from pdp.stack import Stack
from tests import vaultsetup
from tests.forwarder import Forwarder
from tests.integration.pdp import (
    EXAMPLES,
    FINANCE,
    NOT_SERVING,
    SERVING,
    health_status,
    readyz,
    request,
    running_stack,
    stub,
)
from tests.servers import run_postgres

_health, _readyz = health_status, readyz


def _component(stack: Stack, name: str) -> dict[str, Any]:
    return _readyz(stack).json()["components"].get(name) or {}


def aam(*argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(list(argv), out, err)
    return code, out.getvalue() + err.getvalue()


def _status(stack: Stack, *more: str) -> tuple[int, str]:
    assert stack.http is not None
    return aam("status", "--addr", stack.settings.grpc_addr, "--http", stack.http.url, *more)


@contextlib.contextmanager
def _forwarding(addr: str) -> Iterator[Forwarder]:
    fwd = Forwarder.to(addr)
    fwd.start()
    try:
        yield fwd
    finally:
        fwd.cut()


def test_ledger_outage_is_degraded_then_ok_again_without_traffic(tmp_path: Path) -> None:
    """PostgreSQL stops: /readyz 200 "degraded", the ledger degraded with a reason, gRPC
    overall SERVING, the ledger's own health service NOT_SERVING; a decision still denies
    ledger_unavailable. PostgreSQL back: ok again by the probe alone, no decision sent."""
    with run_postgres() as pg, running_stack(EXAMPLES, ledger_url=pg.dsn,
                                             ledger_timeout_ms=500) as stack:
        wait_until(lambda: _readyz(stack).json()["status"] == "ready", 30, "ready")
        assert _component(stack, LEDGER)["state"] == "ok"
        assert _health(stack, LEDGER) == SERVING

        pg.stop()
        wait_until(lambda: _component(stack, LEDGER).get("state") == "degraded", 30,
                   "ledger degraded")
        r = _readyz(stack)
        assert r.status_code == 200 and r.json()["status"] == "degraded"
        reason = r.json()["components"][LEDGER]["reason"]
        assert reason.startswith("ledger unreachable"), reason
        assert pg.password not in r.text
        assert _health(stack) == SERVING and _health(stack, SERVICE_NAME) == SERVING
        assert _health(stack, LEDGER) == NOT_SERVING
        channel, pdp = stub(stack, gateway=True)
        with channel:
            resp = pdp.Authorize(request(FINANCE, model="summarization", estimated_tokens=100,
                                         estimated_cost_usd=0.01), timeout=10)
        assert resp.decision == pdp_pb2.DECISION_DENY
        assert [x.code for x in resp.reasons] == ["ledger_unavailable"]
        code, out = _status(stack)
        assert code == 0 and "ledger: degraded (ledger unreachable" in out, out
        assert pg.password not in out

        pg.start()  # no decision from here on: only the probe can see it back
        wait_until(lambda: _component(stack, LEDGER).get("state") == "ok", 30, "ledger ok")
        assert _readyz(stack).json()["status"] == "ready"
        assert _health(stack, LEDGER) == SERVING


def test_worker_mode_readyz_shows_the_workers_ledger_state(tmp_path: Path) -> None:
    """Two worker processes, each with its own ledger pool: the parent's /readyz shows the
    worst worker's ledger state, the reason naming the worker; back to ok by the probes."""
    with run_postgres() as pg, running_stack(EXAMPLES, ledger_url=pg.dsn, workers=2,
                                             ledger_timeout_ms=500) as stack:
        wait_until(lambda: _component(stack, LEDGER).get("state") == "ok", 30, "ledger ok")
        pg.stop()
        wait_until(lambda: _component(stack, LEDGER).get("state") == "degraded", 30,
                   "ledger degraded")
        r = _readyz(stack)
        assert r.status_code == 200 and r.json()["status"] == "degraded"
        reason = r.json()["components"][LEDGER]["reason"]
        assert reason.startswith("worker ") and "ledger unreachable" in reason, reason
        assert pg.password not in r.text
        assert _health(stack) == SERVING  # the workers' overall health: still deciding
        pg.start()
        wait_until(lambda: _component(stack, LEDGER).get("state") == "ok", 30, "ledger ok")
        assert _readyz(stack).json()["status"] == "ready"


def test_broker_degraded_while_vault_is_unreachable_and_ok_after(
        vault: vaultsetup.VaultSetup, tmp_path: Path) -> None:
    with _forwarding(vault.addr) as fwd:
        settings = vault.settings(vault_addr=fwd.url, vault_timeout_ms=500,
                                  broker_probe_interval_s=0.5)
        with running_stack(vaultsetup.policies(tmp_path), **settings) as stack:
            wait_until(lambda: _component(stack, BROKER).get("state") == "ok", 20, "broker ok")
            assert _health(stack, BROKER) == SERVING
            fwd.cut()
            wait_until(lambda: _component(stack, BROKER).get("state") == "degraded", 20,
                       "broker degraded")
            r = _readyz(stack)
            assert r.status_code == 200 and r.json()["status"] == "degraded"
            assert "vault unreachable" in r.json()["components"][BROKER]["reason"]
            assert _health(stack) == SERVING and _health(stack, BROKER) == NOT_SERVING
            fwd.start()
            wait_until(lambda: _component(stack, BROKER).get("state") == "ok", 30, "broker ok")
            assert _readyz(stack).json()["status"] == "ready"


def test_broker_degraded_while_its_token_is_revoked(vault: vaultsetup.VaultSetup,
                                                   tmp_path: Path) -> None:
    def new_token() -> str:
        return vault.root.auth.token.create(policies=[vaultsetup.PDP_POLICY],
                                            ttl="10m")["auth"]["client_token"]

    token_file = tmp_path / "token"
    token = new_token()
    token_file.write_text(token)
    with running_stack(vaultsetup.policies(tmp_path), broker="vault", vault_addr=vault.addr,
                       broker_probe_interval_s=0.5,
                       vault_token_file=str(token_file)) as stack:
        wait_until(lambda: _component(stack, BROKER).get("state") == "ok", 20, "broker ok")
        vault.root.auth.token.revoke(token)
        wait_until(lambda: _component(stack, BROKER).get("state") == "degraded", 20,
                   "broker degraded")
        r = _readyz(stack)
        assert "vault login failed" in r.json()["components"][BROKER]["reason"]
        assert token not in r.text
        token_file.write_text(new_token())  # what an agent sidecar does
        wait_until(lambda: _component(stack, BROKER).get("state") == "ok", 20, "broker ok")


def test_revision_is_the_published_one_and_follows_a_reload(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(EXAMPLES, policies)
    with running_stack(policies, ledger_url="off") as stack:
        assert stack.store.current is not None
        first = stack.store.current.revision
        wait_until(lambda: _component(stack, ENGINE).get("detail", {}).get("revision") == first,
                   20, "engine on the first revision")
        assert _component(stack, BUNDLE_SERVER)["detail"] == {"revision": first}
        assert LEDGER not in _readyz(stack).json()["components"]  # no ledger: not reported
        assert BROKER not in _readyz(stack).json()["components"]  # broker none: not reported
        code, out = _status(stack, "--json")
        doc = json.loads(out)
        assert code == 0 and doc["ready"] is True
        assert doc["readyz"]["components"][ENGINE]["detail"]["revision"] == first
        assert doc["grpc"]["overall"] == "SERVING"
        code, out = _status(stack)
        assert code == 0 and f"engine: ok revision={first}" in out, out

        target = policies / "finance-analyst-readonly.yaml"
        good = target.read_text()
        assert "daily_usd: 75" in good
        target.write_text(good.replace("daily_usd: 75", "daily_usd: 80"))
        assert stack.reload()
        assert stack.store.current is not None
        second = stack.store.current.revision
        assert second != first
        wait_until(lambda: _component(stack, ENGINE).get("detail", {}).get("revision") == second,
                   20, "engine on the new revision")
        code, out = _status(stack, "--json")
        assert json.loads(out)["readyz"]["components"][ENGINE]["detail"]["revision"] == second

        target.write_text("apiVersion: access.envisionai.dev/v1\nkind: AgentPolicy\n"
                          "metadata: {name: broken}\nspec: {nonsense: true}\n")
        assert not stack.reload()  # rejected: the bundle server keeps the second revision
        bundle = _component(stack, BUNDLE_SERVER)
        assert bundle["state"] == "degraded" and f"revision {second[:12]} kept" in bundle["reason"]
        assert bundle["detail"] == {"revision": second}
        assert _readyz(stack).json()["status"] == "degraded"
        assert _component(stack, ENGINE)["detail"]["revision"] == second
        target.write_text(good)
        assert stack.reload()
        assert _component(stack, BUNDLE_SERVER)["state"] == "ok"


def test_no_reason_ever_holds_a_password_or_token(vault: vaultsetup.VaultSetup,
                                                  tmp_path: Path) -> None:
    """A ledger URL with a password and a Vault token file; both outages reported; the
    /readyz body, gRPC health and aam status (text and JSON) never show either secret."""
    token = vault.root.auth.token.create(policies=[vaultsetup.PDP_POLICY],
                                         ttl="10m")["auth"]["client_token"]
    token_file = tmp_path / "token"
    token_file.write_text(token)
    with run_postgres() as pg, _forwarding(vault.addr) as fwd:
        url = f"postgresql://{pg.user}:{pg.password}@{pg.host}:{pg.port}/{pg.dbname}"
        with running_stack(vaultsetup.policies(tmp_path), ledger_url=url, ledger_timeout_ms=500,
                           broker="vault", vault_addr=fwd.url, broker_probe_interval_s=0.5,
                           vault_timeout_ms=500, vault_token_file=str(token_file)) as stack:
            wait_until(lambda: _readyz(stack).json()["status"] == "ready", 30, "ready")
            pg.stop()
            fwd.cut()
            wait_until(lambda: {_component(stack, LEDGER).get("state"),
                                _component(stack, BROKER).get("state")} == {"degraded"}, 30,
                       "both degraded")
            vault.root.auth.token.revoke(token)
            fwd.start()  # back, but the token is revoked: login fails
            wait_until(lambda: "login failed" in _component(stack, BROKER).get("reason", ""), 30,
                       "login failure reported")
            shown = [_readyz(stack).text, _status(stack)[1], _status(stack, "--json")[1]]
            pg.start()
            wait_until(lambda: _component(stack, LEDGER).get("state") == "ok", 30, "ledger ok")
            shown.append(_readyz(stack).text)
    text = "\n".join(shown)
    assert "ledger unreachable" in text and "vault" in text
    for secret in (pg.password, token, token.split(".", 1)[-1]):
        assert secret not in text
