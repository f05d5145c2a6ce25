"""The keyed, anchored audit chain against its attacker: whoever owns the database.

Both stores, real servers: PostgreSQL's superuser disables the append-only
triggers (``session_replication_role = replica``); for SQLite the attacker can
write the file and drops them. Every attack goes through ``aam audit verify``
as a user runs it.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from aam.cli.main import run
from pdp.config import ConfigError
from pdp.ledger import AuditFilter, Ledger, LedgerError, migrations, open_ledger
from pdp.ledger import anchor as anchors
from pdp.ledger.chain import keyed_hash, legacy_hash
from pdp.ledger.keyring import REFRESH_S, AuditKey, Keyring
from pdp.ledger.sqlite import _statements
from pdp.stack import Stack
from tests.integration.ledgers import fresh_database
from tests.integration.pdp import FINANCE, audit_key_file, request, running_stack, stub
from tests.integration.test_ledger_contract import entry


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(params=["postgres", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database (PostgreSQL on the session cluster) or SQLite file path."""
    if request.param == "postgres":
        return fresh_database(request.getfixturevalue("postgres"))
    return f"sqlite://{tmp_path / 'ledger.sqlite3'}"


@pytest.fixture
def key(tmp_path: Path) -> Path:
    return audit_key_file(tmp_path)


@pytest.fixture
def ledger(url: str, key: Path) -> Iterator[Ledger]:
    opened = open_ledger(url, 2, 5.0, Keyring.load(key))
    assert opened is not None
    opened.migrate()
    yield opened
    opened.close()


def seed(ledger: Ledger, n: int) -> list[str]:
    ids = [uuid.uuid4().hex for _ in range(n)]
    for i, d in enumerate(ids):
        ledger.finish(entry(d, "deny" if i % 3 == 0 else "allow"), release=False)
    return ids


def as_attacker(url: str, *stmts: tuple[str, tuple[object, ...]]) -> None:
    """The database's owner: the append-only triggers (and the keyed check) are no obstacle."""
    if url.startswith("sqlite:"):
        conn = sqlite3.connect(url.removeprefix("sqlite://"))
        with conn:
            for trigger in ("aam_audit_no_update", "aam_audit_no_delete", "aam_audit_keyed"):
                conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
            for stmt, args in stmts:
                conn.execute(stmt.replace("%s", "?"), args)
        conn.close()
        return
    with psycopg.connect(url, autocommit=True) as pconn:
        pconn.execute("SET session_replication_role = replica")
        pconn.execute("ALTER TABLE aam_audit DROP CONSTRAINT IF EXISTS aam_audit_keyed")
        for stmt, args in stmts:
            pconn.execute(stmt.encode(), args)  # type: ignore[call-overload]


def rewrite(url: str, ledger: Ledger, seq: int, body_change: tuple[str, str],
            rehash: str, wrong_key: AuditKey | None = None) -> None:
    """Change row ``seq``'s body (and its column) and recompute every hash from it on."""
    rows = ledger.audit_rows(AuditFilter())
    old, new = body_change
    stmts: list[tuple[str, tuple[object, ...]]] = []
    prev = rows[seq - 2].hash if seq > 1 else "0" * 64
    for r in rows[seq - 1:]:
        body = r.body.replace(old, new) if r.seq == seq else r.body
        outcome = json.loads(body)["outcome"]
        if rehash == "public":
            h = legacy_hash(prev, r.seq, body)
        else:
            assert wrong_key is not None
            h = keyed_hash(wrong_key, prev, r.seq, body)
        stmts.append(("UPDATE aam_audit SET body = %s, outcome = %s, prev_hash = %s, hash = %s"
                      " WHERE seq = %s", (body, outcome, prev, h, r.seq)))
        prev = h
    as_attacker(url, *stmts)


# --- (a) the superuser rewrites a row and re-chains everything after it --------------------

@pytest.mark.parametrize("rehash", ["public", "wrong-key"])
def test_a_rewritten_row_is_named_however_the_chain_was_recomputed(
        url: str, key: Path, ledger: Ledger, rehash: str) -> None:
    ids = seed(ledger, 8)
    code, out, err = cli("audit", "verify", "--ledger-url", url, "--key-file", str(key))
    assert (code, out.strip()) == (0, "audit chain intact: 8 row(s)"), err

    # seq 4 was a deny; the attacker makes it an allow and recomputes seq 4..8, with the
    # old public formula, or with an HMAC under a key of their own and the real key id.
    real_id = Keyring.load(key).current().id
    rewrite(url, ledger, 4, ('"outcome":"deny"', '"outcome":"allow"'), rehash,
            AuditKey(real_id, "", b"attacker-chosen-key-material-32b"))
    code, out, _ = cli("audit", "verify", "--ledger-url", url, "--key-file", str(key))
    lines = out.strip().splitlines()
    assert code == 1
    assert lines[0].startswith(f"seq 4 (decision {ids[3]}): modified: contents do not match "
                               "the row's hash")
    assert not any(line.startswith(("seq 1 ", "seq 2 ", "seq 3 ")) for line in lines)
    assert lines[-1].startswith("audit chain BROKEN:")
    if rehash == "public":
        assert "recomputed with the public unkeyed formula" in lines[0]


def test_rows_relabelled_as_unkeyed_after_keyed_ones_are_refused(
        url: str, key: Path, ledger: Ledger) -> None:
    ids = seed(ledger, 6)
    rows = ledger.audit_rows(AuditFilter())
    prev, stmts = rows[2].hash, []
    for r in rows[3:]:  # seq 4..6 turned into "legacy" rows with public hashes
        h = legacy_hash(prev, r.seq, r.body)
        stmts.append(("UPDATE aam_audit SET key_id = '', prev_hash = %s, hash = %s WHERE seq = %s",
                      (prev, h, r.seq)))
        prev = h
    as_attacker(url, *stmts)
    code, out, _ = cli("audit", "verify", "--ledger-url", url, "--key-file", str(key))
    assert code == 1
    assert out.splitlines()[0] == (f"seq 4 (decision {ids[3]}): unkeyed: an unkeyed row (public "
                                   "SHA-256 formula, which anyone can compute) after keyed rows")


# --- (b) the newest rows are cut off ---------------------------------------------------------

def decide(stack: Stack, n: int) -> list[str]:
    channel, pdp = stub(stack)
    with channel:
        return [pdp.Authorize(request(FINANCE, tool="salesforce.accounts", action="read"),
                              timeout=10).decision_id for _ in range(n)]


def test_a_cut_tail_is_named_from_the_anchor_and_the_pdp_refuses_to_restart(
        url: str, key: Path, tmp_path: Path) -> None:
    anchor = tmp_path / "audit.anchor"
    files = {"ledger_url": url, "audit_key_file": str(key), "audit_anchor_file": str(anchor)}
    with running_stack(**files) as stack:
        ids = decide(stack, 6)
    # The clean shutdown anchored the final head.
    written = anchors.read(anchor)
    assert (written.seq, written.key_id) == (6, Keyring.load(key).current().id)
    code, out, err = cli("audit", "verify", "--ledger-url", url, "--key-file", str(key),
                         "--anchor", str(anchor))
    assert code == 0, out + err
    assert out.splitlines() == [f"anchor {anchor}: seq 6 (written {written.time}) matches",
                                "audit chain intact: 6 row(s)"]

    as_attacker(url, ("DELETE FROM aam_audit WHERE seq > %s", (4,)))
    code, out, _ = cli("audit", "verify", "--ledger-url", url, "--key-file", str(key),
                       "--anchor", str(anchor))
    assert code == 1
    assert out.splitlines() == [
        f"tail: rows after seq 4 are missing: the anchor written at {written.time} ({anchor})"
        f" names seq 6 with hash {written.hash}",
        "audit chain BROKEN: 1 problem(s) in 4 row(s)"]
    # Without the anchor the shortened chain looks whole: exactly what anchors are for.
    code, out, err = cli("audit", "verify", "--ledger-url", url, "--key-file", str(key))
    assert (code, out.strip()) == (0, "audit chain intact: 4 row(s)")
    assert "no anchor" in err
    assert ids[3] in {r.decision_id for r in _rows(url)}

    # A PDP restarted on that anchor would chain new rows onto the cut: it refuses.
    with pytest.raises(LedgerError, match="audit chain broken: the ledger has no row at seq 6"), \
            running_stack(**files):
        pass


def test_a_running_pdp_stops_appending_when_its_tail_is_cut(
        url: str, key: Path, tmp_path: Path) -> None:
    anchor = tmp_path / "audit.anchor"
    with running_stack(ledger_url=url, audit_key_file=str(key), audit_anchor_file=str(anchor),
                       audit_anchor_interval_s=0.05) as stack:
        decide(stack, 5)
        deadline = time.monotonic() + 10
        while not (anchor.exists() and anchors.read(anchor).seq == 5):
            assert time.monotonic() < deadline, "the anchor was not written"
            time.sleep(0.02)
        as_attacker(url, ("DELETE FROM aam_audit WHERE seq > %s", (3,)))
        channel, pdp = stub(stack)
        with channel:
            after = pdp.Authorize(request(FINANCE, tool="salesforce.accounts", action="read"),
                                  timeout=10)
        assert [r.code for r in after.reasons] == ["ledger_unavailable"]
        assert {r.seq for r in _rows(url)} == {1, 2, 3}  # nothing chained onto the cut
    code, out, _ = cli("audit", "verify", "--ledger-url", url, "--key-file", str(key),
                       "--anchor", str(anchor))
    assert code == 1 and out.startswith("tail: rows after seq 3 are missing")


def _rows(url: str) -> list:  # type: ignore[type-arg]
    ledger = open_ledger(url)
    assert ledger is not None
    try:
        return ledger.audit_rows(AuditFilter())
    finally:
        ledger.close()


# --- (c) key rotation -------------------------------------------------------------------------

def test_rotation_needs_no_restart_and_old_rows_still_verify(
        url: str, key: Path, ledger: Ledger, tmp_path: Path) -> None:
    first = Keyring.load(key).current().id
    old_copy = tmp_path / "old.key"
    shutil.copy(key, old_copy)
    seed(ledger, 3)
    code, out, err = cli("audit", "key", "rotate", str(key))
    assert code == 0, err
    second = Keyring.load(key).current().id
    assert second != first and f"kept {first}" in out
    assert Keyring.load(key).ids() == [first, second]
    time.sleep(REFRESH_S + 0.1)  # the running ledger notices the new file
    seed(ledger, 3)
    assert [r.key_id for r in ledger.audit_rows(AuditFilter())] == [first] * 3 + [second] * 3

    code, out, err = cli("audit", "verify", "--ledger-url", url, "--key-file", str(key))
    assert (code, out.strip()) == (0, "audit chain intact: 6 row(s)"), err
    # The keyring from before the rotation cannot vouch for the new rows.
    code, out, _ = cli("audit", "verify", "--ledger-url", url, "--key-file", str(old_copy))
    assert code == 1
    assert out.splitlines()[0].startswith("seq 4 (decision ")
    assert out.splitlines()[0].endswith(f"unkeyed: key id {second!r} is not in the keyring")


# --- legacy rows from before the chain was keyed ----------------------------------------------

def _old_schema_with_legacy_rows(url: str, n: int) -> list[str]:
    """What a ledger created and written by the previous release holds."""
    ids = [uuid.uuid4().hex for _ in range(n)]
    entries = [entry(d, "deny" if i % 2 else "allow") for i, d in enumerate(ids)]
    if url.startswith("sqlite:"):
        conn = sqlite3.connect(url.removeprefix("sqlite://"))
        with conn:
            conn.execute("CREATE TABLE aam_schema_migrations (version INTEGER PRIMARY KEY,"
                         " name TEXT NOT NULL, applied_at TEXT NOT NULL)")
            (m,) = [m for m in migrations.load("sqlite") if m.version == 1]
            for stmt in _statements(m.sql):
                conn.execute(stmt)
            conn.execute("INSERT INTO aam_schema_migrations VALUES (1, ?, 'then')", (m.name,))
            prev = "0" * 64
            for seq, e in enumerate(entries, 1):  # the old store's insert and formula
                h = legacy_hash(prev, seq, e.body)
                conn.execute("INSERT INTO aam_audit VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             (seq, e.ts, e.decision_id, e.workload, e.outcome, e.body, prev, h))
                prev = h
        conn.close()
        return ids
    with psycopg.connect(url, autocommit=True) as pconn:
        pconn.execute("CREATE TABLE aam_schema_migrations (version integer PRIMARY KEY, name text"
                      " NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
        for m in migrations.load("postgres"):
            if m.version <= 3:
                pconn.execute(m.sql.encode())  # type: ignore[call-overload]
                pconn.execute("INSERT INTO aam_schema_migrations (version, name) VALUES (%s, %s)",
                              (m.version, m.name))
        items = [{"id": e.decision_id, "workload": e.workload, "ts": e.ts, "outcome": e.outcome,
                  "body": e.body, "release": False, "ask": False} for e in entries]
        pconn.execute("SELECT aam_commit_many(%s::jsonb)", (json.dumps(items),))  # hashed in SQL
    return ids


def test_a_migrated_ledger_verifies_its_legacy_rows_and_protects_them_from_then_on(
        url: str, key: Path) -> None:
    legacy = _old_schema_with_legacy_rows(url, 5)
    ledger = open_ledger(url, 2, 5.0, Keyring.load(key))
    assert ledger is not None
    try:
        assert ledger.migrate() == (["0002_keyed_audit", "0003_console_indexes"]
                                    if url.startswith("sqlite:")
                                    else ["0004_keyed_audit", "0005_console_indexes"])
        keyed = seed(ledger, 3)
        rows = ledger.audit_rows(AuditFilter())
        assert [r.key_id for r in rows] == [""] * 5 + [Keyring.load(key).current().id] * 3
        assert rows[5].prev_hash == rows[4].hash  # the first keyed row chains to the last legacy one
        _old_writers_cannot_append_unkeyed_rows(url)

        code, out, err = cli("audit", "verify", "--ledger-url", url, "--key-file", str(key))
        assert code == 0, out + err
        assert out.splitlines() == [
            "legacy: 5 row(s), seq 1..5 predate the keyed chain and were checked with the public"
            " SHA-256 formula only; the first keyed row chains to the last of them, which protects"
            " them from then on",
            "audit chain intact: 8 row(s)"]

        # Rewrite legacy row 2 and re-chain every legacy hash with the public formula:
        # every legacy row looks right again, but the first keyed row no longer fits.
        prev, stmts = rows[0].hash, []
        for r in rows[1:5]:
            body = r.body.replace(f'"outcome":"{r.outcome}"', '"outcome":"allow"') \
                if r.seq == 2 else r.body
            h = legacy_hash(prev, r.seq, body)
            stmts.append(("UPDATE aam_audit SET body = %s, outcome = %s, prev_hash = %s, hash = %s"
                          " WHERE seq = %s", (body, json.loads(body)["outcome"], prev, h, r.seq)))
            prev = h
        as_attacker(url, *stmts)
        code, out, _ = cli("audit", "verify", "--ledger-url", url, "--key-file", str(key))
        assert code == 1
        assert out.splitlines()[0] == (
            f"seq 6 (decision {keyed[0]}): modified: does not chain to the previous row's hash"
            " (seq 5 or a legacy row before it was changed and re-hashed with the public formula)")
        assert legacy[1] not in out  # the legacy rows themselves cannot be told apart
    finally:
        ledger.close()


def _old_writers_cannot_append_unkeyed_rows(url: str) -> None:
    row = ("INSERT INTO aam_audit (seq, ts, decision_id, workload, outcome, body, prev_hash, hash)"
           " VALUES (100, '2026-01-01T00:00:00+00:00', 'x', 'w', 'allow', '{}', 'p', 'h')")
    if url.startswith("sqlite:"):
        conn = sqlite3.connect(url.removeprefix("sqlite://"))
        with pytest.raises(sqlite3.IntegrityError, match="must be keyed"):
            conn.execute(row)
        conn.close()
        return
    with psycopg.connect(url, autocommit=True) as pconn:
        with pytest.raises(psycopg.errors.CheckViolation):
            pconn.execute(row)
        with pytest.raises(psycopg.errors.UndefinedFunction):  # the old PDP's batch call
            pconn.execute("SELECT aam_commit_many('[]'::jsonb)")


# --- without the key, and fail closed ---------------------------------------------------------

def test_verify_without_the_key_checks_only_the_structure_and_never_says_intact(
        url: str, ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No key given, none in settings, and no aam up keyring on this machine either.
    monkeypatch.setattr("aam.cli.ledger_cmd.up_key_file", lambda: tmp_path / "no-such.key")
    seed(ledger, 3)
    code, out, err = cli("audit", "verify", "--ledger-url", url)
    assert code == 2
    assert "intact" not in out
    assert out.strip() == ("audit chain NOT VERIFIED: 3 row(s), seq 1..3 are keyed; without the "
                           "audit key only their public structure (order, links, columns) was "
                           "checked, and it holds")
    assert err.strip().startswith("aam audit verify: error: no audit key: pass --key-file")

    code, out, err = cli("audit", "verify", "--ledger-url", url, "--key-file",
                         str(tmp_path / "missing.key"))
    assert (code, out) == (2, "")
    assert err.strip() == (f"aam audit verify: error: --key-file {tmp_path / 'missing.key'}: "
                           "No such file or directory")


def test_the_pdp_refuses_to_start_without_a_readable_audit_key(url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^audit_key_file is required when ledger_url is set"), \
            running_stack(ledger_url=url, audit_key_file=""):
        pass
    loose = audit_key_file(tmp_path)
    loose.chmod(0o644)
    with pytest.raises(ConfigError, match=r"^audit_key_file .*readable by group or others"), \
            running_stack(ledger_url=url, audit_key_file=str(loose)):
        pass


# --- (d) no key material anywhere -----------------------------------------------------------

def test_no_secret_appears_in_output_logs_or_errors(
        url: str, key: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []

    def run_cli(*argv: str) -> int:
        code, out, err = cli(*argv)
        seen.extend([out, err])
        return code

    anchor = tmp_path / "audit.anchor"
    with running_stack(ledger_url=url, audit_key_file=str(key), audit_anchor_file=str(anchor)) as s:
        decide(s, 3)
    assert run_cli("audit", "key", "rotate", str(key)) == 0
    assert run_cli("audit", "key", "list", str(key)) == 0
    assert run_cli("audit", "key", "init", str(key)) == 1  # refuses to overwrite: an error
    assert run_cli("audit", "verify", "--ledger-url", url, "--key-file", str(key),
                   "--anchor", str(anchor)) == 0
    as_attacker(url, ("UPDATE aam_audit SET outcome = CASE outcome WHEN 'deny' THEN 'allow'"
                      " ELSE 'deny' END WHERE seq = %s", (2,)))
    assert run_cli("audit", "verify", "--ledger-url", url, "--key-file", str(key),
                   "--anchor", str(anchor)) == 1
    # Broken key files: errors name the file and the problem, never the contents.
    secrets_ = [k.secret for k in map(Keyring.load(key).get, Keyring.load(key).ids()) if k]
    doc = json.loads(key.read_text())
    bad = tmp_path / "bad.key"
    for mangle in (lambda d: {**d, "current": "nope"},
                   lambda d: {**d, "keys": [{**d["keys"][0], "secret": d["keys"][0]["secret"][:20]}]},
                   lambda d: {**d, "keys": d["keys"] * 2}):
        bad.unlink(missing_ok=True)
        bad.write_text(json.dumps(mangle(doc)))
        bad.chmod(0o600)
        with pytest.raises(ConfigError) as exc:
            Keyring.load(bad)
        seen.append(str(exc.value))
        assert run_cli("audit", "verify", "--ledger-url", url, "--key-file", str(bad)) == 2
    seen.append(repr(Keyring.load(key)))
    seen.extend(r.getMessage() + json.dumps(getattr(r, "fields", {}), default=str)
                for r in caplog.records)
    text = "\n".join(seen)
    assert "not in the keyring" in text and "appears twice" in text  # the errors were seen
    for secret in secrets_:
        assert secret.hex() not in text and secret.hex()[:16] not in text
        assert repr(secret)[2:-1] not in text
