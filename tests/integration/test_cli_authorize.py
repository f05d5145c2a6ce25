"""``aam authorize`` and ``aam replay`` against a real PDP and OPA: exit 3 for DENY, the
budget deny's text (spent and reserved apart, and when to retry), exit 4 for a widening
candidate (issue 17, point 3). Codes 0, 1 and 2: tests/unit/test_cli_exit_codes.py.
"""

from __future__ import annotations

import io
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from aam.cli.main import run
from pdp.stack import Stack
from tests.integration.pdp import EXAMPLES, FINANCE, running_stack

pytestmark = pytest.mark.integration


def aam(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


BUDGETED = "spiffe://prod/agent/cli-budget"
TICKETS = "spiffe://prod/agent/cli-tickets"


def policies(path: Path, ticket_actions: str = "[read]") -> Path:
    """The examples, plus a workload with a 1 USD day and one that may only read tickets
    (recording its reasons, so that its denies can be replayed)."""
    path.mkdir()
    for f in EXAMPLES.glob("*.yaml"):
        shutil.copy(f, path / f.name)
    (path / "cli.yaml").write_text(f"""\
apiVersion: access.envisionai.dev/v1
kind: AgentPolicy
metadata: {{name: cli-budget}}
spec:
  identity: {{workload: {BUDGETED}}}
  models: {{allow: [reasoning-high]}}
  budget: {{daily_usd: 1}}
---
apiVersion: access.envisionai.dev/v1
kind: AgentPolicy
metadata: {{name: cli-tickets}}
spec:
  identity: {{workload: {TICKETS}}}
  tools:
    - resource: zendesk.tickets
      actions: {ticket_actions}
  audit:
    record: [identity, policy, action, outcome, reasons]
""")
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(policies(tmp_path_factory.mktemp("cli") / "policies")) as s:
        yield s


def test_exit_3_on_deny(stack: Stack) -> None:
    code, out, err = aam("authorize", "--addr", stack.settings.grpc_addr, "--workload", FINANCE,
                         "--tool", "salesforce.accounts", "--action", "export")
    assert code == 3, err
    assert out.startswith("DENY  policy=finance-analyst-readonly")
    assert "action_denied" in out


def test_budget_deny_tells_spent_from_reserved_and_when_to_retry(stack: Stack) -> None:
    def ask(tokens: int) -> tuple[int, str, str]:
        return aam("authorize", "--addr", stack.settings.grpc_addr, "--workload", BUDGETED,
                   "--model", "reasoning-high", "--tokens", str(tokens))

    code, out, err = ask(40_000)  # reserved, never settled: the gateway reports no usage
    assert code == 0, out + err
    code, out, err = ask(40_000)
    assert code == 3, out + err
    assert re.search(r"reason +budget_exhausted: spent 0\.00 and reserved 0\.[1-9]\d of 1\.00 USD "
                     r"today; this call may cost up to \d+\.\d\d USD\n", out), out
    # The daily window resets at midnight UTC: at most a day away, said in hours or minutes.
    assert re.search(r"\n  retry     after (1d|\d{1,2}h(\d{1,2}m)?|\d{1,2}m(\d{1,2}s)?|\d{1,2}s)"
                     r"(\n|$)", out), out


def test_exit_4_on_a_widening_replay(stack: Stack, tmp_path: Path) -> None:
    code, out, err = aam("authorize", "--addr", stack.settings.grpc_addr, "--workload", TICKETS,
                         "--tool", "zendesk.tickets", "--action", "comment")
    assert code == 3, out + err
    candidate = policies(tmp_path / "candidate", ticket_actions="[read, comment]")
    code, out, err = aam("replay", "--candidate", str(candidate), "--ledger-url",
                         stack.settings.ledger_url, "--workload", "cli-tickets")
    assert code == 4, out + err
    assert "deny -> allow (1)" in out and "--allow-widening" in err
    code, _, err = aam("replay", "--candidate", str(candidate), "--ledger-url",
                       stack.settings.ledger_url, "--workload", "cli-tickets", "--allow-widening")
    assert code == 0, err
