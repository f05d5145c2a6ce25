"""One command: start the systems, drive them, print the tables.

    .venv/bin/python -m bench.run            # full run, a few minutes
    .venv/bin/python -m bench.run --quick    # a minute or two, shorter windows

Sections: latency and resources per scenario (Authorize model call, tool call,
credentialed tool call; ext_authz Check) at a fixed offered rate (open loop) and
at saturation; AAM/baseline ratios (OPA's Data API with the same input;
opa-envoy-plugin and opa-extauthz, OPA's Go SDK built by scripts/setup, with the
same Check); scale (10, 1,000, 10,000 policies); a
py-spy profile of the PDP at saturation; the issue's targets, met or short.
The AAM stacks keep their ledger in a co-located PostgreSQL (fsync on) unless
``--ledger sqlite``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.protobuf import json_format
from google.protobuf.descriptor import FileDescriptor
from google.rpc import code_pb2

from aam.v1 import pdp_pb2, pdp_pb2_grpc
from bench import loadgen, micro, profile, report, scenarios
from bench.loadgen import Load, LoadError, Result
from bench.policies import write_policy_dir
from bench.procstat import Meter
from bench.protoset import write_protoset
from bench.report import Row, ScalePoint
from bench.scenarios import Scenario
from bench.targets import (
    AamStack,
    ExtAuthzServer,
    ExtAuthzStack,
    LedgerServer,
    TargetError,
    decisions,
    extauthz_servers,
)
from bench.tools import ToolMissing
from pdp.config import UNIX_SCHEME
from pdp.opa import OpaClient

# Requests of each scenario checked against their expected decision before its load.
CHECK_SAMPLE = 24
# Distinct bodies vegeta sends OPA per run (the variants in turn, each its own call number).
OPA_BODIES = 8 * scenarios.VARIANTS


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
    scale_rate: int = 50
    # A rate low enough that the stack is nearly idle: the latency of one decision with no
    # queue in front of it, the floor under any fixed-rate figure (0: not run).
    idle_rate: int = 20
    idle_s: float = 5
    # PDP settings over the shipped defaults (--pdp-setting), e.g. to measure the
    # previous hot path: ledger_state_ttl_ms=0 opa_gogc=100.
    pdp: tuple[tuple[str, Any], ...] = ()

    def stack_settings(self, ledger: LedgerServer) -> dict[str, Any]:
        return {**ledger.settings(), **dict(self.pdp)}


def _setting(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


def plan(args: argparse.Namespace) -> Plan:
    if args.quick:
        return Plan(args.rate, 5, 4, args.concurrency, (10, 1000), 6, 4, args.only, 300, idle_s=3)
    return Plan(args.rate, 15, 10, args.concurrency, (10, 1000, 10000), 20, 8, args.only, 2000)


def loads(p: Plan) -> tuple[Load, ...]:
    idle = (Load(p.idle_rate, p.idle_s),) if 0 < p.idle_rate < p.rate else ()
    return *idle, Load(p.rate, p.fixed_s), Load(0, p.saturation_s, p.concurrency)


Stack = AamStack | ExtAuthzStack


def drive(s: Scenario, stack: Stack, load: Load) -> Result:
    if s.target in ("aam", "extauthz"):
        assert s.proto is not None
        # ghz needs a caller per connection; with PDP workers, more connections (targets.py).
        connections = min(getattr(stack, "connections", 2), 64 if load.rate else load.concurrency)
        return loadgen.ghz(stack.grpc_addr, s.call, s.payloads, load, _protoset(s.proto),
                           stack.metadata, connections)
    if s.target == "opa":
        bodies = scenarios.opa_bodies(s, OPA_BODIES, loadgen.run_tag())
        if stack.opa_url.startswith(UNIX_SCHEME):  # OPA on a Unix socket (opa_addr = "unix://...")
            return loadgen.vegeta("http://localhost" + s.call, bodies, load,
                                  unix_socket=stack.opa_url[len(UNIX_SCHEME):])
        return loadgen.vegeta(stack.opa_url + s.call, bodies, load)
    raise ValueError(f"unknown target {s.target!r}")


_PROTOSETS: dict[str, Path] = {}


def _protoset(fd: FileDescriptor) -> Path:
    if fd.name not in _PROTOSETS:
        dest = Path(tempfile.mkdtemp(prefix="aam-bench-protoset-")) / "service.protoset"
        _PROTOSETS[fd.name] = write_protoset([fd], dest)
    return _PROTOSETS[fd.name]


def sample(s: Scenario, k: int = CHECK_SAMPLE) -> list[int]:
    """Indexes of the variants to check: each workload's first, then evenly spread ones."""
    first: dict[str, int] = {}
    for i, v in enumerate(s.variants):
        first.setdefault(scenarios.workload_of(v.payload), i)
    picked = list(first.values())
    rest = [i for i in range(len(s.variants)) if i not in first.values()]
    want = max(0, min(k - len(picked), len(rest)))
    picked += [rest[j * len(rest) // want] for j in range(want)] if want else []
    return sorted(picked)


def decide(s: Scenario, stack: Stack, payload: dict[str, Any]) -> tuple[bool, Any]:
    """One request of ``s`` to ``stack``: (allowed, what the answer said)."""
    if s.call == scenarios.CHECK:
        with grpc.insecure_channel(stack.grpc_addr) as ch:
            req = json_format.ParseDict(payload, external_auth_pb2.CheckRequest())
            resp = external_auth_pb2_grpc.AuthorizationStub(ch).Check(
                req, timeout=5, metadata=tuple(stack.metadata.items()))
        return resp.status.code == code_pb2.OK, [resp.status.message]
    if s.target == "aam":
        with grpc.insecure_channel(stack.grpc_addr) as ch:
            req = json_format.ParseDict(payload, pdp_pb2.AuthorizeRequest())
            resp = pdp_pb2_grpc.PolicyDecisionServiceStub(ch).Authorize(
                req, timeout=5, metadata=tuple(stack.metadata.items()))
        return resp.decision == pdp_pb2.DECISION_ALLOW, [r.code for r in resp.reasons]
    result = OpaClient(stack.opa_url, 5).query(s.call, payload["input"])
    return bool(result.get("allow")), result.get("reasons")


def check(s: Scenario, stack: Stack) -> str:
    """Before the load, a sample of the scenario's requests (every workload among them),
    rendered as calls are: each must get the decision it expects. Returns what was checked."""
    picked = sample(s)
    wrong = []
    for i in picked:
        v = s.variants[i]
        allow, detail = decide(s, stack, scenarios.render(v.payload, i, "check."))
        if allow != v.expect_allow:
            wrong.append(f"request {i} ({scenarios.workload_of(v.payload)}): expected "
                         f"{'ALLOW' if v.expect_allow else 'DENY'}, got {detail}")
    if wrong:
        raise RuntimeError(f"{s.name}: " + "; ".join(wrong))
    return f"checked {len(picked)} of {s.describe()}: each decided as expected"


def measure(s: Scenario, stack: Stack, load: Load, trees: dict[str, int] | None = None) -> Row:
    """One load run; CPU of the PDP, OPA, the ledger's processes (``trees``) and the load
    generator, so that the table accounts for every CPU a decision costs."""
    try:
        before = decisions(stack.metrics_url) if s.target == "aam" else {}
        with Meter(stack.pids, trees=trees, loadgen=True) as meter:
            result = drive(s, stack, load)
        # ghz gives up on a call after 5 s; the PDP still decides it: let those land.
        after = _settled(stack.metrics_url) if before else {}
        counted = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
        return Row(s.name, load, result, meter.usage, decisions={k: v for k, v in counted.items() if v})
    except (LoadError, ToolMissing, OSError) as exc:
        return Row(s.name, load, None, {}, str(exc))


def _settled(metrics_url: str, timeout_s: float = 10.0) -> dict[str, float]:
    """The decision counters once they stop moving (calls still queued in the PDP finish)."""
    last, deadline = decisions(metrics_url), time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = decisions(metrics_url)
        if now == last:
            break
        last = now
    return last


def run_scenarios(chosen: list[Scenario], stack: Stack, p: Plan, out: TextIO,
                  trees: dict[str, int] | None = None) -> list[Row]:
    for s in chosen:
        print(f"  {s.name}: {check(s, stack)}", file=out, flush=True)
    for s in chosen:
        drive(s, stack, Load(200, 2))  # warm-up: connections, caches
    rows = []
    for s in chosen:
        for load in loads(p):
            row = measure(s, stack, load, trees)
            rows.append(row)
            _progress(row, out)
    return rows


def _progress(row: Row, out: TextIO) -> None:
    d = row.decisions
    seen = f"; PDP: {d.get('allow', 0):.0f} allow, {d.get('deny', 0):.0f} deny" if d else ""
    print(f"  {row.scenario:40} {row.load.label:10} {_brief(row.result, row.error)}{seen}",
          file=out, flush=True)


def run_main(p: Plan, work: Path, ledger: LedgerServer, out: TextIO) \
        -> tuple[list[Row], profile.Profile | None, dict[str, list[tuple[str, float]]]]:
    """Authorize and ext_authz Check on one stack: PDP + OPA + the run's ledger."""
    chosen = [s for s in scenarios.SCENARIOS if p.only in s.name and not s.stack]
    prof = None
    if not chosen:
        return [], None, {}
    with AamStack(write_policy_dir(work / "p10", 10), p.stack_settings(ledger)) as stack:
        print(f"  PDP: {processes(stack)}", file=out, flush=True)
        rows = run_scenarios(chosen, stack, p, out, ledger.trees())
        if p.profile_s and any(s.target == "aam" for s in chosen):
            s = next(s for s in chosen if s.target == "aam")
            proc, path = profile.record(stack.profile_pid, p.profile_s)
            time.sleep(0.5)
            drive(s, stack, Load(0, p.profile_s, p.concurrency))
            try:
                prof = profile.finish(proc, path)
            except RuntimeError as exc:
                print(f"  profile failed: {exc}", file=out)
        pieces = {s.name.removeprefix("aam: authorize "): micro.pieces(
            stack.opa_url, scenarios.by_name(s.baselines[0]).call, s.payload, p.micro_n)
            for s in chosen if s.call == scenarios.AUTHORIZE and s.baselines}
    return rows, prof, pieces


def processes(stack: AamStack) -> str:
    """How the PDP runs: one process, or a parent and N worker processes (the workers
    setting; --workers)."""
    workers = stack.worker_pids
    if not workers:
        return "1 process (workers = 1)"
    return (f"{len(workers)} worker processes on one port (SO_REUSEPORT) beside the parent; "
            f"ghz opens {stack.connections} connections")


def run_vault(p: Plan, work: Path, ledger: LedgerServer, out: TextIO) -> list[Row]:
    """Scenarios that need the credential broker: a real OpenBao (and PostgreSQL for its
    database engine: the ledger's cluster when there is one), configured as the integration
    tests configure it."""
    chosen = [s for s in scenarios.SCENARIOS if p.only in s.name and s.stack == "vault"]
    if not chosen:
        return []
    from tests import vaultsetup
    from tests.servers import run_openbao, run_postgres

    d = work / "vault"
    d.mkdir()
    with contextlib.ExitStack() as servers:
        pg = ledger.pg or servers.enter_context(run_postgres())
        bao = servers.enter_context(run_openbao())
        vault = vaultsetup.setup(bao, pg, d)
        with AamStack(vaultsetup.policies(d), {**vault.settings(), **p.stack_settings(ledger)}) as stack:
            return run_scenarios(chosen, stack, p, out, ledger.trees())


def run_extauthz(p: Plan, work: Path, server: ExtAuthzServer, out: TextIO) -> list[Row]:
    """One ext_authz baseline with the same policies and Check requests. Without its
    binary the rows say why and the run goes on."""
    chosen = [s for s in scenarios.SCENARIOS if p.only in s.name and s.stack == server.stack]
    if not chosen:
        return []
    if not server.binary.is_file():
        rows = [Row(s.name, load, None, {}, server.missing, skipped=True)
                for s in chosen for load in loads(p)]
        print(f"  {chosen[0].name}: not run: {server.missing}", file=out, flush=True)
        return rows
    try:
        with ExtAuthzStack(server, write_policy_dir(work / server.stack, 10)) as stack:
            return run_scenarios(chosen, stack, p, out)
    except (TargetError, RuntimeError, grpc.RpcError) as exc:
        rows = [Row(s.name, load, None, {}, str(exc)) for s in chosen for load in loads(p)]
        for row in rows:
            _progress(row, out)
        return rows


def run_scale(p: Plan, work: Path, ledger: LedgerServer, out: TextIO) -> list[ScalePoint]:
    s = scenarios.by_name("aam: authorize model call")
    points = []
    for n in p.scales:
        t0 = time.monotonic()
        try:
            stack_of_n = AamStack(write_policy_dir(work / f"s{n}", n), p.stack_settings(ledger))
            with stack_of_n.start(timeout_s=300) as stack:
                started = time.monotonic() - t0
                check(s, stack)
                drive(s, stack, Load(200, 2))
                with Meter(stack.pids) as meter:
                    result = drive(s, stack, Load(p.scale_rate, p.scale_s))
                u = meter.usage
                points.append(ScalePoint(n, result, u["pdp"].rss_mb, u["opa"].rss_mb, started,
                                         pdp_parts_mb=u["pdp"].parts_mb))
        except (LoadError, TargetError, RuntimeError) as exc:
            points.append(ScalePoint(n, None, 0, 0, time.monotonic() - t0, str(exc)))
        last = points[-1]
        print(f"  {n:>6} policies: {_brief(last.result, last.error)}, PDP {last.pdp_rss_mb:.0f} MB"
              + (f" ({report.parts(last.pdp_parts_mb)})" if last.pdp_parts_mb else ""),
              file=out, flush=True)
    return points


def _brief(result: Result | None, error: str) -> str:
    return f"p99 {result.p99_ms:.2f} ms, {result.throughput:.0f}/s" if result else error[:80]


def expected_allow(name: str) -> float:
    """The share of a scenario's requests that should be allowed."""
    vs = scenarios.by_name(name).variants
    return sum(v.expect_allow for v in vs) / len(vs)


def pairs(rows: list[Row]) -> list[tuple[Row, Row]]:
    by = {(r.scenario, r.load.label): r for r in rows}
    out = []
    for r in rows:
        for base in scenarios.by_name(r.scenario).baselines:
            if (base, r.load.label) in by:
                out.append((r, by[base, r.load.label]))
    return out


def main(argv: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    ap = argparse.ArgumentParser(prog="bench.run", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="short windows, scales 10 and 1,000 only (a minute or two)")
    ap.add_argument("--rate", type=int, default=500, help="offered rate, open loop (default 500/s)")
    ap.add_argument("--scale-rate", type=int, default=50,
                    help="offered rate for the scale runs, far enough below saturation that p99 is "
                         "the decision's, not a queue's (default 50/s; at 200/s on 2 cores the "
                         "stack runs at about 75%% of saturation and p99 is queueing noise)")
    ap.add_argument("--idle-rate", type=int, default=20,
                    help="also offer this low rate, where one decision meets no queue: the latency "
                         "floor (default 20/s; 0 to skip)")
    ap.add_argument("--concurrency", type=int, default=16, help="workers at saturation (default 16)")
    ap.add_argument("--only", default="", help="run scenarios whose name contains this")
    ap.add_argument("--no-scale", action="store_true")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--no-vault", action="store_true", help="skip the credentialed (OpenBao) scenarios")
    ap.add_argument("--ledger", choices=LedgerServer.KINDS, default="postgres",
                    help="where the AAM stacks keep budgets, rates and audit: a co-located "
                         "PostgreSQL with fsync on (default), or each stack's embedded SQLite")
    ap.add_argument("--opa-envoy-plugin", default="", metavar="PATH",
                    help="opa-envoy-plugin binary for the ext_authz baseline (default: "
                         "$AAM_TOOLS_DIR/bin/opa-envoy-plugin when present; opa-extauthz, "
                         "which scripts/setup builds, runs either way)")
    ap.add_argument("--pdp-setting", action="append", default=[], metavar="KEY=VALUE", type=_setting,
                    help="a PDP setting over the shipped defaults (repeatable), e.g. "
                         "ledger_state_ttl_ms=0 and opa_gogc=100 for the previous hot path")
    ap.add_argument("--workers", type=int, metavar="N",
                    help="PDP worker processes (the workers setting; default: the product's, 0 = "
                         "one per CPU with the PostgreSQL ledger, 1 with --ledger sqlite)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    pdp = (*args.pdp_setting, *((("workers", args.workers),) if args.workers is not None else ()))
    p = Plan(**{**asdict(plan(args)), "scale_rate": args.scale_rate, "pdp": tuple(pdp),
                "idle_rate": args.idle_rate})
    if args.no_profile:
        p = Plan(**{**asdict(p), "profile_s": 0})
    if args.no_scale:
        p = Plan(**{**asdict(p), "scales": ()})
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="aam-bench-") as tmp:
        work = Path(tmp)
        print(f"bench: {p}", file=out, flush=True)
        try:
            with LedgerServer(args.ledger) as ledger:
                print(f"bench: ledger: {ledger.label}", file=out)
                print(f"bench: load: {loadgen.describe()}", file=out)
                servers = extauthz_servers(args.opa_envoy_plugin)
                for server in servers:
                    found = server.binary if server.binary.is_file() else server.missing
                    print(f"bench: ext_authz baseline {server.name}: {found}", file=out, flush=True)
                rows, prof, pieces = run_main(p, work, ledger, out)
                if not args.no_vault:
                    rows += run_vault(p, work, ledger, out)
                for server in servers:
                    rows += run_extauthz(p, work, server, out)
                points = run_scale(p, work, ledger, out) if p.scales else []
        except (ToolMissing, TargetError) as exc:
            print(f"bench: error: {exc}", file=out)
            return 1
    order = {s.name: i for i, s in enumerate(scenarios.SCENARIOS)}
    rows.sort(key=lambda r: order[r.scenario])  # each AAM row next to its baseline
    print(f"\n== latency and resources (ledger: {args.ledger}; CPU in % of one core) ==\n"
          f"{report.latency_table(rows)}", file=out)
    print(f"\n== AAM / baseline (same offered load) ==\n{report.ratio_table(pairs(rows))}", file=out)
    if any(r.decisions for r in rows):
        print(f"\n== decisions during load (the PDP's counters; no decision cache: each asked OPA) ==\n"
              f"{report.decisions_table(rows, expected_allow)}", file=out)
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
    met = report.targets(rows, points, p.rate, scenarios.AUTHORIZE_TARGETS, scenarios.CHECK_TARGET,
                         args.ledger, p.idle_rate)
    print(f"\n== targets (issue 9) ==\n{met}", file=out)
    vs_go = report.targets_23(rows, points, p.rate, p.idle_rate, scenarios.AUTHORIZE_TARGETS["tool"],
                              scenarios.CHECK_TARGET[0], scenarios.SDK_CHECK)
    print(f"\n== targets (issue 23) ==\n{vs_go}", file=out)
    print(f"\nbench: done in {time.monotonic() - t0:.0f} s", file=out)
    if args.json:
        args.json.write_text(json.dumps(_jsonable(rows, points), indent=2))
    return 0


def _jsonable(rows: list[Row], points: list[ScalePoint]) -> dict[str, Any]:
    return {"rows": [asdict(r) for r in rows], "scale": [asdict(p) for p in points]}


if __name__ == "__main__":
    raise SystemExit(main())
