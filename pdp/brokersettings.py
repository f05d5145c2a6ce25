"""Settings of the credential broker (pdp/broker/): its backend and Vault / OpenBao.

Beside the package rather than in it: importing pdp/broker/ loads its backends (and the
settings they read), and these must stay cheap for pdp.config.
"""

from __future__ import annotations

from dataclasses import dataclass

from pdp.settingbase import SettingsPart, check_not_negative, check_positive, setting_error


@dataclass(frozen=True)
class BrokerSettings(SettingsPart):
    """The credential broker backend and its Vault / OpenBao."""

    # Credential broker backend: "none" (credentialed actions are denied
    # credential_unavailable) or "vault" (Vault / OpenBao at vault_addr).
    broker: str = "none"
    vault_addr: str = ""
    # AppRole login: role id, and a file holding the secret id (never the value itself).
    vault_role_id: str = ""
    vault_secret_id_file: str = ""
    vault_approle_mount: str = "approle"
    # Alternative to AppRole: a file with a (non-root) token, e.g. kept fresh by a Vault agent.
    vault_token_file: str = ""
    vault_timeout_ms: int = 2000
    # CA bundle to verify an https vault_addr; empty uses the system's.
    vault_ca_file: str = ""
    # Reuse a cached credential while it has at least this long left (capped at half its TTL).
    credential_min_remaining_s: float = 30.0
    # Cache credentials per (workload, resource, scope); off issues one per decision.
    credential_cache: bool = True

    def validate(self) -> None:
        check_not_negative(self, "credential_min_remaining_s")
        if self.broker != "vault":
            return  # an unknown broker is refused by pdp.broker.build, naming the known ones
        if not self.vault_addr:
            raise setting_error("broker", "vault needs vault_addr (http:// or https://)")
        if not self.vault_addr.startswith(("http://", "https://")):
            raise setting_error("vault_addr", f"must be http://... or https://..., got {self.vault_addr!r}")
        if self.vault_role_id and self.vault_token_file:
            raise setting_error("vault_token_file", "is set beside vault_role_id: broker = vault "
                                                    "needs either vault_role_id (AppRole) or "
                                                    "vault_token_file, not both")
        if not self.vault_role_id and not self.vault_token_file:
            raise setting_error("broker", "vault needs either vault_role_id (AppRole) or "
                                          "vault_token_file")
        if self.vault_role_id and not self.vault_secret_id_file:
            raise setting_error("vault_role_id", "needs vault_secret_id_file (AppRole's secret id)")
        check_positive(self, "vault_timeout_ms")
