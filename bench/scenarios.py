"""What is measured: one :class:`Scenario` per request shape and system.

Each AAM scenario has baseline twins with the same meaning: OPA's Data API
with exactly the input the PDP builds (via ``Engine.build_input``) for
Authorize; opa-envoy-plugin and opa-extauthz (bench/opa_extauthz) for
ext_authz Check. A capability adds its scenarios with
:func:`register`.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from typing import Any

from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf import json_format
from google.protobuf.descriptor import FileDescriptor

from aam.v1 import pdp_pb2
from compiler.testsuite import FRESH_LEDGER
from pdp.engine import Engine
from pdp.opa import DECISION_PATH, OpaClient
from pdp.service import to_request
from tests.certs import CA

WORKLOAD = "spiffe://prod/agent/finance-analyst"
AUTHORIZE = "aam.v1.PolicyDecisionService/Authorize"
CHECK = "envoy.service.auth.v3.Authorization/Check"


@dataclass(frozen=True)
class Scenario:
    name: str
    # Which system and protocol: "aam" (gRPC to the PDP), "opa" (HTTP to its OPA) or
    # "extauthz" (gRPC to an ext_authz baseline server).
    target: str
    # gRPC method for "aam" and "extauthz"; Data API path for "opa".
    call: str
    # gRPC request in proto3 JSON (for ghz), or the HTTP body for "opa".
    payload: dict[str, Any]
    # Names of the scenarios this one is compared to, first the one its target is
    # judged against (empty for baselines).
    baselines: tuple[str, ...] = ()
    # The decision every request must get; checked once before the load.
    expect_allow: bool = True
    # For gRPC scenarios: the proto file declaring the service (ghz gets a protoset).
    proto: FileDescriptor | None = None
    # Which stack it needs: "" the main one (PDP + OPA + ledger), "vault" one with the
    # credential broker on a real OpenBao, "plugin" opa-envoy-plugin, "sdk" opa-extauthz.
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
        Scenario(f"aam: {name}", "aam", AUTHORIZE, request, baselines=(base,), expect_allow=expect_allow,
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




def check_json(certificate_pem: bytes) -> dict[str, Any]:
    """A CheckRequest as Envoy sends it (include_peer_certificate, with_request_body), in
    proto3 JSON for ghz: the granted tool call of TOOL_CALL, params as a JSON body."""
    body = json.dumps(TOOL_CALL["params"])
    path = "/tools/salesforce.accounts/search"
    return {"attributes": {
        "source": {"principal": WORKLOAD,
                   "certificate": urllib.parse.quote(certificate_pem.decode(), safe="")},
        "request": {"http": {
            "id": "bench", "method": "POST", "path": path, "host": "gw",
            "headers": {":method": "POST", ":path": path, "content-type": "application/json"},
            "body": body, "size": str(len(body))}},
    }}


# The same Check to AAM (whole path: certificate cross-check, ledger, audit, OPA) and to
# two Go servers evaluating the same Rego through bench/rego/envoy_shim.rego:
# opa-envoy-plugin, and opa-extauthz (OPA's Go SDK, bench/opa_extauthz), which scripts/setup
# builds where the module proxy refuses the plugin.
CHECK_CALL = check_json(CA("prod").svid(WORKLOAD).cert_pem)
PLUGIN_CHECK = "opa-envoy-plugin: ext_authz Check"
SDK_CHECK = "opa-extauthz: ext_authz Check"
register(
    Scenario("aam: ext_authz Check", "aam", CHECK, CHECK_CALL, baselines=(PLUGIN_CHECK, SDK_CHECK),
             proto=external_auth_pb2.DESCRIPTOR),
    Scenario(PLUGIN_CHECK, "extauthz", CHECK, CHECK_CALL, proto=external_auth_pb2.DESCRIPTOR,
             stack="plugin"),
    Scenario(SDK_CHECK, "extauthz", CHECK, CHECK_CALL, proto=external_auth_pb2.DESCRIPTOR,
             stack="sdk"),
)

# What the targets are measured on (report.targets): label -> scenario.
AUTHORIZE_TARGETS = {"model": "aam: authorize model call", "tool": "aam: authorize tool call",
                     "credentialed": "aam: authorize credentialed tool call"}
# The Check target is judged against the plugin when it ran, else against opa-extauthz.
CHECK_TARGET = ("aam: ext_authz Check", (PLUGIN_CHECK, SDK_CHECK))


def by_name(name: str) -> Scenario:
    for s in SCENARIOS:
        if s.name == name:
            return s
    raise KeyError(name)
