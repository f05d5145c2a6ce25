"""Issue 17: every error in one run, "did you mean" for near misses, plain YAML
syntax errors, and the source map that lets --explain say where a rule is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from compiler import compile_paths
from compiler.bundle import DATA_PATH
from tests.unit.test_compiler_checks import ROUTE, TOOL, errors, policy

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# -- one pass: schema and semantic errors together ---------------------------------


def test_four_mistakes_of_both_kinds_in_one_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: the two schema errors only; the semantic ones needed a second run.
    got = errors(tmp_path, monkeypatch, policy("""\
        owner: me
        models: {allow: [fast, fats]}
        budget: {daily_usd: "75 USD"}
        tools:
          - resource: hr.salaries
            constraints: [{param: limit, max: 5}]
        """), ROUTE)
    assert got == [
        'p.yaml:6:3: error: spec.owner: unknown field (allowed: audit, budget, credentials, identity, models,'
        ' rate, rollout, tools)',
        'p.yaml:7:26: error: model \'fats\' is not defined by any ModelRoute; did you mean "fast"?',
        "p.yaml:8:23: error: spec.budget.daily_usd: '75 USD' is not of type 'number'",
        "p.yaml:10:17: error: tool resource 'hr.salaries' has constraints but no Tool declares it"
        " (add a Tool document with its inputSchema)",
    ]


def test_semantic_errors_of_other_documents_are_not_hidden(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    bad_route = ROUTE.replace("name: fast", "name: slow").replace("model: gpt-5-mini", "model: 5")
    got = errors(tmp_path, monkeypatch, policy("models: {allow: [fast, slow, quick]}"), ROUTE, bad_route,
                 TOOL.replace("actions: [read, search, export]", "actions: [read, serch]"))
    assert got == [
        # the route with a schema error is not usable, but it is defined: no "not defined" for slow
        "p.yaml:6:32: error: model 'quick' is not defined by any ModelRoute",
        "p.yaml:18:39: error: spec.targets[0].model: 5 is not of type 'string'",
    ]


def test_what_a_cut_leaves_out_is_not_reported_missing(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A value the schema refuses is cut out before the semantic checks; a check
    that judges a node by what it lacks must not then report the gap."""
    route = """\
apiVersion: access.envisionai.dev/v1
kind: ModelRoute
metadata: {name: fast}
spec:
  providers: {only: [openai]}
  targets:
    - {provider: openai, model: gpt-5-mini, input_price_per_mtok: cheap}
    - {provider: other, model: m}
"""
    cred = """\
apiVersion: access.envisionai.dev/v1
kind: ToolCredential
metadata: {name: crm}
spec:
  resource: crm.accounts
  engine: kv
  inject: {header: authorization, delivery: wraped}
  scopes:
    read: {actions: [read], path: crm/read}
"""
    got = errors(tmp_path, monkeypatch, policy("""\
        models: {allow: [fast]}
        tools:
          - resource: crm.accounts
            actions: [read]
            constraints: [{param: limit, max: "5"}, {param: nope, max: 1}]
        """), route, TOOL.replace("actions: [read, search, export]", "actions: [read, search, export]\n"
                                  "  price_usd: free"), cred)
    # Not "constraint sets no rule" for the first constraint, not "parameter not declared"
    # for the second (its Tool has an error), not "provider 'openai' is not a target" nor
    # "excludes every target" for the route, not "a kv value delivery needs 'key'".
    assert got == [
        "p.yaml:10:41: error: spec.tools[0].constraints[0].max: '5' is not of type 'number'",
        "p.yaml:18:67: error: spec.targets[0].input_price_per_mtok: 'cheap' is not of type 'number'",
        "p.yaml:27:14: error: spec.price_usd: 'free' is not of type 'number'",
        "p.yaml:44:45: error: spec.inject.delivery: 'wraped' is not one of ['value', 'wrapped'];"
        ' did you mean "wrapped"?',
    ]


def test_list_items_after_a_cut_keep_their_place_and_name(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    got = errors(tmp_path, monkeypatch, policy("""\
        tools:
          - resource: 5
          - resource: crm.accounts
            actions: [read, export]
          - resource: crm.accounts
            deny: [export]
        """))
    assert got == [
        "p.yaml:7:17: error: spec.tools[0].resource: 5 is not of type 'string'",
        # spec.tools[1] as written (it is item 0 of what the checks saw), at its own line
        "p.yaml:10:17: error: tool resource 'crm.accounts' is already granted by spec.tools[1];"
        " merge the two entries",
    ]


def test_a_bad_name_still_gets_semantic_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    got = errors(tmp_path, monkeypatch, policy("models: {allow: [slow]}", name="Finance_Bot"), ROUTE)
    assert got == [
        "p.yaml:3:18: error: metadata.name: 'Finance_Bot' is not a valid name"
        " (must match ^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$)",
        "p.yaml:6:20: error: model 'slow' is not defined by any ModelRoute",
    ]


# -- did you mean ---------------------------------------------------------------------


@pytest.mark.parametrize(("docs", "expected"), [
    pytest.param((policy("modles: {allow: [fast]}"), ROUTE),
                 "p.yaml:6:3: error: spec.modles: unknown field (allowed: audit, budget, credentials,"
                 ' identity, models, rate, rollout, tools); did you mean "models"?', id="field"),
    pytest.param((policy("budget: {daily: 5}"),),
                 'p.yaml:6:12: error: spec.budget.daily: unknown field (allowed: daily_usd, monthly_usd,'
                 ' per_request_usd, timezone); did you mean "daily_usd"?', id="field-without-unit"),
    pytest.param((policy("models: {allow: [fsat]}"), ROUTE),
                 'p.yaml:6:20: error: model \'fsat\' is not defined by any ModelRoute; did you mean "fast"?',
                 id="alias"),
    pytest.param((TOOL, policy("tools: [{resource: crm.acounts, constraints: [{param: limit, max: 1}]}]")),
                 "p.yaml:22:22: error: tool resource 'crm.acounts' has constraints but no Tool declares it"
                 ' (add a Tool document with its inputSchema); did you mean "crm.accounts"?', id="resource"),
    pytest.param((TOOL, policy("tools: [{resource: crm.accounts, actions: [exprot]}]")),
                 "p.yaml:22:46: error: action 'exprot' is not an action of Tool 'crm-accounts'"
                 ' (actions: read, search, export); did you mean "export"?', id="action"),
    pytest.param((TOOL, policy("tools: [{resource: crm.accounts, constraints: [{param: limt, max: 1}]}]")),
                 "p.yaml:22:58: error: parameter 'limt' is not declared by the inputSchema of Tool"
                 ' \'crm-accounts\'; did you mean "limit"?', id="parameter"),
    pytest.param((TOOL, policy("tools: [{resource: crm.accounts, constraints:"
                               " [{param: filter.regoin, max: 1}]}]")),
                 "p.yaml:22:58: error: parameter 'filter.regoin' is not declared by the inputSchema of Tool"
                 ' \'crm-accounts\'; did you mean "filter.region"?', id="nested-parameter"),
    pytest.param((ROUTE.replace("spec:\n", "spec:\n  sort: prise\n"),),
                 'p.yaml:5:9: error: spec.sort: \'prise\' is not one of [\'order\', \'price\'];'
                 ' did you mean "price"?', id="enum"),
    pytest.param((ROUTE.replace("kind: ModelRoute", "kind: ModelRoutes"),),
                 "p.yaml:2:7: error: unknown kind 'ModelRoutes' (known kinds: AgentPolicy, ModelRoute, Tool,"
                 ' ToolCredential); did you mean "ModelRoute"?', id="kind"),
    pytest.param((ROUTE.replace("spec:\n", "spec:\n  providers: {ignore: [opanai]}\n"),),
                 "p.yaml:5:24: error: provider 'opanai' is not a target of ModelRoute 'fast'"
                 ' (targets: openai); did you mean "openai"?', id="provider"),
    pytest.param((policy("models: {allow: [reasoning]}"), ROUTE),
                 "p.yaml:6:20: error: model 'reasoning' is not defined by any ModelRoute", id="far-miss"),
])
def test_did_you_mean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, docs: tuple[str, ...],
                      expected: str) -> None:
    assert errors(tmp_path, monkeypatch, *docs) == [expected]


# -- YAML syntax ----------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param("spec:\n  identity:\n    workload: x\n   models: {}\n",
                 "p.yaml:4:4: error: bad indentation: expected a mapping entry ('key: value'),"
                 " lined up with line 2 (column 3)", id="dedent-to-nowhere"),
    pytest.param("spec:\n  tools:\n    - resource: a\n      actions: [read]\n   - resource: b\n",
                 "p.yaml:5:4: error: bad indentation: a list item where a mapping entry ('key: value') was"
                 " expected, lined up with line 2 (column 3)", id="list-item-out-of-line"),
    pytest.param("spec:\n  identity\n  models: {}\n",
                 "p.yaml:3:9: error: a mapping value is not allowed here (is a colon missing a space, or"
                 " missing on the line above, or is the line indented wrongly?)", id="missing-colon"),
    pytest.param("metadata: name: x\n",
                 "p.yaml:1:15: error: a second ': ' on this line (quote a value that contains ': ', or put"
                 " a nested mapping on its own indented lines)", id="two-colons"),
    pytest.param("spec:\n\tidentity: {}\n",
                 "p.yaml:2:1: error: a tab character where YAML needs spaces (indent with spaces only)",
                 id="tab"),
    pytest.param("models: {allow: [a, b}\n",
                 "p.yaml:1:22: error: unclosed '[' at line 1, column 17: expected ',' or ']'",
                 id="unclosed-bracket"),
    pytest.param('a: "abc\nb: 1\n', "p.yaml:1:4: error: unclosed quote: this string never ends",
                 id="unclosed-quote"),
    pytest.param("a: 1\nb: \x00\n", "p.yaml:2:4: error: character U+0000 is not allowed in YAML (control"
                 " characters must be escaped in a double-quoted string)", id="control-character"),
])
def test_yaml_syntax_errors_are_one_plain_located_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       text: str, expected: str) -> None:
    got = errors(tmp_path, monkeypatch, text)
    assert got == [expected]
    for parser_words in ("<block", "did not find expected", "while parsing", "in \"<unicode string>\""):
        assert parser_words not in got[0]


# -- the source map -------------------------------------------------------------------


def sources(root: Path) -> tuple[dict, str]:
    bundle = compile_paths([root])
    return json.loads(bundle.files[DATA_PATH])["sources"], bundle.revision


def test_the_bundle_says_where_each_rule_is_written() -> None:
    got, _ = sources(EXAMPLES)
    triage = got["policies"]["spiffe://prod/agent/support-triage"]["at"]
    assert triage["spec.tools[0].constraints[1]"] == "25:11" and triage["spec.rate"] == "18:3"
    finance = got["policies"]["spiffe://prod/agent/finance-analyst"]
    assert finance == {"file": "finance-analyst-readonly.yaml", "at": {
        "spec.budget": "10:3", "spec.identity.workload": "7:5", "spec.models.allow": "9:5",
        "spec.tools[0]": "12:7", "spec.tools[0].actions": "13:7", "spec.tools[0].deny": "14:7"}}
    lines = (EXAMPLES / finance["file"]).read_text().splitlines()
    assert lines[12 - 1][7 - 1:].startswith("resource: salesforce.accounts")
    assert lines[14 - 1][7 - 1:].startswith("deny:")
    assert got["routes"]["reasoning-high"]["at"]["spec.targets[0]"] == "17:7"
    assert got["routes"]["reasoning-high"]["file"] == "model-routes.yaml"


def test_the_source_map_does_not_depend_on_where_the_policies_live(tmp_path: Path) -> None:
    """File names are relative to the directory compiled: the same policies give the
    same revision on every machine and replica."""
    copy = tmp_path / "somewhere" / "else"
    shutil.copytree(EXAMPLES, copy)
    assert sources(copy) == sources(EXAMPLES)
