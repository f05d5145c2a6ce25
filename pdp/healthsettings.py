"""Settings of the component probes behind gRPC health and /readyz (pdp/health.py)."""

from __future__ import annotations

from dataclasses import dataclass

from pdp.settingbase import SettingsPart, check_positive


@dataclass(frozen=True)
class HealthSettings(SettingsPart):
    """How often each component is asked how it is when no decision says so."""

    # Seconds between probes of OPA (a bundle active, which revision) and of the ledger
    # (a ping): how soon readiness follows an OPA restart or a ledger coming back.
    health_probe_interval_s: float = 1.0
    # Seconds between the broker's probes of Vault (a lookup of its own token, logging in
    # again if it died). Longer: every worker process asks, and a failing credential
    # call marks the broker degraded at once anyway.
    broker_probe_interval_s: float = 10.0

    def validate(self) -> None:
        check_positive(self, "health_probe_interval_s", "broker_probe_interval_s")
