"""deploy/envoy/envoy.yaml, re-addressed: the shipped Envoy config with local ports and files.

``render`` edits the deployment config structurally (ports, Envoy's identity from
a SPIRE agent over SDS as shipped or from certificate files, ext_authz on/off,
plaintext hop to the PDP with the gateway token) so that ``aam up --envoy``, the
end-to-end tests and the benchmark all run the file that is shipped, not a copy of it.
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


SPIRE_CLUSTER = "spire_agent"


@dataclass(frozen=True)
class Tls:
    """Envoy's SVID and the trust bundle from files (the development PKI)."""

    cert: Path
    key: Path
    bundle: Path
    trust_domain: str = "prod"


@dataclass(frozen=True)
class Sds:
    """Envoy's SVID and the trust bundle from a SPIRE agent over SDS, as shipped: the agent's
    Workload API socket, the SVID's SPIFFE ID (SPIRE's SDS resource name for it), the trust
    domain (its bundle is the resource ``spiffe://<trust_domain>``) and, for the hop to the
    PDP, the PDP's SPIFFE ID."""

    socket: Path
    svid: str = "spiffe://prod/gateway/envoy"
    trust_domain: str = "prod"
    pdp_id: str = "spiffe://prod/aam/pdp"

    @property
    def bundle(self) -> str:
        return f"spiffe://{self.trust_domain}"


def render(*, listen_port: int, admin_port: int, pdp_port: int, upstream_port: int,
           tls: Tls | Sds | None, ext_authz: bool = True, pdp_tls: PdpTls | Sds | None = None,
           pdp_token: str = "", upstream_host: str = "127.0.0.1") -> dict[str, Any]:
    """The shipped config with our addresses (the upstream at ``upstream_host``, an IP:
    Envoy's static cluster). ``tls`` is the listener's identity: :class:`Sds` keeps the
    shipped SDS from SPIRE (at the given socket), :class:`Tls` puts files in its place,
    ``None`` is a plaintext listener that forwards the caller's x-forwarded-client-cert
    (for a PDP that trusts it). ``pdp_tls`` likewise for the hop to the PDP;
    ``None``: plaintext HTTP/2 to a PDP on loopback, proving Envoy is the
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
    elif isinstance(tls, Sds):
        ctx = chain["transport_socket"]["typed_config"]["common_tls_context"]
        ctx["tls_certificate_sds_secret_configs"][0]["name"] = tls.svid
        ctx["validation_context_sds_secret_config"]["name"] = tls.bundle
    else:
        ctx = chain["transport_socket"]["typed_config"]["common_tls_context"]
        del ctx["tls_certificate_sds_secret_configs"], ctx["validation_context_sds_secret_config"]
        ctx["tls_certificates"] = [{"certificate_chain": {"filename": str(tls.cert)},
                                    "private_key": {"filename": str(tls.key)}}]
        ctx["validation_context"] = {"custom_validator_config": {
            "name": "envoy.tls.cert_validator.spiffe",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
                         "SPIFFECertValidatorConfig",
                "trust_domains": [{"name": tls.trust_domain,
                                   "trust_bundle": {"filename": str(tls.bundle)}}]}}}
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
    sds = next((s for s in (tls, pdp_tls) if isinstance(s, Sds)), None)
    if sds is None:  # nothing asks SPIRE: no cluster for it
        res["clusters"] = [c for c in res["clusters"] if c["name"] != SPIRE_CLUSTER]
    for cluster in res["clusters"]:
        if cluster["name"] == SPIRE_CLUSTER:
            assert sds is not None
            for ep in cluster["load_assignment"]["endpoints"]:
                for lb in ep["lb_endpoints"]:
                    lb["endpoint"]["address"]["pipe"]["path"] = str(sds.socket)
            continue
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


def _pdp_tls(cluster: dict[str, Any], pdp_tls: PdpTls | Sds | None) -> None:
    if pdp_tls is None:
        del cluster["transport_socket"]
        return
    ctx = cluster["transport_socket"]["typed_config"]["common_tls_context"]
    combined = ctx["combined_validation_context"]
    sans = combined["default_validation_context"]["match_typed_subject_alt_names"]
    sans[0]["matcher"] = {"exact": pdp_tls.pdp_id}
    if isinstance(pdp_tls, Sds):
        ctx["tls_certificate_sds_secret_configs"][0]["name"] = pdp_tls.svid
        combined["validation_context_sds_secret_config"]["name"] = pdp_tls.bundle
        return
    del ctx["tls_certificate_sds_secret_configs"], ctx["combined_validation_context"]
    ctx["tls_certificates"] = [{"certificate_chain": {"filename": str(pdp_tls.cert)},
                                "private_key": {"filename": str(pdp_tls.key)}}]
    ctx["validation_context"] = {"trusted_ca": {"filename": str(pdp_tls.bundle)},
                                 "match_typed_subject_alt_names": sans}
