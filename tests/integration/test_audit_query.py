"""``aam audit query`` filters and order on both stores, and reading a ledger that is not
there (issue 17, point 3).

The same rows, with times chosen here, are written to a fresh PostgreSQL database and a
fresh SQLite file; every query must give the same rows on both.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aam.cli.main import run
from pdp.ledger import Ask, AuditEntry, AuditFilter, Ledger, LedgerError, open_ledger
from pdp.ledger.chain import canonical
from pdp.ledger.types import Limits
from tests.integration.ledgers import KEYRING, fresh_ledger

pytestmark = pytest.mark.integration

TRIAGE = "spiffe://prod/agent/github-triage"
FINANCE = "spiffe://prod/agent/finance-analyst"
LOOKALIKE = "spiffe://staging/agent/github-triage-v2"
RECENT = (datetime.now(UTC) - timedelta(minutes=10)).isoformat(timespec="microseconds")

# (name, ts, workload, outcome, policy, action, reason codes)
ROWS = [
    ("r1", "2026-11-30T10:00:00.000000+00:00", TRIAGE, "allow", "github-triage",
     {"model": "", "tool": "github.issues", "action": "read"}, []),
    ("r2", "2026-11-30T12:00:00.000000+00:00", FINANCE, "deny", "finance-analyst-readonly",
     {"model": "", "tool": "salesforce.accounts", "action": "export"}, ["action_denied"]),
    ("r3", "2026-12-01T19:52:00.000000+00:00", TRIAGE, "deny", "github-triage",
     {"model": "reasoning-high", "tool": "", "action": ""}, ["rate_limited", "budget_exhausted"]),
    ("r4", "2026-12-01T20:00:00.000000+00:00", LOOKALIKE, "allow", "triage-v2",
     {"model": "summarization", "tool": "", "action": ""}, []),
    ("r5", RECENT, FINANCE, "allow", "finance-analyst-readonly",
     {"model": "summarization", "tool": "", "action": ""}, []),
]


def _seed(ledger: Ledger) -> dict[str, str]:
    ids = {}
    for name, ts, workload, outcome, policy, action, codes in ROWS:
        decision_id = f"{name}-{uuid.uuid4().hex[:8]}"
        body = {"ts": ts, "decision_id": decision_id, "workload": workload, "outcome": outcome,
                "policy": policy, "action": action,
                "reasons": [{"code": c, "message": f"{c} (test)"} for c in codes]}
        ledger.finish(AuditEntry(ts, decision_id, workload, outcome, canonical(body)), release=False)
        ids[decision_id] = name
    return ids


@pytest.fixture(params=["postgres", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Ledger, str, dict]]:
    pg = request.getfixturevalue("postgres") if request.param == "postgres" else None
    ledger, url = fresh_ledger(request.param, pg, tmp_path)
    ids = _seed(ledger)
    yield ledger, url, ids
    ledger.close()


def aam(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


def query(store: tuple[Ledger, str, dict], *flags: str) -> list[str]:
    """The names of the rows ``aam audit query`` prints, in the order printed."""
    _, url, ids = store
    code, out, err = aam("audit", "query", "--ledger-url", url, "--json", *flags)
    assert code == 0, err
    return [ids[json.loads(line)["decision_id"]] for line in out.splitlines()]


@pytest.mark.parametrize(("flags", "names"), [
    # --since/--until: no zone is UTC; a date is its midnight UTC; a duration is back from now.
    (["--since", "2026-12-01T19:52"], ["r3", "r4", "r5"]),
    (["--since", "2026-12-01T20:52+01:00"], ["r3", "r4", "r5"]),
    (["--since", "2026-12-01"], ["r3", "r4", "r5"]),
    (["--until", "2026-11-30T12:00"], ["r1"]),
    (["--since", "2026-11-30", "--until", "2026-12-01"], ["r1", "r2"]),
    (["--since", "1h"], ["r5"]),
    (["--since", "30m", "--until", "1m"], ["r5"]),
    (["--until", "1h"], ["r1", "r2", "r3", "r4"]),
    # --workload: a full SPIFFE ID exactly, or a name (the last path segments) exactly.
    (["--workload", TRIAGE], ["r1", "r3"]),
    (["--workload", "github-triage"], ["r1", "r3"]),
    (["--workload", "agent/github-triage"], ["r1", "r3"]),
    (["--workload", "triage"], []),
    (["--workload", "spiffe://prod/agent/github"], []),
    # --outcome in any case.
    (["--outcome", "DENY"], ["r2", "r3"]),
    (["--outcome", "Allow"], ["r1", "r4", "r5"]),
    # Fields of the JSON body.
    (["--policy", "finance-analyst-readonly"], ["r2", "r5"]),
    (["--reason", "budget_exhausted"], ["r3"]),
    (["--reason", "action_denied"], ["r2"]),
    (["--reason", "nothing_like_it"], []),
    (["--tool", "salesforce.accounts"], ["r2"]),
    (["--model", "summarization"], ["r4", "r5"]),
    (["--workload", "github-triage", "--outcome", "deny", "--model", "reasoning-high"], ["r3"]),
    # --limit: the newest N, printed oldest first.
    (["--limit", "2"], ["r4", "r5"]),
    (["--limit", "2", "--outcome", "deny"], ["r2", "r3"]),
    (["--limit", "1", "--until", "2026-12-01"], ["r2"]),
    (["--limit", "0"], []),
])
def test_query_filters_and_order(store: tuple[Ledger, str, dict], flags: list[str],
                                 names: list[str]) -> None:
    assert query(store, *flags) == names


def test_text_output_is_oldest_first_within_the_newest(store: tuple[Ledger, str, dict]) -> None:
    _, url, _ = store
    code, out, _ = aam("audit", "query", "--ledger-url", url, "--limit", "3")
    assert code == 0
    seqs = [int(line.split()[0]) for line in out.splitlines()]
    assert seqs == [3, 4, 5]


@pytest.mark.parametrize("bad", ["2026-12-01T19:52:99", "yesterday", "1y", "-1h", ""])
def test_bad_times_are_usage_errors_on_both_stores(store: tuple[Ledger, str, dict], bad: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    ledger, url, _ = store
    code, out, _ = aam("audit", "query", "--ledger-url", url, f"--since={bad}")
    err = capsys.readouterr().err  # argparse prints to sys.stderr
    assert (code, out) == (2, ""), err
    assert f"argument --since: {bad!r} is not a time: use ISO 8601" in err
    assert "Traceback" not in err
    if bad:  # the store refuses it itself, before any SQL: a FilterError, not a LedgerError
        from pdp.ledger.types import FilterError

        with pytest.raises(FilterError, match=r"--until .* is not a time"):
            ledger.audit_rows(AuditFilter(until=bad))


def test_parse_time_forms() -> None:
    from pdp.ledger.types import parse_time

    now = datetime(2026, 12, 1, 20, 0, tzinfo=UTC)
    assert parse_time("2026-12-01T19:52", now) == datetime(2026, 12, 1, 19, 52, tzinfo=UTC)
    assert parse_time("2026-12-01T19:52Z", now) == datetime(2026, 12, 1, 19, 52, tzinfo=UTC)
    assert parse_time("2026-12-01T21:52+02:00", now) == datetime(2026, 12, 1, 19, 52, tzinfo=UTC)
    assert parse_time("2026-12-01", now) == datetime(2026, 12, 1, tzinfo=UTC)
    assert parse_time("90s", now) == now - timedelta(seconds=90)
    assert parse_time("1h30m", now) == now - timedelta(minutes=90)
    assert parse_time("2d", now) == now - timedelta(days=2)
    assert parse_time("1w", now) == now - timedelta(weeks=1)


def test_a_missing_sqlite_file_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "not" / "here.sqlite3"
    for argv in (["audit", "verify"], ["audit", "query"], ["shadow", "report"]):
        code, out, err = aam(*argv, "--ledger-url", f"sqlite://{missing}")
        assert (code, out) == (1, "")
        assert err.strip().startswith(f"aam {' '.join(argv)}: error: no ledger at {missing}")
    assert not missing.parent.exists()
    # Opened read-only by the store itself too, whoever calls it.
    with pytest.raises(LedgerError, match="cannot open"):
        open_ledger(f"sqlite://{missing}?mode=ro")
    assert not missing.parent.exists()
    # Serving (aam up, the PDP, aam migrate) still creates it.
    assert aam("migrate", "--ledger-url", f"sqlite://{missing}")[0] == 0
    assert missing.is_file()
    assert aam("audit", "query", "--ledger-url", f"sqlite://{missing}") == (0, "", "")


def test_reading_writes_nothing_to_the_ledger_file(tmp_path: Path) -> None:
    ledger, url = fresh_ledger("sqlite", None, tmp_path)
    _seed(ledger)
    ledger.close()
    path = Path(url.removeprefix("sqlite://"))
    before = path.read_bytes()
    assert aam("audit", "query", "--ledger-url", url, "--limit", "1")[0] == 0
    assert path.read_bytes() == before
    reader = open_ledger(url + "?mode=ro", keyring=KEYRING)
    assert reader is not None
    try:
        assert [r.seq for r in reader.audit_rows(AuditFilter(limit=2))] == [4, 5]
        with pytest.raises(LedgerError, match="readonly"):
            reader.reserve(Ask(uuid.uuid4().hex, FINANCE, "", 1, 0, Limits(), 60))
    finally:
        reader.close()
