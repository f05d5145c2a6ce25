"""Shadow policies: the compiled document, OPA's shadow answer as the PDP reads it, the
audit field, the counter and ``aam shadow report`` (unit level; with OPA and PostgreSQL
in tests/integration/test_shadow.py)."""

from __future__ import annotations

import argparse
import io
import json
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aam.cli import main as cli
from aam.cli import shadow_cmd
from compiler import CompileError, compile_paths, load
from compiler.bundle import DATA_PATH
from pdp import shadow
from pdp.ledger.audit import entry
from pdp.ledger.types import AuditRow
from pdp.metrics import Metrics

HEAD = """\
apiVersion: access.envisionai.dev/v1
kind: AgentPolicy
metadata: {{name: {name}}}
spec:
  identity: {{workload: "{workload}"}}
"""


def policy(name: str, body: str = "", workload: str = "spiffe://prod/agent/a") -> str:
    body = textwrap.dedent(body).strip("\n")
    return HEAD.format(name=name, workload=workload) + (textwrap.indent(body, "  ") + "\n" if body else "")


ENFORCED = policy("crm", "tools: [{resource: crm.accounts, actions: [read, export]}]")
SHADOW = policy("crm-next", """\
    rollout: {mode: shadow}
    tools: [{resource: crm.accounts, actions: [read], deny: [export]}]
    """)


def write(tmp_path: Path, *docs: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text("---\n".join(docs))
    return path


def errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *docs: str) -> list[str]:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, *docs)
    with pytest.raises(CompileError) as exc:
        load([Path("p.yaml")])
    return [str(d) for d in exc.value.diagnostics]


# -- compiler ---------------------------------------------------------------------------


def test_shadow_policy_compiles_beside_the_enforced_one(tmp_path: Path) -> None:
    bundle = compile_paths([write(tmp_path, ENFORCED, SHADOW)])
    data = json.loads(bundle.files[DATA_PATH])
    assert data["policies"]["spiffe://prod/agent/a"]["name"] == "crm"
    shadowed = data["shadow_policies"]["spiffe://prod/agent/a"]
    assert shadowed["name"] == "crm-next"
    assert shadowed["tools"]["crm.accounts"]["deny"] == {"export": "spec.tools[0].deny"}
    # same shape as an enforced policy, and the same bytes on every compile
    assert set(shadowed) == set(data["policies"]["spiffe://prod/agent/a"])
    # Swapped in the file, the documents decide the same; only the source map (where
    # each rule is written, for --explain) moves with them.
    swapped = json.loads(compile_paths([write(tmp_path, SHADOW, ENFORCED)]).files[DATA_PATH])
    assert {**swapped, "sources": None, "revision": None} == {**data, "sources": None, "revision": None}
    assert compile_paths([write(tmp_path, ENFORCED, SHADOW)]).files == bundle.files


def test_default_rollout_is_enforce_and_no_shadow_document_is_empty(tmp_path: Path) -> None:
    explicit = policy("crm", """\
        rollout: {mode: enforce}
        tools: [{resource: crm.accounts, actions: [read, export]}]
        """)
    data = json.loads(compile_paths([write(tmp_path, explicit)]).files[DATA_PATH])
    assert data["shadow_policies"] == {}
    assert data["policies"]["spiffe://prod/agent/a"]["name"] == "crm"


def test_only_a_shadow_policy_compiles_with_no_enforced_one(tmp_path: Path) -> None:
    data = json.loads(compile_paths([write(tmp_path, SHADOW)]).files[DATA_PATH])
    assert data["policies"] == {}
    assert list(data["shadow_policies"]) == ["spiffe://prod/agent/a"]


def test_two_shadow_policies_for_one_workload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    got = errors(tmp_path, monkeypatch, ENFORCED, SHADOW,
                 policy("crm-other", "rollout: {mode: shadow}"))
    assert got == ["p.yaml:21:19: error: workload spiffe://prod/agent/a is already claimed by shadow"
                   " AgentPolicy 'crm-next' (one shadow policy per workload)"]


def test_two_enforced_policies_for_one_workload_still_an_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    got = errors(tmp_path, monkeypatch, ENFORCED, SHADOW, policy("crm-again"))
    assert got == ["p.yaml:20:24: error: workload spiffe://prod/agent/a is already claimed by"
                   " AgentPolicy 'crm' (one policy per workload)"]


ROUTE = """\
apiVersion: access.envisionai.dev/v1
kind: ModelRoute
metadata: {name: m1}
spec:
  targets: [{provider: openai, model: gpt-5}]
"""


def candidate_dirs(tmp_path: Path, *candidate: str) -> tuple[Path, Path]:
    live, cand = tmp_path / "live", tmp_path / "candidate"
    live.mkdir()
    cand.mkdir()
    (live / "p.yaml").write_text("---\n".join((ENFORCED, ROUTE)))
    (cand / "p.yaml").write_text("---\n".join(candidate))
    return live, cand


def test_a_whole_candidate_set_compiles_in_shadow(tmp_path: Path) -> None:
    """The next version of a policy, same name, in a candidate directory: it becomes the
    workload's shadow policy; the candidate's copy of an enforced route is accepted."""
    next_version = policy("crm", "tools: [{resource: crm.accounts, actions: [read], deny: [export]}]")
    live, cand = candidate_dirs(tmp_path, next_version, ROUTE)
    data = json.loads(compile_paths([live], [cand]).files[DATA_PATH])
    assert data["policies"]["spiffe://prod/agent/a"]["tools"]["crm.accounts"]["deny"] == {}
    shadowed = data["shadow_policies"]["spiffe://prod/agent/a"]
    assert shadowed["name"] == "crm" and "export" in shadowed["tools"]["crm.accounts"]["deny"]
    assert list(data["routes"]) == ["m1"]
    assert all(not name.startswith("/") for name in data["sources"])  # no absolute paths
    assert compile_paths([live], [cand]).files == compile_paths([live], [cand]).files


def test_a_candidate_route_that_differs_from_the_enforced_one_is_an_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    changed = ROUTE.replace("gpt-5", "gpt-6")
    candidate_dirs(tmp_path, ENFORCED, changed)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CompileError) as exc:
        load([Path("live")], [Path("candidate")])
    (d,) = exc.value.diagnostics
    assert str(d).startswith("candidate/p.yaml:10:18: error: ")  # the route's metadata.name
    assert "ModelRoute 'm1' of the shadow candidate is not the enforced one" in str(d)


def test_a_candidate_beside_an_enforced_shadow_policy_is_one_shadow_too_many(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    live, _ = candidate_dirs(tmp_path, policy("crm-candidate"))
    (live / "p.yaml").write_text("---\n".join((ENFORCED, SHADOW, ROUTE)))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CompileError) as exc:
        load([Path("live")], [Path("candidate")])
    assert [d.message for d in exc.value.diagnostics] == [
        "workload spiffe://prod/agent/a is already claimed by shadow AgentPolicy 'crm-next' "
        "(one shadow policy per workload)"]


@pytest.mark.parametrize(("rollout", "message"), [
    ("{mode: canary}", "p.yaml:6:19: error: spec.rollout.mode: 'canary' is not one of"
                       " ['enforce', 'shadow']"),
    ("{mode: shadow, percent: 5}", "p.yaml:6:27: error: spec.rollout.percent: unknown field"
                                   " (allowed: mode)"),
])
def test_bad_rollout_is_a_schema_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       rollout: str, message: str) -> None:
    assert errors(tmp_path, monkeypatch, policy("p", f"rollout: {rollout}")) == [message]


def test_shadow_policies_are_checked_like_enforced_ones(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = policy("crm-next", """\
        rollout: {mode: shadow}
        models: {allow: [nowhere]}
        """)
    assert errors(tmp_path, monkeypatch, ENFORCED, bad) == [
        "p.yaml:14:20: error: model 'nowhere' is not defined by any ModelRoute"]


# -- OPA's answer as the PDP reads it ---------------------------------------------------

DENIED = {"policy": "crm-next", "allow": False,
          "reasons": [{"code": "action_denied", "message": "denied by crm-next"}]}


def test_parse_reads_the_shadow_of_a_decision() -> None:
    got = shadow.parse({"allow": True, "reasons": [], "shadow": DENIED})
    assert got == shadow.Shadow("crm-next", False,
                                (shadow.ShadowReason("action_denied", "denied by crm-next"),))
    assert got.outcome == "deny" and shadow.first_code(got) == "action_denied"
    assert shadow.parse({"shadow": {"policy": "p", "allow": True, "reasons": []}}) == \
        shadow.Shadow("p", True, ())


@pytest.mark.parametrize("result", [
    None, [], "x", {}, {"shadow": None}, {"shadow": []}, {"shadow": {"policy": "p"}},
    {"shadow": {"policy": "p", "allow": "yes"}}, {"shadow": {"allow": 1}},
])
def test_parse_maps_absent_or_malformed_to_none(result: Any) -> None:
    assert shadow.parse(result) is None


def test_parse_reads_like_the_enforced_decision() -> None:
    # an allow that carries reasons is a deny; a deny without reasons gets one
    odd = shadow.parse({"shadow": {"allow": True, "reasons": [{"code": "x"}, "junk", 3],
                                   "policy": 7}})
    assert odd == shadow.Shadow("7", False, (shadow.ShadowReason("x", ""),))
    bare = shadow.parse({"shadow": {"allow": False, "reasons": "nope"}})
    assert bare is not None and bare.codes == {"denied"}


def test_disagrees() -> None:
    deny = shadow.parse({"shadow": DENIED})
    allow = shadow.Shadow("crm-next", True)
    assert shadow.disagrees(deny, True, ())
    assert shadow.disagrees(allow, False, ("action_denied",))
    assert not shadow.disagrees(allow, True, ())
    assert not shadow.disagrees(deny, False, ("action_denied",))
    assert shadow.disagrees(deny, False, ("tool_not_granted",))
    assert shadow.disagrees(deny, False, ("action_denied", "rate_limited"))
    assert not shadow.disagrees(None, False, ("no_policy",))


def test_audit_field_and_row() -> None:
    deny = shadow.parse({"shadow": DENIED})
    assert deny is not None
    field = shadow.audit_field(deny)
    assert field == {"policy": "crm-next", "outcome": "deny",
                     "reasons": [{"code": "action_denied", "message": "denied by crm-next"}]}
    fields = {"workload": "spiffe://prod/agent/a", "policy": "crm", "revision": "r",
              "action": {"model": "", "tool": "crm.accounts", "action": "export"}, "reasons": [],
              "shadow": field}
    # kept whatever the policy records, like the lease accessor
    body = json.loads(entry("d1", fields, True, record=("outcome",)).body)
    assert body["shadow"] == field and body["outcome"] == "allow"
    assert "shadow" not in json.loads(entry("d2", {**fields, "shadow": None}, True).body)


# -- the counter ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Reason:
    code: str
    message: str = ""


@dataclass(frozen=True)
class _Decision:
    """Decision's fields Metrics reads, plus the engine's coming ``shadow``."""

    allow: bool
    reasons: tuple[_Reason, ...] = ()
    revision: str = "r"
    shadow: shadow.Shadow | None = None


def _count(m: Metrics, **labels: str) -> float:
    value = m.registry.get_sample_value("aam_shadow_disagreements_total", labels)
    return value or 0.0


def test_metrics_count_disagreements_only() -> None:
    m = Metrics()
    deny = shadow.parse({"shadow": DENIED})
    for d in (_Decision(True, shadow=deny), _Decision(True, shadow=deny),
              _Decision(True, shadow=shadow.Shadow("crm-next", True)),  # agrees
              _Decision(False, (_Reason("action_denied"),), shadow=deny),  # agrees
              _Decision(False, (_Reason("no_policy"),), shadow=shadow.Shadow("crm-next", True)),
              _Decision(True)):  # no shadow policy
        m.observe(None, d, 0.001)  # type: ignore[arg-type]
    assert _count(m, policy="crm-next", enforced="allow", shadow="deny") == 2
    assert _count(m, policy="crm-next", enforced="deny", shadow="allow") == 1
    assert _count(m, policy="crm-next", enforced="allow", shadow="allow") == 0


# -- aam shadow report ------------------------------------------------------------------


def _row(seq: int, outcome: str, body: dict[str, Any]) -> AuditRow:
    full = {"decision_id": f"d{seq}", "outcome": outcome, **body}
    return AuditRow(seq, f"2026-01-01T00:00:{seq:02d}+00:00", f"d{seq}", "spiffe://prod/agent/a",
                    outcome, json.dumps(full), "", "")


ROWS = [
    _row(1, "allow", {"shadow": shadow.audit_field(shadow.parse({"shadow": DENIED}))}),  # type: ignore[arg-type]
    _row(2, "allow", {}),
    _row(3, "allow", {"shadow": shadow.audit_field(shadow.parse({"shadow": DENIED}))}),  # type: ignore[arg-type]
    _row(4, "deny", {"reasons": [{"code": "no_policy", "message": "m"}],
                     "shadow": {"policy": "other", "outcome": "allow", "reasons": []}}),
    AuditRow(5, "t", "d5", "w", "deny", "not json", "", ""),
]


def test_report_groups_disagreements() -> None:
    got = [g.to_json() for g in shadow_cmd.groups(ROWS)]
    assert got == [
        {"policy": "crm-next", "enforced": "allow", "shadow": "deny", "reason": "action_denied",
         "count": 2, "example_decision_id": "d3", "first_ts": ROWS[0].ts, "last_ts": ROWS[2].ts},
        {"policy": "other", "enforced": "deny", "shadow": "allow", "reason": "no_policy",
         "count": 1, "example_decision_id": "d4", "first_ts": ROWS[3].ts, "last_ts": ROWS[3].ts},
    ]


def test_report_command_prints_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []

    def call(args: argparse.Namespace, stderr: Any, command: str, fn: Any) -> list[AuditRow]:
        seen.append(args.since)
        return ROWS

    monkeypatch.setattr(shadow_cmd, "_call", call)
    out, err = io.StringIO(), io.StringIO()
    assert cli.run(["shadow", "report", "--since", "2026-01-01"], out, err) == 0
    lines = out.getvalue().splitlines()
    # --since as resolved (a date is midnight UTC; a duration would be its moment)
    assert lines[0] == ("3 shadow disagreement(s) since 2026-01-01T00:00:00+00:00 in 5 "
                        "decision(s), 2 group(s)")
    assert lines[1] == "crm-next  ALLOW -> DENY   action_denied        2  e.g. decision=d3"
    assert lines[2] == "other     DENY  -> ALLOW  no_policy            1  e.g. decision=d4"
    assert seen == ["2026-01-01T00:00:00+00:00"]
    out = io.StringIO()
    assert cli.run(["shadow", "report", "--json"], out, err) == 0
    assert [json.loads(line)["count"] for line in out.getvalue().splitlines()] == [2, 1]
    monkeypatch.setattr(shadow_cmd, "_call", lambda *a: ROWS[1:2])
    out = io.StringIO()
    assert cli.run(["shadow", "report"], out, err) == 0
    assert out.getvalue() == "no shadow disagreements (1 decision(s) read)\n"
