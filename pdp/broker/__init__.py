"""Credential brokering: backends by name behind one protocol, ``none`` by default.

``build(settings)`` returns the :class:`Broker` the engine calls after an
allow. With ``broker = "none"`` (the default, and what ``aam up`` runs)
every action that needs a credential is denied ``credential_unavailable``.
"""

from __future__ import annotations

from collections.abc import Callable

from pdp.broker.base import Backend, CredentialSpec, CredentialUnavailable, Lease, Scope
from pdp.broker.broker import Broker
from pdp.broker.none import NoBackend
from pdp.broker.vault import VaultBackend
from pdp.config import ConfigError, Settings

BACKENDS: dict[str, Callable[[Settings], Backend]] = {
    "none": lambda s: NoBackend(),
    "vault": VaultBackend.from_settings,
}


def build(settings: Settings) -> Broker:
    try:
        factory = BACKENDS[settings.broker]
    except KeyError:
        raise ConfigError(f"unknown broker {settings.broker!r} (known: {', '.join(sorted(BACKENDS))})"
                          ) from None
    return Broker(factory(settings), min_remaining_s=settings.credential_min_remaining_s,
                  cache=settings.credential_cache)


__all__ = ["BACKENDS", "Backend", "Broker", "CredentialSpec", "CredentialUnavailable", "Lease",
           "NoBackend", "Scope", "VaultBackend", "build"]
