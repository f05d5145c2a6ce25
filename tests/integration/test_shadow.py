"""Shadow policies on the real stack: OPA evaluates them beside the enforced policy, the PDP
audits and counts each disagreement in PostgreSQL and never changes an answer.

A workload's enforced AgentPolicy allows crm.accounts export; its shadow policy
(`rollout: {mode: shadow}`) denies it. Every call is still ALLOW exactly as without the
shadow, every audit row of those calls carries one ``shadow`` disagreement,
``aam_shadow_disagreements_total`` counts them and ``aam shadow report`` groups them.
Rewriting the shadow policy while clients call fails no call.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from aam.cli import main as cli
from aam.v1 import pdp_pb2
from compiler import compile_paths
from pdp.ledger import AuditFilter
from pdp.stack import Stack
from tests.integration.ledgers import fresh_database
from tests.integration.pdp import request, running_stack, stub
from tests.servers import Postgres, opa_binary, wait_until

CRM = "spiffe://prod/agent/crm-sync"
NEWCOMER = "spiffe://prod/agent/crm-newcomer"  # only a shadow policy
N = 25

ENFORCED = f"""\
apiVersion: access.envisionai.dev/v1
kind: AgentPolicy
metadata: {{name: crm-sync}}
spec:
  identity: {{workload: "{CRM}"}}
  tools:
    - resource: crm.accounts
      actions: [read, export]
"""


def shadow_policy(name: str, workload: str, deny_export: bool, version: int = 0) -> str:
    """Version ``version`` of a shadow policy (a grant of its own makes each a new revision)."""
    tools = "actions: [read]\n      deny: [export]" if deny_export else "actions: [read, export]"
    return f"""\
apiVersion: access.envisionai.dev/v1
kind: AgentPolicy
metadata: {{name: {name}}}
spec:
  identity: {{workload: "{workload}"}}
  rollout: {{mode: shadow}}
  tools:
    - resource: crm.accounts
      {tools}
    - resource: crm.notes
      actions: [v{version}]
"""


def write_policies(directory: Path, deny_export: bool = True, version: int = 0) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "crm-sync.yaml").write_text(ENFORCED)
    (directory / "newcomer.yaml").write_text(shadow_policy("crm-newcomer-next", NEWCOMER, False))
    write_atomic(directory / "crm-sync-next.yaml",
                 shadow_policy("crm-sync-next", CRM, deny_export, version))


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def metric(stack: Stack, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"{stack.http.url}/metrics", timeout=5) as r:  # type: ignore[union-attr]
        text = r.read().decode()
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and all(w in line for w in want))


@pytest.fixture(scope="module")
def ledger_url(postgres: Postgres) -> str:
    return fresh_database(postgres)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, ledger_url: str) -> Iterator[Stack]:
    policies = tmp_path_factory.mktemp("shadow") / "policies"
    write_policies(policies)
    with running_stack(policies, ledger_url=ledger_url) as s:
        yield s


def export(workload: str = CRM) -> pdp_pb2.AuthorizeRequest:
    return request(workload, tool="crm.accounts", action="export")


def test_a_denying_shadow_changes_no_answer_and_records_each_disagreement(
        stack: Stack, ledger_url: str) -> None:
    since = datetime.now(UTC).isoformat()
    before = metric(stack, "aam_shadow_disagreements_total", policy="crm-sync-next",
                    enforced="allow", shadow="deny")
    channel, pdp = stub(stack)
    with channel:
        answers = [pdp.Authorize(export(), timeout=10) for _ in range(N)]
        agreeing = pdp.Authorize(request(CRM, tool="crm.accounts", action="read"), timeout=10)
    for a in answers:
        assert a.decision == pdp_pb2.DECISION_ALLOW
        assert list(a.reasons) == [] and a.policy == "crm-sync"
    assert agreeing.decision == pdp_pb2.DECISION_ALLOW

    assert stack.ledger is not None
    for a in answers:
        (row,) = stack.ledger.audit_rows(AuditFilter(decision_id=a.decision_id))
        body = row.record()
        assert row.outcome == "allow" and body["outcome"] == "allow"
        assert body["shadow"] == {"policy": "crm-sync-next", "outcome": "deny", "reasons": [{
            "code": "action_denied",
            "message": 'action "export" on "crm.accounts" is denied by policy "crm-sync-next"'
                       " (spec.tools[0].deny)"}]}
    (row,) = stack.ledger.audit_rows(AuditFilter(decision_id=agreeing.decision_id))
    assert "shadow" not in row.record()  # agreement is not recorded

    after = metric(stack, "aam_shadow_disagreements_total", policy="crm-sync-next",
                   enforced="allow", shadow="deny")
    assert after - before == N

    out, err = io.StringIO(), io.StringIO()
    assert cli.run(["shadow", "report", "--ledger-url", ledger_url, "--since", since], out, err) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].startswith(f"{N} shadow disagreement(s) since {since} in {N + 1} decision(s)")
    (group,) = [line for line in lines[1:] if line.startswith("crm-sync-next")]
    assert group.split()[1:6] == ["ALLOW", "->", "DENY", "action_denied", str(N)]
    assert f"decision={answers[-1].decision_id}" in group


def test_a_workload_with_only_a_shadow_policy_is_denied(stack: Stack) -> None:
    channel, pdp = stub(stack)
    with channel:
        a = pdp.Authorize(request(NEWCOMER, tool="crm.accounts", action="read"), timeout=10)
    assert a.decision == pdp_pb2.DECISION_DENY
    assert [r.code for r in a.reasons] == ["no_policy"] and a.policy == ""
    assert stack.ledger is not None
    (row,) = stack.ledger.audit_rows(AuditFilter(decision_id=a.decision_id))
    assert row.record()["shadow"] == {"policy": "crm-newcomer-next", "outcome": "allow",
                                      "reasons": []}
    assert metric(stack, "aam_shadow_disagreements_total", policy="crm-newcomer-next",
                  enforced="deny", shadow="allow") >= 1


def test_reloading_a_shadow_policy_under_load_fails_no_call(
        tmp_path: Path, postgres: Postgres) -> None:
    policies = tmp_path / "policies"
    changes = 4  # the shadow denies export on even versions, agrees on odd ones
    revisions: dict[str, int] = {}
    for k in range(changes + 1):
        probe = tmp_path / f"v{k}"
        write_policies(probe, deny_export=k % 2 == 0, version=k)
        revisions[compile_paths([probe]).revision] = k
    assert len(revisions) == changes + 1
    write_policies(policies, deny_export=True)

    outcomes: list[tuple[float, str, str, bool]] = []  # (time, decision id, revision, allowed)
    errors: list[str] = []
    stop = threading.Event()
    with running_stack(policies, ledger_url=fresh_database(postgres), watch=True) as stack:
        def client() -> None:
            channel, pdp = stub(stack)
            with channel:
                while not stop.is_set():
                    try:
                        r = pdp.Authorize(export(), timeout=10)
                    except grpc.RpcError as exc:
                        errors.append(f"{exc.code().name}: {exc.details()}")
                        continue
                    outcomes.append((time.monotonic(), r.decision_id, r.bundle_revision,
                                     r.decision == pdp_pb2.DECISION_ALLOW and not r.reasons))

        threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            for k in range(1, changes + 1):
                time.sleep(0.3)
                rev = next(r for r, v in revisions.items() if v == k)
                changed = time.monotonic()
                write_atomic(policies / "crm-sync-next.yaml",
                             shadow_policy("crm-sync-next", CRM, k % 2 == 0, version=k))

                def seen(rev: str = rev, changed: float = changed) -> bool:
                    return any(t >= changed and r == rev for t, _, r, _ in list(outcomes))

                wait_until(seen, 15, f"shadow revision {k} in effect")
            time.sleep(0.2)
        finally:
            stop.set()
            for t in threads:
                t.join(20)
        assert stack.ledger is not None
        shadowed = {row.decision_id: "shadow" in row.record()
                    for row in stack.ledger.audit_rows(AuditFilter())}

    assert errors == []
    assert len(outcomes) > 50
    assert all(allowed for _, _, _, allowed in outcomes)
    assert {revisions[r] for _, _, r, _ in outcomes} == set(range(changes + 1))
    for _, decision_id, rev, _ in outcomes:  # each row records its own revision's shadow
        assert shadowed[decision_id] == (revisions[rev] % 2 == 0), (decision_id, revisions[rev])


def test_real_opa_judges_the_shadow_policy_alone(tmp_path: Path) -> None:
    """The shadow replaces the enforced policy whole: a grant it leaves out is not granted.
    (OPA merges a ``with`` on bundle data into the stored object, so the Rego swaps the
    ``policy`` rule instead; a merge would let the shadow inherit the enforced grants.)"""
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "crm-sync.yaml").write_text(ENFORCED)
    narrower = shadow_policy("crm-sync-next", CRM, deny_export=False).replace(
        "actions: [read, export]", "actions: [read]")
    (policies / "crm-sync-next.yaml").write_text(narrower)
    bundle = tmp_path / "bundle.tar.gz"
    bundle.write_bytes(compile_paths([policies]).to_tar_gz())
    doc = {"identity": {"spiffe_id": CRM}, "model": "", "tool": "crm.accounts", "action": "export",
           "params": {}, "context": {}}
    (tmp_path / "input.json").write_text(json.dumps(doc))
    r = subprocess.run([opa_binary(), "eval", "-b", str(bundle), "-i", str(tmp_path / "input.json"),
                        "-f", "values", "data.aam.authz.decision"], capture_output=True, text=True,
                       check=True)
    (decision,) = json.loads(r.stdout)
    assert decision["allow"] is True and decision["policy"] == "crm-sync"
    assert decision["shadow"]["policy"] == "crm-sync-next"
    assert [x["code"] for x in decision["shadow"]["reasons"]] == ["action_not_granted"]


def test_a_whole_candidate_policy_set_runs_in_shadow(tmp_path: Path, postgres: Postgres) -> None:
    """`shadow_policies`: the next version of the policies, in their own directory, decides
    nothing and is compared on every call, and an edit to it is picked up like any other."""
    live, candidate = tmp_path / "live", tmp_path / "candidate"
    live.mkdir()
    candidate.mkdir()
    (live / "crm-sync.yaml").write_text(ENFORCED)
    next_version = ENFORCED.replace("actions: [read, export]", "actions: [read]\n      deny: [export]")
    write_atomic(candidate / "crm-sync.yaml", next_version)
    with running_stack(live, ledger_url=fresh_database(postgres), shadow_policies=str(candidate),
                       watch=True) as stack:
        channel, pdp = stub(stack)
        with channel:
            answers = [pdp.Authorize(export(), timeout=10) for _ in range(3)]
            assert all(a.decision == pdp_pb2.DECISION_ALLOW and a.policy == "crm-sync"
                       for a in answers)
            assert stack.ledger is not None
            for a in answers:
                (row,) = stack.ledger.audit_rows(AuditFilter(decision_id=a.decision_id))
                assert row.record()["shadow"]["policy"] == "crm-sync"
                assert row.record()["shadow"]["outcome"] == "deny"
            first = answers[0].bundle_revision
            write_atomic(candidate / "crm-sync.yaml", ENFORCED)  # the candidate now agrees
            agreed = None
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                a = pdp.Authorize(export(), timeout=10)
                if a.bundle_revision != first:
                    agreed = a
                    break
                time.sleep(0.05)
        assert agreed is not None and agreed.decision == pdp_pb2.DECISION_ALLOW
        (row,) = stack.ledger.audit_rows(AuditFilter(decision_id=agreed.decision_id))
        assert "shadow" not in row.record()
