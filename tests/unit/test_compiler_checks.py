"""Every semantic check, with the exact ``file:line:col: error: message`` it prints."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from compiler import CompileError, load

ROUTE = """\
apiVersion: access.envisionai.dev/v1
kind: ModelRoute
metadata: {name: fast}
spec:
  targets: [{provider: openai, model: gpt-5-mini}]
"""

TOOL = """\
apiVersion: access.envisionai.dev/v1
kind: Tool
metadata: {name: crm-accounts}
spec:
  resource: crm.accounts
  actions: [read, search, export]
  inputSchema:
    type: object
    properties:
      limit: {type: integer}
      query: {type: string}
      filter:
        type: object
        properties:
          region: {type: string}
"""


def policy(body: str, name: str = "p", workload: str = "spiffe://prod/agent/a") -> str:
    head = f"""\
apiVersion: access.envisionai.dev/v1
kind: AgentPolicy
metadata: {{name: {name}}}
spec:
  identity: {{workload: "{workload}"}}
"""
    body = textwrap.dedent(body).strip("\n")
    return head + (textwrap.indent(body, "  ") + "\n" if body else "")


def errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *docs: str) -> list[str]:
    monkeypatch.chdir(tmp_path)
    Path("p.yaml").write_text("---\n".join(docs))
    with pytest.raises(CompileError) as exc:
        load([Path("p.yaml")])
    return [str(d) for d in exc.value.diagnostics]


def test_unknown_model_route(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    got = errors(tmp_path, monkeypatch, policy("models: {allow: [fast, slow]}"), ROUTE)
    assert got == ["p.yaml:6:26: error: model 'slow' is not defined by any ModelRoute"]


def test_unknown_tool_for_constraints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    got = errors(tmp_path, monkeypatch, policy("""\
        tools:
          - resource: hr.salaries
            actions: [read]
            constraints: [{param: limit, max: 5}]
        """))
    assert got == ["p.yaml:7:17: error: tool resource 'hr.salaries' has constraints but no Tool declares"
                   " it (add a Tool document with its inputSchema)"]


def test_duplicate_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    got = errors(tmp_path, monkeypatch, policy(""), policy("", workload="spiffe://prod/agent/b"),
                 ROUTE, ROUTE, TOOL, TOOL)
    assert got == [
        "p.yaml:9:18: error: duplicate AgentPolicy name 'p' (first defined at p.yaml:3)",
        "p.yaml:21:18: error: duplicate ModelRoute name 'fast' (first defined at p.yaml:15)",
        "p.yaml:43:18: error: duplicate Tool name 'crm-accounts' (first defined at p.yaml:27)",
        "p.yaml:45:13: error: tool resource 'crm.accounts' is already declared by Tool 'crm-accounts'",
    ]


def test_two_policies_claim_one_workload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    got = errors(tmp_path, monkeypatch, policy(""), policy("", name="q"))
    assert got == ["p.yaml:11:24: error: workload spiffe://prod/agent/a is already claimed by"
                   " AgentPolicy 'p' (one policy per workload)"]


@pytest.mark.parametrize(("workload", "message"), [
    ("http://prod/agent/a", "SPIFFE ID must start with 'spiffe://' (lower-case scheme)"),
    ("SPIFFE://prod/agent/a", "SPIFFE ID must start with 'spiffe://' (lower-case scheme)"),
    ("spiffe://Prod/agent/a", "SPIFFE ID trust domain has invalid character 'P'"
     " (allowed: lower-case letters, digits, '.', '-', '_')"),
    ("spiffe://prod/agent//a", "SPIFFE ID path has an empty segment ('//' or trailing '/')"),
    ("spiffe://prod/agent/./a", "SPIFFE ID path must not contain a '.' segment"),
    ("spiffe://prod/agent/../a", "SPIFFE ID path must not contain a '..' segment"),
    ("spiffe://prod/agent/a?x=1", "SPIFFE ID must not have a query or fragment"),
    ("spiffe://prod/agent/a#f", "SPIFFE ID must not have a query or fragment"),
    ("spiffe://prod/agent/%41", "SPIFFE ID must not contain percent-encoded characters"),
    ("spiffe://prod/" + "a" * 2040, "SPIFFE ID is longer than 2048 bytes"),
    ("spiffe:///agent/a", "SPIFFE ID has an empty trust domain"),
])
def test_invalid_spiffe_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workload: str,
                            message: str) -> None:
    assert errors(tmp_path, monkeypatch, policy("", workload=workload)) == [
        f"p.yaml:5:24: error: invalid workload: {message}"]


def test_action_allowed_and_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    got = errors(tmp_path, monkeypatch, policy("""\
        tools:
          - resource: crm.accounts
            actions: [read, export]
            deny: [export]
        """))
    assert got == ["p.yaml:9:14: error: action 'export' on 'crm.accounts' is both allowed and denied"]


def test_malformed_times_and_time_zones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    got = errors(tmp_path, monkeypatch, policy("""\
        budget: {daily_usd: 5, timezone: Mars/Olympus}
        tools:
          - resource: crm.accounts
            actions: [read]
            conditions:
              time_window: {start: "25:00", end: "8h", timezone: Europe/Berln}
        """))
    assert got == [
        "p.yaml:6:36: error: unknown time zone 'Mars/Olympus' (use an IANA name such as 'Europe/Berlin')",
        "p.yaml:11:30: error: malformed time '25:00' (expected HH:MM, 00:00 to 24:00)",
        "p.yaml:11:44: error: malformed time '8h' (expected HH:MM, 00:00 to 24:00)",
        "p.yaml:11:60: error: unknown time zone 'Europe/Berln' (use an IANA name such as 'Europe/Berlin');"
        ' did you mean "Europe/Berlin"?',
    ]


def test_empty_time_window(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    got = errors(tmp_path, monkeypatch, policy("""\
        tools:
          - resource: crm.accounts
            actions: [read]
            conditions: {time_window: {start: "08:00", end: "08:00"}}
        """))
    assert got == ["p.yaml:9:55: error: empty time window: start and end are both 08:00"]


def test_malformed_amounts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    got = errors(tmp_path, monkeypatch,
                 policy("budget: {daily_usd: .nan, monthly_usd: 10, per_request_usd: 20}"),
                 policy("budget: {daily_usd: '75 USD'}", name="q", workload="spiffe://prod/agent/q"),
                 policy("budget: {daily_usd: -1}", name="r", workload="spiffe://prod/agent/r"))
    assert got == [
        "p.yaml:6:23: error: malformed amount daily_usd: nan (must be a finite number)",
        "p.yaml:6:63: error: per_request_usd 20 exceeds monthly_usd 10",
        "p.yaml:13:23: error: spec.budget.daily_usd: '75 USD' is not of type 'number'",
        "p.yaml:20:23: error: spec.budget.daily_usd: -1 is less than the minimum of 0",
    ]


def test_constraint_on_undeclared_parameter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    got = errors(tmp_path, monkeypatch, TOOL, policy("""\
        tools:
          - resource: crm.accounts
            actions: [search]
            constraints:
              - {param: limit, max: 100}
              - {param: filter.region, allowed_values: [eu]}
              - {param: filter.country, forbidden_values: [kp]}
              - {param: query, min: 3}
        """))
    assert got == [
        "p.yaml:28:19: error: parameter 'filter.country' is not declared by the inputSchema of Tool"
        " 'crm-accounts'",
        "p.yaml:29:19: error: min/max on parameter 'query', which Tool 'crm-accounts' declares as"
        " string, not a number",
    ]


def test_action_not_declared_by_tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    got = errors(tmp_path, monkeypatch, TOOL, policy("""\
        tools:
          - resource: crm.accounts
            actions: [read, write]
            deny: [purge]
        """))
    assert got == [
        "p.yaml:24:23: error: action 'write' is not an action of Tool 'crm-accounts'"
        " (actions: read, search, export)",
        "p.yaml:25:14: error: action 'purge' is not an action of Tool 'crm-accounts'"
        " (actions: read, search, export)",
    ]


def test_constraint_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    got = errors(tmp_path, monkeypatch, TOOL, policy("""\
        tools:
          - resource: crm.accounts
            actions: [search]
            constraints:
              - {param: limit}
              - {param: limit, min: 10, max: 1}
              - {param: query, required: true, forbidden: true}
              - {param: query, pattern: "(a"}
              - {param: query, pattern: "^(?!admin).*$"}
        """))
    assert got == [
        "p.yaml:26:11: error: constraint on 'limit' sets no rule (use required, forbidden, min, max,"
        " allowed_values, forbidden_values, pattern or max_length)",
        "p.yaml:27:40: error: max 1 is smaller than min 10",
        "p.yaml:28:53: error: parameter 'query' cannot be both required and forbidden",
        "p.yaml:29:35: error: invalid regular expression '(a': missing ), unterminated subpattern",
        "p.yaml:30:35: error: regular expression '^(?!admin).*$' uses look-around, back-references or"
        " possessive/atomic groups, which OPA's RE2 engine does not support",
    ]


def test_invalid_input_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = TOOL.replace("limit: {type: integer}", "limit: {type: integr}")
    got = errors(tmp_path, monkeypatch, bad)
    assert len(got) == 1
    assert got[0].startswith("p.yaml:10:21: error: inputSchema is not a valid JSON Schema: ")


def test_duplicate_keys_and_all_errors_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    got = errors(tmp_path, monkeypatch, policy("""\
        models: {allow: [nope]}
        models: {allow: [fast]}
        """), policy("rate: {requests_per_minute: 0}", name="q", workload="spiffe://prod/agent/q"))
    assert got == [
        "p.yaml:7:3: error: duplicate key 'models' (first defined at line 6)",
        "p.yaml:14:31: error: spec.rate.requests_per_minute: 0 is less than the minimum of 1",
    ]


def test_unknown_field_in_constraint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    got = errors(tmp_path, monkeypatch, policy("""\
        tools:
          - resource: crm.accounts
            constraints: [{param: limit, maximum: 5}]
        """))
    # The schema error and, in the same run, the semantic error of the rest.
    assert got == [
        "p.yaml:7:17: error: tool resource 'crm.accounts' has constraints but no Tool declares it"
        " (add a Tool document with its inputSchema)",
        "p.yaml:8:36: error: spec.tools[0].constraints[0].maximum: unknown field (allowed: allowed_values,"
        " forbidden, forbidden_values, max, max_length, min, param, pattern, required)"]


def test_kind_that_is_not_a_string(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Found by the fuzz test: an unhashable kind used to raise TypeError.
    got = errors(tmp_path, monkeypatch, "apiVersion: access.envisionai.dev/v1\nkind: []\n")
    assert got == ["p.yaml:2:7: error: unknown kind [] (known kinds: AgentPolicy, ModelRoute, Tool,"
                   " ToolCredential)"]


def test_credential_scope_action_not_declared_by_tool(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    cred = """\
apiVersion: access.envisionai.dev/v1
kind: ToolCredential
metadata: {name: crm}
spec:
  resource: crm.accounts
  engine: kv
  inject: {header: authorization}
  scopes:
    write: {actions: [read, write], path: crm/write, key: token}
"""
    got = errors(tmp_path, monkeypatch, TOOL, cred)
    assert got == ["p.yaml:25:29: error: action 'write' is not an action of Tool 'crm-accounts'"
                   " (actions: read, search, export)"]
