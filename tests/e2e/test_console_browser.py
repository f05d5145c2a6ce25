"""The read-only console in a real browser (Debian's chromium, driven by Playwright).

A real stack (managed OPA, SQLite ledger, OpenBao for credentials) makes a handful of
real decisions: allowed, denied with reasons, a budget partly spent, a credential lease,
a shadow disagreement, an identity refusal and a param carrying an XSS payload. Each
view is then opened in chromium and checked for what a user sees; a screenshot of each
goes to build/test-artifacts/console/. A missing chromium fails here: never a skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import Browser, Page, sync_playwright

from aam.v1 import pdp_pb2
from pdp.compiled import Revisions
from pdp.config import ConfigError, Settings
from pdp.console import ConsoleServer, RevisionLog
from pdp.console.token import check_token
from pdp.console.views import Sources
from pdp.opa import free_port
from pdp.stack import Stack
from tests import vaultsetup
from tests.certs import CA
from tests.integration.pdp import request, running_stack, stub

ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts" / "console"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CRM = "spiffe://prod/agent/crm"
ANALYST = "spiffe://prod/agent/analyst"
XSS = "<img src=x onerror=\"document.title='pwned'\"><script>document.title='pwned'</script>"
ANALYST_YAML = """\
apiVersion: access.envisionai.dev/v1
kind: AgentPolicy
metadata: {name: analyst}
spec:
  identity: {workload: spiffe://prod/agent/analyst}
  models: {allow: [reasoning-high]}
  budget: {daily_usd: 5, monthly_usd: 50}
  tools:
    - resource: web.search
      actions: [query]
      deny: [delete]
  audit: {record: [identity, policy, action, outcome, reasons, params, cost]}
---
apiVersion: access.envisionai.dev/v1
kind: AgentPolicy
metadata: {name: analyst-next}
spec:
  identity: {workload: spiffe://prod/agent/analyst}
  rollout: {mode: shadow}
  models: {allow: [reasoning-high]}
  tools:
    - resource: web.search
      actions: [read]
"""


def chromium() -> str:
    path = shutil.which("chromium")
    assert path, ("Debian's chromium is not installed (scripts/setup installs it: "
                  "apt-get install chromium); the console's browser tests need it")
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def stack(vault: vaultsetup.VaultSetup, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    pol = vaultsetup.policies(tmp_path_factory.mktemp("policies"))
    shutil.copy(EXAMPLES / "model-routes.yaml", pol / "model-routes.yaml")
    (pol / "analyst.yaml").write_text(ANALYST_YAML)
    with running_stack(pol, console_addr="127.0.0.1:0", **vault.settings()) as s:
        yield s


@pytest.fixture(scope="module")
def decisions(stack: Stack) -> dict[str, Any]:
    """The handful of real decisions every view is checked against."""
    channel, pdp = stub(stack, gateway=True)
    out: dict[str, Any] = {}
    with channel:
        out["lease"] = pdp.Authorize(request(CRM, tool="salesforce.accounts", action="read"), timeout=10)
        out["denied"] = pdp.Authorize(request(CRM, tool="salesforce.accounts", action="export"), timeout=10)
        out["search"] = pdp.Authorize(request(ANALYST, tool="web.search", action="query",
                                              params={"q": XSS}), timeout=10)
        out["model"] = pdp.Authorize(request(ANALYST, model="reasoning-high", estimated_tokens=2000),
                                     timeout=10)
        pdp.RecordUsage(pdp_pb2.RecordUsageRequest(decision_id=out["model"].decision_id,
                                                   tokens=2000, cost_usd=1.25), timeout=10)
        # A workload ID cannot carry markup (the PDP refuses it as INVALID_ARGUMENT, no row):
        # the workload payload reaches the console through its URL instead (below).
        try:
            pdp.Authorize(request("spiffe://prod/agent/" + XSS, tool="web.search",
                                  action="query"), timeout=10)
        except Exception as exc:
            assert "INVALID_ARGUMENT" in str(exc)
    assert out["lease"].decision == pdp_pb2.DECISION_ALLOW and out["lease"].credential.value
    assert out["denied"].decision == pdp_pb2.DECISION_DENY
    assert out["search"].decision == pdp_pb2.DECISION_ALLOW
    assert out["model"].decision == pdp_pb2.DECISION_ALLOW
    return out


@pytest.fixture()
def page(browser: Browser, stack: Stack, decisions: dict[str, Any]) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    dialogs: list[str] = []
    pg.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    pg.dialogs = dialogs  # type: ignore[attr-defined]
    yield pg
    assert not dialogs, f"a script ran in the console: {dialogs}"
    context.close()


def visit(page: Page, stack: Stack, path: str) -> Page:
    assert stack.console is not None
    response = page.goto(stack.console.url.rstrip("/") + path)
    assert response is not None and response.status == 200, path
    headers = response.headers
    assert "script-src" not in headers["content-security-policy"]
    assert headers["content-security-policy"].startswith("default-src 'none'")
    assert headers["x-frame-options"] == "DENY" and headers["cache-control"] == "no-store"
    return page


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000, f"{path} is nearly empty"


def no_secret(page: Page, vault: vaultsetup.VaultSetup, decisions: dict[str, Any]) -> None:
    html = page.content()
    assert vault.kv_secret not in html
    assert decisions["lease"].credential.value not in html


def test_decisions_view_lists_what_was_decided_and_filters(
        page: Page, stack: Stack, vault: vaultsetup.VaultSetup, decisions: dict[str, Any]) -> None:
    visit(page, stack, "/")
    table = page.locator("table.decisions")
    assert page.locator("h1").inner_text() == "Decisions"
    denied = table.locator("tr.deny", has_text="salesforce.accounts / export")
    assert "action_not_granted" in denied.inner_text()
    assert table.locator("tr.allow", has_text="model reasoning-high").count() == 1
    assert table.locator("tr", has_text="crm-agent").count() >= 2
    screenshot(page, "decisions")
    no_secret(page, vault, decisions)
    # Filters, as a user fills them in.
    page.fill("input[name=workload]", "crm")
    page.select_option("select[name=outcome]", "deny")
    page.click("button[type=submit]")
    rows = page.locator("table.decisions tbody tr")
    assert rows.count() == 1 and "export" in rows.inner_text()
    visit(page, stack, "/?reason=action_not_granted")
    assert page.locator("table.decisions tbody tr").count() == 1
    visit(page, stack, "/?tool=web.search&outcome=allow")
    assert page.locator("table.decisions tbody tr").count() == 1
    visit(page, stack, "/?model=reasoning-high")
    assert page.locator("table.decisions tbody tr").count() == 1
    visit(page, stack, "/?since=1h&until=2000-01-01")
    assert page.locator("td.empty").inner_text() == "No decisions match."
    response = page.goto(stack.console.url + "?since=yesterday-ish")  # type: ignore[union-attr]
    assert response is not None and response.status == 400
    assert "is not a time" in page.locator("p.status").inner_text()


def test_live_decisions_reload_by_themselves_and_show_a_new_decision(
        page: Page, stack: Stack) -> None:
    visit(page, stack, "/?workload=live-watcher")  # a workload no other test counts
    page.click("text=Live")
    assert "live=1" in page.url and "workload=live-watcher" in page.url
    assert page.locator('meta[http-equiv="refresh"]').get_attribute("content") == "5"
    rows = page.locator("table.decisions tbody tr.deny")
    before = rows.count()
    channel, pdp = stub(stack, gateway=True)
    with channel:
        pdp.Authorize(request("spiffe://prod/agent/live-watcher", tool="web.search",
                              action="query"), timeout=10)
    deadline = time.monotonic() + 15
    while rows.count() == before and time.monotonic() < deadline:
        time.sleep(0.5)  # no click, no script: the page reloads itself
    assert rows.count() == before + 1
    page.click("text=Stop")
    assert "live=1" not in page.url and page.locator('meta[http-equiv="refresh"]').count() == 0


def test_xss_payloads_are_shown_as_text_and_never_run(
        page: Page, stack: Stack, decisions: dict[str, Any]) -> None:
    visit(page, stack, "/")
    assert page.title() != "pwned"
    # The param the policy records, as literal text.
    shown = page.locator("code.params", has_text="onerror").first.inner_text()
    assert json.loads(shown) == {"q": XSS}
    assert page.locator("main img[src=x], main script").count() == 0
    visit(page, stack, "/workload?id=" + requests.utils.quote(XSS))
    assert XSS in page.locator("h1").inner_text()
    assert page.locator("main img[src=x], main script").count() == 0
    assert page.title() != "pwned"
    screenshot(page, "xss-inert")


def test_workload_view_shows_grants_spend_leases_and_recent_decisions(
        page: Page, stack: Stack, vault: vaultsetup.VaultSetup, decisions: dict[str, Any]) -> None:
    visit(page, stack, "/workload")
    page.click(f"a:text-is('{ANALYST}')")
    assert page.locator("h1").inner_text() == f"Workload {ANALYST}"
    assert page.locator("strong.policy-name").inner_text() == "analyst"
    assert "web.search" in page.locator("table.grants").inner_text()
    today = page.locator("table.budget tbody tr").first.inner_text()
    assert "$1.250000" in today and "$5.00" in today and "25.0%" in today
    assert "request(s)" in page.locator("p.rate").inner_text()
    chart = page.locator("img.chart")
    assert chart.evaluate("img => img.complete && img.naturalWidth > 0")
    screenshot(page, "workload")
    visit(page, stack, "/workload?id=crm")
    leases = page.locator("table.leases").inner_text()
    assert decisions["lease"].credential.lease_accessor in leases
    assert "salesforce.accounts / read" in leases
    assert page.locator("table.decisions tr.deny").count() == 1
    no_secret(page, vault, decisions)
    screenshot(page, "workload-leases")


def test_denials_view_charts_denials_by_reason(
        page: Page, stack: Stack, decisions: dict[str, Any]) -> None:
    visit(page, stack, "/denials")
    totals = page.locator("table.totals").inner_text()
    assert "action_not_granted" in totals
    chart = page.locator("img.chart")
    assert chart.evaluate("img => img.complete && img.naturalWidth > 0")
    svg = requests.get(stack.console.url + "chart/denials.svg", timeout=10)  # type: ignore[union-attr]
    assert svg.headers["content-type"] == "image/svg+xml" and b"action_not_granted" in svg.content
    assert b"<script" not in svg.content
    screenshot(page, "denials")


def test_audit_view_says_the_chain_verifies_and_the_anchor_matches(
        page: Page, stack: Stack, decisions: dict[str, Any]) -> None:
    assert stack.anchors is not None
    stack.anchors.write_if_moved()
    visit(page, stack, "/audit")
    if page.locator("p.status.wait").count():  # the first walk is still running
        visit(page, stack, "/audit")
    status = page.locator("p.status").first.inner_text()
    assert status.startswith("INTACT") and "verified" in status
    assert "Anchor matches" in page.locator("p.anchor").inner_text()
    screenshot(page, "audit")


def test_revisions_view_shows_the_active_bundle(page: Page, stack: Stack,
                                                decisions: dict[str, Any]) -> None:
    visit(page, stack, "/revisions")
    current = page.locator("table.revisions tr.current")
    assert current.count() == 1
    assert stack.store.current is not None
    assert stack.store.current.revision in current.inner_text()
    assert "active" in current.inner_text() and "not yet" not in current.inner_text()
    screenshot(page, "revisions")


def test_shadow_view_lists_the_disagreement(page: Page, stack: Stack,
                                            decisions: dict[str, Any]) -> None:
    visit(page, stack, "/shadow")
    rows = page.locator("table.shadow tbody tr")
    assert rows.count() == 1
    text = rows.inner_text()
    assert "web.search / query" in text and "analyst-next" in text and "DENY" in text
    screenshot(page, "shadow")


def test_the_console_is_get_only_and_unknown_pages_are_404(stack: Stack) -> None:
    url = stack.console.url  # type: ignore[union-attr]
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        assert requests.request(method, url, timeout=10).status_code == 405
    assert requests.get(url + "nope", timeout=10).status_code == 404
    # Loopback without a token: a DNS-rebound Host is refused.
    assert requests.get(url, headers={"Host": "evil.example:80"}, timeout=10).status_code == 421


def token_file(tmp: Path, token: str, mode: int = 0o600) -> Path:
    path = tmp / "console.token"
    path.write_text(token + "\n")
    os.chmod(path, mode)
    return path


def test_a_console_off_loopback_without_auth_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match=r"console_addr.*not loopback.*console_token_file"):
        Settings.load(env={}, console_addr="0.0.0.0:8480")


def test_the_operator_token_file_must_be_private_and_long(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="readable by group or others"):
        check_token(str(token_file(tmp_path, "x" * 40, 0o644)))
    with pytest.raises(ConfigError, match="at least 32"):
        check_token(str(token_file(tmp_path, "short")))


def test_with_a_token_every_page_needs_it_and_the_login_form_works(
        tmp_path: Path, browser: Browser) -> None:
    token = "t0ken-" + "a" * 40
    path = token_file(tmp_path, token)
    with running_stack(console_addr="0.0.0.0:0", console_token_file=str(path)) as s:
        assert s.console is not None
        url = f"http://127.0.0.1:{s.console.port}/"
        assert requests.get(url, timeout=10).status_code == 401
        assert requests.get(url + "audit", headers={"Authorization": "Bearer wrong"},
                            timeout=10).status_code == 401
        assert requests.get(url + "chart/denials.svg", timeout=10).status_code == 401
        ok = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert ok.status_code == 200 and "Decisions" in ok.text
        context = browser.new_context()
        pg = context.new_page()
        pg.goto(url + "audit")
        assert pg.locator("h1").inner_text() == "Sign in"
        pg.fill("input[name=token]", "wrong" * 8)
        pg.click("button[type=submit]")
        assert "wrong token" in pg.locator("p.status").inner_text()
        pg.fill("input[name=token]", token)
        pg.click("button[type=submit]")
        assert pg.locator("h1").inner_text() == "Decisions"
        (cookie,) = context.cookies()
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and token not in cookie["value"]
        screenshot(pg, "login-then-decisions")
        context.close()


def test_with_mtls_only_a_client_certificate_from_the_ca_gets_in(tmp_path: Path) -> None:
    ca, other = CA("prod"), CA("prod")
    server, client, stranger = (ca.svid("spiffe://prod/aam/pdp", server=True),
                                ca.svid("spiffe://prod/ops/alice"), other.svid("spiffe://prod/x"))
    files = {}
    for name, data in (("ca.pem", ca.pem), ("server.pem", server.cert_pem), ("server.key", server.key_pem),
                       ("client.pem", client.cert_pem), ("client.key", client.key_pem),
                       ("stranger.pem", stranger.cert_pem), ("stranger.key", stranger.key_pem)):
        (tmp_path / name).write_bytes(data)
        os.chmod(tmp_path / name, 0o600)
        files[name] = str(tmp_path / name)
    settings = Settings.load(env={}, ledger_url="off", console_addr="0.0.0.0:0", console_mtls=True,
                             tls_cert=files["server.pem"], tls_key=files["server.key"],
                             tls_client_ca=files["ca.pem"])
    console = ConsoleServer(settings, Sources(None, Revisions(), RevisionLog(), None))
    console.start()
    try:
        url = f"https://127.0.0.1:{console.port}/revisions"
        ok = requests.get(url, cert=(files["client.pem"], files["client.key"]),
                          verify=files["ca.pem"], timeout=10)
        assert ok.status_code == 200 and "Bundle revisions" in ok.text
        for cert in (None, (files["stranger.pem"], files["stranger.key"])):
            with pytest.raises(requests.exceptions.RequestException):
                requests.get(url, cert=cert, verify=files["ca.pem"], timeout=10)
    finally:
        console.stop()


def test_aam_up_prints_the_console_url_and_serves_it(tmp_path: Path, browser: Browser) -> None:
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "aam"), "up", "--no-vault",
                             "--grpc-addr", f"127.0.0.1:{free_port()}"], cwd=root, env=env,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    try:
        banner, deadline = "", time.monotonic() + 60
        while "Ctrl-C" not in banner and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "aam up exited:\n" + banner
            banner += line
        m = re.search(r"^console\s+(http://127\.0\.0\.1:\d+/) \(read-only; no login: loopback only\)",
                      banner, re.M)
        assert m, banner
        pg = browser.new_page()
        pg.goto(m.group(1) + "workload")
        assert "spiffe://prod/agent/finance-analyst" in pg.locator("main table").inner_text()
        pg.close()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
