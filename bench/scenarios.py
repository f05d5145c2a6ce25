"""What is measured: one :class:`Scenario` per request shape and system.

Each AAM scenario has baseline twins with the same meaning: OPA's Data API
with exactly the input the PDP builds (via ``Engine.build_input``) for
Authorize; opa-envoy-plugin and opa-extauthz (bench/opa_extauthz) for
ext_authz Check. A capability adds its scenarios with :func:`register`.

Honest load (issue 23, point 5): a scenario is not one payload repeated but
:data:`VARIANTS` requests over several workloads (the examples' and generated
ones, bench/policies.py), with params and context that differ from one
request to the next, each with the decision it must get. On top of that,
every call is unique: string fields carry :data:`SEQ`, a template ghz fills
with the call's request number (and bench.run with a tag of the load run), so
no cache could answer a call from an input it saw before. Rendered the same
way in Python (:func:`render`), the variants are what bench.run checks before
the load and what vegeta sends to OPA directly.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from dataclasses import dataclass
from functools import cache
from typing import Any

from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf import json_format
from google.protobuf.descriptor import FileDescriptor

from aam.v1 import pdp_pb2
from bench.loadgen import SEQ
from bench.policies import BENCH_AGENTS, BenchAgent
from compiler.testsuite import FRESH_LEDGER
from pdp.engine import Engine
from pdp.opa import DECISION_PATH, OpaClient
from pdp.service import to_request
from tests.certs import CA

WORKLOAD = "spiffe://prod/agent/finance-analyst"
CLAIMS = "spiffe://prod/agent/claims-assistant"
AUTHORIZE = "aam.v1.PolicyDecisionService/Authorize"
CHECK = "envoy.service.auth.v3.Authorization/Check"

# SEQ (loadgen): the call's request number, which ghz fills in per call; loadgen prefixes it
# with a tag per load run (loadgen.run_tag), so that no run repeats another's inputs either.
# The only template the bench uses (a test checks).
# Distinct requests per scenario (before SEQ makes every call distinct).
VARIANTS = 240


@dataclass(frozen=True)
class Variant:
    """One request of a scenario (strings may carry SEQ) and the decision it must get."""

    payload: dict[str, Any]
    expect_allow: bool = True


@dataclass(frozen=True)
class Scenario:
    name: str
    # Which system and protocol: "aam" (gRPC to the PDP), "opa" (HTTP to its OPA) or
    # "extauthz" (gRPC to an ext_authz baseline server).
    target: str
    # gRPC method for "aam" and "extauthz"; Data API path for "opa".
    call: str
    # The requests, sent round-robin: gRPC requests in proto3 JSON (for ghz), or HTTP bodies
    # for "opa" (vegeta); each with its expected decision, checked on a sample before the load.
    variants: tuple[Variant, ...]
    # Names of the scenarios this one is compared to, first the one its target is
    # judged against (empty for baselines).
    baselines: tuple[str, ...] = ()
    # For gRPC scenarios: the proto file declaring the service (ghz gets a protoset).
    proto: FileDescriptor | None = None
    # Which stack it needs: "" the main one (PDP + OPA + ledger), "vault" one with the
    # credential broker on a real OpenBao, "plugin" opa-envoy-plugin, "sdk" opa-extauthz.
    stack: str = ""

    @property
    def payloads(self) -> list[dict[str, Any]]:
        return [v.payload for v in self.variants]

    @property
    def payload(self) -> dict[str, Any]:
        """The first request, rendered as call 0 (one concrete request of the scenario)."""
        return render(self.variants[0].payload, 0)

    def describe(self) -> str:
        """How varied the load is, for the run's log."""
        who = {workload_of(v.payload) for v in self.variants}
        what = {_what(v.payload) for v in self.variants}
        allow = sum(v.expect_allow for v in self.variants)
        return (f"{len(self.variants)} requests, {len(who)} workloads, {len(what)} (model|tool, action) "
                f"pairs, {allow} to allow and {len(self.variants) - allow} to deny"
                + (", every call unique (request number in params/context)"
                   if any(SEQ in json.dumps(v.payload) for v in self.variants) else ""))


SCENARIOS: list[Scenario] = []


def register(*scenarios: Scenario) -> None:
    SCENARIOS.extend(scenarios)


def render(obj: Any, n: int | str, tag: str = "") -> Any:
    """``obj`` with SEQ in every string replaced as ghz does for call ``n`` (``tag`` first)."""
    if isinstance(obj, str):
        return obj.replace(SEQ, f"{tag}{n}")
    if isinstance(obj, dict):
        return {k: render(v, n, tag) for k, v in obj.items()}
    if isinstance(obj, list):
        return [render(v, n, tag) for v in obj]
    return obj


_TEMPLATE = re.compile(r"\{\{.*?\}\}")


def templates(obj: Any) -> set[str]:
    """Every ghz template in ``obj``'s strings (the bench's only one is SEQ)."""
    return set(_TEMPLATE.findall(json.dumps(obj)))


def opa_input(authorize_json: dict[str, Any]) -> dict[str, Any]:
    """The OPA input the PDP builds for this Authorize request (same code path)."""
    msg = json_format.ParseDict(authorize_json, pdp_pb2.AuthorizeRequest())
    engine = Engine(OpaClient("http://127.0.0.1:1", 1.0))
    # The ledger's state as on a fresh ledger, so OPA evaluates the budget and rate rules too.
    return {**engine.build_input(to_request(msg)), "state": FRESH_LEDGER}


def opa_bodies(s: Scenario, count: int, tag: str = "") -> list[dict[str, Any]]:
    """``count`` distinct Data API bodies for an "opa" scenario (vegeta sends them round-robin):
    the variants in turn, each rendered with its own call number."""
    return [render(s.variants[k % len(s.variants)].payload, k, tag) for k in range(count)]


def _opa_twin(v: Variant) -> Variant:
    # SEQ survives build_input untouched (it is inside strings), so the OPA body is rendered
    # per call like the gRPC request.
    return Variant({"input": opa_input(v.payload)}, v.expect_allow)


def authorize_pair(name: str, variants: list[Variant], stack: str = "") -> None:
    """Register an Authorize scenario and its OPA-alone baseline."""
    base = f"opa: {name}"
    register(
        Scenario(f"aam: {name}", "aam", AUTHORIZE, tuple(variants), baselines=(base,),
                 proto=pdp_pb2.DESCRIPTOR, stack=stack),
        Scenario(base, "opa", DECISION_PATH, tuple(_opa_twin(v) for v in variants), stack=stack),
    )


def workload_of(payload: dict[str, Any]) -> str:
    if "identity" in payload:
        return str(payload["identity"]["spiffe_id"])
    if "input" in payload:
        return str(payload["input"]["identity"]["spiffe_id"])
    return str(payload["attributes"]["source"]["principal"])


def _what(payload: dict[str, Any]) -> tuple[str, str]:
    p = payload.get("input", payload)
    if "attributes" in p:
        _, _, resource, action = p["attributes"]["request"]["http"]["path"].split("?")[0].split("/")
        return resource, action
    return (p.get("model") or p.get("tool", ""), p.get("action", ""))


# --- the requests -------------------------------------------------------------------------

AGENTS = [BenchAgent(i) for i in range(BENCH_AGENTS)]
FIELDS = (["name", "owner"], ["name", "industry", "annual_revenue"], ["owner"])


def model_calls(n: int = VARIANTS) -> list[Variant]:
    """Model calls by the finance analyst (two aliases), the claims assistant (EU routing)
    and the generated agents; token estimates and prices vary by request. Each call
    reserves routes.rego's price for its tokens (the bench never settles), so the bench's
    copy of the policies has budgets a long run at saturation stays inside
    (bench/policies.py BENCH_DAILY_USD)."""
    who = [(WORKLOAD, "reasoning-high"), (WORKLOAD, "summarization"), (CLAIMS, "reasoning-high"),
           *((a.workload, a.model) for a in AGENTS)]
    out = []
    for k in range(n):
        workload, model = who[k % len(who)]
        out.append(Variant({
            "identity": {"spiffe_id": workload}, "model": model, "request_id": f"bench-m{k}-{SEQ}",
            "estimated_tokens": 200 + (k * 131) % 3800, "estimated_cost_usd": (5 + k % 16) * 1e-6,
            "context": {"environment": "prod", "session": f"s{k % 17}-{SEQ}"}}))
    return out


def tool_calls(n: int = VARIANTS) -> list[Variant]:
    """Tool calls decided by the policy alone (no ToolCredential scope): the finance analyst's
    salesforce.accounts search, the claims assistant's crm.customers (read and search, while
    its model runs in the EU) and each generated agent's records (read and search, with the
    limit and query its constraints check)."""
    out = []
    for k in range(n):
        kind = k % (2 + len(AGENTS))
        if kind == 0:
            req = {"identity": {"spiffe_id": WORKLOAD}, "tool": "salesforce.accounts", "action": "search",
                   "params": {"account_id": f"001{k:05d}-{SEQ}", "fields": FIELDS[k % 3],
                              "limit": 1 + (k * 7) % 100},
                   "context": {"environment": "prod", "ticket": f"FIN-{1000 + k}-{SEQ}"}}
        elif kind == 1:
            req = {"identity": {"spiffe_id": CLAIMS}, "tool": "crm.customers",
                   "action": ("read", "search")[k % 2],
                   "params": {"customer_id": f"C{k:06d}", "query": f"claim:{k}-{SEQ}"},
                   "context": {"environment": "prod",
                               "model_region": ("eu-central-1", "eu-west-3")[k // 2 % 2]}}
        else:
            a = AGENTS[kind - 2]
            req = {"identity": {"spiffe_id": a.workload}, "tool": a.resource,
                   "action": ("read", "search")[k % 2],
                   "params": {"record_id": f"R{k:06d}", "query": f"status:open id:{SEQ}",
                              "limit": 1 + (k * 13) % a.max_limit},
                   "context": {"trace": f"t{k}-{SEQ}"}}
        out.append(Variant({**req, "request_id": f"bench-t{k}-{SEQ}"}))
    return out


def credentialed_calls(n: int = VARIANTS) -> list[Variant]:
    """A KV-engine credential from OpenBao, injected by the gateway (policies: tests/vaultsetup.py),
    for two workloads; the PDP's lease cache is on (the default, keyed per workload, resource
    and scope, not on params), so this measures the steady state."""
    who = ("spiffe://prod/agent/crm", "spiffe://prod/agent/crm-2")
    return [Variant({"identity": {"spiffe_id": who[k % 2]}, "tool": "salesforce.accounts", "action": "read",
                     "params": {"account_id": f"001{k:05d}-{SEQ}", "fields": FIELDS[k % 3]},
                     "context": {"ticket": f"CRM-{k}"}, "request_id": f"bench-c{k}-{SEQ}"})
            for k in range(n)]


authorize_pair("authorize model call", model_calls())
authorize_pair("authorize tool call", tool_calls())
authorize_pair("authorize credentialed tool call", credentialed_calls(), stack="vault")


@cache
def _certificate(workload: str) -> str:
    """The workload's X.509-SVID as Envoy forwards it (URL-encoded PEM)."""
    domain = workload.removeprefix("spiffe://").split("/", 1)[0]
    return urllib.parse.quote(_ca(domain).svid(workload).cert_pem.decode(), safe="")


@cache
def _ca(domain: str) -> CA:
    return CA(domain)


def check_json(workload: str, resource: str, action: str, params: dict[str, Any],
               request_id: str = "bench", query: str = "") -> dict[str, Any]:
    """A CheckRequest as Envoy sends it (include_peer_certificate, with_request_body), in
    proto3 JSON for ghz: a tool call, params as a JSON body."""
    body = json.dumps(params)
    path = f"/tools/{resource}/{action}" + (f"?{query}" if query else "")
    return {"attributes": {
        "source": {"principal": workload, "certificate": _certificate(workload)},
        "request": {"http": {
            "id": request_id, "method": "POST", "path": path, "host": "gw",
            "headers": {":method": "POST", ":path": path, "content-type": "application/json",
                        "x-request-id": request_id},
            # No "size": SEQ makes each body's length its own.
            "body": body}},
    }}


def check_calls(n: int = VARIANTS) -> list[Variant]:
    """The tool calls of :func:`tool_calls` that an ext_authz Check can carry (the claims
    assistant's need context from the gateway, which Check has not): the finance analyst's
    and the generated agents', with a query string that differs per call."""
    out = []
    for k in range(n):
        kind = k % (1 + len(AGENTS))
        if kind == 0:
            workload, resource, action = WORKLOAD, "salesforce.accounts", "search"
            params: dict[str, Any] = {"account_id": f"001{k:05d}-{SEQ}", "fields": FIELDS[k % 3],
                                      "limit": 1 + (k * 7) % 100}
        else:
            a = AGENTS[kind - 1]
            action = ("read", "search")[k // (1 + len(AGENTS)) % 2]
            workload, resource = a.workload, a.resource
            params = {"record_id": f"R{k:06d}", "query": f"status:open id:{SEQ}",
                      "limit": 1 + (k * 13) % a.max_limit}
        out.append(Variant(check_json(workload, resource, action, params, f"bench-x{k}-{SEQ}",
                                      f"page={k % 9}&cursor={SEQ}")))
    return out


# The same Checks to AAM (whole path: certificate cross-check, ledger, audit, OPA) and to
# two Go servers evaluating the same Rego through bench/rego/envoy_shim.rego:
# opa-envoy-plugin, and opa-extauthz (OPA's Go SDK, bench/opa_extauthz), which scripts/setup
# builds where the module proxy refuses the plugin.
TOOL_CALL_PARAMS = {"account_id": "001-bench", "fields": ["name", "owner"], "limit": 50}
# One fixed Check (the finance analyst's granted search), for tests that vary one field.
CHECK_CALL = check_json(WORKLOAD, "salesforce.accounts", "search", TOOL_CALL_PARAMS)
PLUGIN_CHECK = "opa-envoy-plugin: ext_authz Check"
SDK_CHECK = "opa-extauthz: ext_authz Check"
_CHECKS = tuple(check_calls())
register(
    Scenario("aam: ext_authz Check", "aam", CHECK, _CHECKS, baselines=(PLUGIN_CHECK, SDK_CHECK),
             proto=external_auth_pb2.DESCRIPTOR),
    Scenario(PLUGIN_CHECK, "extauthz", CHECK, _CHECKS, proto=external_auth_pb2.DESCRIPTOR,
             stack="plugin"),
    Scenario(SDK_CHECK, "extauthz", CHECK, _CHECKS, proto=external_auth_pb2.DESCRIPTOR,
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
