"""Opening the PDP's ledger from settings: keyed, migrated, anchored, or not at all.

Fail closed: a configured ledger without a readable audit key is a ConfigError
naming ``audit_key_file``, so no PDP ever writes an unkeyed chain.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from pdp.config import DEFAULT_SQLITE_LEDGER, DEFAULT_STATE_DIR, ConfigError, Settings
from pdp.ledger import Ledger, open_ledger
from pdp.ledger.anchor import AnchorWriter, resume
from pdp.ledger.keyring import Keyring

log = logging.getLogger("aam.ledger")
UP_LEDGER_URL = f"sqlite://{DEFAULT_SQLITE_LEDGER}"


def up_key_file() -> Path:
    """aam up's audit keyring (created on first start)."""
    return DEFAULT_STATE_DIR / "audit.key"


def up_anchor_file(ledger_url: str) -> Path:
    """aam up's anchor for ``ledger_url``: one per ledger, so switching ledgers never
    compares one chain with another's anchor."""
    if ledger_url == UP_LEDGER_URL:
        return DEFAULT_STATE_DIR / "audit.anchor"
    return DEFAULT_STATE_DIR / f"audit-{hashlib.sha256(ledger_url.encode()).hexdigest()[:12]}.anchor"


def load_keyring(s: Settings) -> Keyring:
    if not s.audit_key_file:
        raise ConfigError("audit_key_file is required when ledger_url is set: the audit chain is "
                          "keyed (create a keyring with `aam audit key init FILE`)")
    return Keyring.load(s.audit_key_file)


def open_for(s: Settings) -> tuple[Ledger | None, AnchorWriter | None]:
    """The ledger (None when off) and, with ``audit_anchor_file``, its anchor writer
    (not started). Raises ConfigError or LedgerError; closes the ledger if it raises."""
    if s.ledger_url in ("", "off"):
        return None, None
    keyring = load_keyring(s)
    ledger = open_ledger(s.ledger_url, s.ledger_pool_size, s.ledger_timeout_ms / 1000, keyring)
    assert ledger is not None
    try:
        if s.ledger_migrate:
            ledger.migrate()
        if not s.audit_anchor_file:
            log.warning("audit_anchor_file not set: rows cut from the end of the audit chain "
                        "cannot be detected")
            return ledger, None
        path = Path(s.audit_anchor_file)
        ledger.head = resume(path, keyring, ledger)
        return ledger, AnchorWriter(path, keyring, lambda: ledger.head, s.audit_anchor_interval_s,
                                    written=ledger.head)
    except BaseException:
        ledger.close()
        raise
