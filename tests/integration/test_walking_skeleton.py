"""The thin path end to end: YAML -> compiler -> bundle -> real OPA -> gRPC PDP."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from aam.v1 import pdp_pb2
from pdp.opa import free_port
from pdp.stack import Stack
from tests.integration.pdp import EXAMPLES, FINANCE, request, running_stack, stub
from tests.servers import run_opa

ROOT = Path(__file__).resolve().parents[2]
AAM = str(ROOT / ".venv" / "bin" / "aam")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_stack() as s:
        yield s


def test_compiled_bundle_loads_into_real_opa(tmp_path: Path) -> None:
    out = tmp_path / "bundle.tar.gz"
    r = subprocess.run([AAM, "compile", str(EXAMPLES), "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with tarfile.open(out) as tar:
        manifest = json.load(tar.extractfile("/.manifest"))  # type: ignore[arg-type]
    assert manifest["roots"] == ["aam"]
    assert len(manifest["revision"]) == 64
    with run_opa("--bundle", str(out)) as opa:
        r2 = requests.post(f"{opa.url}/v1/data/aam/authz/decision",
                           json={"input": {"identity": {"spiffe_id": FINANCE},
                                           "model": "reasoning-high", "tool": "", "action": "",
                                           "estimate": {"tokens": 0, "cost_usd": 0},
                                           "state": {"budget": {"daily": {
                                               "spent_usd": 0, "reserved_usd": 0, "limit_usd": 75,
                                               "remaining_usd": 75}}}}},
                           timeout=5)
    result = r2.json()["result"]
    assert result["allow"] is True
    assert result["revision"] == manifest["revision"]


def test_same_input_same_bundle_bytes(tmp_path: Path) -> None:
    outs = []
    for name in ("a.tar.gz", "b.tar.gz"):
        subprocess.run([AAM, "compile", str(EXAMPLES), "-o", str(tmp_path / name)], check=True,
                       capture_output=True)
        outs.append((tmp_path / name).read_bytes())
    assert outs[0] == outs[1]


@pytest.mark.parametrize(
    ("fields", "allow", "code"),
    [
        ({"model": "reasoning-high"}, True, None),
        # examples/ gives salesforce.accounts a ToolCredential and this stack has no Vault:
        # the granted read is denied rather than allowed without its credential.
        ({"tool": "salesforce.accounts", "action": "read"}, False, "credential_unavailable"),
        ({"tool": "salesforce.accounts", "action": "export"}, False, "action_denied"),
        ({"model": "gpt-4o"}, False, "model_not_allowed"),
        ({"workload": "spiffe://prod/agent/unknown", "model": "reasoning-high"}, False, "no_policy"),
    ],
    ids=["model-allowed", "read-needs-credential", "export-denied", "model-not-allowed", "unknown-workload"],
)
def test_five_seed_decisions(stack: Stack, fields: dict, allow: bool, code: str | None) -> None:
    channel, pdp = stub(stack)
    with channel:
        resp = pdp.Authorize(request(**fields), timeout=5)
    assert resp.decision == (pdp_pb2.DECISION_ALLOW if allow else pdp_pb2.DECISION_DENY)
    assert len(resp.decision_id) == 32
    assert resp.bundle_revision == stack.store.current.revision
    if allow:
        assert not resp.reasons
        assert resp.policy == "finance-analyst-readonly"
    else:
        assert [r.code for r in resp.reasons] == [code]
        assert resp.reasons[0].message


def test_deny_names_the_deny_rule(stack: Stack) -> None:
    channel, pdp = stub(stack)
    with channel:
        resp = pdp.Authorize(request(tool="salesforce.accounts", action="export"), timeout=5)
    assert resp.reasons[0].message == (
        'action "export" on "salesforce.accounts" is denied by policy '
        '"finance-analyst-readonly" (spec.tools[0].deny)')


def test_model_allow_carries_route_in_order(stack: Stack) -> None:
    channel, pdp = stub(stack)
    with channel:
        resp = pdp.Authorize(request(model="reasoning-high", request_id="req-1"), timeout=5)
    assert resp.request_id == "req-1"
    assert resp.route.alias == "reasoning-high"
    assert [t.provider for t in resp.route.targets] == ["anthropic", "openai", "bedrock"]


def test_health_and_reflection_are_served(stack: Stack) -> None:
    with grpc.insecure_channel(stack.settings.grpc_addr) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "aam.v1.PolicyDecisionService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert status.status == health_pb2.HealthCheckResponse.SERVING
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert "aam.v1.PolicyDecisionService" in services
    assert "grpc.health.v1.Health" in services


def test_aam_up_then_authorize_from_another_process(tmp_path: Path) -> None:
    """The README's main job, driven as a user would: start, ask, Ctrl-C."""
    port = free_port()
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path)}  # the embedded ledger lives here
    proc = subprocess.Popen([AAM, "up", "--grpc-addr", f"127.0.0.1:{port}"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            assert line, f"aam up exited: {proc.stderr.read()}"  # type: ignore[union-attr]
            banner.append(line)
            if "Ctrl-C" in line:
                break
        text = "".join(banner)
        assert f"127.0.0.1:{port} aam.v1.PolicyDecisionService" in text
        assert "aam authorize" in text
        assert "/bundles/aam.tar.gz (signed ES256, ephemeral key)" in text  # on by default
        # The policy directory's own ledger: two clones or policy sets never share one.
        assert re.search(rf"ledger     sqlite://{re.escape(str(tmp_path))}/aam/projects/"
                         r"examples-[0-9a-f]{12}/ledger\.sqlite3 \(embedded\)", text), text
        assert "OpenBao dev server, 1 demo secret(s) seeded" in text
        outcomes = {}
        for name, extra in {
            "model": ["--model", "reasoning-high"],
            "read": ["--tool", "salesforce.accounts", "--action", "read"],
            "export": ["--tool", "salesforce.accounts", "--action", "export"],
            "bad-model": ["--model", "gpt-4o"],
        }.items():
            r = subprocess.run([AAM, "authorize", "--addr", f"127.0.0.1:{port}",
                                "--workload", FINANCE, *extra], capture_output=True, text=True)
            outcomes[name] = (r.returncode, r.stdout)
        token_file = tmp_path / "aam" / "gateway.token"
        assert f"x-aam-gateway-token: the contents of {token_file}" in text
        assert token_file.stat().st_mode & 0o777 == 0o600
        r = subprocess.run([AAM, "authorize", "--addr", f"127.0.0.1:{port}", "--workload", FINANCE,
                            "--tool", "salesforce.accounts", "--action", "read",
                            "--gateway-token-file", str(token_file)], capture_output=True, text=True)
        outcomes["gateway-read"] = (r.returncode, r.stdout)
        r = subprocess.run([AAM, "authorize", "--addr", f"127.0.0.1:{port}", "--workload",
                            "spiffe://prod/agent/nobody", "--model", "reasoning-high"],
                           capture_output=True, text=True)
        outcomes["unknown"] = (r.returncode, r.stdout)
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert outcomes["model"][0] == 0 and outcomes["model"][1].startswith("ALLOW")
    # aam up runs an OpenBao dev server, so the brokered read is allowed with its
    # credential, which only a gateway receives (and the CLI never prints).
    assert outcomes["read"][0] == 0 and outcomes["read"][1].startswith("ALLOW")
    assert "credential header authorization" in outcomes["read"][1]
    assert "(value not sent: this caller is not a trusted gateway)" in outcomes["read"][1]
    assert "(value sent to this gateway, not printed)" in outcomes["gateway-read"][1]
    assert "demo-" not in outcomes["read"][1] + outcomes["gateway-read"][1] + stderr
    assert outcomes["export"][0] == 3 and "action_denied" in outcomes["export"][1]
    assert "spec.tools[0].deny" in outcomes["export"][1]
    assert outcomes["bad-model"][0] == 3 and "model_not_allowed" in outcomes["bad-model"][1]
    assert outcomes["unknown"][0] == 3 and "no_policy" in outcomes["unknown"][1]


def test_authorize_json_output_is_machine_readable(stack: Stack) -> None:
    from aam.cli.main import run

    out, err = io.StringIO(), io.StringIO()
    code = run(["authorize", "--addr", stack.settings.grpc_addr, "--workload", FINANCE,
                "--model", "summarization", "--json"], out, err)
    assert code == 0, err.getvalue()
    doc = json.loads(out.getvalue())
    assert doc["decision"] == "DECISION_ALLOW"
    assert doc["route"]["alias"] == "summarization"


def test_up_refuses_a_non_loopback_address() -> None:
    r = subprocess.run([AAM, "up", "--grpc-addr", "0.0.0.0:50051"], capture_output=True,
                       text=True, timeout=30, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 2
    assert "loopback only" in r.stderr
    assert "Traceback" not in r.stderr
