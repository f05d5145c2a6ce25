"""One command: start the systems, drive them, print the tables.

    .venv/bin/python -m bench.run            # full run, a few minutes
    .venv/bin/python -m bench.run --quick    # about a minute, shorter windows

Sections: latency and resources per scenario at a fixed offered rate (open
loop) and at saturation; AAM/baseline ratios; scale (10, 1,000, 10,000
policies); a py-spy profile of the PDP at saturation.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import FileDescriptor

from aam.v1 import pdp_pb2, pdp_pb2_grpc
from bench import loadgen, micro, profile, report, scenarios
from bench.loadgen import Load, LoadError, Result
from bench.policies import write_policy_dir
from bench.procstat import Meter
from bench.protoset import write_protoset
from bench.report import Row, ScalePoint
from bench.scenarios import Scenario
from bench.targets import AamStack, TargetError
from bench.tools import ToolMissing
from pdp.opa import OpaClient


@dataclass(frozen=True)
class Plan:
    rate: int
    fixed_s: float
    saturation_s: float
    concurrency: int
    scales: tuple[int, ...]
    scale_s: float
    profile_s: float
    only: str
    micro_n: int
    scale_rate: int = 200


def plan(args: argparse.Namespace) -> Plan:
    if args.quick:
        return Plan(args.rate, 5, 4, args.concurrency, (10, 1000), 4, 4, args.only, 300)
    return Plan(args.rate, 15, 10, args.concurrency, (10, 1000, 10000), 10, 8, args.only, 2000)


def drive(s: Scenario, stack: AamStack, load: Load) -> Result:
    if s.target == "aam":
        assert s.proto is not None
        return loadgen.ghz(stack.grpc_addr, s.call, s.payload, load, _protoset(s.proto))
    if s.target == "opa":
        return loadgen.vegeta(stack.opa_url + s.call, s.payload, load)
    raise ValueError(f"unknown target {s.target!r}")


_PROTOSETS: dict[str, Path] = {}


def _protoset(fd: FileDescriptor) -> Path:
    if fd.name not in _PROTOSETS:
        dest = Path(tempfile.mkdtemp(prefix="aam-bench-protoset-")) / "service.protoset"
        _PROTOSETS[fd.name] = write_protoset([fd], dest)
    return _PROTOSETS[fd.name]


def check(s: Scenario, stack: AamStack) -> None:
    """One request before the load: it must get the decision the scenario expects."""
    if s.target == "aam":
        with grpc.insecure_channel(stack.grpc_addr) as ch:
            req = json_format.ParseDict(s.payload, pdp_pb2.AuthorizeRequest())
            resp = pdp_pb2_grpc.PolicyDecisionServiceStub(ch).Authorize(req, timeout=5)
        allow = resp.decision == pdp_pb2.DECISION_ALLOW
        detail = [r.code for r in resp.reasons]
    else:
        result = OpaClient(stack.opa_url, 5).query(s.call, s.payload["input"])
        allow, detail = bool(result.get("allow")), result.get("reasons")
    if allow != s.expect_allow:
        raise RuntimeError(f"{s.name}: expected {'ALLOW' if s.expect_allow else 'DENY'}, got {detail}")


def measure(s: Scenario, stack: AamStack, load: Load) -> Row:
    try:
        with Meter(stack.pids) as meter:
            result = drive(s, stack, load)
        return Row(s.name, load, result, meter.usage)
    except (LoadError, ToolMissing, OSError) as exc:
        return Row(s.name, load, None, {}, str(exc))


def run_scenarios(chosen: list[Scenario], stack: AamStack, p: Plan, out: TextIO) -> list[Row]:
    for s in chosen:
        check(s, stack)
    for s in chosen:
        drive(s, stack, Load(200, 2))  # warm-up: connections, caches
    rows = []
    for s in chosen:
        for load in (Load(p.rate, p.fixed_s), Load(0, p.saturation_s, p.concurrency)):
            row = measure(s, stack, load)
            rows.append(row)
            print(f"  {s.name:40} {load.label:10} {_brief(row.result, row.error)}", file=out, flush=True)
    return rows


def run_main(p: Plan, work: Path, out: TextIO) \
        -> tuple[list[Row], profile.Profile | None, dict[str, list[tuple[str, float]]]]:
    chosen = [s for s in scenarios.SCENARIOS if p.only in s.name and not s.stack]
    prof = None
    with AamStack(write_policy_dir(work / "p10", 10)) as stack:
        rows = run_scenarios(chosen, stack, p, out)
        if p.profile_s and any(s.target == "aam" for s in chosen):
            s = next(s for s in chosen if s.target == "aam")
            proc, path = profile.record(stack.pids["pdp"], p.profile_s)
            time.sleep(0.5)
            drive(s, stack, Load(0, p.profile_s, p.concurrency))
            try:
                prof = profile.finish(proc, path)
            except RuntimeError as exc:
                print(f"  profile failed: {exc}", file=out)
        pieces = {s.name.removeprefix("aam: authorize "): micro.pieces(
            stack.opa_url, scenarios.by_name(s.baseline).call, s.payload, p.micro_n)
            for s in chosen if s.call == scenarios.AUTHORIZE and s.baseline}
    return rows, prof, pieces


def run_vault(p: Plan, work: Path, out: TextIO) -> list[Row]:
    """Scenarios that need the credential broker: a real OpenBao (and PostgreSQL for its
    database engine), configured as the integration tests configure it."""
    chosen = [s for s in scenarios.SCENARIOS if p.only in s.name and s.stack == "vault"]
    if not chosen:
        return []
    from tests import vaultsetup
    from tests.servers import run_openbao, run_postgres

    d = work / "vault"
    d.mkdir()
    with run_postgres() as pg, run_openbao() as bao:
        vault = vaultsetup.setup(bao, pg, d)
        with AamStack(vaultsetup.policies(d), vault.settings()) as stack:
            return run_scenarios(chosen, stack, p, out)


def run_scale(p: Plan, work: Path, out: TextIO) -> list[ScalePoint]:
    s = scenarios.by_name("aam: authorize model call")
    points = []
    for n in p.scales:
        t0 = time.monotonic()
        try:
            with AamStack(write_policy_dir(work / f"s{n}", n)).start(timeout_s=300) as stack:
                started = time.monotonic() - t0
                check(s, stack)
                drive(s, stack, Load(200, 2))
                with Meter(stack.pids) as meter:
                    result = drive(s, stack, Load(p.scale_rate, p.scale_s))
                u = meter.usage
                points.append(ScalePoint(n, result, u["pdp"].rss_mb, u["opa"].rss_mb, started))
        except (LoadError, TargetError, RuntimeError) as exc:
            points.append(ScalePoint(n, None, 0, 0, time.monotonic() - t0, str(exc)))
        last = points[-1]
        print(f"  {n:>6} policies: {_brief(last.result, last.error)}, PDP {last.pdp_rss_mb:.0f} MB",
              file=out, flush=True)
    return points


def _brief(result: Result | None, error: str) -> str:
    return f"p99 {result.p99_ms:.2f} ms, {result.throughput:.0f}/s" if result else error[:80]


def pairs(rows: list[Row]) -> list[tuple[Row, Row]]:
    by = {(r.scenario, r.load.label): r for r in rows}
    out = []
    for r in rows:
        base = scenarios.by_name(r.scenario).baseline
        if base and (base, r.load.label) in by:
            out.append((r, by[base, r.load.label]))
    return out


def main(argv: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    ap = argparse.ArgumentParser(prog="bench.run", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="short windows, scales 10 and 1,000 only")
    ap.add_argument("--rate", type=int, default=500, help="offered rate, open loop (default 500/s)")
    ap.add_argument("--scale-rate", type=int, default=200,
                    help="offered rate for the scale runs, below saturation so that latency is the "
                         "decision's, not a queue's (default 200/s)")
    ap.add_argument("--concurrency", type=int, default=16, help="workers at saturation (default 16)")
    ap.add_argument("--only", default="", help="run scenarios whose name contains this")
    ap.add_argument("--no-scale", action="store_true")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--no-vault", action="store_true", help="skip the credentialed (OpenBao) scenarios")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    p = Plan(**{**asdict(plan(args)), "scale_rate": args.scale_rate})
    if args.no_profile:
        p = Plan(**{**asdict(p), "profile_s": 0})
    if args.no_scale:
        p = Plan(**{**asdict(p), "scales": ()})
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="aam-bench-") as tmp:
        work = Path(tmp)
        print(f"bench: {p}", file=out, flush=True)
        try:
            rows, prof, pieces = run_main(p, work, out)
            if not args.no_vault:
                rows += run_vault(p, work, out)
            points = run_scale(p, work, out) if p.scales else []
        except (ToolMissing, TargetError) as exc:
            print(f"bench: error: {exc}", file=out)
            return 1
    print(f"\n== latency and resources (ghz for gRPC, vegeta for HTTP; "
          f"CPU in % of one core) ==\n{report.latency_table(rows)}", file=out)
    print(f"\n== AAM / baseline (same offered load) ==\n{report.ratio_table(pairs(rows))}", file=out)
    if points:
        print(f"\n== scale: aam: authorize model call at {p.scale_rate}/s ==\n{report.scale_table(points)}",
              file=out)
        mem = report.memory_per_thousand(points)
        if mem:
            print(f"memory per 1,000 policies: PDP {mem[0]:.1f} MB, OPA {mem[1]:.1f} MB", file=out)
    if prof:
        print(f"\n== profile: PDP at saturation ==\n{profile.format_profile(prof)}", file=out)
    if pieces:
        print(f"\n== hot path, in-process (CPU, so little moved by a busy machine) ==\n"
              f"{micro.format_pieces(pieces)}", file=out)
    print(f"\nbench: done in {time.monotonic() - t0:.0f} s", file=out)
    if args.json:
        args.json.write_text(json.dumps(_jsonable(rows, points), indent=2))
    return 0


def _jsonable(rows: list[Row], points: list[ScalePoint]) -> dict[str, Any]:
    return {"rows": [asdict(r) for r in rows], "scale": [asdict(p) for p in points]}


if __name__ == "__main__":
    raise SystemExit(main())
