"""``aam replay`` over a real audit log: a PDP stack on PostgreSQL makes known decisions,
then candidates are replayed against them on a real OPA (issue 16, point 3).

Nothing is timed. The one row written by hand is a decision at 03:00 UTC on a day long
gone, under a grant that only holds 02:00-04:00: it replays as an allow only because
the row's time, not the clock, is the time OPA judges.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from aam.cli.main import run
from aam.v1 import pdp_pb2
from pdp.ledger import AuditFilter, open_ledger
from pdp.ledger.chain import canonical
from pdp.ledger.keyring import Keyring
from pdp.ledger.types import AuditEntry
from tests.integration.ledgers import fresh_database
from tests.integration.pdp import FINANCE, audit_key_file, request, running_stack, stub
from tests.servers import Postgres

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SUPPORT = "spiffe://prod/agent/support-replay"
NIGHT = "spiffe://prod/agent/night-owl"
NIGHT_TS = "2025-11-29T03:00:00.250000+00:00"
RECORD_ALL = "[identity, policy, action, outcome, reasons, params, context]"


def finance(actions: str = "[read, search]", daily: int = 75) -> str:
    return f"""\
apiVersion: access.envisionai.dev/v1
kind: AgentPolicy
metadata: {{name: finance-replay}}
spec:
  identity: {{workload: {FINANCE}}}
  models: {{allow: [reasoning-high]}}
  budget: {{daily_usd: {daily}}}
  tools:
    - resource: salesforce.accounts
      actions: {actions}
      deny: [export, delete]
      constraints:
        - {{param: limit, max: 50}}
    - resource: zendesk.tickets
      actions: [read]
      conditions:
        context: {{region: [eu-west-1]}}
  audit:
    record: {RECORD_ALL}
"""


OTHERS = f"""\
apiVersion: access.envisionai.dev/v1
kind: AgentPolicy
metadata: {{name: support-unrecorded-params}}
spec:
  identity: {{workload: {SUPPORT}}}
  tools:
    - resource: zendesk.tickets
      actions: [read]
  audit:
    record: [identity, policy, action, outcome, reasons]
---
apiVersion: access.envisionai.dev/v1
kind: AgentPolicy
metadata: {{name: night-owl}}
spec:
  identity: {{workload: {NIGHT}}}
  tools:
    - resource: zendesk.tickets
      actions: [read]
      conditions:
        time_window: {{start: "02:00", end: "04:00", timezone: UTC}}
  audit:
    record: {RECORD_ALL}
"""


def policy_dir(path: Path, finance_doc: str) -> Path:
    path.mkdir()
    for name in ("model-routes.yaml", "tools.yaml"):
        shutil.copy(EXAMPLES / name, path / name)
    (path / "finance.yaml").write_text(finance_doc)
    (path / "others.yaml").write_text(OTHERS)
    return path


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


@dataclass
class Log:
    """The audit log the stack wrote, and which decision was which."""

    url: str
    policies: Path
    ids: dict[str, str]


def night_row(key: Path, url: str) -> None:
    """A decision recorded at 03:00 UTC (allowed by the 02:00-04:00 window), as the engine
    writes a row; chained under the stack's keyring before the stack starts."""
    body = {"ts": NIGHT_TS, "decision_id": "night0", "workload": NIGHT, "outcome": "allow",
            "revision": "r0", "identity": {"spiffe_id": NIGHT}, "policy": "night-owl",
            "action": {"model": "", "tool": "zendesk.tickets", "action": "read"},
            "reasons": [], "params": {}, "context": {},
            "estimate": {"tokens": 0, "cost_usd": 0.0}}
    ledger = open_ledger(url, 1, 5.0, Keyring.load(key))
    assert ledger is not None
    ledger.migrate()
    ledger.finish(AuditEntry(NIGHT_TS, "night0", NIGHT, "allow", canonical(body)), release=False)
    ledger.close()


@pytest.fixture(scope="module")
def log(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Log]:
    tmp = tmp_path_factory.mktemp("replay")
    policies = policy_dir(tmp / "policies", finance())
    url = fresh_database(postgres)
    key = audit_key_file(tmp)
    night_row(key, url)
    ids: dict[str, str] = {}
    with running_stack(policies, ledger_url=url, audit_key_file=str(key),
                       audit_anchor_file=str(tmp / "audit.anchor")) as stack:
        channel, pdp = stub(stack)
        with channel:
            def decide(name: str, expect: int, workload: str = FINANCE, **fields: object) -> None:
                resp = pdp.Authorize(request(workload, **fields), timeout=10)
                assert resp.decision == expect, (name, [(r.code, r.message) for r in resp.reasons])
                ids[name] = resp.decision_id

            allow, deny = pdp_pb2.DECISION_ALLOW, pdp_pb2.DECISION_DENY
            acct = {"tool": "salesforce.accounts"}
            decide("search10", allow, **acct, action="search", params={"limit": 10})
            decide("search20", allow, **acct, action="search", params={"limit": 20})
            decide("read", allow, **acct, action="read", params={"account_id": "a1"})
            decide("search500", deny, **acct, action="search", params={"limit": 500})
            decide("export", deny, **acct, action="export")
            decide("update", deny, **acct, action="update", params={"account_id": "a1"})
            decide("ticket_eu", allow, tool="zendesk.tickets", action="read",
                   context={"region": "eu-west-1"})
            decide("ticket_us", deny, tool="zendesk.tickets", action="read",
                   context={"region": "us-east-1"})
            # Budget: 74.20 of 75 reserved; 100k tokens cost at least 1.00 USD more.
            decide("model", allow, model="reasoning-high", estimated_cost_usd=74.20)
            decide("model_over", deny, model="reasoning-high", estimated_tokens=100_000)
            decide("support_params", allow, SUPPORT, tool="zendesk.tickets", action="read",
                   params={"query": "refund"})
            decide("support_plain", allow, SUPPORT, tool="zendesk.tickets", action="read")
            # An agent reporting its own usage: an identity refusal, not a decision.
            with pytest.raises(grpc.RpcError):
                pdp.RecordUsage(pdp_pb2.RecordUsageRequest(decision_id=ids["model"], tokens=1,
                                                           cost_usd=1.0), timeout=10)
        assert stack.ledger is not None
        rows = stack.ledger.audit_rows(AuditFilter())
    assert len(rows) == 14 and rows[0].decision_id == "night0"
    assert [r.record().get("event") for r in rows].count("identity_refused") == 1
    over = next(r.record() for r in rows if r.decision_id == ids["model_over"])
    assert [x["code"] for x in over["reasons"]] == ["budget_exhausted"]
    assert over["state"]["budget"]["daily"]["reserved_usd"] >= 74.2  # and the tool calls
    yield Log(url, policies, ids)


def replay(log: Log, candidate: Path, *more: str) -> tuple[int, dict, str]:
    code, out, err = cli("replay", "--candidate", str(candidate), "--ledger-url", log.url,
                         "--json", *more)
    assert "Traceback" not in err
    return code, json.loads(out), err


def flips(doc: dict) -> dict[tuple[str, str, str], set[str]]:
    return {(f["direction"], f["policy"], f["reason"]): set(f["decision_ids"]) for f in doc["flips"]}


def test_the_same_policies_flip_nothing(log: Log) -> None:
    code, doc, err = replay(log, log.policies)
    assert code == 0, err
    assert doc["flips"] == []
    # 12 decisions made plus the night row; the params the support policy did not record
    # make one not replayable; the identity refusal is skipped.
    assert doc["totals"] == {"replayed": 12, "unchanged": 12, "allow_to_deny": 0,
                             "deny_to_allow": 0, "not_replayable": 1, "skipped": 1}
    assert doc["skipped"] == {"identity_refused": 1}


def test_removing_a_grant_flips_exactly_its_allows(log: Log, tmp_path: Path) -> None:
    candidate = policy_dir(tmp_path / "narrower", finance(actions="[read]"))
    code, doc, err = replay(log, candidate)
    assert code == 0, err
    assert flips(doc) == {("allow_to_deny", "finance-replay", "action_not_granted"):
                          {log.ids["search10"], log.ids["search20"]}}
    assert doc["totals"]["unchanged"] == 10
    # The text report: totals, then the group with its examples.
    code, out, _ = cli("replay", "--candidate", str(candidate), "--ledger-url", log.url)
    assert code == 0
    assert out.splitlines()[0].endswith(": 12 replayed, 10 unchanged, 2 allow->deny, 0 deny->allow, "
                                        "1 not replayable, 1 skipped")
    assert "allow -> deny (2), by policy and candidate's reason:" in out
    assert "      2  finance-replay  action_not_granted  e.g. " in out


def test_widening_flips_exactly_the_denies_it_allows_and_fails_the_gate(
        log: Log, tmp_path: Path) -> None:
    candidate = policy_dir(tmp_path / "wider", finance(actions="[read, search, update]", daily=200))
    code, doc, err = replay(log, candidate)
    assert code == 4, err
    assert "2 denied decision(s) would be allowed" in err
    assert flips(doc) == {
        ("deny_to_allow", "finance-replay", "action_not_granted"): {log.ids["update"]},
        # the same recorded spend, against the candidate's 200 USD
        ("deny_to_allow", "finance-replay", "budget_exhausted"): {log.ids["model_over"]},
    }
    code, doc, _ = replay(log, candidate, "--allow-widening")
    assert code == 0
    assert doc["totals"]["deny_to_allow"] == 2


def test_rows_whose_params_were_not_recorded_are_named_not_replayed(log: Log) -> None:
    code, doc, _ = replay(log, log.policies, "--workload", SUPPORT)
    assert code == 0
    assert doc["not_replayable"] == [{"decision_id": log.ids["support_params"],
                                      "why": "params withheld by audit.record (not recorded)"}]
    assert doc["totals"]["replayed"] == 1  # the same policy's call without params replays
    code, out, _ = cli("replay", "--candidate", str(log.policies), "--ledger-url", log.url,
                       "--workload", SUPPORT)
    assert f"params withheld by audit.record (not recorded):\n         {log.ids['support_params']}" \
        in out


def test_since_and_until_bound_the_rows(log: Log) -> None:
    code, doc, _ = replay(log, log.policies, "--until", "2026-01-01T00:00:00+00:00")
    assert code == 0 and doc["totals"]["replayed"] == 1  # only the night row is that old
    code, doc, _ = replay(log, log.policies, "--since", "2026-01-01T00:00:00+00:00")
    assert code == 0 and doc["totals"]["replayed"] == 11
