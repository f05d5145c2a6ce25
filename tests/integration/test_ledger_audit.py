"""The audit table on PostgreSQL: the PDP role cannot rewrite it; verify names tampering."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import psycopg
import pytest

from aam.cli.main import run
from pdp.ledger import AuditFilter, open_ledger
from pdp.ledger.keyring import Keyring
from pdp.ledger.types import Ask, Limits
from tests.integration.ledgers import fresh_database
from tests.integration.pdp import audit_key_file
from tests.integration.test_ledger_contract import entry
from tests.servers import Postgres


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


def test_pdp_role_can_append_but_not_rewrite(postgres: Postgres, tmp_path: Path) -> None:
    admin = fresh_database(postgres)
    role = f"pdp_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'pdp-pw'")
    code, out, err = cli("migrate", "--ledger-url", admin, "--grant-role", role)
    assert code == 0, err
    assert "applied 0001_ledger" in out
    assert cli("migrate", "--ledger-url", admin)[1].strip() == "ledger schema up to date"

    pdp_dsn = admin.replace(f"user={postgres.user}", f"user={role}").replace(
        f"password={postgres.password}", "password=pdp-pw")
    ledger = open_ledger(pdp_dsn, keyring=Keyring.load(audit_key_file(tmp_path)))
    assert ledger is not None
    a = Ask(uuid.uuid4().hex, "spiffe://t/a", "", 10, 0, Limits(daily_micro=100), 60)
    assert ledger.reserve(a).reserved
    ledger.finish(entry(a.decision_id), release=False)
    assert ledger.settle(a.decision_id, 1, 5).applied
    ledger.close()
    with psycopg.connect(pdp_dsn, autocommit=True) as conn:
        for stmt in ("UPDATE aam_audit SET outcome = 'deny'", "DELETE FROM aam_audit",
                     "TRUNCATE aam_audit", "ALTER TABLE aam_audit DISABLE TRIGGER ALL"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(stmt)
        assert conn.execute("SELECT count(*) FROM aam_audit").fetchone() == (1,)


def _seed(dsn: str, n: int, key: Path) -> list[str]:
    ledger = open_ledger(dsn, keyring=Keyring.load(key))
    assert ledger is not None
    ledger.migrate()
    ids = [uuid.uuid4().hex for _ in range(n)]
    for i, d in enumerate(ids):
        ledger.finish(entry(d, "deny" if i % 3 == 0 else "allow"), release=False)
    ledger.close()
    return ids


def _as_superuser(dsn: str, *stmts: str) -> None:
    """What an attacker with the database superuser could do: bypass the triggers."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        for s in stmts:
            conn.execute(s)


def test_verify_names_modified_deleted_and_reordered_rows(postgres: Postgres, tmp_path: Path) -> None:
    dsn = fresh_database(postgres)
    key = audit_key_file(tmp_path)
    ids = _seed(dsn, 10, key)
    code, out, _ = cli("audit", "verify", "--ledger-url", dsn, "--key-file", str(key))
    assert (code, out.strip()) == (0, "audit chain intact: 10 row(s)")

    _as_superuser(
        dsn,
        # row 3: a deny rewritten as an allow (body and column)
        "UPDATE aam_audit SET outcome = 'allow', body = replace(body, '\"deny\"', '\"allow\"')"
        " WHERE seq = 4",
        # row 6 removed
        "DELETE FROM aam_audit WHERE seq = 6",
        # rows 8 and 9 swapped (all contents, positions kept)
        "UPDATE aam_audit SET seq = -8 WHERE seq = 8",
        "UPDATE aam_audit SET seq = 8 WHERE seq = 9",
        "UPDATE aam_audit SET seq = 9 WHERE seq = -8",
    )
    code, out, _ = cli("audit", "verify", "--ledger-url", dsn, "--key-file", str(key))
    assert code == 1
    lines = out.strip().splitlines()
    assert lines[-1] == "audit chain BROKEN: 5 problem(s) in 9 row(s)"
    assert lines[0] == f"seq 4 (decision {ids[3]}): modified: contents do not match the row's hash"
    assert lines[1] == f"seq 7 (decision {ids[6]}): deleted: row(s) 6 before this one are missing"
    assert lines[2] == f"seq 8 (decision {ids[8]}): reordered: this row was written at seq 9"
    assert lines[3] == f"seq 9 (decision {ids[7]}): reordered: this row was written at seq 8"
    assert lines[4] == f"seq 10 (decision {ids[9]}): reordered: chains to seq 8, not to seq 9"


def test_verify_detects_a_column_changed_without_its_body(postgres: Postgres, tmp_path: Path) -> None:
    dsn = fresh_database(postgres)
    key = audit_key_file(tmp_path)
    ids = _seed(dsn, 3, key)
    _as_superuser(dsn, "UPDATE aam_audit SET outcome = 'allow' WHERE seq = 1")
    code, out, _ = cli("audit", "verify", "--ledger-url", dsn, "--key-file", str(key))
    assert code == 1 and out.startswith(f"seq 1 (decision {ids[0]}): modified")


def test_audit_query_filters(postgres: Postgres, tmp_path: Path) -> None:
    dsn = fresh_database(postgres)
    ids = _seed(dsn, 6, audit_key_file(tmp_path))
    code, out, err = cli("audit", "query", "--ledger-url", dsn, "--outcome", "deny", "--json")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["decision_id"] for r in rows] == [ids[0], ids[3]]
    assert all(r["outcome"] == "deny" for r in rows)
    code, out, _ = cli("audit", "query", "--ledger-url", dsn, "--decision-id", ids[2])
    assert code == 0 and out.count("\n") == 1 and ids[2] in out and "ALLOW" in out
    ledger = open_ledger(dsn)
    assert ledger is not None
    middle = ledger.audit_rows(AuditFilter())[2].ts
    ledger.close()
    code, out, _ = cli("audit", "query", "--ledger-url", dsn, "--since", middle, "--json")
    assert [json.loads(x)["decision_id"] for x in out.splitlines()] == ids[2:]
    code, out, _ = cli("audit", "query", "--ledger-url", dsn, "--workload", "spiffe://nobody/x")
    assert (code, out) == (0, "")


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    code, _, err = cli("audit", "verify", "--ledger-url", "mysql://x")
    assert code == 2 and err.startswith("aam: error: unsupported ledger URL scheme 'mysql'")
    assert "Traceback" not in err
