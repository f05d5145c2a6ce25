"""`--explain`: which rules matched, from the same OPA query (and revision) as the decision."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
from google.protobuf import json_format

from aam.cli.main import run
from aam.v1 import pdp_pb2
from pdp.stack import Stack
from tests.integration.pdp import EXAMPLES, FINANCE, request, running_stack, stub


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_stack() as s:
        yield s


def explain(stack: Stack, *argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(["authorize", "--addr", stack.settings.grpc_addr, "--workload", FINANCE, *argv,
                "--explain"], out, err)
    assert not err.getvalue()
    return code, out.getvalue()


def matched_rules(text: str) -> dict[str, tuple[str, str]]:
    """rule -> (where it is written, its source), from the text output."""
    lines = [line.split() for line in text.splitlines()]
    assert ["matched", "rules"] in lines
    return {line[0]: (line[1], " ".join(line[2:])) for line in lines
            if line and line[0].split(".")[0] in ("identity", "tools", "models", "route", "deny")}


def test_authorize_explain_lists_the_matched_rules(stack: Stack) -> None:
    code, out = explain(stack, "--tool", "salesforce.accounts", "--action", "export")
    assert code == 3
    policy = "finance-analyst-readonly.yaml"
    assert matched_rules(out) == {
        "identity.policy": (f"{policy}:7:5", "AgentPolicy finance-analyst-readonly spec.identity.workload"),
        "tools.grant": (f"{policy}:12:7", "AgentPolicy finance-analyst-readonly spec.tools[0]"),
        "deny.action_denied": (f"{policy}:14:7", 'action "export" on "salesforce.accounts" is denied by'
                               ' policy "finance-analyst-readonly" (spec.tools[0].deny)'),
    }


def test_explain_locates_model_rules_and_route_targets(stack: Stack) -> None:
    code, out = explain(stack, "--model", "reasoning-high")
    assert code == 0
    rules = matched_rules(out)
    assert rules["models.allow"][0] == "finance-analyst-readonly.yaml:9:5"
    assert rules["models.route"][0] == "model-routes.yaml:13:3"
    # each target of the chain at the line that writes it, in the order decided
    assert [rules[f"route.target[{n}]"][0] for n in (1, 2, 3)] == [
        "model-routes.yaml:17:7", "model-routes.yaml:23:7", "model-routes.yaml:30:7"]
    lines = (EXAMPLES / "model-routes.yaml").read_text().splitlines()
    assert "reasoning-high" in lines[13 - 1] and "provider:" in lines[17 - 1]


def test_explain_pretty_prints_the_input(stack: Stack) -> None:
    _, out = explain(stack, "--tool", "salesforce.accounts", "--action", "read", "--params",
                     '{"limit": 5, "account_id": "a1"}')
    lines = out.splitlines()
    start = lines.index("  input")
    body = lines[start + 1:]
    assert body[0] == "    {" and all(line.startswith("    ") for line in body)
    doc = json.loads("\n".join(body))
    assert doc["params"] == {"account_id": "a1", "limit": 5}
    assert doc["identity"]["spiffe_id"] == FINANCE
    assert '      "params": {' in body and '        "account_id": "a1",' in body  # indented, keys sorted
    assert '        "tokens": 0' in body  # a whole number as sent, not the Struct's 0.0


def test_explain_json_stays_machine_readable(stack: Stack) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = run(["authorize", "--addr", stack.settings.grpc_addr, "--workload", FINANCE, "--tool",
                "salesforce.accounts", "--action", "export", "--explain", "--json"], out, err)
    assert code == 3, err.getvalue()
    doc = json.loads(out.getvalue())
    matched = {m["rule"]: m for m in doc["explanation"]["matched"]}
    assert matched["tools.grant"] == {"rule": "tools.grant", "at": "finance-analyst-readonly.yaml:12:7",
                                      "source": "AgentPolicy finance-analyst-readonly spec.tools[0]"}


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
