"""Issue 23, point 3: grpc.aio against the thread pool, with only the server machinery differing.

Two server processes serve the real ``aam.v1.PolicyDecisionService`` stubs with
the PDP's real servicer (pdp.service: proto -> Request, validation, plaintext
identity, Decision -> proto) over an in-process decision function without OPA
(:class:`FixedEngine`: the JSON encode of OPA's input and decode of a canned
answer that every real decision pays, nothing else):

- thread: pdp.server.GrpcServer as the PDP runs it (grpc.server, a
  ThreadPoolExecutor of ``max_workers`` 16, DecodeGuard, health, reflection);
- aio: grpc.aio.server with the same options and an aio DecodeGuard, the same
  servicer called from an ``async def`` (it never awaits: the decision runs on
  the event loop, as a Wasm engine would; only OPA over HTTP could await);
- aio-bare: the same without the interceptor (what that layer costs in aio).

ghz sends the bench's varied tool calls (bench/scenarios.py, every call
unique), open loop at a fixed rate and closed loop at saturation; each round
runs both servers and both loads, in rotated order. Server CPU per call is
the server process's CPU (procstat) over the calls answered; ghz's own CPU per
call is shown too, since on 2 cores the two compete.

    .venv/bin/python -m bench.aio [--rounds 3] [--duration 5] [--rate 500] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from aam.v1 import pdp_pb2, pdp_pb2_grpc
from bench import loadgen, scenarios
from bench.procstat import cpu_seconds, exited_children_cpu_seconds
from bench.protoset import write_protoset
from bench.report import table
from pdp.config import Settings
from pdp.engine import Decision, Request, new_decision_id
from pdp.identity import PlaintextIdentity
from pdp.opa import free_port
from pdp.server import MAX_MESSAGE_BYTES, GrpcServer
from pdp.service import PolicyDecisionServicer
from pdp.tracing.tracer import OFF

# aio-bare: grpc.aio without the interceptor, to show what the aio interceptor layer costs.
MODES = ("thread", "aio", "aio-bare")
# What OPA answers an allowed tool call, as bytes (decoded per call, as OpaClient does).
CANNED = json.dumps({"result": {"allow": True, "reasons": [], "policy": "bench", "route": None,
                                "revision": "bench-aio", "retry_after_s": None, "models": []}}).encode()


class FixedEngine:
    """The decision without OPA: input encoded, a canned answer decoded, a Decision built."""

    tracing = OFF

    def decide(self, req: Request) -> Decision:
        doc = {"identity": {"spiffe_id": req.spiffe_id}, "model": req.model, "tool": req.tool,
               "action": req.action, "params": req.params, "context": req.context,
               "estimate": {"tokens": req.estimated_tokens, "cost_usd": req.estimated_cost_usd}}
        json.dumps({"input": doc}, separators=(",", ":")).encode()
        r = json.loads(CANNED)["result"]
        return Decision(allow=r["allow"], reasons=(), policy=r["policy"], decision_id=new_decision_id(),
                        revision=r["revision"])


def servicer(settings: Settings) -> PolicyDecisionServicer:
    return PolicyDecisionServicer(FixedEngine(), settings, PlaintextIdentity())  # type: ignore[arg-type]


class AioDecodeGuard(grpc.aio.ServerInterceptor):
    """pdp.server.DecodeGuard for grpc.aio: undecodable requests are INVALID_ARGUMENT."""

    async def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None or handler.request_deserializer is None:
            return handler
        decode, behaviour = handler.request_deserializer, handler.unary_unary

        async def unary(raw: bytes, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
            try:
                request = decode(raw)
            except DecodeError:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request: cannot be decoded")
            return await behaviour(request, context)

        return grpc.unary_unary_rpc_method_handler(unary, response_serializer=handler.response_serializer)


class AioServicer(pdp_pb2_grpc.PolicyDecisionServiceServicer):
    def __init__(self, sync: PolicyDecisionServicer) -> None:
        self.sync = sync

    async def Authorize(self, request: pdp_pb2.AuthorizeRequest,  # type: ignore[override]
                        context: grpc.aio.ServicerContext) -> pdp_pb2.AuthorizeResponse:
        return self.sync.Authorize(request, context)  # type: ignore[arg-type]


def serve(mode: str, port: int) -> None:
    """Run one server until killed; print "ready" once it listens."""
    settings = Settings.load(env={}, plaintext=True, grpc_addr=f"127.0.0.1:{port}")
    if mode == "thread":
        server = GrpcServer(settings, servicer(settings))
        server.start()
        print("ready", flush=True)
        server.server.wait_for_termination()
        return

    async def run() -> None:
        server = grpc.aio.server(interceptors=[AioDecodeGuard()] if mode == "aio" else [], options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES), ("grpc.so_reuseport", 0)])
        pdp_pb2_grpc.add_PolicyDecisionServiceServicer_to_server(AioServicer(servicer(settings)), server)
        server.add_insecure_port(settings.grpc_addr)
        await server.start()
        print("ready", flush=True)
        await server.wait_for_termination()

    asyncio.run(run())


@dataclass(frozen=True)
class Row:
    ok_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    server_ms: float  # server CPU per answered call
    ghz_ms: float  # load generator CPU per answered call


def one(addr: str, pid: int, load: loadgen.Load, protoset: Path, payloads: list[dict[str, Any]]) -> Row:
    cpu0, ghz0 = cpu_seconds(pid), exited_children_cpu_seconds()
    r = loadgen.ghz(addr, scenarios.AUTHORIZE, payloads, load, protoset)
    cpu, ghz = cpu_seconds(pid) - cpu0, exited_children_cpu_seconds() - ghz0
    ok = max(1, r.count - r.errors)
    return Row(r.throughput, r.p50_ms, r.p99_ms, r.errors, 1000 * cpu / ok, 1000 * ghz / ok)


def _med(rows: list[Row], f: Callable[[Row], float], fmt: str) -> str:
    vals = [f(r) for r in rows]
    return f"{fmt.format(statistics.median(vals))} [{fmt.format(min(vals))}-{fmt.format(max(vals))}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per ghz run")
    ap.add_argument("--rate", type=int, default=500, help="the fixed open-loop rate, calls/s")
    ap.add_argument("--concurrency", type=int, default=16, help="ghz workers at saturation")
    ap.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    payloads = scenarios.by_name("aam: authorize tool call").payloads
    loads = [loadgen.Load(args.rate, args.duration), loadgen.Load(0, args.duration, args.concurrency)]
    procs: dict[str, tuple[subprocess.Popen[str], str]] = {}
    try:
        for mode in MODES:
            port = free_port()
            p = subprocess.Popen([sys.executable, "-m", "bench.aio", "--serve", mode, "--port", str(port)],
                                 stdout=subprocess.PIPE, text=True)
            procs[mode] = (p, f"127.0.0.1:{port}")
        for mode, (p, _) in procs.items():
            if p.stdout is None or p.stdout.readline().strip() != "ready":
                raise SystemExit(f"{mode} server did not start")
        with tempfile.TemporaryDirectory(prefix="aam-aio-") as tmp:
            protoset = write_protoset([pdp_pb2.DESCRIPTOR], Path(tmp) / "pdp.protoset")
            for _, (p, addr) in procs.items():  # warm up: connections, first calls
                one(addr, p.pid, loadgen.Load(200, 1), protoset, payloads)
            rows: dict[tuple[str, str], list[Row]] = {}
            for r in range(args.rounds):
                for mode in MODES[r % len(MODES):] + MODES[:r % len(MODES)]:
                    p, addr = procs[mode]
                    for load in loads:
                        row = one(addr, p.pid, load, protoset, payloads)
                        rows.setdefault((mode, load.label), []).append(row)
                        time.sleep(0.5)
    finally:
        for p, _ in procs.values():
            p.terminate()
            p.wait()
    report(rows, args, loads)


def report(rows: dict[tuple[str, str], list[Row]], args: argparse.Namespace,
           loads: list[loadgen.Load]) -> None:
    print(f"PolicyDecisionService/Authorize, the PDP's servicer over a decision without OPA; ghz, the "
          f"bench's 240 varied tool calls; {args.rounds} rounds x {args.duration:g} s per server and "
          f"load (rotated order); median [min-max] over rounds; CPU ms per answered call\n")
    print(table(["server", "offered", "ok/s", "p50 ms", "p99 ms", "errors", "server CPU ms/call",
                 "ghz CPU ms/call"],
                [[mode, label, _med(rs, lambda r: r.ok_s, "{:,.0f}"), _med(rs, lambda r: r.p50_ms, "{:.2f}"),
                  _med(rs, lambda r: r.p99_ms, "{:.2f}"), str(sum(r.errors for r in rs)),
                  _med(rs, lambda r: r.server_ms, "{:.3f}"), _med(rs, lambda r: r.ghz_ms, "{:.3f}")]
                 for (mode, label), rs in rows.items()]))

    def m(mode: str, label: str, f: Callable[[Row], float]) -> float:
        return statistics.median(f(r) for r in rows[(mode, label)])

    sat, fixed = loads[1].label, loads[0].label
    gain = m("aio", sat, lambda r: r.ok_s) / m("thread", sat, lambda r: r.ok_s)
    cpu_sat = m("thread", sat, lambda r: r.server_ms) / m("aio", sat, lambda r: r.server_ms)
    cpu_fixed = m("thread", fixed, lambda r: r.server_ms) / m("aio", fixed, lambda r: r.server_ms)
    lat = ", ".join(f"{m(mode, fixed, lambda r: r.p50_ms):.2f} / {m(mode, fixed, lambda r: r.p99_ms):.2f}"
                    f" ms ({mode})" for mode in MODES)
    print(f"\nrecommendation: grpc.aio against the thread pool (>1: aio better): x{gain:.2f} throughput "
          f"at saturation, x{cpu_sat:.2f} in server CPU per call there and x{cpu_fixed:.2f} at {fixed}; "
          f"p50 / p99 at {fixed}: {lat}")


if __name__ == "__main__":
    main()
