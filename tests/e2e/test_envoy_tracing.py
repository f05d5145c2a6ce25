"""The PDP's decision span joins the trace of the real Envoy in front of it.

Envoy traces with its OpenTelemetry tracer to a real Jaeger and calls the PDP's
ext_authz Check; the PDP exports its spans to the same Jaeger. One trace must hold both,
the PDP's decision span a child of Envoy's ext_authz span.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from pdp.stack import Stack
from tests.e2e.conftest import Pki
from tests.e2e.envoy import Envoy, run_envoy
from tests.e2e.pdp import pdp_port, pdp_stack, pdp_token
from tests.e2e.upstream import RecordingUpstream
from tests.servers import Jaeger
from tests.vaultsetup import VaultSetup

pytestmark = pytest.mark.integration
PDP_SERVICE, ENVOY_SERVICE = "aam-pdp-behind-envoy", "envoy-gateway"
HCM = "envoy.filters.network.http_connection_manager"


def traced(jaeger: Jaeger) -> Any:
    """An edit of Envoy's rendered config: every HTTP connection manager traces every
    request with the OpenTelemetry tracer, exporting over OTLP/gRPC to ``jaeger``."""
    port = int(jaeger.otlp_endpoint.rsplit(":", 1)[1])

    def edit(conf: dict[str, Any]) -> dict[str, Any]:
        for listener in conf["static_resources"]["listeners"]:
            for chain in listener["filter_chains"]:
                for f in chain["filters"]:
                    if f["name"] == HCM:
                        f["typed_config"]["tracing"] = {
                            "random_sampling": {"value": 100},
                            "provider": {"name": "envoy.tracers.opentelemetry", "typed_config": {
                                "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                                "grpc_service": {"envoy_grpc": {"cluster_name": "jaeger_otlp"},
                                                 "timeout": "1s"},
                                "service_name": ENVOY_SERVICE}}}
        conf["static_resources"]["clusters"].append({
            "name": "jaeger_otlp", "type": "STATIC", "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}}},
            "load_assignment": {"cluster_name": "jaeger_otlp", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {
                    "address": "127.0.0.1", "port_value": port}}}}]}]}})
        return conf

    return edit


@pytest.fixture(scope="module")
def stack(vault: VaultSetup, jaeger: Jaeger) -> Iterator[Stack]:
    with pdp_stack(vault, otlp_endpoint=jaeger.otlp_endpoint, trace_service_name=PDP_SERVICE) as s:
        yield s


@pytest.fixture(scope="module")
def envoy(pki: Pki, stack: Stack, upstream: RecordingUpstream, jaeger: Jaeger) -> Iterator[Envoy]:
    with run_envoy(pdp_port=pdp_port(stack), upstream_port=upstream.port, tls=pki.tls,
                   pdp_token=pdp_token(stack), edit=traced(jaeger)) as e:
        yield e


def finance(pki: Pki) -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    s.verify = str(pki.domain.bundle)
    s.cert = (str(pki.finance.cert), str(pki.finance.key))
    return s


def tags(span: dict) -> dict[str, Any]:
    return {t["key"]: t["value"] for t in span["tags"]}


def joined_trace(jaeger: Jaeger, decision_id: str, timeout_s: float = 30.0) -> dict:
    """The trace holding the decision span of ``decision_id`` once Envoy's spans are in it
    too (Envoy flushes its spans every few seconds)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for trace in jaeger.traces(PDP_SERVICE):
            if any(tags(s).get("aam.decision_id") == decision_id for s in trace["spans"]):
                full = jaeger.trace(trace["traceID"])
                services = {p["serviceName"] for p in (full or {}).get("processes", {}).values()}
                if full and ENVOY_SERVICE in services:
                    return full
        time.sleep(0.5)
    raise AssertionError(f"no trace with Envoy's spans and decision {decision_id} in Jaeger")


@pytest.mark.parametrize("path,status", [("/tools/salesforce.accounts/read", 200),
                                         ("/tools/salesforce.accounts/export", 403)])
def test_the_decision_span_is_a_child_of_envoys_ext_authz_span(
        envoy: Envoy, pki: Pki, jaeger: Jaeger, path: str, status: int) -> None:
    with finance(pki) as s:
        resp = s.post(envoy.url + path, json={"account": secrets.token_hex(8)})
    assert resp.status_code == status, resp.text
    decision_id = resp.headers["x-aam-decision-id"]
    trace = joined_trace(jaeger, decision_id)
    spans = {s["spanID"]: s for s in trace["spans"]}
    service = {s["spanID"]: trace["processes"][s["processID"]]["serviceName"] for s in spans.values()}
    [decision] = [s for s in spans.values() if s["operationName"] == "aam.decision"]
    assert tags(decision)["aam.decision_id"] == decision_id
    assert tags(decision)["rpc.method"] == "Check"
    assert tags(decision)["aam.outcome"] == ("allow" if status == 200 else "deny")
    [parent_ref] = decision["references"]
    assert parent_ref["refType"] == "CHILD_OF" and parent_ref["traceID"] == trace["traceID"]
    parent = spans[parent_ref["spanID"]]  # Envoy's span of its Check call to the PDP
    assert service[parent["spanID"]] == ENVOY_SERVICE
    assert "envoy.service.auth.v3.Authorization" in parent["operationName"] + json.dumps(tags(parent))
