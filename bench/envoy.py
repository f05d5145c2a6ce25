"""HTTP load through the real Envoy: ext_authz (the PDP + OPA + ledger) on vs Envoy alone.

Runs deploy/envoy/envoy.yaml (rendered plaintext, identity from a trusted
x-forwarded-client-cert, routes answered by Envoy's direct_response so no
upstream is measured) under wrk, and prints throughput and p50/p99 per case. The PDP
runs on a fresh embedded (SQLite) ledger and without ToolCredentials (no Vault).

    .venv/bin/python -m bench.envoy [--duration 5] [--connections 1,8,32]
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pdp.config import Settings, split_addr
from pdp.ledger.keyring import ensure_file
from pdp.opa import free_port
from pdp.secretfile import ensure_secret
from pdp.stack import Stack
from tests.e2e.envoy import run_envoy
from tests.servers import VENV_BIN, opa_binary

ROOT = Path(__file__).resolve().parents[1]
WORKLOAD = "spiffe://prod/agent/finance-analyst"
CASES = {
    # name: (path, body, expected status)
    "tool allow": ("/tools/salesforce.accounts/read", '{"account":"001"}', 200),
    "tool deny": ("/tools/salesforce.accounts/export", '{"account":"001"}', 403),
    "model allow": ("/v1/chat/completions", '{"model":"reasoning-high","max_tokens":64}', 200),
}


def policies_without_credentials(target: Path) -> Path:
    """The example policies minus ToolCredentials: no Vault in this benchmark
    (bench/broker.py measures the broker)."""
    target.mkdir()
    for f in sorted((ROOT / "examples").glob("*.yaml")):
        if "kind: ToolCredential" not in f.read_text():
            shutil.copy(f, target / f.name)
    return target


@dataclass(frozen=True)
class Result:
    case: str
    authz: bool
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    unexpected: int


def direct_response(conf: dict[str, Any]) -> dict[str, Any]:
    """Answer every route in Envoy itself, so the figures are Envoy (+ ext_authz) only."""
    (listener,) = conf["static_resources"]["listeners"]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    for vh in hcm["route_config"]["virtual_hosts"]:
        for route in vh["routes"]:
            route.pop("route", None)
            route["direct_response"] = {"status": 200, "body": {"inline_string": "ok"}}
    return conf


@contextlib.contextmanager
def envoy(pdp_port: int, authz: bool, concurrency: int, token: str) -> Iterator[int]:
    with run_envoy(pdp_port=pdp_port, upstream_port=free_port(), tls=None, ext_authz=authz,
                   concurrency=concurrency, pdp_token=token, edit=direct_response) as proxy:
        yield proxy.port


LUA = """
wrk.method = "POST"
wrk.body = [[{body}]]
wrk.headers["content-type"] = "application/json"
wrk.headers["authorization"] = "Bearer agent-own-key"
wrk.headers["x-forwarded-client-cert"] = "URI={workload}"
"""
_LAT = re.compile(r"^\s*(50|99)(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(port: int, case: str, connections: int, duration: int) -> tuple[float, float, float, int, int]:
    path, body, status = CASES[case]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(LUA.replace("{body}", body).replace("{workload}", WORKLOAD))
    proc = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", f.name,
         f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed: {proc.stdout}{proc.stderr}")
    out = proc.stdout
    Path(f.name).unlink()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = {m.group(1): float(m.group(2)) * _UNIT[m.group(3)] for m in _LAT.finditer(out)}
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    bad = int(non2xx.group(1)) if non2xx else 0
    unexpected = bad if status == 200 else total - bad
    return rps, lat["50"], lat["99"], total, unexpected


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--duration", type=int, default=5, help="seconds per run")
    ap.add_argument("--connections", default="1,8,32", help="comma-separated wrk connection counts")
    ap.add_argument("--envoy-workers", type=int, default=1)
    args = ap.parse_args(argv)
    if not shutil.which("wrk"):
        print("wrk not found; run scripts/setup", file=sys.stderr)
        return 1
    conns = [int(c) for c in args.connections.split(",")]
    with tempfile.TemporaryDirectory(prefix="aam-bench-") as tmp:
        mapping = Path(tmp) / "mapping.toml"
        mapping.write_text("trust_xfcc = true\n")
        token_file = Path(tmp) / "gateway.token"  # Envoy's proof on the plaintext hop
        token = ensure_secret(token_file).decode().strip()
        settings = Settings.load(
            env={}, grpc_addr=f"127.0.0.1:{free_port()}", plaintext=True,
            policies=str(policies_without_credentials(Path(tmp) / "policies")),
            opa_binary=opa_binary(), log_level="warning",
            extauthz_mapping=str(mapping), shutdown_grace_s=0.5, gateway_token_file=str(token_file),
            ledger_url=f"sqlite://{tmp}/ledger.sqlite3", ledger_migrate=True,
            audit_key_file=str(ensure_file(Path(tmp) / "audit.key").path),
            audit_anchor_file=f"{tmp}/audit.anchor")
        stack = Stack(settings)
        stack.start()
        results: list[Result] = []
        try:
            pdp_port = split_addr(settings.grpc_addr)[1]
            for authz in (False, True):
                with envoy(pdp_port, authz, args.envoy_workers, token) as port:
                    for case in CASES if authz else ["tool allow"]:
                        for c in conns:
                            wrk(port, case, c, 1)  # warm-up
                            rps, p50, p99, n, bad = wrk(port, case, c, args.duration)
                            results.append(Result(case if authz else "envoy alone", authz, c,
                                                  rps, p50, p99, n, bad))
        finally:
            stack.stop()
    print(f"Envoy {envoy_version()} workers={args.envoy_workers}, wrk -t1, {args.duration}s per run, "
          "direct_response (no upstream)")
    print(f"{'case':<14}{'ext_authz':>10}{'conns':>7}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'requests':>10}{'unexpected':>11}")
    for r in results:
        print(f"{r.case:<14}{'on' if r.authz else 'off':>10}{r.connections:>7}{r.rps:>10.0f}"
              f"{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.requests:>10}{r.unexpected:>11}")
    return 0


def envoy_version() -> str:
    out = subprocess.run([str(VENV_BIN / "envoy"), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"/(\d+\.\d+\.\d+)/", out)
    return m.group(1) if m else "?"


if __name__ == "__main__":
    sys.exit(main())
