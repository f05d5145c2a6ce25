"""Vault / OpenBao backend on hvac: KV v2 secrets, dynamic database credentials, child tokens.

The PDP logs in with AppRole (or a token file kept fresh by an agent
sidecar), never with a root token: a root token is refused at login. Every
Vault error becomes :class:`CredentialUnavailable` with a fixed sentence;
Vault's own error text (which may quote paths and request bodies) is never
passed on, and logs name only the exception class.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import hvac
import hvac.exceptions as hv
import requests

from pdp.broker.base import CredentialSpec, CredentialUnavailable, Lease, Scope
from pdp.config import ConfigError, Settings

log = logging.getLogger("aam.broker.vault")
T = TypeVar("T")
# Log in again when the PDP's own token has less than this left.
RELOGIN_MARGIN_S = 30.0
# After Vault was unreachable, fail fast for this long instead of making every
# credentialed decision wait out the connect timeout.
DOWN_BACKOFF_S = 1.0


class RootTokenRefused(ConfigError):
    """The PDP must not run with Vault's root token: it could mint any credential."""


class VaultBackend:
    name = "vault"

    def __init__(self, addr: str, *, role_id: str = "", secret_id_file: str = "",
                 token_file: str = "", approle_mount: str = "approle", timeout_s: float = 2.0,
                 ca_file: str = "") -> None:
        session = requests.Session()
        session.trust_env = False  # no proxy or netrc from the environment
        # token="" stops hvac from picking up VAULT_TOKEN or ~/.vault-token.
        self.client = hvac.Client(url=addr, token="", timeout=timeout_s, session=session,
                                  verify=ca_file or True)
        self.role_id = role_id
        self.secret_id_file = secret_id_file
        self.token_file = token_file
        self.approle_mount = approle_mount
        self._auth_lock = threading.Lock()
        self._token_deadline = 0.0  # monotonic; 0 = not logged in
        self._down_until = 0.0  # monotonic
        # The broker's health (issue 19): (ok, reason) of the last login or Vault call that
        # says something about Vault itself (None: none yet); reasons name the step and the
        # error's class, never a token or Vault's own text.
        self.health: tuple[bool, str] | None = None
        self.on_health: Callable[[bool, str], None] | None = None

    @classmethod
    def from_settings(cls, s: Settings) -> VaultBackend:
        return cls(s.vault_addr, role_id=s.vault_role_id, secret_id_file=s.vault_secret_id_file,
                   token_file=s.vault_token_file, approle_mount=s.vault_approle_mount,
                   timeout_s=s.vault_timeout_ms / 1000, ca_file=s.vault_ca_file)

    # --- auth ----------------------------------------------------------------

    def _report(self, ok: bool, reason: str = "") -> None:
        self.health = (ok, reason)
        if self.on_health is not None:
            self.on_health(ok, reason)

    def login(self) -> None:
        """Get a PDP token by AppRole or from the token file; refuse a root token."""
        with self._auth_lock:
            self._login()

    def _login(self) -> None:
        try:
            self._login_once()
        except RootTokenRefused:
            self._report(False, "vault login refused: the PDP's token has the root policy")
            raise
        except requests.RequestException as exc:
            self._report(False, f"vault unreachable at login: {type(exc).__name__}")
            raise
        except Exception as exc:
            self._report(False, f"vault login failed: {type(exc).__name__}")
            raise
        self._report(True)

    def _login_once(self) -> None:
        if self.role_id:
            secret_id = Path(self.secret_id_file).read_text().strip()
            auth = self.client.auth.approle.login(
                self.role_id, secret_id, mount_point=self.approle_mount, use_token=True)["auth"]
            policies, ttl = auth.get("token_policies") or auth.get("policies") or [], auth["lease_duration"]
        else:
            self.client.token = Path(self.token_file).read_text().strip()
            info = self.client.auth.token.lookup_self()["data"]
            policies, ttl = info.get("policies") or [], info.get("ttl") or 0
        if "root" in policies:
            self.client.token = ""
            self._token_deadline = 0.0
            raise RootTokenRefused("the PDP's Vault token has the root policy; give it an AppRole"
                                   " whose policy covers only what ToolCredentials need")
        self._token_deadline = time.monotonic() + ttl if ttl else float("inf")
        log.info("logged in to vault", extra={"fields": {
            "method": "approle" if self.role_id else "token_file", "ttl_s": ttl}})

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one Vault call logged in; log in again once on an expired or revoked token."""
        if time.monotonic() < self._down_until:
            raise CredentialUnavailable(f"vault is unavailable for {what}")
        try:
            with self._auth_lock:
                if time.monotonic() > self._token_deadline - RELOGIN_MARGIN_S:
                    self._login()
            try:
                out = fn()
            except hv.Forbidden:
                # Log in again only if our token died: a policy refusal must not spend
                # AppRole secret-id uses on every request.
                if self.client.is_authenticated():
                    raise
                with self._auth_lock:
                    self._login()
                out = fn()
            self._report(True)
            return out
        except RootTokenRefused as exc:
            log.error("vault login refused", extra={"fields": {"what": what}})
            raise CredentialUnavailable("the credential broker is misconfigured") from exc
        except (requests.RequestException, hv.VaultDown, hv.BadGateway, hv.InternalServerError,
                hv.VaultNotInitialized, hv.RateLimitExceeded) as exc:
            self._log_failure(what, exc)
            self._down_until = time.monotonic() + DOWN_BACKOFF_S
            self._report(False, f"vault unreachable: {type(exc).__name__}")
            raise CredentialUnavailable(f"vault is unavailable for {what}") from None
        except hv.InvalidPath as exc:
            self._log_failure(what, exc)
            raise CredentialUnavailable(f"vault has no {what}") from None
        except (hv.Forbidden, hv.Unauthorized) as exc:
            self._log_failure(what, exc)
            raise CredentialUnavailable(f"vault refused {what}") from None
        except (hv.VaultError, OSError, KeyError, TypeError, ValueError) as exc:
            self._log_failure(what, exc)
            raise CredentialUnavailable(f"vault could not provide {what}") from None

    @staticmethod
    def _log_failure(what: str, exc: BaseException) -> None:
        log.warning("vault call failed", extra={"fields": {"what": what, "error": type(exc).__name__}})

    # --- Backend ---------------------------------------------------------------

    def issue(self, spec: CredentialSpec, scope: Scope, workload: str) -> Lease:
        if spec.engine == "kv":
            if spec.delivery == "wrapped":
                return self._call(f"secret {spec.mount}/{scope.path}",
                                  lambda: self._kv_wrapped(spec, scope))
            return self._call(f"secret {spec.mount}/{scope.path}", lambda: self._kv_value(spec, scope))
        if spec.engine == "database":
            return self._call(f"database role {scope.role!r}", lambda: self._database(spec, scope))
        if spec.engine == "token":
            return self._call(f"child token for {spec.resource}",
                              lambda: self._token(spec, scope, workload))
        raise CredentialUnavailable(f"unknown credential engine {spec.engine!r}")

    def _kv_value(self, spec: CredentialSpec, scope: Scope) -> Lease:
        resp = self.client.secrets.kv.v2.read_secret_version(
            path=scope.path, mount_point=spec.mount, raise_on_deleted_version=True)
        value = resp["data"]["data"].get(scope.key)
        if not isinstance(value, str) or not value:
            raise KeyError("field")  # mapped to "could not provide"; never echo the secret's fields
        version = resp["data"]["metadata"]["version"]
        return Lease(secret=value, accessor=f"kv:{spec.mount}/{scope.path}@v{version}",
                     expires_at=time.time() + spec.ttl_s)

    def _kv_wrapped(self, spec: CredentialSpec, scope: Scope) -> Lease:
        """A single-use wrapping token around the secret; the gateway unwraps it."""
        resp: Any = self.client.adapter.get(f"/v1/{spec.mount}/data/{scope.path}",
                                            wrap_ttl=f"{spec.ttl_s}s")
        wrap = resp["wrap_info"]
        return Lease(secret=wrap["token"], accessor=wrap["accessor"],
                     expires_at=time.time() + int(wrap["ttl"]))

    def _database(self, spec: CredentialSpec, scope: Scope) -> Lease:
        resp = self.client.secrets.database.generate_credentials(name=scope.role, mount_point=spec.mount)
        data = resp["data"]
        # spec.ttl caps reuse; the role's default_ttl bounds the lease itself.
        ttl = min(int(resp["lease_duration"]), spec.ttl_s)
        return Lease(secret=f"{data['username']}:{data['password']}", accessor=resp["lease_id"],
                     expires_at=time.time() + ttl, renewable=bool(resp.get("renewable")),
                     revoke="lease")

    def _token(self, spec: CredentialSpec, scope: Scope, workload: str) -> Lease:
        auth = self.client.auth.token.create(
            role_name=scope.role or None, policies=list(scope.policies), no_default_policy=True,
            ttl=f"{spec.ttl_s}s", num_uses=scope.num_uses, renewable=False,
            display_name=f"aam-{spec.resource}-{scope.name}",
            meta={"workload": workload, "resource": spec.resource, "scope": scope.name},
        )["auth"]
        return Lease(secret=auth["client_token"], accessor=auth["accessor"],
                     expires_at=time.time() + int(auth["lease_duration"]), revoke="token")

    def renew(self, lease: Lease, ttl_s: int) -> Lease:
        if lease.revoke != "lease" or not lease.renewable:
            raise CredentialUnavailable("the credential cannot be renewed")
        resp = self._call("lease renewal", lambda: self.client.sys.renew_lease(
            lease_id=lease.accessor, increment=ttl_s))
        ttl = min(int(resp["lease_duration"]), ttl_s)
        return Lease(secret=lease.secret, accessor=lease.accessor, expires_at=time.time() + ttl,
                     renewable=bool(resp.get("renewable")), revoke=lease.revoke)

    def revoke(self, lease: Lease) -> None:
        if lease.revoke == "lease":
            self._call("lease revocation", lambda: self.client.sys.revoke_lease(lease_id=lease.accessor))
        elif lease.revoke == "token":
            self._call("token revocation",
                       lambda: self.client.auth.token.revoke_accessor(accessor=lease.accessor))

    def check(self) -> None:
        """The health probe: look up the PDP's own token (logging in again if it died);
        the outcome is reported, nothing raised."""
        with contextlib.suppress(CredentialUnavailable):
            self._call("token lookup", lambda: self.client.auth.token.lookup_self())

    def start(self) -> None:
        """Log in now so a bad setup shows at start; an unreachable Vault only denies later."""
        try:
            self.login()
        except RootTokenRefused:
            raise
        except (requests.RequestException, hv.VaultError, OSError, KeyError) as exc:
            log.warning("vault login failed; credentialed actions are denied until it works",
                        extra={"fields": {"error": type(exc).__name__}})

    def close(self) -> None:
        self.client.adapter.close()
