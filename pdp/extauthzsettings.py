"""Settings of Envoy's ext_authz and ext_proc services (pdp/extauthz.py, pdp/httpmap.py)."""

from __future__ import annotations

from dataclasses import dataclass

from pdp.settingbase import SettingsPart, check_addr


@dataclass(frozen=True)
class ExtAuthzSettings(SettingsPart):
    """Envoy's ext_authz listener and HTTP mapping."""

    # Envoy ext_authz (envoy.service.auth.v3.Authorization): "" serves it on
    # grpc_addr beside Authorize; "host:port" gives it a listener of its own.
    extauthz_addr: str = ""
    # TOML file mapping HTTP requests to decisions (docs/envoy.md);
    # "" uses the built-in defaults.
    extauthz_mapping: str = ""

    def validate(self) -> None:
        if self.extauthz_addr:
            check_addr("extauthz_addr", self.extauthz_addr)
