"""Compile N generated AgentPolicies and measure the bundle in the real OPA.

For N = 10, 1,000, 10,000 (override with --sizes): compile time (load,
validate, check, generate, tar.gz), bundle size, and decision latency p50 /
p99 through OPA's Data API (one keep-alive http.client connection, the
PDP's own OpaClient), requests spread over random workloads and mixing
model, tool and constrained-tool decisions, the sizes taking turns request
by request so that noise from other processes hits them alike. Compile CPU
time is printed next to wall time for the same reason. Prints a table;
asserts nothing. Targets: p99 at 10,000 within 1.3x of 10; compile of 10,000 under
20 s.

    .venv/bin/python bench/compile_scale.py [--sizes 10,1000,10000] [--requests 3000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compiler import compile_paths  # noqa: E402
from compiler.testsuite import (  # noqa: E402
    FRESH_LEDGER,
    opa_with_bundle,
)
from pdp.config import Settings  # noqa: E402
from pdp.engine import Engine, Request  # noqa: E402
from pdp.opa import DECISION_PATH  # noqa: E402

ROUTES = """\
apiVersion: access.envisionai.dev/v1
kind: ModelRoute
metadata: {name: reasoning-high}
spec:
  targets: [{provider: anthropic, model: claude-sonnet-4-5, region: us-east-1}]
---
apiVersion: access.envisionai.dev/v1
kind: ModelRoute
metadata: {name: summarization}
spec:
  targets: [{provider: openai, model: gpt-5-mini, region: us-east-1}]
---
apiVersion: access.envisionai.dev/v1
kind: Tool
metadata: {name: crm-accounts}
spec:
  resource: crm.accounts
  actions: [read, search, export, update, delete]
  inputSchema:
    type: object
    properties:
      limit: {type: integer}
      query: {type: string}
      filter: {type: object, properties: {region: {type: string}}}
"""

POLICY = """\
apiVersion: access.envisionai.dev/v1
kind: AgentPolicy
metadata: {{name: agent-{i}}}
spec:
  identity:
    workload: spiffe://prod/team-{team}/agent-{i}
    team: team-{team}
    environment: prod
  models: {{allow: [reasoning-high, summarization]}}
  budget: {{daily_usd: {daily}, per_request_usd: 2}}
  rate: {{requests_per_minute: 120}}
  tools:
    - resource: crm.accounts
      actions: [read, search]
      deny: [export, delete]
      constraints:
        - {{param: limit, min: 1, max: 100}}
        - {{param: filter.region, allowed_values: [eu, us]}}
        - {{param: query, pattern: "[a-z0-9 ]*", max_length: 200}}
      conditions:
        environments: [prod]
    - resource: tickets-{i}.queue
      actions: [read]
  audit: {{record: [identity, policy, action, outcome]}}
"""


def generate(n: int, directory: Path, per_file: int = 1000) -> None:
    (directory / "routes.yaml").write_text(ROUTES)
    for start in range(0, n, per_file):
        docs = [POLICY.format(i=i, team=i % 50, daily=10 + i % 90)
                for i in range(start, min(n, start + per_file))]
        (directory / f"policies-{start // per_file:03d}.yaml").write_text("---\n".join(docs))


def requests_for(n: int, count: int, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    build = Engine.build_input
    out = []
    for _ in range(count):
        i = rng.randrange(n)
        workload = f"spiffe://prod/team-{i % 50}/agent-{i}"
        kind = rng.randrange(3)
        if kind == 0:
            req = Request(workload, model=rng.choice(["reasoning-high", "summarization", "nope"]),
                          estimated_cost_usd=0.01)
        elif kind == 1:
            req = Request(workload, tool="crm.accounts", action=rng.choice(["read", "search", "export"]),
                          params={"limit": rng.randrange(0, 150), "query": "acme co",
                                  "filter": {"region": rng.choice(["eu", "us", "apac"])}},
                          context={"environment": "prod"})
        else:
            req = Request(workload, tool=f"tickets-{i}.queue", action="read")
        # The state a fresh ledger reports, as the PDP would add it: without it every
        # budgeted policy denies ledger_unavailable and only the deny path is measured.
        out.append({**build(req), "state": FRESH_LEDGER})
    return out


def percentile(sorted_values: list[float], p: float) -> float:
    k = max(0, min(len(sorted_values) - 1, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def compile_size(n: int) -> tuple[bytes, dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="aam-bench-") as tmp:
        generate(n, Path(tmp))
        t0, c0 = time.perf_counter(), time.process_time()
        blob = compile_paths([Path(tmp)]).to_tar_gz()
        return blob, {"n": n, "compile_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                      "bundle_kib": len(blob) / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,1000,10000")
    ap.add_argument("--requests", type=int, default=3000, help="decisions per size")
    ap.add_argument("--rounds", type=int, default=0,
                    help="sizes take turns in this many rounds (default: every request), so load from"
                         " other processes on this shared machine hits all sizes alike")
    args = ap.parse_args()
    opa = Settings.load().opa_path()
    sizes = [int(n) for n in args.sizes.split(",")]
    args.rounds = args.rounds or args.requests
    compiled = [compile_size(n) for n in sizes]
    rows = [row for _, row in compiled]
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(opa_with_bundle(opa, blob, timeout_s=120)) for blob, _ in compiled]
        inputs = [requests_for(n, args.requests) for n in sizes]
        lat: list[list[float]] = [[] for _ in sizes]
        allowed = [0 for _ in sizes]
        for client, docs in zip(clients, inputs, strict=True):
            for doc in docs[:300]:  # warm-up: connection, caches
                client.query(DECISION_PATH, doc)
        per_round = -(-args.requests // args.rounds)
        for r in range(args.rounds):
            for k, client in enumerate(clients):
                for doc in inputs[k][r * per_round:(r + 1) * per_round]:
                    s = time.perf_counter()
                    result = client.query(DECISION_PATH, doc)
                    lat[k].append((time.perf_counter() - s) * 1e6)
                    allowed[k] += result["allow"] is True
    for row, values, ok in zip(rows, lat, allowed, strict=True):
        values.sort()
        row.update(p50_us=percentile(values, 50), p99_us=percentile(values, 99),
                   mean_us=statistics.fmean(values), allow_pct=100 * ok / len(values))
    print(f"\n{'policies':>9} | {'compile':>9} | {'(cpu)':>9} | {'bundle':>10} | {'p50':>8} | {'p99':>8}"
          f" | {'mean':>8} | allow")
    print(f"{'-' * 9}-+-{'-' * 9}-+-{'-' * 9}-+-{'-' * 10}-+-{'-' * 8}-+-{'-' * 8}-+-{'-' * 8}-+------")
    for r in rows:
        print(f"{r['n']:>9,} | {r['compile_s']:>7.2f} s | {r['cpu_s']:>7.2f} s | {r['bundle_kib']:>6.0f} KiB"
              f" | {r['p50_us']:>5.0f} µs | {r['p99_us']:>5.0f} µs | {r['mean_us']:>5.0f} µs"
              f" | {r['allow_pct']:>4.0f}%")
    base, top = rows[0], rows[-1]
    ratio = top["p99_us"] / base["p99_us"]
    print(f"\np99 ratio N={top['n']:,} / N={base['n']:,}: {ratio:.2f}x (target <= 1.3x);"
          f" compile of {top['n']:,}: {top['compile_s']:.1f} s wall, {top['cpu_s']:.1f} s CPU"
          " (target < 20 s).")
    print(f"{args.requests} decisions per size over one keep-alive connection each, in {args.rounds}"
          f" interleaved rounds; load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs.")


if __name__ == "__main__":
    main()
