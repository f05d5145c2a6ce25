"""Authorize latency and throughput with the ledger on PostgreSQL vs off, same load.

Runs ``aam serve`` (managed OPA) as a separate process for each mode and drives
it with N client threads over gRPC; prints p50/p99 latency and throughput.
"Ledger on" means every decision reserves budget and rate state in PostgreSQL
before OPA decides and commits its hash-chained audit row before answering;
"off" means neither (so that mode uses the same policy without a budget or
rate limit, which would otherwise deny with ledger_unavailable).

    .venv/bin/python bench/ledger.py [--requests 3000] [--concurrency 8]
                                     [--ledger-url DSN] [--fsync/--no-fsync]

Without --ledger-url a throw-away PostgreSQL cluster is started on loopback
(fsync on by default, as in production). Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aam.v1 import pdp_pb2, pdp_pb2_grpc  # noqa: E402
from pdp.ledger.keyring import ensure_file  # noqa: E402
from pdp.opa import free_port  # noqa: E402
from tests.servers import VENV_BIN, opa_binary, run_postgres, stop, wait_until  # noqa: E402

WORKLOAD = "spiffe://bench/agent/analyst"
POLICY = """
apiVersion: access.envisionai.dev/v1
kind: AgentPolicy
metadata: {{name: bench}}
spec:
  identity: {{workload: {workload}}}
  models: {{allow: [summarization]}}
{limits}
"""
LIMITS = """  budget: {daily_usd: 1000000, monthly_usd: 10000000}
  rate: {requests_per_minute: 10000000, tokens_per_minute: 100000000000}"""


@contextlib.contextmanager
def pdp(policies: Path, ledger_url: str, tmp: Path) -> Iterator[str]:
    addr = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AAM_")}
    env.update({"AAM_PLAINTEXT": "true", "AAM_LEDGER_URL": ledger_url, "AAM_LEDGER_MIGRATE": "true",
                "AAM_OPA_BINARY": opa_binary(), "AAM_LOG_LEVEL": "warning",
                # a loaded 2-core machine must not turn slow answers into denies
                "AAM_OPA_TIMEOUT_MS": "5000", "AAM_LEDGER_TIMEOUT_MS": "5000",
                "AAM_AUDIT_KEY_FILE": str(ensure_file(tmp / "audit.key").path),
                "AAM_AUDIT_ANCHOR_FILE": str(tmp / "audit.anchor")})
    log = tmp / "pdp.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(VENV_BIN / "aam"), "serve", "--policies", str(policies),
                                 "--grpc-addr", addr], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        def ready() -> bool:
            with grpc.insecure_channel(addr) as ch:
                grpc.channel_ready_future(ch).result(timeout=1)
                return True
        wait_until(ready, 60, "PDP", proc, log)
        yield addr
    finally:
        stop(proc)


def drive(addr: str, requests: int, concurrency: int) -> tuple[list[float], float, Counter[str]]:
    """Latencies (s), wall time (s) and the reasons of calls that were not ALLOW."""
    latencies: list[float] = []
    not_allowed: Counter[str] = Counter()
    lock = threading.Lock()
    per_client = requests // concurrency
    req = pdp_pb2.AuthorizeRequest(identity=pdp_pb2.Identity(spiffe_id=WORKLOAD),
                                   model="summarization", estimated_tokens=1000)

    def client() -> None:
        mine, bad = [], Counter()
        with grpc.insecure_channel(addr) as ch:
            stub = pdp_pb2_grpc.PolicyDecisionServiceStub(ch)
            for _ in range(20):  # warm up the channel and the server
                stub.Authorize(req, timeout=10)
            barrier.wait()
            for _ in range(per_client):
                t0 = time.perf_counter()
                resp = stub.Authorize(req, timeout=10)
                mine.append(time.perf_counter() - t0)
                if resp.decision != pdp_pb2.DECISION_ALLOW:
                    bad.update(r.code for r in resp.reasons)
        with lock:
            latencies.extend(mine)
            not_allowed.update(bad)

    barrier = threading.Barrier(concurrency + 1)
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - t0, not_allowed


def report(name: str, latencies: list[float], wall: float, not_allowed: Counter[str]) -> None:
    q = statistics.quantiles(latencies, n=100)
    print(f"{name:<24} {len(latencies):>6} calls  p50 {q[49] * 1e3:7.2f} ms  "
          f"p99 {q[98] * 1e3:7.2f} ms  {len(latencies) / wall:8.0f} calls/s"
          + (f"  (not ALLOW: {dict(not_allowed)})" if not_allowed else ""), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--ledger-url", help="PostgreSQL DSN (default: a throw-away local cluster)")
    ap.add_argument("--fsync", action=argparse.BooleanOptionalAction, default=True,
                    help="fsync on the throw-away cluster (default on)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="aam-bench-") as tmp_s, contextlib.ExitStack() as es:
        tmp = Path(tmp_s)
        dsn = args.ledger_url or es.enter_context(run_postgres(fsync=args.fsync)).dsn
        print(f"Authorize, model call, {args.requests} calls, {args.concurrency} concurrent clients, "
              f"{os.cpu_count()} CPUs shared by clients, PDP, OPA and PostgreSQL"
              + ("" if args.ledger_url else f" (fsync {'on' if args.fsync else 'off'})"), flush=True)
        for name, limits, url in (("ledger off", "", "off"), ("ledger on (PostgreSQL)", LIMITS, dsn)):
            policies = tmp / name.split()[1]
            policies.mkdir()
            (policies / "p.yaml").write_text(POLICY.format(workload=WORKLOAD, limits=limits))
            (policies / "routes.yaml").write_text((ROOT / "examples" / "model-routes.yaml").read_text())
            with pdp(policies, url, tmp) as addr:
                report(name, *drive(addr, args.requests, args.concurrency))


if __name__ == "__main__":
    main()
