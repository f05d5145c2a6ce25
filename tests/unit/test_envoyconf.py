"""pdp/envoyconf.py: the shipped Envoy config takes its identity from SPIRE over SDS;
``render`` keeps that (re-addressed) or puts certificate files in its place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pdp.envoyconf import SPIRE_CLUSTER, TEMPLATE, PdpTls, Sds, Tls, render

PORTS = {"listen_port": 1, "admin_port": 2, "pdp_port": 3, "upstream_port": 4}


def listener_tls(conf: dict[str, Any]) -> dict[str, Any]:
    (chain,) = conf["static_resources"]["listeners"][0]["filter_chains"]
    return chain["transport_socket"]["typed_config"]["common_tls_context"]


def cluster(conf: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((c for c in conf["static_resources"]["clusters"] if c["name"] == name), None)


def pdp_tls(conf: dict[str, Any]) -> dict[str, Any]:
    pdp = cluster(conf, "aam_pdp")
    assert pdp is not None
    return pdp["transport_socket"]["typed_config"]["common_tls_context"]


def pipe(conf: dict[str, Any]) -> str:
    spire = cluster(conf, SPIRE_CLUSTER)
    assert spire is not None
    (ep,) = spire["load_assignment"]["endpoints"]
    return ep["lb_endpoints"][0]["endpoint"]["address"]["pipe"]["path"]


def test_the_shipped_config_asks_the_spire_agent_for_envoys_svid_and_the_bundle() -> None:
    conf = yaml.safe_load(TEMPLATE.read_text())
    ctx = listener_tls(conf)
    assert [s["name"] for s in ctx["tls_certificate_sds_secret_configs"]] == \
        ["spiffe://prod/gateway/envoy"]
    assert ctx["validation_context_sds_secret_config"]["name"] == "spiffe://prod"
    up = pdp_tls(conf)
    assert up["tls_certificate_sds_secret_configs"][0]["name"] == "spiffe://prod/gateway/envoy"
    combined = up["combined_validation_context"]
    assert combined["validation_context_sds_secret_config"]["name"] == "spiffe://prod"
    assert combined["default_validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "URI", "matcher": {"exact": "spiffe://prod/aam/pdp"}}]
    assert pipe(conf) == "/run/spire/sockets/agent.sock"
    # The PDP checks Envoy's certificate per call: a connection must not outlive its SVID.
    pdp = cluster(conf, "aam_pdp")
    assert pdp is not None
    assert pdp["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"][
        "common_http_protocol_options"] == {"max_connection_duration": "600s"}
    for secret in (*ctx["tls_certificate_sds_secret_configs"],
                   ctx["validation_context_sds_secret_config"]):
        grpc = secret["sds_config"]["api_config_source"]["grpc_services"]
        assert grpc == [{"envoy_grpc": {"cluster_name": SPIRE_CLUSTER}}]


def test_sds_rendering_keeps_sds_at_another_socket_and_names(tmp_path: Path) -> None:
    sds = Sds(tmp_path / "api.sock", svid="spiffe://td/gw", trust_domain="td",
              pdp_id="spiffe://td/pdp")
    conf = render(**PORTS, tls=sds, pdp_tls=sds)
    assert pipe(conf) == str(tmp_path / "api.sock")
    ctx = listener_tls(conf)
    assert ctx["tls_certificate_sds_secret_configs"][0]["name"] == "spiffe://td/gw"
    assert ctx["validation_context_sds_secret_config"]["name"] == "spiffe://td"
    combined = pdp_tls(conf)["combined_validation_context"]
    assert combined["validation_context_sds_secret_config"]["name"] == "spiffe://td"
    assert combined["default_validation_context"]["match_typed_subject_alt_names"][0][
        "matcher"] == {"exact": "spiffe://td/pdp"}
    # SDS on the listener, plaintext with the token to the PDP: the SPIRE cluster stays.
    assert cluster(render(**PORTS, tls=sds, pdp_token="t"), SPIRE_CLUSTER) is not None


def test_file_rendering_has_no_sds_and_no_spire_cluster(tmp_path: Path) -> None:
    tls = Tls(tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "b.pem")
    conf = render(**PORTS, tls=tls,
                  pdp_tls=PdpTls(tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "b.pem",
                                 "spiffe://prod/aam/pdp"))
    assert "sds_config" not in yaml.safe_dump(conf)
    assert cluster(conf, SPIRE_CLUSTER) is None
    ctx = listener_tls(conf)
    assert ctx["tls_certificates"][0]["certificate_chain"] == {"filename": str(tmp_path / "c.pem")}
    validator = ctx["validation_context"]["custom_validator_config"]["typed_config"]
    assert validator["trust_domains"] == [{"name": "prod",
                                           "trust_bundle": {"filename": str(tmp_path / "b.pem")}}]
    up = pdp_tls(conf)["validation_context"]
    assert up["trusted_ca"] == {"filename": str(tmp_path / "b.pem")}
    assert up["match_typed_subject_alt_names"][0]["matcher"] == {"exact": "spiffe://prod/aam/pdp"}
    plain = render(**PORTS, tls=None, pdp_token="t")
    assert cluster(plain, SPIRE_CLUSTER) is None and "sds_config" not in yaml.safe_dump(plain)
