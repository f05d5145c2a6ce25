"""Policy sets for the benchmark: the shipped examples plus N-1 generated workloads.

The benchmark requests always name the example workload
(spiffe://prod/agent/finance-analyst), so the same decision is measured at
every scale; the generated policies only make the bundle (and OPA's data) big.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pdp.config import REPO_ROOT

EXAMPLES = REPO_ROOT / "examples"
EXAMPLE_POLICIES = 1  # AgentPolicy documents in examples/

_TEMPLATE = """\
---
apiVersion: access.envisionai.dev/v1
kind: AgentPolicy
metadata:
  name: bench-agent-{i}
spec:
  identity:
    workload: spiffe://bench/agent/agent-{i}
    team: team-{team}
  models:
    allow: [{model}]
  budget: {{ daily_usd: {budget} }}
  tools:
    - resource: bench.system{sys}.records
      actions: [read, search]
      deny: [delete]
  audit:
    record: [identity, policy, action, outcome]
"""


def write_policy_dir(dest: Path, total: int) -> Path:
    """Examples plus generated policies so that ``total`` AgentPolicies are loaded."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(EXAMPLES.glob("*.yaml")):
        shutil.copy(f, dest / f.name)
    with open(dest / "bench-generated.yaml", "w") as out:
        for i in range(max(0, total - EXAMPLE_POLICIES)):
            out.write(_TEMPLATE.format(
                i=i, team=i % 37, model="reasoning-high" if i % 2 else "summarization",
                budget=10 + i % 90, sys=i % 50))
    return dest
