"""``aam test``: suites against the real OPA, diffs, --filter, JUnit XML, located errors."""

from __future__ import annotations

import io
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

from aam.cli.main import run
from tests.integration.pdp import EXAMPLES
from tests.servers import opa_binary


def aam(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(["test", "--opa-binary", opa_binary(), *argv], out, err)
    return code, out.getvalue(), err.getvalue()


def workspace(tmp_path: Path, suite: str) -> Path:
    root = tmp_path / "policies"
    shutil.copytree(EXAMPLES, root, ignore=shutil.ignore_patterns("tests"))
    (root / "tests").mkdir()
    (root / "tests" / "s.yaml").write_text(suite)
    return root


FAILING = """\
name: wrong-expectations
cases:
  - name: export expected to pass
    request: {workload: spiffe://prod/agent/finance-analyst, tool: salesforce.accounts, action: export}
    expect: {decision: ALLOW}
  - name: wrong reason codes
    request: {workload: spiffe://prod/agent/finance-analyst, model: image-gen}
    expect: {decision: DENY, reasons: [tool_not_granted], policy: someone-else}
  - name: right
    request: {workload: spiffe://prod/agent/finance-analyst, model: summarization}
    expect: {decision: ALLOW}
"""


def test_example_suites_pass() -> None:
    code, out, err = aam(str(EXAMPLES))
    assert code == 0, out + err
    assert out.rstrip().endswith("21 passed, 0 failed")


def test_failures_show_a_readable_diff_and_exit_1(tmp_path: Path) -> None:
    root = workspace(tmp_path, FAILING)
    code, out, _ = aam(str(root))
    assert code == 1
    suite = root / "tests" / "s.yaml"
    assert out.splitlines() == [
        f"FAIL  wrong-expectations/export expected to pass  ({suite}:3:5)",
        "      decision  expected ALLOW, got DENY",
        # the actual reason, and where the rule that gave it is written
        '      reason    action_denied: action "export" on "salesforce.accounts" is denied by policy'
        f' "finance-analyst-readonly" (spec.tools[0].deny)  ({root / "finance-analyst-readonly.yaml"}:14:7)',
        f"FAIL  wrong-expectations/wrong reason codes  ({suite}:6:5)",
        "      reasons   expected [tool_not_granted], got [model_not_allowed]",
        "        - tool_not_granted  (expected, missing)",
        "        + model_not_allowed: model \"image-gen\" is not in models.allow of policy"
        " \"finance-analyst-readonly\"  (unexpected)",
        "      policy    expected 'someone-else', got 'finance-analyst-readonly'",
        "PASS  wrong-expectations/right",
        "1 passed, 2 failed",
    ]


def test_filter_selects_cases(tmp_path: Path) -> None:
    root = workspace(tmp_path, FAILING)
    code, out, _ = aam(str(root), "--filter", "/right$")
    assert code == 0
    assert out.splitlines() == ["PASS  wrong-expectations/right", "1 passed, 0 failed"]
    code, _, err = aam(str(root), "--filter", "nothing-matches")
    assert code == 1
    assert "no test case matched --filter 'nothing-matches'" in err


def test_junit_xml(tmp_path: Path) -> None:
    root = workspace(tmp_path, FAILING)
    junit = tmp_path / "out" / "junit.xml"
    code, _, _ = aam(str(root), "--junit", str(junit))
    assert code == 1
    tree = ET.parse(junit).getroot()
    assert tree.tag == "testsuites"
    assert (tree.get("tests"), tree.get("failures")) == ("3", "2")
    suite = tree.find("testsuite")
    assert suite is not None and suite.get("name") == "wrong-expectations"
    cases = {tc.get("name"): tc for tc in suite.iter("testcase")}
    assert cases["right"].find("failure") is None
    failure = cases["export expected to pass"].find("failure")
    assert failure is not None
    assert failure.get("message") == "decision  expected ALLOW, got DENY"


def test_bad_suite_is_a_located_error(tmp_path: Path) -> None:
    root = workspace(tmp_path, """\
name: broken
cases:
  - name: typo
    request: {workload: spiffe://prod/agent/finance-analyst, modle: x}
    expect: {decision: MAYBE}
""")
    code, out, err = aam(str(root))
    suite = root / "tests" / "s.yaml"
    assert code == 1
    assert out == ""
    assert err.splitlines() == [
        f"{suite}:4:62: error: cases[0].request.modle: unknown field (allowed: action, context, estimate,"
        ' identity, model, params, tool, workload); did you mean "model"?',
        f"{suite}:5:24: error: cases[0].expect.decision: 'MAYBE' is not one of ['ALLOW', 'DENY']",
        "2 error(s); no test ran",
    ]


def test_policy_compile_errors_stop_the_run(tmp_path: Path) -> None:
    root = workspace(tmp_path, FAILING)
    (root / "broken.yaml").write_text("apiVersion: access.envisionai.dev/v1\nkind: Nope\n")
    code, _, err = aam(str(root))
    assert code == 1
    assert f"{root / 'broken.yaml'}:2:7: error: unknown kind 'Nope'" in err


def test_a_route_expectation_shows_the_order_it_got(tmp_path: Path) -> None:
    root = workspace(tmp_path, """\
name: routes
cases:
  - name: wrong order
    request: {workload: spiffe://prod/agent/finance-analyst, model: summarization}
    expect: {decision: ALLOW, route: [anthropic/claude-haiku-4-5@us-east-1]}
""")
    code, out, _ = aam(str(root))
    assert code == 1
    assert out.splitlines()[1] == ("      route     expected [anthropic/claude-haiku-4-5@us-east-1], got"
                                   " [openai/gpt-5-mini@us-east-1, anthropic/claude-haiku-4-5@us-east-1]")


def test_a_misspelled_state_field_is_a_located_error_with_a_suggestion(tmp_path: Path) -> None:
    root = workspace(tmp_path, """\
name: state
cases:
  - name: nearly spent
    request: {workload: spiffe://prod/agent/finance-analyst, tool: salesforce.accounts, action: read}
    state: {budget: {daily: {spent: 74.9999}, weekly: {spent_usd: 1}}, rates: {}}
    expect: {decision: DENY}
""")
    code, out, err = aam(str(root))
    suite = root / "tests" / "s.yaml"
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        f"{suite}:5:30: error: cases[0].state.budget.daily.spent: unknown field (allowed: limit_usd,"
        ' remaining_usd, reserved_usd, resets_in_s, spent_usd, window); did you mean "spent_usd"?',
        f"{suite}:5:47: error: cases[0].state.budget.weekly: unknown field (allowed: daily, monthly)",
        f"{suite}:5:72: error: cases[0].state.rates: unknown field (allowed: budget, rate, reserved);"
        ' did you mean "rate"?',
        "3 error(s); no test ran",
    ]


def test_a_hand_written_state_is_completed_as_a_fresh_ledger(tmp_path: Path) -> None:
    # Only spent_usd written: reserved_usd (and the rest) default to a fresh ledger's 0.
    # Sent as written, the budget rule was undefined and the call was allowed.
    root = workspace(tmp_path, """\
name: state
cases:
  - name: the last cent is spent
    request: {workload: spiffe://prod/agent/finance-analyst, tool: salesforce.accounts, action: read}
    state: {budget: {daily: {spent_usd: 74.9999}}}
    expect: {decision: DENY, reasons: [budget_exhausted]}
  - name: plenty left
    request: {workload: spiffe://prod/agent/finance-analyst, tool: salesforce.accounts, action: read}
    state: {budget: {daily: {spent_usd: 10}}}
    expect: {decision: ALLOW}
""")
    code, out, err = aam(str(root))
    assert code == 0, out + err
    assert out.splitlines()[-1] == "2 passed, 0 failed"


def test_an_unexpected_allow_says_what_allowed_it(tmp_path: Path) -> None:
    root = workspace(tmp_path, """\
name: allowed
cases:
  - name: expected a deny
    request: {workload: spiffe://prod/agent/finance-analyst, model: summarization}
    state: {budget: {daily: {spent_usd: 1}}}
    expect: {decision: DENY}
""")
    code, out, _ = aam(str(root))
    assert code == 1
    assert out.splitlines()[1:5] == [
        "      decision  expected DENY, got ALLOW",
        "      allowed   by AgentPolicy finance-analyst-readonly spec.models.allow"
        f"  ({root / 'finance-analyst-readonly.yaml'}:9:5)",
        "      route     openai/gpt-5-mini@us-east-1, anthropic/claude-haiku-4-5@us-east-1",
        "      state     budget.daily.spent_usd=1 (the rest: a fresh ledger)",
    ]


def test_a_near_miss_in_a_request_gets_a_suggestion(tmp_path: Path) -> None:
    root = workspace(tmp_path, """\
name: typos
cases:
  - name: workload
    request: {workload: spiffe://prod/agent/finance-analist, model: summarization}
    expect: {decision: ALLOW}
  - name: model
    request: {workload: spiffe://prod/agent/finance-analyst, model: sumarization}
    expect: {decision: ALLOW}
  - name: tool
    request: {workload: spiffe://prod/agent/finance-analyst, tool: salesforce.acounts, action: read}
    expect: {decision: ALLOW}
  - name: a far miss gets none
    request: {workload: spiffe://prod/agent/stranger, model: summarization}
    expect: {decision: ALLOW}
""")
    code, out, _ = aam(str(root))
    assert code == 1
    reasons = [line.strip() for line in out.splitlines() if line.strip().startswith("reason")]
    policy = root / "finance-analyst-readonly.yaml"
    assert reasons == [
        "reason    no_policy: no policy grants workload spiffe://prod/agent/finance-analist;"
        ' did you mean "spiffe://prod/agent/finance-analyst"?',
        'reason    model_not_allowed: model "sumarization" is not in models.allow of policy'
        f' "finance-analyst-readonly"; did you mean "summarization"?  ({policy}:9:5)',
        'reason    tool_not_granted: tool "salesforce.acounts" is not granted by policy'
        f' "finance-analyst-readonly"; did you mean "salesforce.accounts"?  ({policy}:7:5)',
        "reason    no_policy: no policy grants workload spiffe://prod/agent/stranger",
    ]


def test_suite_and_policy_errors_are_reported_in_one_run(tmp_path: Path) -> None:
    suite = FAILING.replace("expect: {decision: ALLOW}\n", "expect: {decision: MAYBE}\n", 1)
    root = workspace(tmp_path, suite)
    (root / "broken.yaml").write_text("apiVersion: access.envisionai.dev/v1\nkind: Nope\n")
    code, _, err = aam(str(root))
    assert code == 1
    assert err.splitlines() == [
        f"{root / 'broken.yaml'}:2:7: error: unknown kind 'Nope' (known kinds: AgentPolicy, ModelRoute,"
        " Tool, ToolCredential)",
        f"{root / 'tests' / 's.yaml'}:5:24: error: cases[0].expect.decision: 'MAYBE' is not one of"
        " ['ALLOW', 'DENY']",
        "2 error(s); no test ran",
    ]
