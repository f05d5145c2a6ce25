"""Policies change under load: no failed call, every decision from a whole revision.

8 clients call Authorize continuously while the policy directory is edited 5
times (`--watch`: recompile, publish, OPA long-polls the new bundle). Every
response must match what its reported revision decides, no call may fail,
and each new revision must come into effect. The propagation times are
printed; bench/reload.py reports them as figures (tests assert no timings).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import grpc

from aam.v1 import pdp_pb2
from compiler import compile_paths
from tests.integration.pdp import EXAMPLES, request, running_stack, stub
from tests.servers import wait_until

POLICY = "finance-analyst-readonly.yaml"
CHANGES = 5
CLIENTS = 8
# Odd clients ask for a model call, even clients for a tool call; which one is
# allowed flips with every revision.
ASKS = [dict(model="summarization"), dict(tool="salesforce.accounts", action="search")]


def variant(k: int) -> str:
    """Version k of the policy: summarization allowed when k is even, search when odd."""
    text = (EXAMPLES / POLICY).read_text()
    models = "[reasoning-high, summarization]" if k % 2 == 0 else "[reasoning-high]"
    actions = "[read]" if k % 2 == 0 else "[read, search]"
    return (text.replace("[reasoning-high, summarization]", models)
                .replace("[read, search]", actions)
                .replace("daily_usd: 75", f"daily_usd: {75 + k}"))


def write_atomic(path: Path, text: str) -> None:
    """Replace the file in one step, as deploy tools (and ConfigMap swaps) do."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def expected(k: int) -> tuple[bool, bool]:
    return (k % 2 == 0, k % 2 == 1)


def test_reload_under_load(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(EXAMPLES, policies)
    revisions: dict[str, int] = {}
    for k in range(CHANGES + 1):
        probe = tmp_path / f"v{k}"
        shutil.copytree(EXAMPLES, probe)
        (probe / POLICY).write_text(variant(k))
        revisions[compile_paths([probe]).revision] = k
    assert len(revisions) == CHANGES + 1
    (policies / POLICY).write_text(variant(0))

    outcomes: list[tuple[float, int, str, bool]] = []  # (time, client, revision, allowed)
    errors: list[str] = []
    stop = threading.Event()
    with running_stack(policies, watch=True) as stack:
        def client(i: int) -> None:
            channel, pdp = stub(stack)
            with channel:
                while not stop.is_set():
                    try:
                        r = pdp.Authorize(request(**ASKS[i % 2]), timeout=10)
                    except grpc.RpcError as exc:
                        errors.append(f"{exc.code().name}: {exc.details()}")
                        continue
                    outcomes.append((time.monotonic(), i, r.bundle_revision,
                                     r.decision == pdp_pb2.DECISION_ALLOW))

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        latencies = []
        try:
            for k in range(1, CHANGES + 1):
                time.sleep(0.3)  # let decisions on the previous revision accumulate
                rev = next(r for r, v in revisions.items() if v == k)
                changed = time.monotonic()
                write_atomic(policies / POLICY, variant(k))

                def seen(rev: str = rev, changed: float = changed) -> bool:
                    return any(t >= changed and r == rev for t, _, r, _ in list(outcomes))

                wait_until(seen, 15, f"revision {k} in effect")
                first = min(t for t, _, r, _ in list(outcomes) if r == rev)
                latencies.append(first - changed)
        finally:
            stop.set()
            for t in threads:
                t.join(20)
    print("\nreload latency (file write -> first decision on the new revision): "
          + ", ".join(f"{x * 1000:.0f} ms" for x in latencies))
    assert errors == []
    assert len(outcomes) > 100
    for _, i, rev, allowed in outcomes:
        assert rev in revisions, f"decision on an unknown revision {rev}"
        assert allowed == expected(revisions[rev])[i % 2], (i, revisions[rev], allowed)
    assert {revisions[r] for _, _, r, _ in outcomes} == set(range(CHANGES + 1))
