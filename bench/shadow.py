"""What a shadow policy costs a decision: OPA's Data API latency with and without one.

A shadow policy (``rollout: {mode: shadow}``) is evaluated in the same OPA query as the
enforced decision (rego/aam/shadow.rego), so its cost is OPA evaluation time only, never
another round trip. This starts two real OPAs, one with the bench's policy set (examples
plus generated workloads, bench/policies.py) and one with the same set plus one shadow
policy for the finance analyst that allows fewer models and tool actions than its
enforced policy, and sends both the same varied inputs (the inputs the PDP builds for the
bench's model and tool calls, bench/scenarios.py; every one distinct), sequentially over
one keep-alive connection each, in interleaved rounds (ABBA). It prints p50/p99 per
request group (the shadowed workload, the others) and OPA's CPU per decision, and checks
that every enforced answer is the same on both OPAs.

    .venv/bin/python -m bench.shadow [--n 4000] [--rounds 4] [--policies 50]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import cycle
from pathlib import Path
from typing import Any, TextIO

from bench import scenarios
from bench.policies import EXAMPLES, write_policy_dir
from bench.procstat import cpu_seconds
from bench.report import table
from compiler import compile_paths
from pdp.config import Settings
from pdp.opa import DECISION_PATH, OpaClient, free_port

SHADOWED = scenarios.WORKLOAD  # spiffe://prod/agent/finance-analyst
# Enforced answer fields the shadow must never change (revision differs by bundle).
ENFORCED_KEYS = ("allow", "reasons", "policy", "route", "retry_after_s", "models")


def shadow_policy() -> str:
    """The finance analyst's policy in shadow, narrower: no summarization, no search."""
    text = (EXAMPLES / "finance-analyst-readonly.yaml").read_text()
    out = (text.replace("name: finance-analyst-readonly", "name: finance-analyst-next")
           .replace("allow: [reasoning-high, summarization]", "allow: [reasoning-high]")
           .replace("actions: [read, search]", "actions: [read]")
           .replace("spec:\n", "spec:\n  rollout: {mode: shadow}\n", 1))
    assert out.count("finance-analyst-next") == 1 and "mode: shadow" in out
    return out


def inputs(n: int) -> list[dict[str, Any]]:
    """``n`` distinct OPA inputs: the bench's model and tool calls in turn."""
    variants = [v.payload for pair in zip(scenarios.model_calls(), scenarios.tool_calls(), strict=True)
                for v in pair]
    return [scenarios.render(scenarios.opa_input(p), k, "sh") for k, p in zip(range(n), cycle(variants))]


def start_opa(bundle: Path) -> tuple[subprocess.Popen[bytes], OpaClient]:
    port = free_port()
    proc = subprocess.Popen(
        [Settings.load(env={}).opa_path(), "run", "--server", "--skip-version-check",
         "--addr", f"127.0.0.1:{port}", "--log-level", "error", "--bundle", str(bundle)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "GOGC": "400"})
    client = OpaClient(f"http://127.0.0.1:{port}", 5)
    deadline = time.monotonic() + 20
    while not client.healthy():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("OPA did not start")
        time.sleep(0.05)
    return proc, client


def _enforced(d: Any) -> str:
    return json.dumps({k: d.get(k) for k in ENFORCED_KEYS}, sort_keys=True)


def run(n: int, rounds: int, policies: int, out: TextIO) -> None:
    docs = inputs(n)
    mine = {i for i, d in enumerate(docs) if d["identity"]["spiffe_id"] == SHADOWED}
    groups = {"shadowed, model": [i for i in sorted(mine) if docs[i]["model"]],
              "shadowed, tool": [i for i in sorted(mine) if not docs[i]["model"]],
              "others": [i for i in range(n) if i not in mine]}
    with tempfile.TemporaryDirectory(prefix="aam-bench-shadow-") as tmp:
        base = write_policy_dir(Path(tmp) / "base", policies)
        shadowed = write_policy_dir(Path(tmp) / "shadow", policies)
        (shadowed / "finance-analyst-next.yaml").write_text(shadow_policy())
        opas: dict[str, tuple[subprocess.Popen[bytes], OpaClient]] = {}
        try:
            for name, d in (("without shadow", base), ("with shadow", shadowed)):
                path = Path(tmp) / f"{name.replace(' ', '-')}.tar.gz"
                path.write_bytes(compile_paths([d]).to_tar_gz())
                opas[name] = start_opa(path)
            answers = {name: [c.query(DECISION_PATH, d) for d in docs] for name, (_, c) in opas.items()}
            a, b = answers["without shadow"], answers["with shadow"]
            changed = sum(_enforced(x) != _enforced(y) for x, y in zip(a, b, strict=True))
            disagreeing = sum(1 for i in mine if (b[i].get("shadow") or {}).get("allow") != b[i]["allow"])
            if changed or any(b[i]["shadow"] is None for i in mine) \
                    or any(b[i]["shadow"] is not None for i in groups["others"]):
                raise SystemExit(f"the shadow changed {changed} enforced answer(s), or is missing")
            lat: dict[str, list[float]] = {name: [0.0] * n for name in opas}
            cpu = dict.fromkeys(opas, 0.0)
            for r in range(rounds):
                order = list(opas.items()) if r % 2 == 0 else list(opas.items())[::-1]  # ABBA
                for name, (proc, client) in order:
                    chunk = range(r * n // rounds, (r + 1) * n // rounds)
                    cpu0 = cpu_seconds(proc.pid)
                    for i in chunk:
                        t = time.perf_counter()
                        client.query(DECISION_PATH, docs[i])
                        lat[name][i] = time.perf_counter() - t
                    cpu[name] += cpu_seconds(proc.pid) - cpu0
        finally:
            for proc, client in opas.values():
                client.close()
                proc.terminate()
                proc.wait()
    rows = []
    for name in opas:
        for group, idx in groups.items():
            ts = sorted(lat[name][i] for i in idx)
            rows.append([name, group, str(len(ts)), f"{statistics.median(ts) * 1e6:,.0f}",
                         f"{ts[int(len(ts) * 0.99)] * 1e6:,.0f}"])
    print(f"OPA Data API decision latency, {policies} AgentPolicies, {n} distinct inputs (model and "
          f"tool calls over {len({d['identity']['spiffe_id'] for d in docs})} workloads), sequential "
          f"keep-alive, {rounds} interleaved rounds; one shadow policy on {SHADOWED}\n", file=out)
    print(table(["bundle", "requests", "n", "p50 µs", "p99 µs"], rows), file=out)
    print("\nOPA CPU per decision, all requests: "
          + ", ".join(f"{name} {cpu[name] / n * 1e6:,.0f} µs" for name in opas), file=out)
    print(f"\nenforced answers identical on both OPAs: {n - changed}/{n}; shadow disagreed on "
          f"{disagreeing}/{len(mine)} shadowed decisions", file=out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000, help="distinct inputs, each sent once per bundle")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds")
    ap.add_argument("--policies", type=int, default=50, help="AgentPolicies in the bundle")
    args = ap.parse_args(argv)
    run(args.n, args.rounds, args.policies, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
