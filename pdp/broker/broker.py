"""The broker: the engine's hook after an allow, with a lease cache and revocation.

After OPA allows a tool action whose resource has a ToolCredential scope,
:meth:`Broker.attach` puts the credential on the decision (gateway-only) or
turns the allow into a ``credential_unavailable`` deny: a credentialed
action is never allowed without its credential.

Leases are cached per (workload, resource, scope) and reused until they get
close to expiry, then renewed (database leases) or reissued. When a new
bundle no longer justifies a cached lease (policy, grant or ToolCredential
gone or changed), the lease is revoked.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from pdp.broker.base import Backend, CredentialSpec, CredentialUnavailable, Lease, Scope
from pdp.compiled import Compiled
from pdp.engine import Credential, Decision, Reason, Request

log = logging.getLogger("aam.broker")
Key = tuple[str, str, str]  # workload, resource, scope


@dataclass(frozen=True)
class _Entry:
    lease: Lease
    policy: str
    spec: CredentialSpec


def header_value(scheme: str, secret: str) -> str:
    if scheme == "Basic":
        return "Basic " + base64.b64encode(secret.encode()).decode()
    return f"{scheme} {secret}" if scheme else secret


class Broker:
    def __init__(self, backend: Backend, *, min_remaining_s: float = 30.0, cache: bool = True,
                 clock: Callable[[], float] = time.time) -> None:
        self.backend = backend
        self.min_remaining_s = min_remaining_s
        self.cache_enabled = cache
        self.clock = clock
        self.stats: Counter[str] = Counter()  # issued, reused, renewed, revoked, unavailable
        # The newest published bundle: its grants and ToolCredentials (pdp/compiled.py).
        self._compiled = Compiled()
        self._cache: dict[Key, _Entry] = {}
        self._lock = threading.Lock()
        self._key_locks: dict[Key, threading.Lock] = {}
        # Revocations that failed (Vault down); retried on the next bundle or issuance.
        self._pending: dict[Key, _Entry] = {}

    # --- bundle updates --------------------------------------------------------

    def adopt(self, compiled: Compiled) -> None:
        """Adopt a newly published bundle's credentials and grants; revoke what lost its reason.

        The newest bundle, not the one OPA decides with: a grant removed stops issuing
        before OPA has pulled the bundle that removes it."""
        with self._lock:
            self._compiled = compiled
            stale = {k: e for k, e in self._cache.items() if not self._justified(k, e.policy, e.spec)}
            for k in stale:
                del self._cache[k]
        self._revoke({**self._take_pending(), **stale})

    def on_bundle(self, data: Mapping[str, Any]) -> None:
        """:meth:`adopt` a bundle's data document as the compiler writes it."""
        self.adopt(Compiled.from_data(data))

    def _take_pending(self) -> dict[Key, _Entry]:
        with self._lock:
            pending, self._pending = self._pending, {}
        now = self.clock()
        return {k: e for k, e in pending.items() if e.lease.expires_at > now}

    def _revoke(self, entries: dict[Key, _Entry]) -> None:
        for key, entry in sorted(entries.items()):
            workload, resource, scope = key
            fields = {"workload": workload, "resource": resource, "scope": scope,
                      "lease_accessor": entry.lease.accessor}
            try:
                self.backend.revoke(entry.lease)
            except CredentialUnavailable:
                with self._lock:
                    self._pending[key] = entry
                log.warning("lease revocation failed; retried later, it ends at its TTL anyway",
                            extra={"fields": fields})
                continue
            self.stats["revoked"] += 1
            log.info("lease revoked: its policy or grant was removed", extra={"fields": fields})

    def _justified(self, key: Key, policy: str, spec: CredentialSpec) -> bool:
        workload, resource, scope = key
        compiled = self._compiled
        granted = compiled.policy(workload)
        grant = granted.tools.get(resource) if granted is not None else None
        return (granted is not None and bool(granted.name) and granted.name == policy
                and grant is not None and compiled.credentials.get(resource) == spec
                and scope in spec.scopes and bool(grant.actions & spec.scopes[scope].actions))

    # --- the engine hook ---------------------------------------------------------

    def attach(self, req: Request, decision: Decision) -> Decision:
        """Add the credential an allowed tool action needs, or deny credential_unavailable."""
        spec = self._compiled.credentials.get(req.tool)
        scope = spec.scope_for(req.action) if spec else None
        if spec is None or scope is None:
            return decision  # this action needs no brokered credential
        try:
            lease = self.lease(req.spiffe_id, decision.policy, spec, scope)
        except CredentialUnavailable as exc:
            self.stats["unavailable"] += 1
            return replace(decision, allow=False, credential=None,
                           reasons=(Reason("credential_unavailable",
                                           f"no credential for {req.tool!r} (scope {scope.name!r}):"
                                           f" {exc}"),))
        return replace(decision, credential=Credential(
            header=spec.header, value=header_value(spec.scheme, lease.secret),
            expires_at=lease.expires_at, lease_accessor=lease.accessor))

    def lease(self, workload: str, policy: str, spec: CredentialSpec, scope: Scope) -> Lease:
        key = (workload, spec.resource, scope.name)
        with self._lock:
            if not self._justified(key, policy, spec):
                raise CredentialUnavailable("the grant is changing; retry")
        if not (self.cache_enabled and spec.reusable(scope)):
            return self._issue(key, spec, scope)
        with self._key_lock(key):  # one issuance per key at a time
            floor = min(self.min_remaining_s, spec.ttl_s / 2)
            entry = self._cache.get(key)
            if entry is not None and entry.spec == spec and entry.policy == policy:
                if entry.lease.expires_at - self.clock() >= floor:
                    self.stats["reused"] += 1
                    return entry.lease
                if entry.lease.renewable:
                    try:
                        renewed = self.backend.renew(entry.lease, spec.ttl_s)
                    except CredentialUnavailable:
                        renewed = None
                    if renewed is not None and renewed.expires_at - self.clock() >= floor:
                        self.stats["renewed"] += 1
                        self._store(key, _Entry(renewed, policy, spec))
                        return renewed
            lease = self._issue(key, spec, scope)
            self._store(key, _Entry(lease, policy, spec))
            return lease

    def _issue(self, key: Key, spec: CredentialSpec, scope: Scope) -> Lease:
        lease = self.backend.issue(spec, scope, key[0])
        self.stats["issued"] += 1
        if self._pending:  # Vault answers again: finish what an outage left undone
            self._revoke(self._take_pending())
        log.info("credential issued", extra={"fields": {
            "workload": key[0], "resource": key[1], "scope": key[2], "engine": spec.engine,
            "lease_accessor": lease.accessor, "expires_at": round(lease.expires_at, 3)}})
        return lease

    def _store(self, key: Key, entry: _Entry) -> None:
        """Cache only what the current bundle still justifies; on_bundle revokes the rest."""
        with self._lock:
            if self._justified(key, entry.policy, entry.spec):
                self._cache[key] = entry

    def _key_lock(self, key: Key) -> threading.Lock:
        with self._lock:
            return self._key_locks.setdefault(key, threading.Lock())

    def cached(self) -> dict[Key, str]:
        """Cached keys and their lease accessors (for tests and operators; no secrets)."""
        with self._lock:
            return {k: e.lease.accessor for k, e in self._cache.items()}

    def start(self) -> None:
        self.backend.start()

    @property
    def reports_health(self) -> bool:
        """Whether the backend has a health of its own (Vault: yes; none: nothing to say)."""
        return callable(getattr(self.backend, "check", None))

    def watch(self, report: Callable[[bool, str], None]) -> None:
        """Hear the backend's health, (ok, reason), on every login or Vault call that
        says something about it, and now if it has said anything yet."""
        if not self.reports_health:
            return
        self.backend.on_health = report  # type: ignore[attr-defined]
        last = getattr(self.backend, "health", None)
        if last is not None:
            report(*last)

    def check(self) -> None:
        """The health probe (a backend without one: nothing)."""
        check = getattr(self.backend, "check", None)
        if callable(check):
            check()

    def close(self) -> None:
        self.backend.close()
