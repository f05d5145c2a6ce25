"""What is measured: one :class:`Scenario` per request shape and system.

Each AAM scenario has a baseline twin with the same meaning (OPA's Data API
with exactly the input the PDP builds, via ``Engine.build_input``; later
opa-envoy-plugin for ext_authz Check). A capability that lands later (ledger,
credentialed tool call, ext_authz) adds its scenarios with :func:`register`,
guarded by whether its module exists, so the harness runs on any main.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FileDescriptor

from aam.v1 import pdp_pb2
from compiler.testsuite import FRESH_LEDGER
from pdp.engine import Engine
from pdp.opa import DECISION_PATH, OpaClient
from pdp.service import to_request

WORKLOAD = "spiffe://prod/agent/finance-analyst"
AUTHORIZE = "aam.v1.PolicyDecisionService/Authorize"


@dataclass(frozen=True)
class Scenario:
    name: str
    # Which system and protocol: "aam" (gRPC to the PDP) or "opa" (HTTP to its OPA).
    target: str
    # gRPC method for "aam"; Data API path for "opa".
    call: str
    # gRPC request in proto3 JSON (for ghz), or the HTTP body for "opa".
    payload: dict[str, Any]
    # Name of the scenario this one is compared to ("" for baselines).
    baseline: str = ""
    # The decision every request must get; checked once before the load.
    expect_allow: bool = True
    # For gRPC scenarios: the proto file declaring the service (ghz gets a protoset).
    proto: FileDescriptor | None = None
    # Which stack it needs: "" the plain one (aam up), "vault" one with the credential
    # broker on a real OpenBao (and PostgreSQL for its database engine).
    stack: str = ""


SCENARIOS: list[Scenario] = []


def register(*scenarios: Scenario) -> None:
    SCENARIOS.extend(scenarios)


def opa_input(authorize_json: dict[str, Any]) -> dict[str, Any]:
    """The OPA input the PDP builds for this Authorize request (same code path)."""
    msg = json_format.ParseDict(authorize_json, pdp_pb2.AuthorizeRequest())
    engine = Engine(OpaClient("http://127.0.0.1:1", 1.0))
    # The ledger's state as on a fresh ledger, so OPA evaluates the budget and rate rules too.
    return {**engine.build_input(to_request(msg)), "state": FRESH_LEDGER}


def authorize_pair(name: str, request: dict[str, Any], expect_allow: bool = True, stack: str = "") -> None:
    """Register an Authorize scenario and its OPA-alone baseline."""
    base = f"opa: {name}"
    register(
        Scenario(f"aam: {name}", "aam", AUTHORIZE, request, baseline=base, expect_allow=expect_allow,
                 proto=pdp_pb2.DESCRIPTOR, stack=stack),
        Scenario(base, "opa", DECISION_PATH, {"input": opa_input(request)}, expect_allow=expect_allow,
                 stack=stack),
    )


# Priced at 10 micro-USD so that a long run at saturation stays inside the example's 75 USD
# daily budget (every call reserves its estimate in the ledger; the bench never settles).
MODEL_CALL = {"identity": {"spiffe_id": WORKLOAD}, "model": "reasoning-high",
              "request_id": "bench", "estimated_tokens": 1200, "estimated_cost_usd": 0.00001}
# "search" is in no ToolCredential scope: decided by the policy alone, no credential.
TOOL_CALL = {"identity": {"spiffe_id": WORKLOAD}, "tool": "salesforce.accounts", "action": "search",
             "params": {"account_id": "001-bench", "fields": ["name", "owner"], "limit": 50},
             "context": {"environment": "prod", "ticket": "FIN-1234"}, "request_id": "bench"}

# A KV-engine credential from OpenBao, injected by the gateway (policies: tests/vaultsetup.py);
# the PDP's lease cache is on (the default), so this measures the steady state.
CREDENTIALED_CALL = {"identity": {"spiffe_id": "spiffe://prod/agent/crm"}, "tool": "salesforce.accounts",
                     "action": "read", "request_id": "bench"}

authorize_pair("authorize model call", MODEL_CALL)
authorize_pair("authorize tool call", TOOL_CALL)
authorize_pair("authorize credentialed tool call", CREDENTIALED_CALL, stack="vault")


def by_name(name: str) -> Scenario:
    for s in SCENARIOS:
        if s.name == name:
            return s
    raise KeyError(name)
