"""Authorize latency for credentialed actions: warm lease cache vs cold (one issuance per call).

Starts its own PostgreSQL, OpenBao dev server and PDP stack (managed OPA) on
loopback, configured by tests/vaultsetup.py, then calls Authorize
sequentially over gRPC and prints p50/p99. Run from the repository root:

    .venv/bin/python -m bench.broker [--n 300]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from tests import vaultsetup
from tests.integration.pdp import request, running_stack, stub
from tests.servers import run_openbao, run_postgres

CASES = [
    ("uncredentialed (web.search)", "web.search", "query"),
    ("kv header (salesforce.accounts)", "salesforce.accounts", "read"),
    ("database (crm.accounts read)", "crm.accounts", "read"),
]


def measure(addr_stack, tool: str, action: str, n: int) -> tuple[float, float, float]:
    channel, pdp = stub(addr_stack)
    req = request("spiffe://prod/agent/crm", tool=tool, action=action)
    with channel:
        for _ in range(5):  # connect, and fill the cache on a warm run
            pdp.Authorize(req, timeout=10)
        lat = []
        start = time.perf_counter()
        for _ in range(n):
            t = time.perf_counter()
            resp = pdp.Authorize(req, timeout=10)
            lat.append((time.perf_counter() - t) * 1000)
            assert resp.decision == 1, resp.reasons  # every call must be a real allow
        total = time.perf_counter() - start
    q = statistics.quantiles(lat, n=100)
    return q[49], q[98], n / total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300, help="calls per case")
    args = ap.parse_args()
    with run_postgres() as pg, run_openbao() as bao, tempfile.TemporaryDirectory() as tmp:
        vault = vaultsetup.setup(bao, pg, Path(tmp))
        pol = vaultsetup.policies(Path(tmp))
        print(f"Authorize, sequential, {args.n} calls per case, 1 client, loopback, 2 cores")
        print(f"{'case':34} {'cache':6} {'p50 ms':>8} {'p99 ms':>8} {'calls/s':>8}")
        for cache in (True, False):
            with running_stack(pol, **vault.settings(credential_cache=cache)) as s:
                for name, tool, action in CASES:
                    if not cache and tool == "web.search":
                        continue
                    p50, p99, rate = measure(s, tool, action, args.n)
                    label = "-" if tool == "web.search" else ("warm" if cache else "cold")
                    print(f"{name:34} {label:6} {p50:8.2f} {p99:8.2f} {rate:8.0f}", flush=True)
                assert s.broker is not None
                print(f"  broker stats: {dict(sorted(s.broker.stats.items()))}")


if __name__ == "__main__":
    main()
