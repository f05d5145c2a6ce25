"""What decision traces cost: the same stack and load with tracing off, then on.

Off is the default (no ``otlp_endpoint``: the OpenTelemetry SDK is not even imported).
On exports every decision (``trace_sample_ratio`` 1.0, the worst case) with its step
spans over OTLP/gRPC to a real Jaeger on this machine, which costs the collector's CPU
too: it is shown, and counted in "all ms/req". Each mode gets a fresh stack (PDP, OPA,
PostgreSQL ledger) and the bench's scenarios (tool call, ext_authz Check) at an idle
rate, a fixed rate and saturation, as ``bench.run`` drives them.

    .venv/bin/python -m bench.tracing [--quick] [--rate 300] [--only "tool call"]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import TextIO

from bench import report, scenarios
from bench.loadgen import Load, LoadError
from bench.policies import write_policy_dir
from bench.procstat import Meter
from bench.report import Row, table
from bench.run import Plan, check, drive, loads
from bench.targets import AamStack, LedgerServer
from tests.servers import Jaeger, run_jaeger

DEFAULT_SCENARIOS = ("aam: authorize tool call", "aam: ext_authz Check")


def measure(s: scenarios.Scenario, stack: AamStack, load: Load, trees: dict[str, int],
            jaeger: Jaeger | None) -> Row:
    pids: dict[str, int | list[int]] = dict(stack.pids)
    if jaeger is not None:
        pids["jaeger"] = jaeger.proc.pid
    try:
        with Meter(pids, trees=trees, loadgen=True) as meter:
            result = drive(s, stack, load)
        return Row(s.name, load, result, meter.usage)
    except (LoadError, OSError) as exc:
        return Row(s.name, load, None, {}, str(exc))


def run_mode(mode: str, chosen: list[scenarios.Scenario], p: Plan, work: Path,
             jaeger: Jaeger | None, out: TextIO) -> list[Row]:
    settings = {"otlp_endpoint": jaeger.otlp_endpoint, "trace_service_name": "aam-bench"} \
        if jaeger else {}
    with LedgerServer("postgres") as ledger, \
            AamStack(write_policy_dir(work / f"p10-{mode}", 10),
                     {**ledger.settings(), "workers": 1, **settings}) as stack:
        for s in chosen:
            print(f"  tracing {mode}: {s.name}: {check(s, stack)}", file=out, flush=True)
            drive(s, stack, Load(200, 2))  # warm-up
        rows = []
        for s in chosen:
            for load in loads(p):
                row = measure(s, stack, load, ledger.trees(), jaeger)
                rows.append(row)
                res = row.result
                print(f"  tracing {mode}: {s.name:28} {load.label:10} "
                      + (f"p50 {res.p50_ms:.2f} ms  p99 {res.p99_ms:.2f} ms  {res.throughput:.0f}/s"
                         if res else f"failed: {row.error[:80]}"), file=out, flush=True)
        return rows


def _cpu_ms(row: Row, key: str) -> float | None:
    u = row.usage.get(key)
    if u is None or row.result is None or not row.result.throughput:
        return None
    return 10 * u.cpu_pct / row.result.throughput


def compare(off: list[Row], on: list[Row]) -> str:
    out = []
    for a, b in zip(off, on, strict=True):
        if a.result is None or b.result is None:
            out.append([a.scenario, a.load.label, "failed", "", "", "", "", "", ""])
            continue
        pdp_a, pdp_b = _cpu_ms(a, "pdp"), _cpu_ms(b, "pdp")
        jaeger = _cpu_ms(b, "jaeger")
        out.append([a.scenario, a.load.label,
                    f"{a.result.p50_ms:.2f} / {b.result.p50_ms:.2f}",
                    f"{a.result.p99_ms:.2f} / {b.result.p99_ms:.2f}",
                    f"{a.result.throughput:.0f} / {b.result.throughput:.0f}",
                    f"x{b.result.throughput / a.result.throughput:.2f}" if a.result.throughput else "-",
                    f"{pdp_a:.2f} / {pdp_b:.2f}" if pdp_a and pdp_b else "-",
                    f"+{pdp_b - pdp_a:.2f}" if pdp_a and pdp_b else "-",
                    f"{jaeger:.2f}" if jaeger else "-"])
    return table(["scenario", "offered", "p50 ms off/on", "p99 ms off/on", "ok/s off/on",
                  "ok/s on/off", "PDP ms/req off/on", "PDP ms/req added", "Jaeger ms/req"], out)


def main(argv: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter windows")
    ap.add_argument("--rate", type=int, default=300, help="fixed offered rate (default 300/s)")
    ap.add_argument("--concurrency", type=int, default=16, help="workers at saturation")
    ap.add_argument("--only", default="", help="run scenarios whose name contains this")
    args = ap.parse_args(argv)
    p = Plan(args.rate, 5 if args.quick else 15, 4 if args.quick else 10, args.concurrency,
             (), 0, 0, args.only, 0, idle_s=3 if args.quick else 5)
    chosen = [scenarios.by_name(n) for n in DEFAULT_SCENARIOS if args.only in n]
    print("Decision tracing off and on (trace_sample_ratio 1.0, OTLP/gRPC to a local Jaeger); "
          "one PDP process, PostgreSQL ledger, 10 policies", file=out, flush=True)
    with tempfile.TemporaryDirectory(prefix="aam-bench-tracing-") as tmp:
        off = run_mode("off", chosen, p, Path(tmp), None, out)
        with run_jaeger() as jaeger:
            on = run_mode("on", chosen, p, Path(tmp), jaeger, out)
            traced = len(jaeger.traces("aam-bench", limit=100))
    print("\n" + report.latency_table(off) + "\n", file=out)
    print(report.latency_table(on) + "\n", file=out)
    print(compare(off, on), file=out)
    print(f"\nJaeger received the traces (a sample of {traced} read back from its query API)",
          file=out)
    return 0 if traced else 1


if __name__ == "__main__":
    sys.exit(main())
