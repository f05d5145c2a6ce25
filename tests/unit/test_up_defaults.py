"""aam up's defaults that depend on the policy directory: its ledger and its example calls."""

from __future__ import annotations

from pathlib import Path

from aam.cli.serve import example_calls, up_ledger_url
from pdp.config import DEFAULT_STATE_DIR

POLICY = """\
apiVersion: access.envisionai.dev/v1
kind: AgentPolicy
metadata: {name: triage}
spec:
  identity: {workload: spiffe://corp/agent/triage}
  tools:
    - resource: github.issues
      actions: [read, label]
      deny: [close]
"""


def test_each_policy_directory_has_its_own_embedded_ledger(tmp_path: Path) -> None:
    one, two = tmp_path / "clone-a" / "policies", tmp_path / "clone-b" / "policies"
    one.mkdir(parents=True)
    two.mkdir(parents=True)
    a, b = up_ledger_url(one), up_ledger_url(two)
    assert a != b
    assert a.startswith(f"sqlite://{DEFAULT_STATE_DIR / 'projects'}/policies-")
    assert up_ledger_url(one / ".." / "policies") == a  # the same directory, however named
    assert up_ledger_url(None) == up_ledger_url(Path(__file__).resolve().parents[2] / "examples")


def test_example_calls_name_what_the_served_policies_hold(tmp_path: Path) -> None:
    (tmp_path / "triage.yaml").write_text(POLICY)
    calls = example_calls(tmp_path, "127.0.0.1:5")
    assert calls == ["aam authorize --addr 127.0.0.1:5 --workload spiffe://corp/agent/triage "
                     "--tool github.issues --action close"]  # a denied action: the answer shows why
    empty = tmp_path / "empty"
    empty.mkdir()
    assert example_calls(empty, "127.0.0.1:5") == []
