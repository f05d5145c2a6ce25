"""Every ``aam`` command exits as aam/cli/main.py and the README say: 0 success (ALLOW),
1 error, 2 usage error, 3 DENY, 4 a deny-to-allow flip (issue 17, point 3).

Codes 0, 1 and 2 are checked here with real commands and no server. 3 and 4 need a PDP
and OPA: tests/integration/test_cli_authorize.py (``test_exit_3_...``, ``test_exit_4_...``),
and also tests/integration/test_explain.py (3) and tests/unit/test_replay.py (4).
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from aam.cli.main import run
from pdp.ledger import open_ledger
from pdp.ledger.keyring import Keyring
from pdp.opa import free_port

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FINANCE = "spiffe://prod/agent/finance-analyst"
LEDGER = "<an existing ledger>"  # replaced by the ledger_url fixture


def aam(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def ledger_url(tmp_path: Path) -> str:
    """An existing, migrated, empty SQLite ledger."""
    url = f"sqlite://{tmp_path / 'ledger.sqlite3'}"
    ledger = open_ledger(url, keyring=Keyring.generate())
    assert ledger is not None
    ledger.migrate()
    ledger.close()
    return url


def test_the_codes_are_the_documented_ones() -> None:
    from aam.cli import main

    assert (main.OK, main.ERROR, main.USAGE, main.DENY, main.WIDENING) == (0, 1, 2, 3, 4)


def test_exit_0_on_success(tmp_path: Path, ledger_url: str) -> None:
    code, out, err = aam("compile", str(EXAMPLES), "-o", str(tmp_path / "b.tar.gz"))
    assert code == 0, err
    assert out.startswith(f"wrote {tmp_path / 'b.tar.gz'}")
    assert aam("audit", "query", "--ledger-url", ledger_url)[0] == 0


def test_exit_1_on_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: access.envisionai.dev/v1\nkind: AgentPolicy\nmetadata: {name: x}\n"
                   "spec: {identity: {workload: not-a-spiffe-id}}\n")
    code, _, err = aam("compile", str(bad), "-o", str(tmp_path / "b.tar.gz"))
    assert code == 1 and "error:" in err and "Traceback" not in err
    # A PDP that is not there is an error, not a usage error.
    code, _, err = aam("authorize", "--addr", f"127.0.0.1:{free_port()}", "--workload", FINANCE,
                       "--model", "reasoning-high")
    assert code == 1 and "connection refused" in err
    # A ledger path that does not exist, and a key file that does not exist.
    missing = tmp_path / "no-ledger.sqlite3"
    assert aam("audit", "verify", "--ledger-url", f"sqlite://{missing}")[0] == 1
    code, _, err = aam("audit", "key", "list", str(tmp_path / "no.key"))
    assert code == 1 and "No such file or directory" in err
    key = tmp_path / "audit.key"
    assert aam("audit", "key", "init", str(key))[0] == 0
    code, _, err = aam("audit", "key", "init", str(key))  # refuses to overwrite: an error
    assert code == 1, err


@pytest.mark.parametrize("argv", [
    [],  # no command
    ["no-such-command"],
    ["compile"],  # PATH is required
    ["compile", "x.yaml", "--signing-alg", "none"],
    ["audit", "query", "--outcome", "maybe", "--ledger-url", LEDGER],
    ["audit", "query", "--since", "2026-12-01T25:00", "--ledger-url", LEDGER],
    ["audit", "query", "--until", "yesterday", "--ledger-url", LEDGER],
    ["audit", "query", "--limit", "-3", "--ledger-url", LEDGER],
    ["audit", "query", "--ledger-url", "mysql://x"],
    ["audit", "verify", "--ledger-url", "mysql://x"],
    ["migrate", "--ledger-url", "mysql://x"],
    ["authorize", "--workload", FINANCE],  # neither --model nor --tool
    ["authorize", "--workload", FINANCE, "--tool", "salesforce.accounts"],  # no --action
    ["authorize", "--workload", FINANCE, "--action", "read"],  # no --tool
    ["authorize", "--workload", FINANCE, "--model", "m", "--params", "[1]"],
    ["authorize", "--workload", FINANCE, "--model", "m", "--cert", "c.pem"],  # mTLS needs all 3
    ["completion", "fish"],
    ["audit", "key", "list", "--config", "/no/such/settings.toml"],
])
def test_exit_2_on_usage_errors(argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str], ledger_url: str) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = aam(*(ledger_url if a == LEDGER else a for a in argv))
    assert code == 2, (out, err)
    assert "Traceback" not in err + capsys.readouterr().err


@pytest.mark.parametrize("command", [["shadow", "report"], ["replay", "--candidate", str(EXAMPLES)]])
def test_exit_2_for_a_bad_time_in_commands_that_reuse_the_audit_filter(
        command: list[str], ledger_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """replay and shadow report take --since as audit query does: a usage error."""
    code, _, err = aam(*command, "--ledger-url", ledger_url, "--since", "last tuesday")
    assert code == 2, err
    assert "argument --since: 'last tuesday' is not a time: use ISO 8601" in capsys.readouterr().err


def test_a_reader_that_leaves_early_gets_no_traceback() -> None:
    """``aam authorize --json | head -1``: the reader has gone when aam prints (the answer
    took a moment); aam ends quietly instead of an internal error."""
    import subprocess
    import sys

    script = ("import sys, time; from aam.cli import main as m; "
              "m.run = lambda argv, out, err: (time.sleep(0.5), print('x' * 100_000, file=out), 0)[2]; "
              "m.main()")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader leaves before aam writes
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=30) == 1
    assert err == ""


def test_a_bad_filter_pattern_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert run(["test", "examples", "--filter", "("], out, err) == 2
    assert "is not a regular expression" in capsys.readouterr().err  # argparse's usage line
