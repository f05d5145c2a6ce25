"""What-if replay without a server: inputs rebuilt from audit rows, classification,
grouping, and the CLI's report and exit codes over a fake candidate."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aam.cli import replay_cmd
from aam.cli.main import run
from pdp import replay
from pdp.compiled import Budget, Compiled, CompiledPolicy, CredentialSpec, Scope
from pdp.engine import Decision, Engine, Reason, Request
from pdp.ledger import open_ledger
from pdp.ledger.chain import canonical
from pdp.ledger.keyring import Keyring
from pdp.ledger.limits import state as ledger_state
from pdp.ledger.types import Admission, AuditEntry, Limits, RateWindow, Window, usd_to_micro
from pdp.opa import OpaClient

W = "spiffe://prod/agent/finance-analyst"
TS = "2026-11-26T09:30:00.123456+00:00"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _state(spent: int = 74_200_000, reserved: int = 0, limit: float | None = 75.0) -> dict[str, Any]:
    a = Admission(True, 0, Window("2026-11-26", spent, reserved, 3600.0),
                  Window("2026-11", spent, reserved, 86_400.0), RateWindow(3, 300, 12.0),
                  RateWindow(1, 100, 5.0))
    return ledger_state(a, Limits(daily_micro=usd_to_micro(limit) if limit is not None else None))


def row(req: Request, allow: bool = True, reasons: tuple[Reason, ...] = (), policy: str = "p",
        state: dict[str, Any] | None = None, record: tuple[str, ...] = (
            "identity", "policy", "action", "outcome", "reasons", "params", "context"),
        decision_id: str = "d1", revision: str = "rev1") -> dict[str, Any]:
    """A decision row's body as the engine writes it (pdp/ledger/audit.py entry, with
    the estimate, state and redacted every row carries), back from the ledger."""
    action: dict[str, Any] = {"model": req.model, "tool": req.tool, "action": req.action}
    if req.mcp is not None:
        action["mcp"] = req.mcp
    if req.listing:
        action["list"] = req.listing
    fields: dict[str, Any] = {
        "policy": policy, "action": action, "params": req.params, "context": req.context,
        "reasons": [{"code": r.code, "message": r.message} for r in reasons]}
    body: dict[str, Any] = {"ts": TS, "decision_id": decision_id, "workload": req.spiffe_id,
                            "outcome": "allow" if allow else "deny", "revision": revision,
                            "estimate": {"tokens": req.estimated_tokens,
                                         "cost_usd": req.estimated_cost_usd}}
    for item in record:
        if item == "identity":
            body["identity"] = {"spiffe_id": req.spiffe_id}
        elif item in fields:
            body[item] = fields[item]
    withheld = [k for k in ("action", "params", "context") if k not in record and fields[k]]
    if withheld:
        body["redacted"] = withheld
    if state is not None:
        body["state"] = state
    return json.loads(canonical(body))


def engine_input(req: Request, state: dict[str, Any] | None) -> dict[str, Any]:
    return Engine(OpaClient("http://127.0.0.1:1", 1.0)).build_input(req, None, state)


@pytest.mark.parametrize("req", [
    Request(W, tool="salesforce.accounts", action="search", params={"query": "acme", "limit": 5},
            context={"environment": "prod", "nested": {"a": [1, 2]}}, estimated_tokens=0,
            estimated_cost_usd=0.002),
    Request(W, model="reasoning-high", estimated_tokens=40_000, estimated_cost_usd=0.5),
    Request(W, tool="zendesk.tickets", action="read", mcp={"method": "tools/call", "name": "read"}),
    Request(W, listing="models"),
])
def test_input_is_rebuilt_exactly_as_the_engine_built_it(req: Request) -> None:
    state = _state()
    body = row(req, state=state)
    got = replay.rebuild_input(body)
    assert got == {**engine_input(req, state), "now": TS}
    assert isinstance(replay.classify(body), replay.Replayable)


def test_no_state_recorded_means_no_input_state() -> None:
    req = Request(W, tool="salesforce.accounts", action="read")
    assert "state" not in replay.rebuild_input(row(req))
    assert replay.rebuild_input(row(req)) == {**engine_input(req, None), "now": TS}


def test_empty_params_not_recorded_are_empty_not_missing() -> None:
    """A policy that does not record params, on a request without any: nothing was withheld."""
    req = Request(W, tool="salesforce.accounts", action="read")
    body = row(req, record=("identity", "policy", "action", "outcome"))
    assert "params" not in body and "redacted" not in body
    got = replay.classify(body)
    assert isinstance(got, replay.Replayable)
    assert got.input["params"] == {} and got.input["context"] == {}
    assert got.reasons == ()


def test_withheld_and_old_rows_are_named_not_guessed() -> None:
    req = Request(W, tool="salesforce.accounts", action="read", params={"limit": 5},
                  context={"environment": "prod"})
    withheld = replay.classify(row(req, record=("identity", "policy", "action", "outcome"),
                                   decision_id="d-redacted"))
    assert withheld == replay.Unreplayable(
        "d-redacted", "params, context withheld by audit.record (not recorded)")
    old = row(req, decision_id="d-old")
    del old["estimate"]
    assert replay.classify(old) == replay.Unreplayable("d-old", replay.BEFORE_REPLAY)
    assert isinstance(replay.classify({"decision_id": "d-bad"}), replay.Unreplayable)


@pytest.mark.parametrize(("reasons", "revision", "why"), [
    ((Reason("engine_unavailable", "policy engine unavailable: down"),), "", "engine_unavailable"),
    ((Reason("ledger_unavailable", "the ledger ... is unavailable"),), "", "ledger_unavailable"),
    ((Reason("ledger_unavailable", "policy sets a budget but no ledger state"),), "rev1",
     "ledger_unavailable"),
    ((Reason("credential_unavailable", "no credential"),), "rev1", "credential_unavailable"),
    ((Reason("route_not_mapped", "no route"),), "", "route_not_mapped"),
    ((Reason("budget_exhausted", "the ledger refused the reservation (limits changed while "
                                 "deciding); try again"),), "rev1", "ledger_refused_reservation"),
    ((), "", "no policy revision (engine, ledger or transport deny)"),  # reasons not recorded
])
def test_denies_that_are_not_policy_decisions_are_skipped(
        reasons: tuple[Reason, ...], revision: str, why: str) -> None:
    body = row(Request(W, tool="t", action="a"), allow=False, reasons=reasons, revision=revision)
    if not reasons:
        del body["reasons"]
    assert replay.classify(body) == replay.Skipped("d1", why)


def test_identity_refusals_are_skipped() -> None:
    body = {"ts": TS, "decision_id": "r1", "workload": W, "outcome": "deny",
            "event": "identity_refused", "caller": "", "asserted": W,
            "reasons": [{"code": "not_gateway", "message": "..."}]}
    assert replay.classify(body) == replay.Skipped("r1", "identity_refused")


def _candidate(daily: float | None = None, credential_for: str = "") -> Compiled:
    policies = {W: CompiledPolicy(W, "finance", budget=Budget(daily_usd=daily))}
    creds = {}
    if credential_for:
        creds[credential_for] = CredentialSpec(
            "c", credential_for, "kv", "secret", 300, "authorization", "Bearer", "value",
            {"read": Scope("read", frozenset({"read"}))}, {"read": "read"})
    return Compiled("cand", policies, {}, creds)


def test_state_is_restated_against_the_candidate_budget() -> None:
    recorded = _state(spent=74_200_000, reserved=300_000, limit=75.0)
    same = replay.restate(recorded, _candidate(75.0).policy(W))
    assert same == recorded  # the same limit: exactly what the ledger gave OPA
    wider = replay.restate(recorded, _candidate(200.0).policy(W))
    assert wider["budget"]["daily"]["limit_usd"] == 200.0
    assert wider["budget"]["daily"]["remaining_usd"] == 125.5
    assert wider["budget"]["monthly"]["limit_usd"] is None  # the candidate sets none
    assert wider["budget"]["monthly"]["remaining_usd"] is None
    assert wider["rate"] == recorded["rate"]
    assert wider["budget"]["daily"]["spent_usd"] == recorded["budget"]["daily"]["spent_usd"]
    unlimited = _state(limit=None)
    assert replay.restate(unlimited, _candidate(80.0).policy(W))["budget"]["daily"][
        "remaining_usd"] == pytest.approx(5.8)
    assert replay.restate(recorded, None) == recorded  # no candidate policy: as recorded
    body = row(Request(W, model="reasoning-high"), state=recorded)
    assert replay.classify(body, _candidate(200.0)).input["state"] == wider  # type: ignore[union-attr]


def _deny(code: str, policy: str = "finance") -> Decision:
    return Decision(False, (Reason(code, f"{code} message"),), policy, "", "cand")


ALLOW = Decision(True, (), "finance", "", "cand")


def test_flips_are_grouped_by_policy_and_reason() -> None:
    search = Request(W, tool="salesforce.accounts", action="search")
    update = Request(W, tool="salesforce.accounts", action="update")
    model = Request(W, model="reasoning-high")
    bodies = [
        row(search, decision_id="a1"), row(search, decision_id="a2"),
        row(search, decision_id="a3"), row(search, decision_id="a4"),
        row(model, decision_id="a5", policy="old-name"),
        row(update, allow=False, reasons=(Reason("action_denied", "update is denied"),),
            decision_id="d1"),
        row(model, allow=False, reasons=(Reason("budget_exhausted", "spent"),), decision_id="d2",
            state=_state()),
        row(model, decision_id="same"),
    ]
    answers = {"a1": _deny("action_not_granted"), "a2": _deny("action_not_granted"),
               "a3": _deny("action_not_granted"), "a4": _deny("action_not_granted"),
               "a5": _deny("no_policy", policy=""), "d1": ALLOW, "d2": ALLOW, "same": ALLOW}
    order = iter(b["decision_id"] for b in bodies)
    report = replay.replay(bodies, lambda _doc: answers[next(order)])
    assert report.totals() == {"replayed": 8, "unchanged": 1, "allow_to_deny": 5,
                               "deny_to_allow": 2, "not_replayable": 0, "skipped": 0}
    assert [(g.policy, g.reason, g.decision_ids, g.examples)
            for g in report.groups("allow_to_deny")] == [
        ("finance", "action_not_granted", ("a1", "a2", "a3", "a4"), ("a1", "a2", "a3")),
        ("old-name", "no_policy", ("a5",), ("a5",)),  # no candidate policy: the recorded one
    ]
    assert [(g.policy, g.reason, g.message) for g in report.groups("deny_to_allow")] == [
        ("finance", "action_denied", "update is denied"),
        ("finance", "budget_exhausted", "spent"),
    ]
    assert report.widening
    doc = report.to_json()
    assert doc["totals"]["deny_to_allow"] == 2
    assert doc["flips"][0] == {"direction": "allow_to_deny", "policy": "finance",
                               "reason": "action_not_granted", "count": 4,
                               "message": "action_not_granted message",
                               "decision_ids": ["a1", "a2", "a3", "a4"]}


def test_a_candidate_that_needs_unrecorded_state_is_not_replayable() -> None:
    body = row(Request(W, model="reasoning-high"), state={}, decision_id="nostate")
    report = replay.replay([body], lambda _doc: _deny("ledger_unavailable"))
    assert report.not_replayable == [replay.Unreplayable("nostate", replay.NO_STATE)]
    assert report.replayed == 0


def test_a_deny_without_reasons_the_broker_or_ledger_may_have_given_is_not_guessed() -> None:
    read = row(Request(W, tool="salesforce.accounts", action="read"), allow=False,
               record=("identity", "policy", "action", "outcome"), decision_id="cred")
    refused = row(Request(W, model="reasoning-high"), allow=False, decision_id="ledger",
                  record=("identity", "policy", "action", "outcome"),
                  state={**_state(), "reserved": False})
    plain = row(Request(W, tool="salesforce.accounts", action="update"), allow=False,
                record=("identity", "policy", "action", "outcome"), decision_id="plain")
    report = replay.replay([read, refused, plain], lambda _doc: ALLOW,
                           _candidate(credential_for="salesforce.accounts"))
    assert [u.decision_id for u in report.not_replayable] == ["cred", "ledger"]
    assert "broker" in report.not_replayable[0].why
    assert "ledger refused" in report.not_replayable[1].why
    assert [(f.decision_id, f.reason) for f in report.flips] == [("plain", replay.NOT_RECORDED)]


# --- the CLI, over a real SQLite ledger and a fake candidate OPA ------------------------


@pytest.fixture
def ledger_url(tmp_path: Path) -> str:
    url = f"sqlite://{tmp_path / 'ledger.sqlite3'}"
    ledger = open_ledger(url, 1, 5.0, Keyring.generate())
    assert ledger is not None
    ledger.migrate()
    search = Request(W, tool="salesforce.accounts", action="search")
    update = Request(W, tool="salesforce.accounts", action="update", params={"x": 1})
    bodies = [row(search, decision_id="allow1"),
              row(update, allow=False, reasons=(Reason("action_denied", "no update"),),
                  decision_id="deny1"),
              row(update, allow=False, record=("identity", "action", "outcome"),
                  decision_id="redacted1")]
    for b in bodies:
        ledger.finish(AuditEntry(b["ts"], b["decision_id"], W, b["outcome"], canonical(b)),
                      release=False)
    ledger.close()
    return url


@pytest.fixture
def fake_opa(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The candidate allows everything; records what it was asked."""
    asked: list[dict[str, Any]] = []

    @contextlib.contextmanager
    def candidate_opa(bundle: object, binary: str) -> Iterator[replay.Decide]:
        def decide(doc: dict[str, Any]) -> Decision:
            asked.append(doc)
            return ALLOW
        yield decide

    monkeypatch.setattr(replay, "candidate_opa", candidate_opa)
    monkeypatch.setattr(replay_cmd.Settings, "opa_path", lambda self: "opa")
    return asked


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    return run(list(argv), out, err), out.getvalue(), err.getvalue()


def test_cli_reports_flips_and_gates_on_widening(ledger_url: str, fake_opa: list) -> None:
    code, out, err = cli("replay", "--candidate", str(EXAMPLES), "--ledger-url", ledger_url)
    assert code == replay_cmd.WIDENING == 4, err
    assert ("2 replayed, 1 unchanged, 0 allow->deny, 1 deny->allow, 1 not replayable, "
            "0 skipped") in out
    assert "deny -> allow (1), by policy and recorded reason:" in out
    assert "finance  action_denied  e.g. deny1" in out
    assert "action withheld by audit.record" not in out
    assert "params withheld by audit.record (not recorded):\n         redacted1" in out
    assert "--allow-widening" in err
    assert [d["now"] for d in fake_opa] == [TS, TS]

    code, out, _ = cli("replay", "--candidate", str(EXAMPLES), "--ledger-url", ledger_url,
                       "--allow-widening", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["totals"] == {"replayed": 2, "unchanged": 1, "allow_to_deny": 0, "deny_to_allow": 1,
                             "not_replayable": 1, "skipped": 0}
    assert doc["not_replayable"] == [{"decision_id": "redacted1",
                                      "why": "params withheld by audit.record (not recorded)"}]
    assert doc["candidate"]["revision"]


def test_cli_filters_and_starts_no_opa_without_rows(ledger_url: str, fake_opa: list) -> None:
    code, out, _ = cli("replay", "--candidate", str(EXAMPLES), "--ledger-url", ledger_url,
                       "--workload", "spiffe://prod/agent/nobody")
    assert code == 0 and out.startswith("candidate revision ") and "0 replayed" in out
    assert fake_opa == []
    code, out, _ = cli("replay", "--candidate", str(EXAMPLES), "--ledger-url", ledger_url,
                       "--until", "2000-01-01T00:00:00+00:00")
    assert code == 0 and "0 replayed" in out


def test_cli_bad_candidate_prints_diagnostics_without_a_traceback(
        tmp_path: Path, ledger_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: access.envisionai.dev/v1\nkind: AgentPolicy\nmetadata: {name: x}\n"
                   "spec: {identity: {workload: not-a-spiffe-id}}\n")
    code, out, err = cli("replay", "--candidate", str(bad), "--ledger-url", ledger_url)
    assert code == 1 and out == ""
    assert f"{bad}:" in err and ": error: " in err and "Traceback" not in err
    code, _, err = cli("replay", "--candidate", str(EXAMPLES), "--ledger-url", ledger_url,
                       "--since", "yesterday")
    # A malformed time is a usage error (exit 2), refused before any SQL (issue 17).
    assert code == 2 and "argument --since: 'yesterday' is not a time" in capsys.readouterr().err
    assert cli("replay", "--ledger-url", ledger_url)[0] == 2
