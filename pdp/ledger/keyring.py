"""The audit keyring: the HMAC keys that key the audit chain, in one 0600 JSON file.

A PDP writes every new audit row under the keyring's *current* key and records
that key's id in the row; ``aam audit verify`` checks each row under the key
its id names, so a rotated-out key stays in the file for as long as rows it
keyed must verify. The keys never leave the PDP process: the database, which
the attacker may own, sees only HMACs and key ids.

File format (``aam audit key init`` writes it; ``rotate`` adds a key)::

    {"format": "aam-audit-keyring/v1",
     "current": "k2-5be0c4a1",
     "keys": [{"id": "k1-0f3c9e2d", "created": "2026-11-26T10:00:00+00:00",
               "secret": "<64 hex digits: 32 random bytes>"},
              {"id": "k2-5be0c4a1", "created": "...", "secret": "..."}]}

Key ids are ``k<n>-<8 hex>``: ordered for people, random so that keys of two
keyrings never share an id (a wrong key file then says "unknown key", not
"modified"). Messages name the file and key ids, never a secret.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pdp.config import ConfigError
from pdp.secretfile import read_secret, write_secret

log = logging.getLogger("aam.ledger")
FORMAT = "aam-audit-keyring/v1"
SETTING = "audit_key_file"
KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MIN_SECRET_BYTES = 32
REFRESH_S = 1.0  # how often a running PDP looks for a rotated key file


@dataclass(frozen=True)
class AuditKey:
    id: str
    created: str
    secret: bytes = field(repr=False)

    def mac(self, msg: str) -> str:
        """HMAC-SHA256 of ``msg`` under this key, in hex (audit rows and anchors)."""
        return hmac.new(self.secret, msg.encode(), hashlib.sha256).hexdigest()


class Keyring:
    """Keys by id and the current one; with a ``path``, re-read when the file changes."""

    def __init__(self, keys: list[AuditKey], current: str, path: Path | None = None,
                 setting: str = SETTING) -> None:
        self.path = path
        self.setting = setting
        self._state = _index(keys, current, self._where())
        self._stamp: tuple[int, int, int, int] | None = (
            _stamp(path, setting) if path is not None else None)
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    # --- building ---------------------------------------------------------------

    @classmethod
    def load(cls, path: Path | str, setting: str = SETTING) -> Keyring:
        """The keyring in ``path``; ConfigError (naming ``setting``) when missing or bad."""
        p = Path(path)
        stamp = _stamp(p, setting)
        keys, current = _parse(read_secret(p, setting), f"{setting} {p}")
        ring = cls(keys, current, p, setting)
        ring._stamp = stamp
        return ring

    @classmethod
    def generate(cls) -> Keyring:
        """A fresh in-memory keyring with one key (for a new file, or tests)."""
        key = _new_key(1)
        return cls([key], key.id)

    def rotated(self) -> Keyring:
        """This keyring plus a new current key; every old key is kept."""
        keys, _ = self._state
        n = 1 + max((_ordinal(k) for k in keys.values()), default=0)
        key = _new_key(n)
        return Keyring([*keys.values(), key], key.id, self.path, self.setting)

    def dumps(self) -> bytes:
        keys, current = self._state
        doc = {"format": FORMAT, "current": current.id,
               "keys": [{"id": k.id, "created": k.created, "secret": k.secret.hex()}
                        for k in keys.values()]}
        return (json.dumps(doc, indent=2) + "\n").encode()

    # --- using --------------------------------------------------------------------

    def current(self) -> AuditKey:
        """The key new rows and anchors are written under (after a cheap rotation check)."""
        self.refresh()
        return self._state[1]

    def get(self, key_id: str) -> AuditKey | None:
        return self._state[0].get(key_id)

    def ids(self) -> list[str]:
        return list(self._state[0])

    def refresh(self, force: bool = False) -> None:
        """Re-read the file if it changed (at most every REFRESH_S): rotation needs no restart.

        A changed file that cannot be used keeps the keys already loaded (they still
        key valid rows) and logs why, without its contents."""
        if self.path is None or (not force and time.monotonic() - self._checked < REFRESH_S):
            return
        with self._lock:
            self._checked = time.monotonic()
            try:
                stamp = _stamp(self.path, self.setting)
            except ConfigError as exc:
                if self._stamp is not None:  # once, until the file is back
                    log.error("audit keyring not re-read; keeping the loaded keys",
                              extra={"fields": {"error": str(exc)}})
                self._stamp = None
                return
            if stamp == self._stamp:
                return
            self._stamp = stamp  # a bad file is reported once, not every second
            try:
                keys, current = _parse(read_secret(self.path, self.setting), self._where())
                state = _index(keys, current, self._where())
            except ConfigError as exc:
                log.error("audit keyring changed but cannot be used; keeping the loaded keys",
                          extra={"fields": {"error": str(exc)}})
                return
            self._state = state
            log.info("audit keyring reloaded", extra={"fields": {"current": current}})

    def _where(self) -> str:
        return f"{self.setting} {self.path}" if self.path is not None else "audit keyring"

    def __repr__(self) -> str:
        return f"Keyring(path={self.path!s}, current={self._state[1].id!r}, ids={self.ids()!r})"


def init_file(path: Path) -> Keyring:
    """Create a new keyring file (0600) with one key; refuses to overwrite one."""
    ring = Keyring.generate()
    write_secret(path, ring.dumps())
    return Keyring.load(path)


def rotate_file(path: Path, setting: str = SETTING) -> tuple[Keyring, Keyring]:
    """Add a new current key to the file, keeping the old ones; returns (before, after)."""
    before = Keyring.load(path, setting)
    after = before.rotated()
    write_secret(path, after.dumps(), overwrite=True)
    return before, Keyring.load(path, setting)


def ensure_file(path: Path) -> Keyring:
    """The keyring at ``path``, created first when missing (aam up, test stacks)."""
    if not path.exists():
        try:
            return init_file(path)
        except ConfigError:
            if not path.exists():
                raise
    return Keyring.load(path)


def _new_key(n: int) -> AuditKey:
    return AuditKey(f"k{n}-{secrets.token_hex(4)}",
                    datetime.now(UTC).isoformat(timespec="seconds"),
                    secrets.token_bytes(MIN_SECRET_BYTES))


def _ordinal(key: AuditKey) -> int:
    m = re.match(r"^k(\d+)-", key.id)
    return int(m.group(1)) if m else 0


def _stamp(path: Path, setting: str) -> tuple[int, int, int, int]:
    """What changes when the file is rewritten, replaced or chmod-ed."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ConfigError(f"{setting} {path}: {exc.strerror}") from None
    return st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino


def _index(keys: list[AuditKey], current: str,
           where: str) -> tuple[dict[str, AuditKey], AuditKey]:
    by_id = {k.id: k for k in keys}
    if current not in by_id:
        raise ConfigError(f"{where}: current key {current!r} is not in the keyring")
    return by_id, by_id[current]


def _parse(data: bytes, where: str) -> tuple[list[AuditKey], str]:
    """Keys and the current id from the file's bytes; errors never quote a secret."""
    try:
        doc: Any = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ConfigError(f"{where}: not a JSON audit keyring (create one with "
                          "`aam audit key init FILE`)") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ConfigError(f"{where}: not an audit keyring (format must be {FORMAT!r})")
    entries, current = doc.get("keys"), doc.get("current")
    if not isinstance(entries, list) or not entries or not isinstance(current, str):
        raise ConfigError(f"{where}: needs a non-empty 'keys' list and a 'current' key id")
    keys: list[AuditKey] = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not isinstance(e.get("id"), str) \
                or not KEY_ID.match(e["id"]):
            raise ConfigError(f"{where}: key #{i + 1} has no valid 'id' "
                              "(letters, digits, '.', '_', '-'; at most 64)")
        try:
            secret = bytes.fromhex(e.get("secret") if isinstance(e.get("secret"), str) else "")
        except ValueError:
            secret = b""
        if len(secret) < MIN_SECRET_BYTES:
            raise ConfigError(f"{where}: key {e['id']!r}: 'secret' must be at least "
                              f"{MIN_SECRET_BYTES} bytes as hex")
        if any(k.id == e["id"] for k in keys):
            raise ConfigError(f"{where}: key id {e['id']!r} appears twice")
        keys.append(AuditKey(e["id"], str(e.get("created", "")), secret))
    return keys, current
