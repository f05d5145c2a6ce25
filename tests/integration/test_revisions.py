"""A decision reads the Python view of the revision OPA decides with, not the newest published.

The bundle server is held so that Python has parsed a new bundle (daily budget
75 -> 1 USD) that OPA has not pulled: decisions meanwhile are OPA's old revision
with the old limits, in the ledger too; once OPA has the new one, both use 1 USD.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from aam.v1 import pdp_pb2
from compiler import Bundle
from tests.integration.pdp import EXAMPLES, request, running_stack, stub
from tests.servers import wait_until

POLICY = "finance-analyst-readonly.yaml"
pytestmark = pytest.mark.integration


@pytest.mark.parametrize("state_ttl_ms", [0, 60_000], ids=["checked", "optimistic"])
def test_limits_come_from_the_revision_opa_decides_with(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state_ttl_ms: int) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(EXAMPLES, policies)
    with running_stack(policies, ledger_state_ttl_ms=state_ttl_ms) as stack:
        channel, pdp = stub(stack, gateway=True)
        with channel:
            first = pdp.Authorize(request(model="reasoning-high", estimated_cost_usd=0.50), timeout=5)
            assert first.decision == pdp_pb2.DECISION_ALLOW, first.reasons
            old = first.bundle_revision

            held: list[Bundle] = []
            publish = stack.store.publish
            monkeypatch.setattr(stack.store, "publish", held.append)  # OPA keeps the old bundle
            path = policies / POLICY
            path.write_text(path.read_text().replace("daily_usd: 75", "daily_usd: 1"))
            assert stack.reload()
            (new,) = held
            assert stack.revisions.newest.id == new.revision != old
            assert stack.revisions.active.id == old  # what OPA last answered with

            # Python holds the 1 USD view, OPA the 75 USD one: the ledger reserves against
            # OPA's (with the newest view it would refuse 5 USD, or tell OPA 0.50 USD is left).
            during = pdp.Authorize(request(model="reasoning-high", estimated_cost_usd=5.0), timeout=5)
            assert during.decision == pdp_pb2.DECISION_ALLOW, during.reasons
            assert during.bundle_revision == old

            monkeypatch.setattr(stack.store, "publish", publish)
            publish(new)

            def on_new() -> bool:
                probe = pdp.Authorize(request(tool="salesforce.accounts", action="read"), timeout=5)
                return probe.bundle_revision == new.revision

            wait_until(on_new, 15, "OPA on the new revision")
            assert stack.revisions.active.id == new.revision
            after = pdp.Authorize(request(model="reasoning-high", estimated_cost_usd=0.10), timeout=5)
            assert after.decision == pdp_pb2.DECISION_DENY
            assert [r.code for r in after.reasons] == ["budget_exhausted"]
            assert " of 1.00 USD today" in after.reasons[0].message
            assert after.bundle_revision == new.revision
