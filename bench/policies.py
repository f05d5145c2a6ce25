"""Policy sets for the benchmark: the shipped examples plus generated workloads.

``write_policy_dir(dest, total)`` loads ``total`` AgentPolicies: the examples'
and ``total`` minus those generated ones (bench-agent-0, -1, ...), each with a
model, a daily budget and a tool resource whose parameters are constrained
(a Tool document per resource declares them). The bench's requests are varied
over the example workloads and the first :data:`BENCH_AGENTS` generated ones
(bench/scenarios.py), which every policy set of the bench has; the rest only
make the bundle (and OPA's data) big.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pdp.config import REPO_ROOT

EXAMPLES = REPO_ROOT / "examples"
# Daily budgets in the bench's copy of the policies, large enough that a full run at
# saturation (which never settles) stays inside them: every call reserves the price
# routes.rego puts on it (up to ~0.06 USD for a model call), not the caller's estimate,
# so the examples' own budgets (finance-analyst: 75 USD) run out mid-run and the bench
# would measure budget denies instead of the decisions it means to.
BENCH_DAILY_USD = 1_000_000
# AgentPolicy documents in examples/ (finance-analyst, claims-assistant, support-triage).
EXAMPLE_POLICIES = sum(len(re.findall(r"^kind: AgentPolicy\s*$", f.read_text(), re.M))
                       for f in EXAMPLES.glob("*.yaml"))
# Generated workloads the bench's requests name (present in every set of >= 10 policies).
BENCH_AGENTS = 7
SYSTEMS = 50  # distinct tool resources across the generated policies
AGENT_QUERY_MAX = 200  # the generated policies' max_length for the query parameter

_TOOL = """\
---
apiVersion: access.envisionai.dev/v1
kind: Tool
metadata:
  name: bench-system{sys}-records
spec:
  resource: bench.system{sys}.records
  actions: [read, search, delete]
  inputSchema:
    type: object
    properties:
      record_id: {{type: string}}
      query: {{type: string}}
      limit: {{type: integer}}
"""

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
      constraints:
        - {{param: limit, min: 1, max: {max_limit}}}
        - {{param: query, pattern: "[^;]*", max_length: {query_max}}}
  audit:
    record: [identity, policy, action, outcome]
"""


@dataclass(frozen=True)
class BenchAgent:
    """What generated policy ``i`` grants, for building requests it decides."""

    i: int

    @property
    def workload(self) -> str:
        return f"spiffe://bench/agent/agent-{self.i}"

    @property
    def model(self) -> str:
        return "reasoning-high" if self.i % 2 else "summarization"

    @property
    def resource(self) -> str:
        return f"bench.system{self.i % SYSTEMS}.records"

    @property
    def max_limit(self) -> int:
        return 50 + self.i % 50

    @property
    def budget_usd(self) -> int:
        return BENCH_DAILY_USD + self.i % 90


def write_policy_dir(dest: Path, total: int) -> Path:
    """Examples plus generated policies so that ``total`` AgentPolicies are loaded."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(EXAMPLES.glob("*.yaml")):
        text = re.sub(r"daily_usd: *\d+(\.\d+)?", f"daily_usd: {BENCH_DAILY_USD}", f.read_text())
        text = re.sub(r"monthly_usd: *\d+(\.\d+)?", f"monthly_usd: {31 * BENCH_DAILY_USD}", text)
        (dest / f.name).write_text(text)
    n = max(0, total - EXAMPLE_POLICIES)
    with open(dest / "bench-generated.yaml", "w") as out:
        for sys in range(min(n, SYSTEMS)):
            out.write(_TOOL.format(sys=sys))
        for i in range(n):
            a = BenchAgent(i)
            out.write(_TEMPLATE.format(i=i, team=i % 37, model=a.model, budget=a.budget_usd,
                                       sys=i % SYSTEMS, max_limit=a.max_limit,
                                       query_max=AGENT_QUERY_MAX))
    return dest
