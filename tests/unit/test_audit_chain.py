"""The keyed audit chain without a database: formula, keyring file, anchors, verifier."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import stat
from pathlib import Path

import pytest

from pdp.config import ConfigError
from pdp.ledger import anchor as anchors
from pdp.ledger import keyring as keyrings
from pdp.ledger.chain import canonical, check, keyed_hash, legacy_hash, link
from pdp.ledger.keyring import AuditKey, Keyring, ensure_file, init_file, rotate_file
from pdp.ledger.types import GENESIS, AuditEntry, AuditRow, ChainHead
from pdp.ledger.writer import Pending, WriterBacked

KEY = AuditKey("k1-00000000", "", bytes(range(32)))


def test_the_row_formula_is_the_documented_hmac() -> None:
    # Pinned: a change to the formula would make every existing chain fail to verify.
    body = '{"a":1}'
    assert keyed_hash(KEY, GENESIS, 1, body) == (
        "3f84af67e8331c66b11f35b75a90091d0b2a4a45c884e36cf08cc940f16ef4a5")
    msg = f"aam-audit-v1\n{GENESIS}\n1\nk1-00000000\n{body}".encode()
    assert keyed_hash(KEY, GENESIS, 1, body) == hmac.new(bytes(range(32)), msg,
                                                        hashlib.sha256).hexdigest()
    assert legacy_hash(GENESIS, 1, body) == hashlib.sha256(f"{GENESIS}\n1\n{body}".encode()).hexdigest()
    # The key id is inside the MAC: relabelling a row with another key's id breaks it.
    assert keyed_hash(AuditKey("k2-00000000", "", KEY.secret), GENESIS, 1, body) != \
        keyed_hash(KEY, GENESIS, 1, body)


def _rows(entries: list[tuple[str, str]], start: int = 1, prev: str = GENESIS) -> list[AuditRow]:
    """(key id or "" for legacy, outcome) per row, chained as the stores chain them."""
    rows = []
    for seq, (key_id, outcome) in enumerate(entries, start):
        ts = f"2026-11-26T10:00:{seq:02d}+00:00"
        body = canonical({"ts": ts, "decision_id": f"d{seq}", "workload": "w", "outcome": outcome})
        key = AuditKey(key_id, "", KEY.secret) if key_id else None
        h = keyed_hash(key, prev, seq, body) if key else legacy_hash(prev, seq, body)
        rows.append(AuditRow(seq, ts, f"d{seq}", "w", outcome, body, prev, h, key_id=key_id))
        prev = h
    return rows


def _ring() -> Keyring:
    return Keyring([KEY], KEY.id)


def test_check_reports_legacy_keyed_unknown_and_unkeyed_rows() -> None:
    rows = _rows([("", "allow"), ("", "deny"), (KEY.id, "allow"), (KEY.id, "deny")])
    rep = check(rows, _ring())
    assert (rep.problems, str(rep.legacy), rep.keys, rep.unverified) == (
        [], "2 row(s), seq 1..2", {KEY.id: 2}, None)

    unknown = _rows([(KEY.id, "allow"), ("k9-ffffffff", "allow")])
    (p,) = check(unknown, _ring()).problems
    assert str(p) == "seq 2 (decision d2): unkeyed: key id 'k9-ffffffff' is not in the keyring"

    downgraded = _rows([(KEY.id, "allow"), ("", "allow")])
    (p,) = check(downgraded, _ring()).problems
    assert (p.seq, p.kind) == (2, "unkeyed")

    # Without a keyring: structure only, and the keyed rows are reported as unverified.
    rep = check(rows, None)
    assert rep.problems == [] and str(rep.unverified) == "2 row(s), seq 3..4"


def test_link_chains_after_the_head() -> None:
    links = link(7, "ab" * 32, KEY, ["x", "y"])
    assert [lk.seq for lk in links] == [8, 9]
    assert links[0].prev_hash == "ab" * 32 and links[1].prev_hash == links[0].hash
    assert links[1].hash == keyed_hash(KEY, links[0].hash, 9, "y")


def test_writer_chain_appends_each_decision_once() -> None:
    def p(decision_id: str) -> Pending:
        return Pending(AuditEntry("t", decision_id, "w", "allow", f'"{decision_id}"'), False)

    batch = [p("a"), p("old"), p("b"), p("a"), p("refused")]
    rows = WriterBacked().chain(batch, [True, True, True, True, False], {"old": 3},
                                ChainHead(10, "h" * 64), KEY)
    assert [x.seq for x in batch] == [11, 3, 12, 11, 0]
    assert [(lk.seq, e.decision_id) for lk, e in rows] == [(11, "a"), (12, "b")]


def test_keyring_file_init_rotate_reload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state" / "audit.key"
    ring = init_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert doc["format"] == "aam-audit-keyring/v1" and doc["current"] == ring.current().id
    assert ring.current().id.startswith("k1-") and len(ring.current().secret) == 32
    with pytest.raises(ConfigError, match="already exists"):
        init_file(path)
    assert ensure_file(path).ids() == ring.ids()

    monkeypatch.setattr(keyrings, "REFRESH_S", 0.0)
    live = Keyring.load(path)
    before, after = rotate_file(path)
    assert after.ids() == [*before.ids(), after.current().id]
    assert after.current().id.startswith("k2-")
    assert live.current().id == after.current().id  # picked up without a restart

    new_id = after.current().id
    os.chmod(path, 0o644)  # a rotation gone wrong: keep using the keys already loaded
    with caplog.at_level(logging.ERROR, logger="aam.ledger"):
        assert live.current().id == new_id
        assert live.current().id == new_id
    (record,) = caplog.records  # reported once per change of the file
    assert "readable by group or others" in record.__dict__["fields"]["error"]
    with pytest.raises(ConfigError, match=r"audit_key_file .*readable by group or others"):
        Keyring.load(path)
    os.chmod(path, 0o600)
    assert live.current().id == new_id
    assert after.current().secret.hex() not in repr(live) + repr(after.current())


@pytest.mark.parametrize(("doc", "message"), [
    (b"not json", "not a JSON audit keyring"),
    (b'{"format": "x"}', "format must be"),
    (b'{"format": "aam-audit-keyring/v1", "current": "a", "keys": []}', "non-empty 'keys'"),
    (b'{"format": "aam-audit-keyring/v1", "current": "a", "keys": [{"id": "a", "secret": "zz"}]}',
     "'secret' must be at least 32 bytes"),
    (b'{"format": "aam-audit-keyring/v1", "current": "a", "keys": [{"id": "a b", "secret": ""}]}',
     "no valid 'id'"),
])
def test_keyring_errors_are_one_clear_line(tmp_path: Path, doc: bytes, message: str) -> None:
    path = tmp_path / "k"
    path.write_bytes(doc)
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=message) as exc:
        Keyring.load(path)
    assert str(exc.value).startswith(f"audit_key_file {path}: ") and "\n" not in str(exc.value)


def test_anchor_round_trip_and_tampering(tmp_path: Path) -> None:
    a = anchors.sign(KEY, ChainHead(42, "cd" * 32))
    path = tmp_path / "audit.anchor"
    anchors.write(path, a)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    back = anchors.read(path)
    assert back == a and anchors.signature_problem(back, _ring()) is None
    forged = anchors.Anchor(41, a.hash, a.time, a.key_id, a.mac)
    assert "does not verify" in (anchors.signature_problem(forged, _ring()) or "")
    other = anchors.Anchor(a.seq, a.hash, a.time, "k7-00000000", a.mac)
    assert "not in the keyring" in (anchors.signature_problem(other, _ring()) or "")
    path.write_text("{}")
    with pytest.raises(ConfigError, match="not an audit anchor"):
        anchors.read(path)


def test_anchor_writer_writes_only_when_the_head_moved(tmp_path: Path) -> None:
    head: list[ChainHead | None] = [None]
    path = tmp_path / "a"
    w = anchors.AnchorWriter(path, _ring(), lambda: head[0], 60.0)
    assert not w.write_if_moved() and not path.exists()
    head[0] = ChainHead(3, "ef" * 32)
    assert w.write_if_moved() and anchors.read(path).seq == 3
    assert not w.write_if_moved()
    head[0] = ChainHead(4, "01" * 32)
    w.start()
    w.stop()  # the final head, on shutdown
    assert anchors.read(path).seq == 4


def test_anchor_check_names_a_cut_tail() -> None:
    rows = _rows([(KEY.id, "allow")] * 5)
    a = anchors.sign(KEY, ChainHead(5, rows[4].hash))
    rep = check(rows[:3], _ring())
    (problem,), _ = anchors.check(a, "F", rep)
    assert problem == (f"tail: rows after seq 3 are missing: the anchor written at {a.time} (F) "
                       f"names seq 5 with hash {rows[4].hash}")
    assert anchors.check(a, "F", check(rows, _ring())) == (
        [], f"anchor F: seq 5 (written {a.time}) matches")


def test_aam_up_creates_its_keyring_and_one_anchor_per_ledger(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from aam.cli import serve
    from pdp.ledger import startup

    monkeypatch.setattr(startup, "DEFAULT_STATE_DIR", tmp_path)
    files = serve._audit_files(startup.UP_LEDGER_URL)
    assert files == {"audit_key_file": str(tmp_path / "audit.key"),
                     "audit_anchor_file": str(tmp_path / "audit.anchor")}
    assert stat.S_IMODE((tmp_path / "audit.key").stat().st_mode) == 0o600
    ids = Keyring.load(tmp_path / "audit.key").ids()
    other = serve._audit_files("postgresql://db/aam")
    assert other["audit_key_file"] == files["audit_key_file"]  # the same keyring, kept
    assert Keyring.load(tmp_path / "audit.key").ids() == ids
    assert other["audit_anchor_file"] != files["audit_anchor_file"]
    assert serve._audit_files("off") == {}
