"""Which HTTP client should the PDP use for OPA's Data API? Measured against the real OPA.

Starts OPA (the scripts/setup build) with the example bundle, then sends the
same decision query sequentially over one keep-alive connection with each
client, checks every client gets the same answer, and prints a table.

    .venv/bin/python bench/opa_client.py [--n 3000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import requests
import urllib3

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compiler import compile_paths  # noqa: E402
from pdp.config import Settings  # noqa: E402
from pdp.opa import DECISION_PATH, OpaClient, free_port  # noqa: E402

INPUT = {"identity": {"spiffe_id": "spiffe://prod/agent/finance-analyst"},
         "model": "", "tool": "salesforce.accounts", "action": "export",
         "params": {"limit": 10}, "context": {}, "estimate": {"tokens": 0, "cost_usd": 0}}
BODY = json.dumps({"input": INPUT}, separators=(",", ":"))
HEADERS = {"Content-Type": "application/json"}


def clients(url: str, host: str, port: int) -> dict[str, Callable[[], object]]:
    session = requests.Session()
    plain = requests.Session()
    plain.trust_env = False
    pool = urllib3.HTTPConnectionPool(host, port, maxsize=1)
    conn = http.client.HTTPConnection(host, port, timeout=5)
    opa = OpaClient(url, 5)

    def via_http_client() -> object:
        conn.request("POST", DECISION_PATH, BODY, HEADERS)
        return json.loads(conn.getresponse().read())["result"]

    return {
        "requests.Session": lambda: session.post(url + DECISION_PATH, data=BODY, headers=HEADERS,
                                                 timeout=5).json()["result"],
        "requests.Session trust_env=False": lambda: plain.post(
            url + DECISION_PATH, data=BODY, headers=HEADERS, timeout=5).json()["result"],
        "urllib3.HTTPConnectionPool": lambda: json.loads(
            pool.request("POST", DECISION_PATH, body=BODY, headers=HEADERS).data)["result"],
        "http.client.HTTPConnection": via_http_client,
        "pdp.opa.OpaClient (pdp.http1)": lambda: opa.query(DECISION_PATH, INPUT),
    }


def measure(calls: dict[str, Callable[[], object]], n: int, rounds: int = 10
            ) -> dict[str, tuple[float, float, float, object]]:
    """Interleave the clients in rounds so a noisy neighbour hurts them all alike."""
    answers = {name: [call() for _ in range(200)][-1] for name, call in calls.items()}
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            for _ in range(n // rounds):
                t = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - t)
    out = {}
    for name, ts in times.items():
        ts.sort()
        out[name] = (len(ts) / sum(ts), statistics.median(ts), ts[int(len(ts) * 0.99)], answers[name])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000, help="queries per client")
    args = ap.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "bundle.tar.gz"
        bundle.write_bytes(compile_paths([ROOT / "examples"]).to_tar_gz())
        opa = subprocess.Popen(
            [Settings.load(env={}).opa_path(), "run", "--server", "--skip-version-check",
             "--addr", f"127.0.0.1:{port}", "--log-level", "error", "--bundle", str(bundle)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 20
            while not OpaClient(url, 1).healthy():
                if time.monotonic() > deadline:
                    raise SystemExit("OPA did not start")
                time.sleep(0.05)
            results = measure(clients(url, "127.0.0.1", port), args.n)
            rows = [(name, rate, p50, p99) for name, (rate, p50, p99, _) in results.items()]
            answers = {json.dumps(r[3], sort_keys=True) for r in results.values()}
        finally:
            opa.terminate()
            opa.wait()
    if len(answers) != 1:
        raise SystemExit("clients disagree about the decision")
    print(f"OPA Data API, one decision query, sequential keep-alive, n={args.n} per client"
          " (interleaved rounds; throughput = 1 / mean latency)\n")
    print(f"| {'client':<34} | {'throughput':>11} | {'p50':>8} | {'p99':>8} |")
    print(f"|{'-' * 36}|{'-' * 13}|{'-' * 10}|{'-' * 10}|")
    for name, rate, p50, p99 in rows:
        print(f"| {name:<34} | {rate:>9,.0f}/s | {p50 * 1e6:>5,.0f} µs | {p99 * 1e6:>5,.0f} µs |")


if __name__ == "__main__":
    main()
