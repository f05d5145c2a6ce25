"""Which HTTP client, and which transport, should the PDP use for OPA's Data API? Measured
against the real OPA.

Starts OPA (the scripts/setup build) with the example bundle, listening on TCP
loopback and on a Unix socket (in a private 0700 directory) at once, then:

- clients: sends the same decision query sequentially over one keep-alive
  connection with each HTTP client, checks every client gets the same answer;
- transports: the PDP's own client (pdp.opa.OpaClient over pdp.http1) on TCP
  keep-alive against the same client on the Unix socket, with the input the PDP
  builds for the bench's tool call: sequentially, then with ``--threads``
  threads (one connection each, as the PDP's gRPC workers have), A/B
  interleaved in rounds, each round's figures printed so the spread shows.

    .venv/bin/python bench/opa_client.py [--n 3000] [--only clients|transports]
        [--threads 8] [--rounds 6] [--round-s 2]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
import urllib3

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, bench/ would come first on the path and shadow packages (bench/envoy.py).
sys.path[:] = [str(ROOT), *(p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench")]

from bench.procstat import cpu_seconds  # noqa: E402
from compiler import compile_paths  # noqa: E402
from pdp.config import Settings  # noqa: E402
from pdp.opa import DECISION_PATH, OpaClient, free_port  # noqa: E402

INPUT = {"identity": {"spiffe_id": "spiffe://prod/agent/finance-analyst"},
         "model": "", "tool": "salesforce.accounts", "action": "export",
         "params": {"limit": 10}, "context": {}, "estimate": {"tokens": 0, "cost_usd": 0}}
BODY = json.dumps({"input": INPUT}, separators=(",", ":"))
HEADERS = {"Content-Type": "application/json"}
REVISION_PATH = "/v1/data/aam/compiled/revision"


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


def tool_call_input() -> dict[str, Any]:
    """The OPA input the PDP builds for the bench's first tool-call variant (an allow)."""
    from bench import scenarios

    s = scenarios.by_name("opa: authorize tool call")
    return scenarios.render(s.variants[0].payload, 0)["input"]


def sequential(clients: dict[str, OpaClient], doc: dict[str, Any], n: int, rounds: int,
               path: str = DECISION_PATH) -> dict[str, list[tuple[float, float, float]]]:
    """Per client, per round: (throughput = 1 / mean latency, p50 s, p99 s); rounds interleave
    the clients so a noisy neighbour hurts them alike."""
    for c in clients.values():
        for _ in range(200):
            c.query(path, doc)
    out: dict[str, list[tuple[float, float, float]]] = {name: [] for name in clients}
    for r in range(rounds):
        order = list(clients.items()) if r % 2 == 0 else list(clients.items())[::-1]  # ABBA
        for name, c in order:
            ts = []
            for _ in range(n // rounds):
                t = time.perf_counter()
                c.query(path, doc)
                ts.append(time.perf_counter() - t)
            ts.sort()
            out[name].append((len(ts) / sum(ts), statistics.median(ts), ts[int(len(ts) * 0.99)]))
    return out


def machine_busy_s() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat), to see what else ran."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def threaded(client: OpaClient, doc: dict[str, Any], threads: int, seconds: float, opa_pid: int
             ) -> tuple[float, float, float, float, float, float]:
    """``threads`` threads calling as fast as they can for ``seconds``, one connection each:
    (throughput/s, p50 s, p99 s, client CPU ms per call, OPA CPU ms per call, CPU % of one core
    that other processes used meanwhile)."""
    lat: list[list[float]] = [[] for _ in range(threads)]
    start, stop = threading.Barrier(threads + 1), threading.Event()

    def work(mine: list[float]) -> None:
        client.query(DECISION_PATH, doc)  # this thread's connection, before the clock starts
        start.wait()
        while not stop.is_set():
            t = time.perf_counter()
            client.query(DECISION_PATH, doc)
            mine.append(time.perf_counter() - t)

    workers = [threading.Thread(target=work, args=(lat[i],)) for i in range(threads)]
    for w in workers:
        w.start()
    start.wait()
    t0, cpu0, opa0, busy0 = time.perf_counter(), time.process_time(), cpu_seconds(opa_pid), machine_busy_s()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join()
    wall, cpu, opa_cpu = time.perf_counter() - t0, time.process_time() - cpu0, cpu_seconds(opa_pid) - opa0
    others = max(0.0, machine_busy_s() - busy0 - cpu - opa_cpu)
    ts = sorted(t for mine in lat for t in mine)
    n = len(ts)
    return n / wall, ts[n // 2], ts[int(n * 0.99)], 1000 * cpu / n, 1000 * opa_cpu / n, 100 * others / wall


def _spread(values: list[float], fmt: str) -> str:
    """median [min-max] over the rounds."""
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


def transports(tcp_url: str, unix_url: str, opa_pid: int, args: argparse.Namespace) -> None:
    doc = tool_call_input()
    clients = {"TCP keep-alive": OpaClient(tcp_url, 5), "Unix socket": OpaClient(unix_url, 5)}
    answers = {json.dumps(c.query(DECISION_PATH, doc), sort_keys=True) for c in clients.values()}
    if len(answers) != 1 or not json.loads(answers.pop()).get("allow"):
        raise SystemExit("transports disagree, or the tool call is not allowed")
    for what, path, query in (("the bench's tool-call input (allow)", DECISION_PATH, doc),
                              ("a trivial document (the bundle revision): the transport's floor",
                               REVISION_PATH, {})):
        seq = sequential(clients, query, args.n, args.rounds, path)
        print(f"\nOPA Data API, {what}, pdp.opa.OpaClient; sequential, one keep-alive connection, "
              f"n={args.n} per transport in {args.rounds} interleaved rounds (ABBA); median [min-max] "
              f"over rounds\n")
        print(f"| {'transport':<15} | {'throughput':>22} | {'p50 µs':>16} | {'p99 µs':>19} |")
        print(f"|{'-' * 17}|{'-' * 24}|{'-' * 18}|{'-' * 21}|")
        for name, rows in seq.items():
            print(f"| {name:<15} | {_spread([r[0] for r in rows], '{:,.0f}'):>20}/s "
                  f"| {_spread([r[1] * 1e6 for r in rows], '{:.0f}'):>16} "
                  f"| {_spread([r[2] * 1e6 for r in rows], '{:.0f}'):>19} |")
    par: dict[str, list[tuple[float, float, float, float, float, float]]] = {name: [] for name in clients}
    for r in range(args.rounds):
        order = list(clients.items()) if r % 2 == 0 else list(clients.items())[::-1]
        for name, c in order:
            par[name].append(threaded(c, doc, args.threads, args.round_s, opa_pid))
    print(f"\nThe same with {args.threads} threads, one connection each, closed loop, {args.round_s:g} s "
          f"per round, {args.rounds} interleaved rounds; CPU: this Python process and OPA, per call\n")
    print(f"| {'transport':<15} | {'throughput':>22} | {'p50 µs':>18} | {'p99 µs':>20} "
          f"| {'client CPU ms':>18} | {'OPA CPU ms':>18} |")
    print(f"|{'-' * 17}|{'-' * 24}|{'-' * 20}|{'-' * 22}|{'-' * 20}|{'-' * 20}|")
    for name, rows in par.items():
        print(f"| {name:<15} | {_spread([r[0] for r in rows], '{:,.0f}'):>20}/s "
              f"| {_spread([r[1] * 1e6 for r in rows], '{:.0f}'):>18} "
              f"| {_spread([r[2] * 1e6 for r in rows], '{:.0f}'):>20} "
              f"| {_spread([r[3] for r in rows], '{:.3f}'):>18} "
              f"| {_spread([r[4] for r in rows], '{:.3f}'):>18} |")
    print("\nper round, throughput/s TCP / Unix (CPU % of a core other processes used meanwhile): "
          + "; ".join(f"{a[0]:,.0f} ({a[5]:.0f}%) / {b[0]:,.0f} ({b[5]:.0f}%)"
                      for a, b in zip(par["TCP keep-alive"], par["Unix socket"], strict=True)))
    for c in clients.values():
        c.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000, help="sequential queries per client or transport")
    ap.add_argument("--only", choices=("clients", "transports"), default="")
    ap.add_argument("--threads", type=int, default=8, help="threads for the concurrent transport runs")
    ap.add_argument("--rounds", type=int, default=6, help="interleaved rounds per transport")
    ap.add_argument("--round-s", type=float, default=2.0, help="seconds per concurrent round")
    args = ap.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:  # 0700: the socket's private directory
        bundle = Path(tmp) / "bundle.tar.gz"
        bundle.write_bytes(compile_paths([ROOT / "examples"]).to_tar_gz())
        unix_url = f"unix://{tmp}/opa.sock"
        opa = subprocess.Popen(
            [Settings.load(env={}).opa_path(), "run", "--server", "--skip-version-check",
             "--addr", f"127.0.0.1:{port}", "--addr", unix_url, "--unix-socket-perm", "600",
             "--log-level", "error", "--bundle", str(bundle)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "GOGC": "400"})
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 20
            while not (OpaClient(url, 1).healthy() and OpaClient(unix_url, 1).healthy()):
                if time.monotonic() > deadline:
                    raise SystemExit("OPA did not start")
                time.sleep(0.05)
            if args.only != "transports":
                clients_table(url, port, args.n)
            if args.only != "clients":
                transports(url, unix_url, opa.pid, args)
        finally:
            opa.terminate()
            opa.wait()


def clients_table(url: str, port: int, n: int) -> None:
    results = measure(clients(url, "127.0.0.1", port), n)
    rows = [(name, rate, p50, p99) for name, (rate, p50, p99, _) in results.items()]
    answers = {json.dumps(r[3], sort_keys=True) for r in results.values()}
    if len(answers) != 1:
        raise SystemExit("clients disagree about the decision")
    print(f"OPA Data API, one decision query, sequential keep-alive, n={n} per client"
          " (interleaved rounds; throughput = 1 / mean latency)\n")
    print(f"| {'client':<34} | {'throughput':>11} | {'p50':>8} | {'p99':>8} |")
    print(f"|{'-' * 36}|{'-' * 13}|{'-' * 10}|{'-' * 10}|")
    for name, rate, p50, p99 in rows:
        print(f"| {name:<34} | {rate:>9,.0f}/s | {p50 * 1e6:>5,.0f} µs | {p99 * 1e6:>5,.0f} µs |")


if __name__ == "__main__":
    main()
