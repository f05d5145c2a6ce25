"""What every credential backend provides.

A backend turns one action scope of a compiled ToolCredential (:class:`CredentialSpec`,
typed in pdp/compiled.py with the rest of the bundle's data) into a :class:`Lease`
(a secret plus the handles to renew or revoke it). Backends register by name
in :mod:`pdp.broker`; ``none`` is the default and issues nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from pdp.compiled import CredentialSpec, Scope

__all__ = ["Backend", "CredentialSpec", "CredentialUnavailable", "Lease", "Scope"]


class CredentialUnavailable(Exception):
    """No credential could be issued. The message is safe for agents: no secret, no Vault text."""


@dataclass(frozen=True)
class Lease:
    """One issued credential. ``secret`` is what gets injected (before the scheme)."""

    secret: str = field(repr=False)
    accessor: str  # safe to log and audit: lease id, token accessor or kv path@version
    expires_at: float  # unix seconds
    renewable: bool = False
    revoke: str = ""  # how to revoke: "lease", "token" or "" (nothing to revoke)


@runtime_checkable
class Backend(Protocol):
    name: str

    def issue(self, spec: CredentialSpec, scope: Scope, workload: str) -> Lease:
        """A fresh credential for this scope; raise CredentialUnavailable."""
        ...

    def renew(self, lease: Lease, ttl_s: int) -> Lease:
        """The same credential with a later expiry; raise CredentialUnavailable."""
        ...

    def revoke(self, lease: Lease) -> None:
        """Make the credential stop working now; raise CredentialUnavailable."""
        ...

    def start(self) -> None:
        """Connect and log in early; raise ConfigError only for what a restart must fix."""
        ...

    def close(self) -> None: ...
