"""deploy/envoy/envoy.yaml, re-addressed: the shipped Envoy config with local ports and files.

``render`` edits the deployment config structurally (ports, certificate files,
ext_authz on/off, plaintext hop to the PDP with the gateway token) so that
``aam up --envoy``, the end-to-end tests and the benchmark all run the file that
is shipped, not a copy of it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pdp.config import REPO_ROOT
from pdp.identity import GATEWAY_TOKEN_HEADER

TEMPLATE = REPO_ROOT / "deploy" / "envoy" / "envoy.yaml"
EXT_AUTHZ = "envoy.filters.http.ext_authz"
# The PDP's response processor (MCP tools/list): a gateway call like Check.
EXT_PROC = "envoy.filters.http.ext_proc"


@dataclass(frozen=True)
class Tls:
    cert: Path
    key: Path
    bundle: Path
    trust_domain: str = "prod"


def render(*, listen_port: int, admin_port: int, pdp_port: int, upstream_port: int,
           tls: Tls | None, ext_authz: bool = True, pdp_tls: PdpTls | None = None,
           pdp_token: str = "", upstream_host: str = "127.0.0.1") -> dict[str, Any]:
    """The shipped config with our addresses (the upstream at ``upstream_host``, an IP:
    Envoy's static cluster). ``tls=None``: a plaintext listener that
    forwards the caller's x-forwarded-client-cert (for a PDP that trusts it).
    ``pdp_tls=None``: plaintext HTTP/2 to a PDP on loopback, proving Envoy is the
    gateway with ``pdp_token`` (the PDP's gateway_token_file) as gRPC metadata."""
    conf = copy.deepcopy(yaml.safe_load(TEMPLATE.read_text()))
    conf["admin"]["address"]["socket_address"].update(address="127.0.0.1", port_value=admin_port)
    res = conf["static_resources"]
    (listener,) = res["listeners"]
    listener["address"]["socket_address"].update(address="127.0.0.1", port_value=listen_port)
    (chain,) = listener["filter_chains"]
    (hcm,) = chain["filters"]
    hcm_conf = hcm["typed_config"]
    if tls is None:
        del chain["transport_socket"]
        hcm_conf["forward_client_cert_details"] = "ALWAYS_FORWARD_ONLY"
    else:
        ctx = chain["transport_socket"]["typed_config"]["common_tls_context"]
        ctx["tls_certificates"] = [{"certificate_chain": {"filename": str(tls.cert)},
                                    "private_key": {"filename": str(tls.key)}}]
        validator = ctx["validation_context"]["custom_validator_config"]["typed_config"]
        validator["trust_domains"] = [{"name": tls.trust_domain,
                                       "trust_bundle": {"filename": str(tls.bundle)}}]
    if pdp_tls is None and pdp_token:
        for f in hcm_conf["http_filters"]:
            if f["name"] in (EXT_AUTHZ, EXT_PROC):
                f["typed_config"]["grpc_service"]["initial_metadata"] = [
                    {"key": GATEWAY_TOKEN_HEADER, "value": pdp_token}]
    if not ext_authz:
        hcm_conf["http_filters"] = [f for f in hcm_conf["http_filters"]
                                    if f["name"] not in (EXT_AUTHZ, EXT_PROC)]
        for vh in hcm_conf["route_config"]["virtual_hosts"]:
            for route in vh["routes"]:
                route.pop("typed_per_filter_config", None)
    for cluster in res["clusters"]:
        if cluster["name"] == "aam_pdp":
            _pdp_tls(cluster, pdp_tls)
        host, port = {"aam_pdp": ("127.0.0.1", pdp_port),
                      "upstream": (upstream_host, upstream_port)}[cluster["name"]]
        for ep in cluster["load_assignment"]["endpoints"]:
            for lb in ep["lb_endpoints"]:
                lb["endpoint"]["address"]["socket_address"].update(address=host, port_value=port)
    return conf


@dataclass(frozen=True)
class PdpTls:
    """Envoy's client SVID towards the PDP, and the PDP's expected SPIFFE ID."""

    cert: Path
    key: Path
    bundle: Path
    pdp_id: str


def _pdp_tls(cluster: dict[str, Any], pdp_tls: PdpTls | None) -> None:
    if pdp_tls is None:
        del cluster["transport_socket"]
        return
    ctx = cluster["transport_socket"]["typed_config"]["common_tls_context"]
    ctx["tls_certificates"] = [{"certificate_chain": {"filename": str(pdp_tls.cert)},
                                "private_key": {"filename": str(pdp_tls.key)}}]
    ctx["validation_context"]["trusted_ca"] = {"filename": str(pdp_tls.bundle)}
    ctx["validation_context"]["match_typed_subject_alt_names"][0]["matcher"] = {
        "exact": pdp_tls.pdp_id}
