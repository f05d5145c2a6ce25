"""The default backend when no Vault is configured: it issues nothing.

Credentialed actions are then denied ``credential_unavailable``; they are
never allowed without their credential. Actions without a ToolCredential
scope are unaffected.
"""

from __future__ import annotations

from pdp.broker.base import CredentialSpec, CredentialUnavailable, Lease, Scope


class NoBackend:
    name = "none"

    def issue(self, spec: CredentialSpec, scope: Scope, workload: str) -> Lease:
        raise CredentialUnavailable("no credential broker is configured")

    def renew(self, lease: Lease, ttl_s: int) -> Lease:
        raise CredentialUnavailable("no credential broker is configured")

    def revoke(self, lease: Lease) -> None:
        return None

    def start(self) -> None:
        return None

    def close(self) -> None:
        return None
