"""The migration walkthrough of docs/migration.md, step by step, on the real stack.

A platform team runs a LiteLLM proxy. It imports the proxy's config, binds one workload
(research-bot) to the proxy-wide stub as today's behaviour and rolls the narrower team
policy out in shadow under load, reads the shadow report, replays the day under the
candidate, enforces it and rolls back. Real OPA, real PostgreSQL, the CLI as a user runs it.
The printed figures (time from a file change to the first decision on the new revision)
are the walkthrough's "how fast is a rollback"; they are measured, never asserted.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import yaml

from aam.cli import main as cli
from aam.v1 import pdp_pb2
from compiler import compile_paths
from pdp.ledger import AuditFilter
from pdp.stack import Stack
from tests.integration.ledgers import fresh_database
from tests.integration.pdp import request, running_stack, stub
from tests.servers import Postgres

LITELLM = Path(__file__).resolve().parents[1] / "testdata" / "import" / "litellm-config.yaml"
BOT = "spiffe://prod/agent/research-bot"
# What research-bot calls in a day: the team policy allows the first two, the proxy all three.
CALLS = ("gpt-4o", "claude-sonnet", "gpt-mini")
ROUNDS = 12


def aam(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.run(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


def bind(doc: dict, workload: str, shadow: bool) -> dict:
    """An imported AgentPolicy stub bound to ``workload`` (the step the import leaves to
    the platform team), enforced or in shadow."""
    doc = json.loads(json.dumps(doc))
    doc["spec"]["identity"]["workload"] = workload
    doc["spec"]["identity"].pop("team", None)  # research-bot's SVID carries no team claim
    if shadow:
        doc["spec"]["rollout"] = {"mode": "shadow"}
    return doc


def write(directory: Path, docs: list[dict]) -> None:
    """All documents in one file, replaced atomically (as a deploy tool or git checkout would)."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / ".policies.yaml.tmp"
    tmp.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    os.replace(tmp, directory / "policies.yaml")


def until_revision(stack: Stack, revision: str, started: float, timeout_s: float = 30) -> float:
    """Seconds from ``started`` (the file change) to the first decision on ``revision``."""
    channel, pdp = stub(stack)
    with channel:
        while time.monotonic() - started < timeout_s:
            r = pdp.Authorize(request(BOT, model="gpt-4o"), timeout=10)
            if r.bundle_revision == revision:
                return time.monotonic() - started
            time.sleep(0.01)
    raise AssertionError(f"revision {revision} not active after {timeout_s} s")


def test_import_shadow_replay_enforce_roll_back(tmp_path: Path, postgres: Postgres) -> None:
    # 1. Import what the proxy runs: routes, and AgentPolicy stubs for its budgets.
    imported = tmp_path / "imported.yaml"
    code, _, err = aam("import", "litellm", str(LITELLM), "-o", str(imported))
    assert code == 0, err
    docs = list(yaml.safe_load_all(imported.read_text()))
    routes = [d for d in docs if d["kind"] == "ModelRoute"]
    stubs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "AgentPolicy"}
    assert {r["metadata"]["name"] for r in routes} == set(CALLS)
    assert set(stubs) == {"litellm-proxy", "team-research"}

    # 2. Bind one workload: today's behaviour (the proxy-wide stub) enforced, the team
    #    policy in shadow beside it.
    today = bind(stubs["litellm-proxy"], BOT, shadow=False)
    team = bind(stubs["team-research"], BOT, shadow=True)
    live, candidate = tmp_path / "policies", tmp_path / "candidate"
    write(live, [*routes, today, team])
    write(candidate, [*routes, bind(stubs["team-research"], BOT, shadow=False)])
    shadowing = compile_paths([live]).revision
    ledger_url = fresh_database(postgres)

    with running_stack(live, ledger_url=ledger_url, watch=True) as stack:
        # 3. Shadow it under load: 4 clients, every call answered as today.
        errors: list[str] = []
        answers: Counter[tuple[str, bool]] = Counter()
        lock = threading.Lock()

        def client() -> None:
            channel, pdp = stub(stack)
            with channel:
                for _ in range(ROUNDS):
                    for model in CALLS:
                        try:
                            r = pdp.Authorize(request(BOT, model=model, estimated_tokens=1000),
                                              timeout=10)
                        except grpc.RpcError as exc:
                            errors.append(f"{exc.code().name}: {exc.details()}")
                            continue
                        with lock:
                            answers[model, r.decision == pdp_pb2.DECISION_ALLOW] += 1

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        calls = 4 * ROUNDS
        assert answers == {(m, True): calls for m in CALLS}  # the shadow changed no answer

        # 4. What the team policy would have denied: the shadow report. Every gpt-mini call
        #    (not in the team's models), and the calls past its 100 requests a minute.
        code, out, err = aam("shadow", "report", "--ledger-url", ledger_url)
        assert code == 0, err
        print("\n$ aam shadow report\n" + out)
        groups = {tuple(g[1:5]): int(g[5]) for g in
                  (line.split() for line in out.splitlines()[1:] if line.startswith("team-research"))}
        assert groups[("ALLOW", "->", "DENY", "model_not_allowed")] == calls
        assert set(groups) <= {("ALLOW", "->", "DENY", "model_not_allowed"),
                               ("ALLOW", "->", "DENY", "rate_limited")}
        assert stack.ledger is not None
        shadowed = {r.decision_id for r in stack.ledger.audit_rows(AuditFilter(workload=BOT))
                    if "shadow" in r.record()}
        assert len(shadowed) == sum(groups.values())

        # 5. Replay the day under the candidate: exactly the decisions the shadow disagreed
        #    with flip (same recorded state, same policy), and none widens.
        code, out, err = aam("replay", "--candidate", str(candidate), "--ledger-url", ledger_url,
                             "--workload", BOT)
        print("$ aam replay --candidate candidate/\n" + out)
        assert code == 0, out + err
        code, out, err = aam("replay", "--candidate", str(candidate), "--ledger-url", ledger_url,
                             "--workload", BOT, "--json")
        report = json.loads(out)
        flipped = {d for g in report["flips"] for d in g["decision_ids"]}
        assert {g["direction"] for g in report["flips"]} == {"allow_to_deny"}
        assert flipped == shadowed

        # 6. Enforce: the team policy decides, the proxy-wide binding goes.
        write(live, [*routes, bind(stubs["team-research"], BOT, shadow=False)])
        enforced = compile_paths([live]).revision
        enforce_s = until_revision(stack, enforced, time.monotonic())
        channel, pdp = stub(stack)
        with channel:
            mini = pdp.Authorize(request(BOT, model="gpt-mini"), timeout=10)
        assert mini.decision == pdp_pb2.DECISION_DENY
        assert "model_not_allowed" in [r.code for r in mini.reasons]

        # 7. Roll back: the previous files, so the previous revision (revisions are
        #    content hashes: the same files give the same revision).
        shutil.rmtree(live)
        write(live, [*routes, today, team])
        assert compile_paths([live]).revision == shadowing
        rollback_s = until_revision(stack, shadowing, time.monotonic())
        channel, pdp = stub(stack)
        with channel:
            mini = pdp.Authorize(request(BOT, model="gpt-mini"), timeout=10)
        assert mini.decision == pdp_pb2.DECISION_ALLOW
    print(f"enforce active after {enforce_s * 1000:.0f} ms; "
          f"rollback active after {rollback_s * 1000:.0f} ms")
    assert re.fullmatch(r"[0-9a-f]+", shadowing)
