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
        " identity, model, params, tool, workload)",
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
