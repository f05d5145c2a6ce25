"""OPA reports nothing to the PDP: the PDP writes the audit trail itself.

A ``decision_logs`` section in OPA's configuration, even ``console: false``,
turns OPA's decision-log plugin on and points it at the first service, the
PDP's bundle server. OPA then keeps every decision (input included) in an
in-memory buffer with no size limit, gzip-encodes as it goes (a quarter of its
CPU per decision) and posts the buffer to an endpoint that refuses it. OPA
flushes that buffer on a graceful shutdown, so after one decision and a stop,
any such configuration shows up as a refused POST.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import requests
import yaml

from compiler import compile_paths
from pdp.bundles import BUNDLE_PATH, BundleStore, HttpServer
from pdp.bundlesigner import BundleSigner
from pdp.config import Settings
from pdp.opa import free_port
from pdp.procs import wait_until
from tests.integration.pdp import EXAMPLES, request, running_stack, stub
from tests.servers import run_opa

ROOT = Path(__file__).resolve().parents[2]


def test_managed_opa_posts_nothing_to_the_pdp() -> None:
    with running_stack() as stack:
        http = stack.http
        assert http is not None
        _, s = stub(stack)
        assert s.Authorize(request(model="reasoning-high")).decision == 1
    assert http.unexpected == Counter()  # OPA stopped gracefully before the HTTP server


def test_shipped_sidecar_config_posts_nothing_to_the_pdp(tmp_path: Path) -> None:
    """...and verifies the PDP's signature with the public key given as its comments say."""
    config = yaml.safe_load((ROOT / "deploy" / "opa" / "config.yaml").read_text())
    keyid = config["bundles"]["aam"]["signing"]["keyid"]
    defaults = Settings()
    assert (config["keys"][keyid]["algorithm"], keyid) == (defaults.bundle_signing_alg,
                                                           defaults.bundle_signing_key_id)
    signer = BundleSigner.ephemeral(defaults.bundle_signing_alg, keyid)
    public = tmp_path / "bundle-signing.pub.pem"
    public.write_text(signer.verification.key)
    store = BundleStore(signer)
    store.publish(compile_paths([EXAMPLES]))
    with _http_server(store) as http:
        config["services"]["aam"]["url"] = http.url
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        with run_opa("--config-file", str(path), "--set-file", f"keys.{keyid}.key={public}",
                     "--shutdown-grace-period", "2") as opa:
            wait_until(lambda: requests.get(f"{opa.url}/health?bundles", timeout=1).ok, 20,
                       "OPA bundle")
            r = requests.post(f"{opa.url}/v1/data/aam/authz/decision", timeout=5, json={"input": {
                "identity": {"spiffe_id": "spiffe://prod/agent/finance-analyst"},
                "tool": "salesforce.accounts", "action": "read"}})
            assert r.json()["result"]["policy"] == "finance-analyst-readonly"
        assert http.unexpected == Counter()


def test_the_bundle_server_refuses_writes_and_counts_them() -> None:
    with _http_server(BundleStore()) as http:
        assert requests.post(f"{http.url}/logs", data=b"x", timeout=5).status_code == 405
        assert requests.put(f"{http.url}{BUNDLE_PATH}", data=b"x", timeout=5).status_code == 405
        assert http.unexpected == Counter({"POST /logs": 1, f"PUT {BUNDLE_PATH}": 1})


@contextlib.contextmanager
def _http_server(store: BundleStore) -> Iterator[HttpServer]:
    http = HttpServer("127.0.0.1", free_port(), store)
    http.start()
    try:
        yield http
    finally:
        store.close()
        http.stop()
