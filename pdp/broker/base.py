"""What every credential backend provides, and the compiled ToolCredential it works from.

A backend turns one action scope of a ToolCredential into a :class:`Lease`
(a secret plus the handles to renew or revoke it). Backends register by name
in :mod:`pdp.broker`; ``none`` is the default and issues nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


class CredentialUnavailable(Exception):
    """No credential could be issued. The message is safe for agents: no secret, no Vault text."""


@dataclass(frozen=True)
class Scope:
    name: str
    actions: frozenset[str]
    path: str = ""
    key: str = ""
    role: str = ""
    policies: tuple[str, ...] = ()
    num_uses: int = 0


@dataclass(frozen=True)
class CredentialSpec:
    """``data.aam.compiled.credentials[resource]``, typed."""

    name: str
    resource: str
    engine: str  # kv | database | token
    mount: str
    ttl_s: int
    header: str
    scheme: str
    delivery: str  # value | wrapped
    scopes: dict[str, Scope] = field(hash=False)
    by_action: dict[str, str] = field(hash=False)

    @classmethod
    def from_compiled(cls, doc: dict[str, Any]) -> CredentialSpec:
        scopes = {
            name: Scope(
                name=name, actions=frozenset(s.get("actions", {})), path=s.get("path", ""),
                key=s.get("key", ""), role=s.get("role", ""),
                policies=tuple(s.get("policies", ())), num_uses=int(s.get("num_uses", 0)),
            )
            for name, s in doc["scopes"].items()
        }
        inject = doc["inject"]
        return cls(
            name=doc["name"], resource=doc["resource"], engine=doc["engine"], mount=doc["mount"],
            ttl_s=int(doc["ttl_s"]), header=inject["header"], scheme=inject.get("scheme", ""),
            delivery=inject.get("delivery", "value"), scopes=scopes, by_action=dict(doc["actions"]),
        )

    def scope_for(self, action: str) -> Scope | None:
        name = self.by_action.get(action)
        return self.scopes.get(name) if name else None

    def reusable(self, scope: Scope) -> bool:
        """Single-use deliveries (wrapping tokens, counted-use tokens) are never handed out twice."""
        return self.delivery != "wrapped" and not (self.engine == "token" and scope.num_uses > 0)


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
