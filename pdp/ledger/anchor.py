"""Anchors: signed checkpoints of the audit chain's head, kept outside the database.

The keyed chain shows any row that was changed, moved or removed *between* other
rows, but a database superuser can still cut rows off the end: what remains is a
valid, shorter chain. So each PDP writes its chain head to a file of its own
(``audit_anchor_file``; several replicas: one file each) at most every
``audit_anchor_interval_s`` and only when the head moved, off the decision path,
and once more on a clean shutdown. ``aam audit verify --anchor FILE`` then
names a cut tail, and a PDP whose anchor names a row the chain no longer holds
refuses to start (and a running one stops appending: pdp/ledger/writer.py).

File (JSON, replaced atomically with fsync, mode 0600)::

    {"format": "aam-audit-anchor/v1", "seq": 1234, "hash": "<hash of row 1234>",
     "time": "2026-11-26T10:00:00.123456+00:00", "key_id": "k1-0f3c9e2d", "mac": "<hex>"}

    mac = HMAC-SHA256(key key_id, "aam-anchor-v1\\n" + seq + "\\n" + hash + "\\n" + time
                      + "\\n" + key_id)

What it cannot see: rows cut that were written after the newest anchor (at most
one interval's worth, or those of a PDP that crashed before anchoring them).
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pdp.config import ConfigError
from pdp.ledger.keyring import AuditKey, Keyring
from pdp.ledger.types import ChainHead, LedgerError, LedgerUnavailable
from pdp.secretfile import write_secret

if TYPE_CHECKING:
    from pdp.ledger import Ledger
    from pdp.ledger.chain import Report

log = logging.getLogger("aam.ledger")
FORMAT = "aam-audit-anchor/v1"
SETTING = "audit_anchor_file"
_TAG = "aam-anchor-v1"


@dataclass(frozen=True)
class Anchor:
    seq: int
    hash: str
    time: str
    key_id: str
    mac: str

    @property
    def head(self) -> ChainHead:
        return ChainHead(self.seq, self.hash)

    def dumps(self) -> bytes:
        return (json.dumps({"format": FORMAT, "seq": self.seq, "hash": self.hash,
                            "time": self.time, "key_id": self.key_id, "mac": self.mac})
                + "\n").encode()


def _mac(key: AuditKey, seq: int, hash_: str, time: str) -> str:
    return key.mac(f"{_TAG}\n{seq}\n{hash_}\n{time}\n{key.id}")


def sign(key: AuditKey, head: ChainHead, time: str | None = None) -> Anchor:
    time = time or datetime.now(UTC).isoformat(timespec="microseconds")
    return Anchor(head.seq, head.hash, time, key.id, _mac(key, head.seq, head.hash, time))


def signature_problem(anchor: Anchor, keyring: Keyring) -> str | None:
    """Why the anchor's signature does not verify under ``keyring``; None when it does."""
    key = keyring.get(anchor.key_id)
    if key is None:
        return f"signed with key id {anchor.key_id!r}, which is not in the keyring"
    if not hmac.compare_digest(_mac(key, anchor.seq, anchor.hash, anchor.time), anchor.mac):
        return "its signature does not verify: the anchor was altered or not written by a PDP"
    return None


def write(path: Path, anchor: Anchor) -> None:
    write_secret(path, anchor.dumps(), overwrite=True)


def read(path: Path, setting: str = SETTING) -> Anchor:
    """The anchor in ``path``; ConfigError (naming ``setting``) when unreadable or malformed."""
    try:
        doc: Any = json.loads(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"{setting} {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ConfigError(f"{setting} {path}: not a JSON audit anchor") from None
    try:
        if doc.get("format") != FORMAT:
            raise ValueError
        anchor = Anchor(doc["seq"], doc["hash"], doc["time"], doc["key_id"], doc["mac"])
        if not isinstance(anchor.seq, int) or anchor.seq < 1 or not all(
                isinstance(v, str) for v in (anchor.hash, anchor.time, anchor.key_id, anchor.mac)):
            raise ValueError
    except (AttributeError, KeyError, ValueError):
        raise ConfigError(f"{setting} {path}: not an audit anchor ({FORMAT}: seq, hash, time,"
                          " key_id, mac)") from None
    return anchor


def check(anchor: Anchor, where: str, report: Report) -> tuple[list[str], str]:
    """Compare an anchor with the chain verify walked: (problems, a line saying what matched)."""
    named = f"the anchor written at {anchor.time} ({where}) names seq {anchor.seq} with hash {anchor.hash}"
    if anchor.seq > report.last_seq:
        return [f"tail: rows after seq {report.last_seq} are missing: {named}"], ""
    if anchor.seq not in report.at:
        return [f"seq {anchor.seq} (decision ?): deleted: the chain has no row at this seq, "
                f"but {named}"], ""
    stored, decision_id = report.at[anchor.seq]
    if stored != anchor.hash:
        return [f"seq {anchor.seq} (decision {decision_id}): modified: its hash is {stored}, "
                f"but {named}"], ""
    newer = report.last_seq - anchor.seq
    return [], (f"anchor {where}: seq {anchor.seq} (written {anchor.time}) matches"
                + (f"; {newer} newer row(s) are not covered by it" if newer else ""))


def resume(path: Path, keyring: Keyring, ledger: Ledger) -> ChainHead | None:
    """At start: the head this PDP's anchor names, after checking the chain still holds it.

    Raises ConfigError for an anchor that does not verify and LedgerError when the chain
    lost or changed the anchored row; an unreachable database defers the check to the
    audit writer's first batch."""
    if not path.exists():
        return None
    anchor = read(path)
    problem = signature_problem(anchor, keyring)
    if problem is not None:
        raise ConfigError(f"{SETTING} {path}: {problem}")
    try:
        stored = ledger.audit_hash(anchor.seq)
    except LedgerUnavailable:
        log.warning("audit anchor not checked at start (ledger unavailable); the audit "
                    "writer checks it before its first append", extra={"fields": {"seq": anchor.seq}})
        return anchor.head
    if stored != anchor.hash:
        what = "has no row at" if stored is None else "holds another hash at"
        raise LedgerError(
            f"audit chain broken: the ledger {what} seq {anchor.seq}, which the anchor written at "
            f"{anchor.time} ({path}) names: audit rows were deleted or rewritten. Run `aam audit "
            f"verify --anchor {path}`; after a deliberate database restore, move the anchor aside")
    return anchor.head


class AnchorWriter:
    """Writes the chain head to the anchor file when it moved, every ``interval_s``."""

    def __init__(self, path: Path, keyring: Keyring, head: Callable[[], ChainHead | None],
                 interval_s: float, written: ChainHead | None = None) -> None:
        self.path = path
        self.keyring = keyring
        self.head = head
        self.interval_s = interval_s
        self.written = written
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="aam-audit-anchor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the timer and anchor the final head (call after the audit writer drained)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.write_if_moved()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.write_if_moved()

    def write_if_moved(self) -> bool:
        head = self.head()
        if head is None or head == self.written:
            return False
        try:
            write(self.path, sign(self.keyring.current(), head))
        except (OSError, ConfigError) as exc:
            log.error("audit anchor not written", extra={"fields": {
                "file": str(self.path), "error": getattr(exc, "strerror", None) or str(exc)}})
            return False
        self.written = head
        return True
