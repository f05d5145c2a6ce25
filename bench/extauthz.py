"""ext_authz Check: AAM's Authorization service against opa-envoy-plugin, same requests.

    .venv/bin/python -m bench.extauthz [--rate 500] [--seconds 10] [--opa-envoy-plugin PATH]

Both get the same Envoy CheckRequest (xds-protos types, as Envoy sends it with
include_peer_certificate and with_request_body) for an allowed tool call, from
ghz at a fixed open-loop rate and at saturation. AAM answers with its whole
path (certificate cross-check, ledger reservation and durable audit on the
embedded ledger, OPA); opa-envoy-plugin evaluates the same Rego decision
library through a small shim (bench/rego/envoy_shim.rego).

opa-envoy-plugin is not served by the Go module proxy here, so this
repository does not build it: pass a binary you built (or put one at
$AAM_TOOLS_DIR/bin/opa-envoy-plugin); without one only AAM's rows print.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any, TextIO

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.protobuf import json_format
from google.rpc import code_pb2

from bench.loadgen import Load, ghz
from bench.policies import write_policy_dir
from bench.procstat import Meter
from bench.protoset import write_protoset
from bench.report import Row, latency_table
from bench.targets import AamStack
from compiler import compile_paths
from compiler.testsuite import FRESH_LEDGER
from pdp import procs
from pdp.config import DEFAULT_TOOLS_DIR
from pdp.opa import free_port
from tests.certs import CA

CHECK = "envoy.service.auth.v3.Authorization/Check"
WORKLOAD = "spiffe://prod/agent/finance-analyst"
SHIM = Path(__file__).resolve().parent / "rego" / "envoy_shim.rego"


def check_json(certificate_pem: bytes) -> dict[str, Any]:
    """The CheckRequest, as proto3 JSON for ghz: a granted tool call with a JSON body."""
    body = json.dumps({"account_id": "001-bench", "fields": ["name", "owner"], "limit": 50})
    path = "/tools/salesforce.accounts/search"
    return {"attributes": {
        "source": {"principal": WORKLOAD,
                   "certificate": urllib.parse.quote(certificate_pem.decode(), safe="")},
        "request": {"http": {
            "id": "bench", "method": "POST", "path": path, "host": "gw",
            "headers": {":method": "POST", ":path": path, "content-type": "application/json"},
            "body": body, "size": str(len(body))}},
    }}


def allowed_once(addr: str, payload: dict[str, Any]) -> bool:
    req = json_format.ParseDict(payload, external_auth_pb2.CheckRequest())
    with grpc.insecure_channel(addr) as ch:
        resp = external_auth_pb2_grpc.AuthorizationStub(ch).Check(req, timeout=5)
    return resp.status.code == code_pb2.OK


def plugin_binary(given: str) -> str | None:
    for candidate in (given, str(DEFAULT_TOOLS_DIR / "bin" / "opa-envoy-plugin")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


class PluginStack:
    """opa-envoy-plugin serving ext_authz gRPC with AAM's bundle plus the shim."""

    def __init__(self, binary: str, policies: Path, work: Path) -> None:
        self.work = work
        bundle = work / "bundle.tar.gz"
        bundle.write_bytes(compile_paths([policies]).to_tar_gz())
        shim = work / "shim"  # a second bundle (root aambench): the shim and a fresh ledger's state
        (shim / "aambench").mkdir(parents=True)
        (shim / ".manifest").write_text(json.dumps({"roots": ["aambench"]}))
        (shim / "aambench" / "envoy_shim.rego").write_bytes(SHIM.read_bytes())
        (shim / "aambench" / "data.json").write_text(json.dumps({"fresh_ledger": FRESH_LEDGER}))
        self.grpc_addr = f"127.0.0.1:{free_port()}"
        log = work / "plugin.log"
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [binary, "run", "--server", "--skip-version-check", "--addr", f"127.0.0.1:{free_port()}",
                 "--log-level", "error",
                 "--set", f"plugins.envoy_ext_authz_grpc.addr={self.grpc_addr}",
                 "--set", "plugins.envoy_ext_authz_grpc.path=aambench/envoy/allow",
                 "--set", "decision_logs.console=false",
                 "--bundle", str(bundle), str(shim)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.pids = {"opa": self.proc.pid}
        try:
            procs.wait_until(lambda: grpc.channel_ready_future(
                grpc.insecure_channel(self.grpc_addr)).result(timeout=1) is None,
                60, "opa-envoy-plugin", self.proc, log)
        except BaseException:
            procs.stop(self.proc)
            raise

    def stop(self) -> None:
        procs.stop(self.proc)


def measure(name: str, addr: str, payload: dict[str, Any], pids: dict[str, int], loads: list[Load],
            protoset: Path, out: TextIO) -> list[Row]:
    if not allowed_once(addr, payload):
        raise RuntimeError(f"{name}: the Check request was not allowed")
    ghz(addr, CHECK, payload, Load(200, 2), protoset)  # warm-up
    rows = []
    for load in loads:
        with Meter(pids) as meter:
            result = ghz(addr, CHECK, payload, load, protoset)
        rows.append(Row(name, load, result, meter.usage))
        print(f"  {name:32} {load.label:10} p50 {result.p50_ms:.2f} ms  p99 {result.p99_ms:.2f} ms"
              f"  {result.throughput:.0f}/s", file=out, flush=True)
    return rows


def main(argv: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    p = argparse.ArgumentParser(prog="bench.extauthz", description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=int, default=500, help="offered Check/s for the open-loop run")
    p.add_argument("--seconds", type=float, default=10, help="duration of each run")
    p.add_argument("--concurrency", type=int, default=16, help="workers for the saturation run")
    p.add_argument("--opa-envoy-plugin", default="", help="opa-envoy-plugin binary (baseline)")
    args = p.parse_args(argv)
    loads = [Load(args.rate, args.seconds), Load(0, args.seconds, args.concurrency)]
    svid = CA("prod").svid(WORKLOAD)
    payload = check_json(svid.cert_pem)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="aam-bench-extauthz-") as tmp:
        work = Path(tmp)
        protoset = write_protoset([external_auth_pb2.DESCRIPTOR], work / "extauthz.protoset")
        policies = write_policy_dir(work / "p10", 10)
        with AamStack(policies) as stack:
            rows += measure("aam: ext_authz Check", stack.grpc_addr, payload, stack.pids, loads,
                            protoset, out)
        binary = plugin_binary(args.opa_envoy_plugin)
        if binary is None:
            print("  opa-envoy-plugin: no binary (the Go module proxy here refuses the module);"
                  " pass --opa-envoy-plugin PATH for the baseline", file=out)
        else:
            plugin = PluginStack(binary, policies, work)
            try:
                rows += measure("opa-envoy-plugin: Check", plugin.grpc_addr, payload, plugin.pids,
                                loads, protoset, out)
            finally:
                plugin.stop()
    print("\n" + latency_table(rows), file=out)
    if len(rows) == 4:
        for i, label in enumerate(("fixed rate", "saturation")):
            a, b = rows[i].result, rows[i + 2].result
            assert a is not None and b is not None
            print(f"AAM / opa-envoy-plugin at {label}: p50 x {a.p50_ms / b.p50_ms:.2f},"
                  f" p99 x {a.p99_ms / b.p99_ms:.2f}, throughput x {a.throughput / b.throughput:.2f}",
                  file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
