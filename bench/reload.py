"""How long from a policy file edit to the first decision on the new revision?

Runs the PDP with --watch and a managed OPA on a copy of examples/, keeps
8 clients calling Authorize, edits the policy N times and prints, per edit,
the time until a client first saw the new revision (watch poll + compile +
publish + OPA long poll + activation), plus the failed-call count.

    .venv/bin/python bench/reload.py [--changes 10] [--clients 8]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aam.v1 import pdp_pb2, pdp_pb2_grpc  # noqa: E402
from pdp.config import Settings  # noqa: E402
from pdp.opa import free_port  # noqa: E402
from pdp.stack import Stack  # noqa: E402

POLICY = "finance-analyst-readonly.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--changes", type=int, default=10)
    ap.add_argument("--clients", type=int, default=8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        policies = Path(tmp) / "policies"
        shutil.copytree(ROOT / "examples", policies)
        original = (policies / POLICY).read_text()
        settings = Settings.load(env={}, grpc_addr=f"127.0.0.1:{free_port()}", plaintext=True,
                                 policies=str(policies), watch=True)
        stack = Stack(settings)
        stack.start()
        seen: dict[str, float] = {}
        calls, failed = [0], [0]
        stop = threading.Event()

        def client() -> None:
            with grpc.insecure_channel(settings.grpc_addr) as ch:
                pdp = pdp_pb2_grpc.PolicyDecisionServiceStub(ch)
                req = pdp_pb2.AuthorizeRequest(
                    identity=pdp_pb2.Identity(spiffe_id="spiffe://prod/agent/finance-analyst"),
                    model="reasoning-high")
                while not stop.is_set():
                    try:
                        rev = pdp.Authorize(req, timeout=10).bundle_revision
                        seen.setdefault(rev, time.monotonic())
                        calls[0] += 1
                    except grpc.RpcError:
                        failed[0] += 1

        threads = [threading.Thread(target=client, daemon=True) for _ in range(args.clients)]
        for t in threads:
            t.start()
        latencies = []
        try:
            for k in range(1, args.changes + 1):
                time.sleep(0.5)
                before = stack.store.current.revision  # type: ignore[union-attr]
                changed = time.monotonic()
                (policies / POLICY).write_text(original.replace("daily_usd: 75", f"daily_usd: {75 + k}"))
                while stack.store.current.revision == before:  # type: ignore[union-attr]
                    time.sleep(0.005)
                rev = stack.store.current.revision  # type: ignore[union-attr]
                while rev not in seen:
                    time.sleep(0.005)
                latencies.append(seen[rev] - changed)
        finally:
            stop.set()
            for t in threads:
                t.join(10)
            stack.stop()
    print(f"{args.changes} policy edits, {args.clients} clients, {calls[0]} calls, {failed[0]} failed")
    print("edit -> first decision on the new revision (ms): "
          + " ".join(f"{x * 1000:.0f}" for x in latencies))
    print(f"median {statistics.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
