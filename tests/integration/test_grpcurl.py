"""grpcurl (built by scripts/setup) lists the service by reflection and calls Authorize with JSON."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from pdp.config import DEFAULT_TOOLS_DIR
from pdp.stack import Stack
from tests.integration.pdp import FINANCE, running_stack
from tests.servers import require_binary


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_stack() as s:
        yield s


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    binary = require_binary("grpcurl", str(DEFAULT_TOOLS_DIR / "bin" / "grpcurl"))
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=30)


def test_grpcurl_lists_services_by_reflection(stack: Stack) -> None:
    r = grpcurl("-plaintext", stack.settings.grpc_addr, "list")
    assert r.returncode == 0, r.stderr
    assert {"aam.v1.PolicyDecisionService", "grpc.health.v1.Health"} <= set(r.stdout.split())
    r = grpcurl("-plaintext", stack.settings.grpc_addr, "list", "aam.v1.PolicyDecisionService")
    assert r.stdout.split() == ["aam.v1.PolicyDecisionService.Authorize",
                                "aam.v1.PolicyDecisionService.RecordUsage"]


def test_grpcurl_calls_authorize_with_json(stack: Stack) -> None:
    body = {"identity": {"spiffe_id": FINANCE}, "tool": "salesforce.accounts", "action": "export",
            "params": {"limit": 10}, "requestId": "grpcurl-1"}
    r = grpcurl("-plaintext", "-d", json.dumps(body), stack.settings.grpc_addr,
                "aam.v1.PolicyDecisionService/Authorize")
    assert r.returncode == 0, r.stderr
    resp = json.loads(r.stdout)
    assert resp["decision"] == "DECISION_DENY"
    assert resp["reasons"][0]["code"] == "action_denied"
    assert resp["request_id"] == "grpcurl-1"
    assert resp["bundle_revision"] == stack.store.current.revision  # type: ignore[union-attr]


def test_grpcurl_sees_invalid_argument_for_a_bad_field(stack: Stack) -> None:
    r = grpcurl("-plaintext", "-d", '{"identity": {"spiffe_id": "nope"}, "model": "x"}',
                stack.settings.grpc_addr, "aam.v1.PolicyDecisionService/Authorize")
    assert r.returncode != 0
    assert "Code: InvalidArgument" in r.stderr
    assert "identity.spiffe_id:" in r.stderr
