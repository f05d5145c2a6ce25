"""`--explain`: which rules matched, from the same OPA query (and revision) as the decision."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from google.protobuf import json_format

from aam.cli.main import run
from aam.v1 import pdp_pb2
from pdp.stack import Stack
from tests.integration.pdp import FINANCE, request, running_stack, stub


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_stack() as s:
        yield s


def test_authorize_explain_lists_the_matched_rules(stack: Stack) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = run(["authorize", "--addr", stack.settings.grpc_addr, "--workload", FINANCE,
                "--tool", "salesforce.accounts", "--action", "export", "--explain"], out, err)
    assert code == 3, err.getvalue()
    lines = [line.split() for line in out.getvalue().splitlines()]
    assert ["matched", "rules"] in lines
    rules = {line[0]: " ".join(line[1:]) for line in lines
             if line and line[0].split(".")[0] in ("identity", "tools", "models", "deny")}
    assert rules == {
        "identity.policy": "AgentPolicy finance-analyst-readonly spec.identity.workload",
        "tools.grant": "AgentPolicy finance-analyst-readonly spec.tools[0]",
        "deny.action_denied": 'action "export" on "salesforce.accounts" is denied by policy '
                              '"finance-analyst-readonly" (spec.tools[0].deny)',
    }


def test_explain_comes_from_the_same_revision_as_the_decision(stack: Stack) -> None:
    channel, pdp = stub(stack)
    with channel:
        resp = pdp.Authorize(request(model="reasoning-high", explain=True), timeout=5)
    doc = json_format.MessageToDict(resp.explanation)
    assert resp.decision == pdp_pb2.DECISION_ALLOW
    assert doc["revision"] == resp.bundle_revision
    assert [m["rule"] for m in doc["matched"]] == ["identity.policy", "models.allow", "models.route",
                                                   "route.target[1]", "route.target[2]",
                                                   "route.target[3]"]


def test_without_explain_there_is_no_explanation(stack: Stack) -> None:
    channel, pdp = stub(stack)
    with channel:
        resp = pdp.Authorize(request(model="reasoning-high"), timeout=5)
    assert not resp.HasField("explanation")
