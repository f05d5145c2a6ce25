"""An imported LiteLLM config decides like the source in the real OPA: `aam import` then `aam test`."""

from __future__ import annotations

import io
from pathlib import Path

from aam.cli.main import run
from tests.servers import opa_binary
from tests.unit.importing import LITELLM

TEAM = "spiffe://example.org/replace-me/team-research"
SUITE = f"""\
name: imported-litellm
cases:
  - name: the team's model group routes EU first, then Canada, then the copied fallback
    request: {{workload: "{TEAM}", model: gpt-4o}}
    expect:
      decision: ALLOW
      policy: team-research
      route: [azure/gpt-4o-eu@eu, azure/gpt-4o-ca@ca,
              bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0@eu-central-1]
  - name: a model group outside the team's models is denied
    request: {{workload: "{TEAM}", model: gpt-mini}}
    expect: {{decision: DENY, reasons: [model_not_allowed]}}
  - name: EU residency leaves the EU targets only
    request: {{workload: "{TEAM}", model: gpt-4o, context: {{data_residency: [eu*]}}}}
    expect:
      decision: ALLOW
      route: [azure/gpt-4o-eu@eu, bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0@eu-central-1]
"""


def aam(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


def test_imported_routes_and_stubs_decide_in_opa(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    (policies / "tests").mkdir(parents=True)
    code, _, err = aam("import", "litellm", str(LITELLM), "-o", str(policies / "imported.yaml"))
    assert code == 0, err
    (policies / "tests" / "imported.yaml").write_text(SUITE)
    code, out, err = aam("test", "--opa-binary", opa_binary(), str(policies))
    assert code == 0, out + err
    assert out.rstrip().endswith("3 passed, 0 failed")
