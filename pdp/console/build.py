"""The console built from settings: its own read connection to the ledger, its chain walker."""

from __future__ import annotations

from pdp.compiled import Revisions
from pdp.config import Settings
from pdp.console.chainstatus import ChainStatus
from pdp.console.history import RevisionLog
from pdp.console.server import ConsoleServer
from pdp.console.views import Sources
from pdp.ledger import Ledger, open_ledger
from pdp.ledger.keyring import Keyring


def console_server(s: Settings, ledger: Ledger | None, revisions: Revisions,
                   history: RevisionLog) -> ConsoleServer:
    """On the stack's own ledger when this process has one (one worker), else on a small
    pool of its own (the workers write; the console only reads). No keyring is handed to
    a ledger it opens, so it cannot append an audit row."""
    if ledger is None and s.ledger_url not in ("", "off"):
        ledger = open_ledger(s.ledger_url, 2, s.ledger_timeout_ms / 1000)
    keyring = Keyring.load(s.audit_key_file) if s.audit_key_file else None
    chain = ChainStatus(ledger, keyring, s.audit_anchor_file) if ledger is not None else None
    return ConsoleServer(s, Sources(ledger, revisions, history, chain))
