"""The typed view of the compiled data, which revision's view a decision reads, and no ledger."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from compiler import compile_paths
from compiler.bundle import DATA_PATH
from pdp.compiled import Budget, Compiled, Rate, Revisions
from pdp.engine import MAX_EVALUATIONS, Engine, Request
from pdp.ledger import AuditFilter, Ledger, LedgerOff, open_ledger
from pdp.ledger.gate import Gate
from pdp.ledger.keyring import Keyring
from pdp.ledger.noop import NullGate
from pdp.ledger.types import Ask, Limits
from pdp.opa import DECISION_PATH

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
W = "spiffe://prod/agent/w"


def test_the_typed_view_holds_what_the_compiler_wrote() -> None:
    data = json.loads(compile_paths([EXAMPLES]).files[DATA_PATH])
    view = Compiled.from_data(data)
    assert view.revision == data["revision"]
    assert set(view.policies) == set(data["policies"])
    for workload, raw in data["policies"].items():
        p = view.policies[workload]
        assert (p.workload, p.name, p.models) == (workload, raw["name"], frozenset(raw["models"]))
        assert p.record == tuple(raw["audit"]["record"])
        assert p.budget.daily_usd == raw.get("budget", {}).get("daily_usd")
        for resource, t in raw["tools"].items():
            g = p.tools[resource]
            assert (g.actions, g.deny, g.price_usd) == (frozenset(t["actions"]), frozenset(t["deny"]),
                                                       t["price_usd"])
            assert g.visible == frozenset(t["actions"]) - frozenset(t["deny"])
    assert set(view.routes) == set(data["routes"]) and set(view.credentials) == set(data["credentials"])
    finance = view.policy("spiffe://prod/agent/finance-analyst")
    assert finance is not None and finance.budget == Budget(daily_usd=75, timezone="UTC")
    assert finance.rate == Rate()
    assert view.route("") is None and view.policy("spiffe://nobody") is None


def files(revision: str, record: tuple[str, ...] = ("identity", "outcome")) -> dict[str, bytes]:
    policy = {"name": "p", "budget": {"daily_usd": 10}, "audit": {"record": list(record)},
              "tools": {"crm": {"actions": {"read": True}, "deny": {}, "price_usd": 0.01}}}
    return {DATA_PATH: json.dumps({"revision": revision, "policies": {W: policy}}).encode()}


def test_steps_before_a_decision_read_the_revision_opa_last_answered_with() -> None:
    revs = Revisions(keep=2)
    a = revs.update(files("A"), DATA_PATH)
    assert revs.active is a  # nothing decided yet: the newest published
    b = revs.update(files("B"), DATA_PATH)
    assert revs.active is b
    assert revs.decided("A") is a and revs.active is a  # OPA has not pulled B yet
    c = revs.update(files("C"), DATA_PATH)  # A leaves the kept views but stays active
    assert revs.get("A") is a and revs.active is a and revs.newest is c
    assert revs.decided("C") is c and revs.active is c
    assert revs.decided("B") is b and revs.active is c  # a straggler does not move it back
    assert revs.decided("X") is None and revs.decided("") is None and revs.active is c
    assert revs.for_decision("B") is b and revs.for_decision("X") is c


class FakeOpa:
    """Answers every decision with an allow on ``revision``, and notes the paths asked."""

    def __init__(self, revision: str) -> None:
        self.revision = revision
        self.paths: list[str] = []
        self.inputs: list[dict[str, Any]] = []

    def query(self, path: str, doc: dict[str, Any]) -> Any:
        self.paths.append(path)
        self.inputs.append(doc)
        return {"allow": True, "reasons": [], "policy": "p", "revision": self.revision}


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    store = open_ledger(f"sqlite://{tmp_path / 'ledger.sqlite3'}", 4, 5.0, Keyring.generate())
    assert store is not None
    store.migrate()
    yield store
    store.close()


def _record(ledger: Ledger, decision_id: str) -> dict[str, Any]:
    (row,) = ledger.audit_rows(AuditFilter(decision_id=decision_id))
    return row.record()


TOOL = Request(W, tool="crm", action="read", params={"q": "x"})


@pytest.mark.parametrize("state_ttl_s", [60, 0], ids=["cached-state", "ledger-state"])
def test_a_decision_opa_answered_on_a_newer_revision_is_decided_again_on_its_view(
        ledger: Ledger, state_ttl_s: float) -> None:
    revs = Revisions()
    revs.update(files("A"), DATA_PATH)
    opa = FakeOpa("A")
    engine = Engine(opa, gate=Gate(ledger, revs, 60, 1000, state_ttl_s=state_ttl_s))  # type: ignore[arg-type]
    first = engine.decide(TOOL)
    assert opa.paths == [DECISION_PATH]  # one query, also with nothing cached yet
    assert "params" not in _record(ledger, first.decision_id)
    revs.update(files("B", ("identity", "outcome", "params")), DATA_PATH)
    opa.revision, opa.paths = "B", []  # OPA pulls B after the limits were read from A
    second = engine.decide(TOOL)
    assert opa.paths == [DECISION_PATH, DECISION_PATH]  # on A's view, then again on B's
    assert second.allow and second.revision == "B" and revs.active.id == "B"
    row = _record(ledger, second.decision_id)
    assert row["revision"] == "B" and row["params"] == {"q": "x"}  # B's policy records it
    opa.paths = []
    engine.decide(TOOL)
    assert opa.paths == [DECISION_PATH]  # one revision again: one query


def test_without_a_ledger_opa_gets_no_state_and_is_asked_no_price() -> None:
    opa = FakeOpa("A")
    engine = Engine(opa)  # type: ignore[arg-type]
    assert isinstance(engine.gate, NullGate)
    engine.decide(Request(W, model="m"))
    assert opa.paths == [DECISION_PATH]
    (doc,) = opa.inputs
    assert "state" not in doc and doc["estimate"] == {"tokens": 0, "cost_usd": 0.0}
    with pytest.raises(LedgerOff):
        engine.gate.settle("d", 1, 1.0)


def test_a_reservation_the_ledger_refuses_is_decided_again_on_its_state(ledger: Ledger) -> None:
    """Another PDP took the budget after this one cached its view: the batch that would
    reserve writes nothing and returns the ledger's state, OPA decides again on that,
    and an allow the ledger keeps refusing ends as an audited deny."""
    revs = Revisions()
    revs.update(files("A"), DATA_PATH)
    opa = FakeOpa("A")  # allows whatever the state says, so only the ledger refuses
    engine = Engine(opa, gate=Gate(ledger, revs, 60, 1000, state_ttl_s=60))  # type: ignore[arg-type]
    assert engine.decide(TOOL).allow  # 0.01 of the 10 USD reserved, and the view cached
    other = Ask("other-pdp", W, "", 9_985_000, 0, Limits(daily_micro=10_000_000), 60)
    assert ledger.reserve(other).reserved
    opa.paths, opa.inputs = [], []
    denied = engine.decide(TOOL)
    assert opa.paths == [DECISION_PATH] * MAX_EVALUATIONS
    seen = [doc["state"]["budget"]["daily"]["reserved_usd"] for doc in opa.inputs]
    assert seen == [0.01, 9.995, 9.995]  # the cached view, then the ledger's own
    assert not denied.allow and [r.code for r in denied.reasons] == ["budget_exhausted"]
    assert "refused the reservation" in denied.reasons[0].message
    assert _record(ledger, denied.decision_id)["outcome"] == "deny"
    after = ledger.peek(Ask("look", W, "", 0, 0, Limits(daily_micro=10_000_000), 60))
    assert after.daily.reserved_micro == 9_995_000  # the refused decision holds nothing
