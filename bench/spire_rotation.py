"""Decisions while the PDP's and an agent's SVIDs rotate: the PDP on a real SPIRE.

    .venv/bin/python -m bench.spire_rotation [--ttl 20] [--rotations 2] [--threads 4]

A fresh SPIRE (server and agent on loopback, tests/spire.py) issues the PDP (``aam serve``
with spiffe_endpoint_socket, in a group of its own) an X.509-SVID of ``--ttl`` seconds,
which SPIRE renews at half its life. A Python client pool (tests/spirepdp.py run_load)
makes Authorize calls for long enough to see ``--rotations`` PDP rotations: a gateway on
kept-alive connections (forwarding JWT-SVIDs), the agent on a fresh mTLS connection per
call with an SVID it re-fetches from the Workload API, and a handshake every 0.5 s that
reads the PDP's served certificate. Every decision is checked against the examples'
policies (decision and policy name): a failed decision is any RPC error or a decision that
names the wrong policy. Needs root (workloads are told apart by group).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

GID_PDP, GID_GATEWAY, GID_AGENT, GID_CLAIMS = 53101, 53102, 53103, 53104


def main(argv: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    ap = argparse.ArgumentParser(prog="bench.spire_rotation", description=__doc__.split("\n")[0])
    ap.add_argument("--ttl", type=int, default=20, help="X.509-SVID TTL of the PDP and agent, s")
    ap.add_argument("--rotations", type=int, default=2, help="PDP rotations to run through")
    ap.add_argument("--threads", type=int, default=4, help="client threads (half gateway)")
    args = ap.parse_args(argv)

    from tests.spire import run_spire
    from tests.spirepdp import CLAIMS, FINANCE, jwt_svid, run_load, spire_pdp

    duration_s = args.rotations * args.ttl / 2 + args.ttl / 4
    with tempfile.TemporaryDirectory(prefix="aam-bench-spire-") as tmp_s, run_spire() as spire:
        tmp = Path(tmp_s)
        spire.register(FINANCE, [f"unix:gid:{GID_AGENT}"], x509_ttl_s=args.ttl)
        spire.register(CLAIMS, [f"unix:gid:{GID_CLAIMS}"])
        with spire_pdp(spire, tmp, GID_PDP, GID_GATEWAY, pdp_ttl_s=args.ttl,
                       require_jwt_svid="true", log_level="warning") as pdp:
            jwt = {FINANCE: jwt_svid(spire, GID_AGENT, "aam-pdp"),
                   CLAIMS: jwt_svid(spire, GID_CLAIMS, "aam-pdp")}
            t0 = time.monotonic()
            load = run_load(pdp, spire, tmp, GID_AGENT, duration_s, args.threads, jwt)
            elapsed = time.monotonic() - t0
    lat = sorted(load.latencies_s)
    p50 = statistics.median(lat) * 1000 if lat else float("nan")
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else float("nan")
    print(f"spire rotation: PDP and agent X.509-SVID TTL {args.ttl} s, {elapsed:.1f} s, "
          f"{args.threads} client threads (python, mTLS; agent: a new connection per call)",
          file=out)
    print(f"  decisions      {load.ok} ({load.ok / elapsed:.0f}/s)", file=out)
    print(f"  latency        p50 {p50:.2f} ms  p99 {p99:.2f} ms", file=out)
    print(f"  failed         {len(load.failures)}", file=out)
    print(f"  rotations      PDP {len(load.pdp_serials) - 1} (serials seen "
          f"{len(load.pdp_serials)}), agent {len(load.agent_serials) - 1}", file=out)
    for failure in load.failures[:10]:
        print(f"  failure: {failure}", file=out)
    return 0 if not load.failures and len(load.pdp_serials) > args.rotations else 1


if __name__ == "__main__":
    sys.exit(main())
