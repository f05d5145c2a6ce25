"""Settings of the read-only web console (pdp/console/): where it listens and who may look."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from pdp.settingbase import SettingsPart, check_addr, setting_error


def loopback_host(host: str) -> bool:
    """Whether ``host`` (of a host:port) only ever accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ConsoleSettings(SettingsPart):
    """The console's own listener, off unless asked for (aam up asks, on loopback)."""

    # Console listener, "host:port"; "" (the default): no console. Its own listener, never
    # the bundle server's (http_addr), so exposing one never exposes the other.
    console_addr: str = ""
    # A file (mode 0600, at least 32 characters) holding the operator token the console
    # asks for: "Authorization: Bearer TOKEN", or its login form, which sets an HttpOnly
    # SameSite=Strict cookie. Required on an address other than loopback, unless
    # console_mtls is on.
    console_token_file: str = ""
    # Serve the console over TLS with tls_cert/tls_key and admit only clients whose
    # certificate chains to tls_client_ca (mutual TLS).
    console_mtls: bool = False

    def validate(self) -> None:
        if not self.console_addr:
            return
        host, _ = check_addr("console_addr", self.console_addr)
        if not loopback_host(host) and not (self.console_token_file or self.console_mtls):
            raise setting_error("console_addr", f"{self.console_addr} is not loopback: set "
                                                "console_token_file or console_mtls, so the "
                                                "console is never open to the network by accident")
