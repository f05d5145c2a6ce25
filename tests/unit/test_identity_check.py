"""``aam identity check`` on a saved ``spire-server entry show -output json`` (captured from
SPIRE 1.13: finance-analyst, support-triage, an agent no policy binds, and Envoy) against
the examples (finance-analyst, support-triage, claims-assistant)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from aam.cli.main import run
from compiler import load
from pdp.registration import EntriesError, check, parse_entries, read_entries

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
ENTRIES = ROOT / "tests" / "testdata" / "identity" / "entries.json"


def aam(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


def test_entries_are_read_with_full_spiffe_ids_and_selectors() -> None:
    by_id = {e.spiffe_id: e for e in read_entries(ENTRIES)}
    assert sorted(by_id) == ["spiffe://prod/agent/finance-analyst", "spiffe://prod/agent/forgotten",
                             "spiffe://prod/agent/support-triage", "spiffe://prod/gateway/envoy"]
    finance = by_id["spiffe://prod/agent/finance-analyst"]
    assert finance.selectors == ("k8s:ns:finance", "k8s:sa:finance-analyst")
    assert finance.parent_id.startswith("spiffe://prod/spire/agent/join_token/")


def test_the_three_lists() -> None:
    report = check(load([EXAMPLES]).policies, read_entries(ENTRIES))
    assert [(m.binding.policy, m.binding.workload) for m in report.matched] == [
        ("finance-analyst-readonly", "spiffe://prod/agent/finance-analyst"),
        ("support-triage", "spiffe://prod/agent/support-triage")]
    assert [b.workload for b in report.policies_without_entry] == [
        "spiffe://prod/agent/claims-assistant"]
    assert report.policies_without_entry[0].file.endswith("claims-assistant.yaml")
    assert [e.spiffe_id for e in report.entries_without_policy] == [
        "spiffe://prod/agent/forgotten", "spiffe://prod/gateway/envoy"]
    assert not report.ok


def test_ignored_entries_need_no_policy() -> None:
    report = check(load([EXAMPLES]).policies, read_entries(ENTRIES),
                   ignore=["spiffe://prod/gateway/*", "spiffe://prod/agent/forgotten"])
    assert report.entries_without_policy == ()
    assert [e.spiffe_id for e in report.ignored] == ["spiffe://prod/agent/forgotten",
                                                     "spiffe://prod/gateway/envoy"]
    assert not report.ok  # claims-assistant still has no entry


def test_cli_text_and_exit_1_when_unmatched() -> None:
    code, out, err = aam("identity", "check", str(EXAMPLES), "--entries", str(ENTRIES))
    assert code == 1, err
    assert "policies with a registration entry (2):" in out
    assert "  spiffe://prod/agent/finance-analyst  policy finance-analyst-readonly  entry " \
           "d6556345-949e-4a04-9a7e-dbebaa96644e (k8s:ns:finance, k8s:sa:finance-analyst)" in out
    assert "policies with no registration entry (1):\n  spiffe://prod/agent/claims-assistant" in out
    assert "registration entries with no policy (2):\n  spiffe://prod/agent/forgotten  entry " in out
    assert out.rstrip().endswith(
        "identity check: 1 policy(ies) with no entry, 2 entry(ies) with no policy")


def test_cli_json_and_exit_0_when_everything_matches(tmp_path: Path) -> None:
    data = json.loads(ENTRIES.read_text())
    claims = json.loads(json.dumps(data["entries"][0]))
    claims.update(id="claims-entry", spiffe_id={"trust_domain": "prod", "path": "/agent/claims-assistant"})
    data["entries"].append(claims)
    saved = tmp_path / "entries.json"
    saved.write_text(json.dumps(data))
    code, out, err = aam("identity", "check", str(EXAMPLES), "--entries", str(saved), "--json",
                         "--ignore", "spiffe://prod/gateway/*", "--ignore", "*/forgotten")
    assert code == 0, err
    report = json.loads(out)
    assert report["ok"] is True
    assert [m["workload"] for m in report["matched"]] == [
        "spiffe://prod/agent/claims-assistant", "spiffe://prod/agent/finance-analyst",
        "spiffe://prod/agent/support-triage"]
    assert report["policies_without_entry"] == report["entries_without_policy"] == []
    assert [e["spiffe_id"] for e in report["ignored"]] == [
        "spiffe://prod/agent/forgotten", "spiffe://prod/gateway/envoy"]


@pytest.mark.parametrize("content,message", [
    ("not json", "not JSON"),
    ('{"entries": {"a": 1}}', 'an object with "entries"'),
    ('{"entries": [{"id": "x"}]}', "entry 0: not a registration entry"),
    ('{"entries": [{"id": "x", "spiffe_id": 7}]}', "not a SPIFFE ID"),
])
def test_unreadable_entries_are_an_error_not_a_traceback(tmp_path: Path, content: str,
                                                         message: str) -> None:
    saved = tmp_path / "entries.json"
    saved.write_text(content)
    code, out, err = aam("identity", "check", str(EXAMPLES), "--entries", str(saved))
    assert (code, out) == (1, "")
    assert err.startswith(f"aam identity check: error: {saved}: ") and message in err
    assert "Traceback" not in err


def test_missing_file_unreachable_spire_and_bad_policies_are_errors(tmp_path: Path) -> None:
    code, _, err = aam("identity", "check", str(EXAMPLES), "--entries", str(tmp_path / "none.json"))
    assert code == 1 and "cannot read: No such file or directory" in err
    code, _, err = aam("identity", "check", str(EXAMPLES), "--spire-server-socket",
                       str(tmp_path / "no.sock"), "--spire-server", "/bin/false")
    assert code == 1 and "spire-server entry show failed (exit 1)" in err
    code, _, err = aam("identity", "check", str(EXAMPLES), "--spire-server-socket",
                       str(tmp_path / "no.sock"), "--spire-server", str(tmp_path / "nope"))
    assert code == 1 and "spire-server not found" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: access.envisionai.dev/v1\nkind: AgentPolicy\nmetadata: {name: x}\n"
                   "spec: {identity: {workload: not-a-spiffe-id}}\n")
    code, _, err = aam("identity", "check", str(bad), "--entries", str(ENTRIES))
    assert code == 1 and "error:" in err and "nothing checked" in err


@pytest.mark.parametrize("argv", [
    ["identity"],
    ["identity", "check", "examples"],  # neither --entries nor --spire-server-socket
    ["identity", "check", "examples", "--entries", "e.json", "--spire-server-socket", "s"],
    ["identity", "check", "--entries", "e.json"],  # no PATH
])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert aam(*argv)[0] == 2
    assert "Traceback" not in capsys.readouterr().err


def test_parse_accepts_a_bare_list_and_an_empty_server() -> None:
    assert parse_entries({"entries": None, "next_page_token": ""}) == []
    (e,) = parse_entries([{"id": "1", "spiffe_id": "spiffe://prod/x", "selectors": []}])
    assert (e.spiffe_id, e.parent_id, e.selectors) == ("spiffe://prod/x", "", ())
    with pytest.raises(EntriesError):
        parse_entries("entries")
