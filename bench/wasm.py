"""Issue 23, point 3: one fewer hop? OPA's compiled Wasm in this process against OPA's Data API.

Compiles the examples plus the bench's generated workloads (bench/policies.py)
into a bundle, builds it to Wasm with the real OPA (``opa build -t wasm -e
aam/authz/decision``), and runs one real OPA server on that bundle, listening
on TCP loopback and on a Unix socket. Then, on one thread:

- equality: every input through both engines, compared as JSON values,
  mismatches counted and the first ones shown (reasons keep their order);
- latency: the same inputs through in-process Wasm (bench/opawasm.py), and
  through the PDP's own client (pdp.opa.OpaClient) over TCP keep-alive and over
  the Unix socket; each round runs all inputs per engine, in rotated order, so
  a noisy neighbour hurts each alike. CPU per decision counts this process and
  OPA: on a 2-core box that is what bounds throughput.

Inputs are varied (see :func:`inputs`): the bench's model and tool calls
(bench/scenarios.py, every call unique), denials made from them (wrong action,
constraint violations, unknown tools and workloads, spent budgets, rate
limits, support-triage's time window at pinned times over a week, a clock that
does not parse, several at once), and every case of the YAML policy suites.

    .venv/bin/python -m bench.wasm [--n 3000] [--rounds 3] [--seed 23]

``--rounds 0 --n 10000`` is the equality check alone.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import json
import os
import random
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import scenarios
from bench.opawasm import OpaWasm, read_wasm_bundle
from bench.policies import BENCH_AGENTS, EXAMPLE_POLICIES, EXAMPLES, write_policy_dir
from bench.procstat import cpu_seconds
from bench.report import table
from compiler import compile_paths, testsuite
from pdp.config import Settings
from pdp.opa import DECISION_PATH, OpaClient, free_port

ENTRYPOINT = "aam/authz/decision"
WASM_API, WASM = "Wasm in-process, wasmtime-py Func", "Wasm in-process, raw C calls"
TCP, UNIX = "Data API, TCP keep-alive", "Data API, Unix socket"


@dataclass(frozen=True)
class Built:
    bundle: Path  # the bundle OPA's server loads (.tar.gz)
    wasm: Path  # opa build -t wasm output
    revision: str




def build(tmp: Path, opa: str) -> Built:
    """The bench's policy set, as a bundle and as OPA-compiled Wasm."""
    policies = write_policy_dir(tmp / "policies", EXAMPLE_POLICIES + BENCH_AGENTS)
    bundle = compile_paths([policies])
    tree = tmp / "bundle"
    for name, body in bundle.files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(body)
    (tmp / "bundle.tar.gz").write_bytes(bundle.to_tar_gz())
    # From inside the tree: the module embeds the paths of its Rego files, so the same policies
    # give the same bytes wherever they are built.
    subprocess.run([opa, "build", "-t", "wasm", "-e", ENTRYPOINT, "-b", ".", "-o", str(tmp / "wasm.tar.gz")],
                   check=True, capture_output=True, cwd=tree)
    return Built(tmp / "bundle.tar.gz", tmp / "wasm.tar.gz", bundle.revision)


@contextlib.contextmanager
def opa_server(bundle: Path, opa: str, sock_dir: Path) -> Iterator[tuple[str, str, int]]:
    """OPA on TCP loopback and on a Unix socket at once: (tcp_url, unix_url, pid)."""
    port, unix_url = free_port(), f"unix://{sock_dir}/opa.sock"
    proc = subprocess.Popen(
        [opa, "run", "--server", "--skip-version-check", "--addr", f"127.0.0.1:{port}",
         "--addr", unix_url, "--unix-socket-perm", "600", "--log-level", "error",
         "--bundle", str(bundle)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "GOGC": "400"})
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 20
        while not (OpaClient(url, 1).healthy() and OpaClient(unix_url, 1).healthy()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("OPA did not start")
            time.sleep(0.05)
        yield url, unix_url, proc.pid
    finally:
        proc.terminate()
        proc.wait()


# --- inputs -------------------------------------------------------------------------------

TRIAGE = "spiffe://prod/agent/support-triage"
WEEK = 1_795_392_000  # 2026-11-23T00:00:00Z, a Monday


def _as_triage(rng: random.Random, k: int, d: dict[str, Any]) -> None:
    """The support-triage policy's zendesk.tickets, at a pinned time somewhere in a week:
    its time window (Europe/Berlin, weekdays), environments, region and constraints."""
    at = dt.datetime.fromtimestamp(WEEK + (k * 2_347) % (7 * 86_400), dt.UTC)
    d.update(identity={"spiffe_id": TRIAGE}, tool="zendesk.tickets",
             action=rng.choice(["read", "search", "comment", "delete"]),
             params={"query": f"printer {k}", "limit": float(rng.choice([5, 20, 50, 51])),
                     "filter": {"status": rng.choice(["new", "open", "pending", "closed"])}},
             context={"environment": rng.choice(["prod", "prod", "staging"]),
                      "region": rng.choice(["eu-west-1", "eu-central-1", "us-east-1"])},
             now=at.isoformat().replace("+00:00", "Z"))


def _tool_mutations(rng: random.Random, k: int) -> list[Callable[[dict[str, Any]], None]]:
    def params(d: dict[str, Any]) -> dict[str, Any]:
        return d.setdefault("params", {})
    return [
        lambda d: _as_triage(rng, k, d),
        lambda d: _as_triage(rng, k + 1, d),
        lambda d: d.update(action=rng.choice(["delete", "export", "write", "admin"])),
        lambda d: params(d).update(limit=float(1000 + k)),
        lambda d: params(d).update(limit=0.0),
        lambda d: params(d).update(query=f"status:open; drop {k}"),
        lambda d: params(d).update(query="q" * (200 + k % 90)),
        lambda d: params(d).update(fields=["name", "ssn"], limit=f"{k}"),
        lambda d: d.update(tool=rng.choice(["hr.salaries", "crm.customers", "bench.system49.records"])),
        lambda d: d["context"].update(model_region=rng.choice(["us-east-1", "", "ap-south-1"])),
        lambda d: d["context"].update(environment=rng.choice(["dev", "staging", "prod"])),
    ]


def _model_mutations(rng: random.Random, k: int) -> list[Callable[[dict[str, Any]], None]]:
    return [
        lambda d: d.update(model=rng.choice(["image-gen", "reasoning-eu", "no-such-route"])),
        lambda d: d["estimate"].update(tokens=rng.choice([150_000 + k, 99_000, 1_000_000])),
        lambda d: d["estimate"].update(cost_usd=rng.choice([0.75, 2.5, 1e-7 * k])),
        lambda d: d["context"].update(data_residency=rng.choice(["us-*", "eu-*", "ap-*"])),
        lambda d: d["state"]["budget"]["daily"].update(spent_usd=rng.choice([9.999, 1e6, 19.5 + k % 7])),
        lambda d: d["state"]["budget"]["monthly"].update(reserved_usd=1e4),
        lambda d: d["state"]["rate"].update(requests_last_minute=100_000, retry_after_s=17),
        lambda d: d["state"]["rate"]["route"].update(tokens_last_minute=10**9, retry_after_s=3 + k % 50),
    ]


def _any_mutations(rng: random.Random, k: int) -> list[Callable[[dict[str, Any]], None]]:
    return [
        lambda d: d["identity"].update(spiffe_id=f"spiffe://prod/agent/stranger-{k}"),
        lambda d: d.update(model="", tool="", action=""),
        lambda d: d.update(now=rng.choice(["not a time", "2026-11-29T12:00:00+01:00",
                                           "2026-11-24T06:59:59Z"])),
        lambda d: d["identity"].update(spiffe_id=rng.choice(
            [scenarios.WORKLOAD, scenarios.CLAIMS, TRIAGE,
             *(a.workload for a in scenarios.AGENTS)])),
    ]


def inputs(n: int, seed: int = 23) -> list[tuple[str, dict[str, Any]]]:
    """``n`` varied OPA inputs, labelled: every case of the YAML policy suites, then the
    bench's model and tool calls in turn (each rendered with its own call number), a third
    of them changed once to be denied for some reason, one in eight changed twice or more."""
    rng = random.Random(seed)
    out = [(f"suite {c.full_name}", c.input)
           for f in testsuite.discover([EXAMPLES]) for c in testsuite.load_suite(f).cases]
    bases = [v.payload for name in ("opa: authorize model call", "opa: authorize tool call")
             for v in scenarios.by_name(name).variants]
    k = 0
    while len(out) < n:
        doc = copy.deepcopy(scenarios.render(bases[k % len(bases)], k, f"w{seed}.")["input"])
        kind = "model" if doc["model"] else "tool"
        pool = (_model_mutations if kind == "model" else _tool_mutations)(rng, k) + _any_mutations(rng, k)
        r = rng.random()
        changes = 0 if r < 0.55 else 1 if r < 0.875 else rng.randint(2, 4)
        for m in rng.sample(pool, changes):
            m(doc)
        out.append((f"{kind} call #{k} ({changes} change{'s' * (changes != 1)})", doc))
        k += 1
    return out[:n]


# --- equality and timing ---------------------------------------------------------------------

def mismatches(docs: list[tuple[str, dict[str, Any]]], wasm: OpaWasm, server: OpaClient
               ) -> tuple[list[tuple[str, Any, Any]], int]:
    """(the inputs whose decisions differ, with both answers; allows among the server's)."""
    bad, allows = [], 0
    for label, doc in docs:
        want = server.query(DECISION_PATH, doc)
        allows += bool(want.get("allow"))
        try:
            got: Any = wasm.evaluate(doc)
        except Exception as exc:
            got = f"error: {exc}"
        if got != want:
            bad.append((label, want, got))
    return bad, allows


def order_only(want: Any, got: Any) -> bool:
    """The same decision but for the order of its reasons (a set in Rego, an array in JSON)."""
    def key(d: Any) -> Any:
        return {**d, "reasons": sorted(map(json.dumps, d.get("reasons") or []))}
    return isinstance(want, dict) and isinstance(got, dict) and key(want) == key(got)


def _difference(want: Any, got: Any) -> str:
    if not isinstance(want, dict) or not isinstance(got, dict):
        return f"server {json.dumps(want)[:300]} / wasm {str(got)[:300]}"
    keys = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
    return "; ".join(f"{k}: server {json.dumps(want.get(k))[:240]} / wasm {json.dumps(got.get(k))[:240]}"
                     for k in keys)


@dataclass(frozen=True)
class Run:
    p50_us: float
    p99_us: float
    rate: float  # decisions/s on one thread: 1 / mean latency
    cpu_ms: float  # this process + OPA, per decision
    kinds: dict[str, float]  # p50 µs per kind of input (model call, tool call, suite case)


Engine = Callable[[dict[str, Any]], Any]


def timed(call: Engine, docs: list[tuple[str, dict[str, Any]]], opa_pid: int | None) -> Run:
    ts, kinds = [], {}
    cpu0, opa0 = time.process_time(), cpu_seconds(opa_pid) if opa_pid else 0.0
    for label, doc in docs:
        t = time.perf_counter()
        call(doc)
        ts.append(time.perf_counter() - t)
        kinds.setdefault(label.split()[0], []).append(ts[-1])
    cpu = time.process_time() - cpu0 + (cpu_seconds(opa_pid) - opa0 if opa_pid else 0.0)
    n, mean = len(ts), sum(ts) / len(ts)
    ts.sort()
    return Run(ts[n // 2] * 1e6, ts[int(n * 0.99)] * 1e6, 1 / mean, 1000 * cpu / n,
               {k: statistics.median(v) * 1e6 for k, v in kinds.items()})


def _spread(vals: list[float], fmt: str) -> str:
    return f"{fmt.format(statistics.median(vals))} [{fmt.format(min(vals))}-{fmt.format(max(vals))}]"


def measure(engines: dict[str, tuple[Engine, int | None]], docs: list[tuple[str, dict[str, Any]]],
            rounds: int) -> dict[str, list[Run]]:
    """Every engine over all inputs, ``rounds`` times, the engines' order rotated per round."""
    for call, _ in engines.values():
        for _, d in docs[:300]:
            call(d)
    runs: dict[str, list[Run]] = {name: [] for name in engines}
    names = list(engines)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            runs[name].append(timed(engines[name][0], docs, engines[name][1]))
    return runs


def report(runs: dict[str, list[Run]], bad: list[tuple[str, Any, Any]], n: int) -> None:
    ordered = [b for b in bad if order_only(b[1], b[2])]
    other = [b for b in bad if not order_only(b[1], b[2])]
    print(f"\nequality, Wasm vs OPA server, every input, compared as JSON values: {len(bad)} mismatches "
          f"of {n} ({len(ordered)} only in the order of reasons, {len(other)} otherwise)")
    for label, want, got in (other[:5] + ordered[:max(2, 5 - len(other))])[:7]:
        print(f"  - {label}: {_difference(want, got)}")
    verdict = ("identical decisions" if not bad else
               f"{len(bad)} mismatches, all in the order of reasons (authz.rego must sort them)"
               if not other else f"{len(other)} real mismatches (fix the host builtins first)")
    rounds = len(next(iter(runs.values())))
    if not rounds:
        print(f"\nrecommendation: no timing (--rounds 0); Wasm against the server: {verdict}")
        return
    print(f"\nper decision, one thread, {rounds} rounds x {n} inputs per engine (rotated order); median "
          "[min-max] over rounds; decisions/s = 1 / mean latency; CPU: this process + OPA\n")
    kinds = sorted(next(iter(runs.values()))[0].kinds)
    print(table(["engine", "p50 µs", "p99 µs", "decisions/s", "CPU ms/decision",
                 *(f"p50 µs {k}" for k in kinds)],
                [[name, _spread([r.p50_us for r in rs], "{:.0f}"), _spread([r.p99_us for r in rs], "{:.0f}"),
                  _spread([r.rate for r in rs], "{:,.0f}"), _spread([r.cpu_ms for r in rs], "{:.3f}"),
                  *(f"{statistics.median(r.kinds[k] for r in rs):.0f}" for k in kinds)]
                 for name, rs in runs.items()]))
    med = {name: (statistics.median(r.p50_us for r in rs), statistics.median(r.rate for r in rs),
                  statistics.median(r.cpu_ms for r in rs)) for name, rs in runs.items()}
    w = med[WASM]

    def better(engine: str) -> str:  # how many times Wasm (raw) beats ``engine``: >1 is Wasm better
        o = med[engine]
        return f"x{o[0] / w[0]:.2f} at p50, x{w[1] / o[1]:.2f} in decisions/s, x{o[2] / w[2]:.2f} in CPU"
    print(f"\nrecommendation: in-process Wasm (raw C calls) against the Data API over a Unix socket: "
          f"{better(UNIX)}; against TCP keep-alive: {better(TCP)} (>1: Wasm better); wasmtime-py's "
          f"Func API instead: x{med[UNIX][0] / med[WASM_API][0]:.2f} at p50 against Unix; {verdict}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000, help="distinct inputs (all go through every engine)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="timed passes over all inputs per engine (0: equality only)")
    ap.add_argument("--seed", type=int, default=23)
    args = ap.parse_args()
    opa = Settings.load(env={}).opa_path()
    with tempfile.TemporaryDirectory(prefix="aam-wasm-") as tmp:  # 0700: the socket's directory
        t0 = time.perf_counter()
        built = build(Path(tmp), opa)
        t_build, t0 = time.perf_counter() - t0, time.perf_counter()
        wasm = OpaWasm(*read_wasm_bundle(built.wasm), entrypoint=ENTRYPOINT, raw=True)
        t_load = time.perf_counter() - t0
        wasm_api = OpaWasm(*read_wasm_bundle(built.wasm), entrypoint=ENTRYPOINT)
        docs = inputs(args.n, args.seed)
        print(f"Wasm: opa build -t wasm -e {ENTRYPOINT}, {EXAMPLE_POLICIES + BENCH_AGENTS} AgentPolicies "
              f"(revision {built.revision[:12]}); "
              f"host builtins {', '.join(wasm.builtins)}; compile + build {t_build:.2f} s, wasmtime "
              f"load {t_load:.2f} s")
        with opa_server(built.bundle, opa, Path(tmp)) as (tcp_url, unix_url, pid):
            tcp, unix = OpaClient(tcp_url, 5), OpaClient(unix_url, 5)
            bad, allows = mismatches(docs, wasm, tcp)
            errors = wasm.builtin_errors
            modes = sum(wasm.evaluate(d) != wasm_api.evaluate(d) for _, d in docs)
            print(f"inputs: {len(docs)} distinct ({sum(lb.startswith('suite') for lb, _ in docs)} YAML "
                  f"suite cases, {sum(d.get('tool') == 'zendesk.tickets' for _, d in docs)} support-triage "
                  f"tool calls at pinned times, the rest the bench's model and tool calls, varied); the "
                  f"server allows {allows}, denies {len(docs) - allows}; host builtin errors (undefined, "
                  f"as in OPA) {errors}; Wasm's two calling modes disagree on {modes}")
            runs = measure({WASM_API: (wasm_api.evaluate, None), WASM: (wasm.evaluate, None),
                            TCP: (lambda d: tcp.query(DECISION_PATH, d), pid),
                            UNIX: (lambda d: unix.query(DECISION_PATH, d), pid)}, docs, args.rounds)
            tcp.close()
            unix.close()
    report(runs, bad, len(docs))


if __name__ == "__main__":
    main()
