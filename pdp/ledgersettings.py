"""Settings of the ledger (pdp/ledger/: budgets, rate windows, reservations) and of its
keyed audit chain and anchors.

Beside the package rather than in it: importing pdp/ledger/ loads its stores' code, and
these must stay cheap for pdp.config.
"""

from __future__ import annotations

from dataclasses import dataclass

from pdp.settingbase import SettingsPart, check_not_negative, check_positive


@dataclass(frozen=True)
class LedgerSettings(SettingsPart):
    """The ledger store, reservations, and the keyed audit chain's key and anchor."""

    # Ledger (budgets, rate windows, audit): "postgresql://...", a libpq "host=..."
    # string, "sqlite:///path" (the embedded default of aam up) or "" / "off".
    ledger_url: str = ""
    # Apply pending ledger migrations on start (otherwise run `aam migrate`).
    ledger_migrate: bool = False
    # PostgreSQL connections per PDP process.
    ledger_pool_size: int = 8
    # How long a decision waits for a ledger connection before denying.
    ledger_timeout_ms: int = 2000
    # Seconds after which a reservation never settled by RecordUsage is released.
    reservation_ttl_s: float = 900.0
    # How long this PDP's last view of a workload's spend and rates may stand in for a
    # ledger read: OPA decides on it, and the ledger re-checks every limit atomically
    # when it reserves for the allow (in the same batch as the audit row). A limit deny
    # is always confirmed on fresh state. 0: read the ledger's state before every decision.
    ledger_state_ttl_ms: int = 1000
    # Token estimate for a model call that does not send one (prices the reservation).
    default_estimated_tokens: int = 4096
    # --- Keyed audit chain (docs/ledger-and-audit.md, "Keyed chain and anchors") ---
    # Keyring file (JSON, mode 0600) with the HMAC keys that key every audit row;
    # required whenever ledger_url is set: the PDP refuses to start without it.
    # `aam audit key init FILE` creates one, `aam audit key rotate FILE` adds a new
    # current key (a running PDP picks it up within a second). aam up: audit.key in
    # its state directory.
    audit_key_file: str = ""
    # File this PDP writes signed checkpoints of the chain head to (one file per
    # replica), so `aam audit verify --anchor` sees rows cut from the end of the
    # chain. Empty: no anchor (such a cut goes unseen). aam up: audit.anchor.
    audit_anchor_file: str = ""
    # Seconds between anchor writes (only when the head moved; also on shutdown).
    audit_anchor_interval_s: float = 1.0

    def validate(self) -> None:
        check_not_negative(self, "ledger_state_ttl_ms", "default_estimated_tokens")
        check_positive(self, "ledger_pool_size", "ledger_timeout_ms", "reservation_ttl_s",
                       "audit_anchor_interval_s")
