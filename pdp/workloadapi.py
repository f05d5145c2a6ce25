"""The PDP's own identity from the SPIFFE Workload API (``spiffe_endpoint_socket``).

Instead of PEM files, the PDP asks the SPIFFE agent on its node (SPIRE's, or any Workload
API) for its X.509-SVID, the X.509 trust bundles client SVIDs must chain to and, when it
verifies JWT-SVIDs, the JWT bundles. The ``spiffe`` library keeps a stream open per kind
and hands every update over; this module turns the current one into what gRPC and
pdp/identity.py need:

- :meth:`WorkloadApiSource.server_credentials` — credentials whose certificate fetcher
  gRPC calls on every new handshake: a new SVID or bundle is served from the next
  connection on, without a restart; connections already open keep theirs.
- :meth:`WorkloadApiSource.jwt_keys` — the JWT authorities of a trust domain by key id,
  read at verification time, so a rotated signing key is known as soon as the agent says.

Start is fail-closed: no SVID within ``spiffe_start_timeout_s`` is a ConfigError naming
the socket and why (``no identity issued``: no registration entry matches this process).
Afterwards a broken stream is retried by the library and the last SVID is served until
it expires; :meth:`WorkloadApiSource.health` says so. Each process (each worker) opens
its own source: gRPC channels do not survive fork.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from cryptography.hazmat.primitives import serialization

from pdp.settingbase import ConfigError

log = logging.getLogger("aam.workloadapi")

# How long the start's diagnosis (why no SVID came) may take, after the timeout.
DIAGNOSE_TIMEOUT_S = 3.0
# An SVID not replaced by this fraction of its lifetime is overdue (SPIRE rotates at 1/2).
OVERDUE_FRACTION = 0.75


@dataclass(frozen=True)
class Material:
    """One X.509 update, as PEM: what a TLS handshake is built from."""

    spiffe_id: str
    chain_pem: bytes  # the leaf SVID first, then intermediates
    key_pem: bytes  # PKCS#8
    bundle_pem: bytes  # every X.509 authority of every trust domain the agent gives
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime

    @property
    def trust_domain(self) -> str:
        return self.spiffe_id.removeprefix("spiffe://").split("/", 1)[0]


def _pem(cert: Any) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def material_of(context: Any) -> Material:
    """A py-spiffe X509Context's default SVID and all its bundles, as PEM."""
    svid = context.default_svid
    leaf = svid.leaf
    authorities = sorted({_pem(c) for b in context.x509_bundle_set.bundles
                          for c in b.x509_authorities})
    return Material(
        spiffe_id=str(svid.spiffe_id),
        chain_pem=b"".join(_pem(c) for c in svid.cert_chain),
        key_pem=svid.private_key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()),
        bundle_pem=b"".join(authorities),
        serial=leaf.serial_number,
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
    )


def _why(exc: BaseException | None) -> str:
    """The Workload API's own words for a failed call (``no identity issued``)."""
    while exc is not None:
        if isinstance(exc, grpc.Call):
            return f"{exc.details()} ({exc.code().name})"
        if exc.__cause__ is None:
            return str(exc)
        exc = exc.__cause__
    return "no answer"


class WorkloadApiSource:
    """The X.509 (and optionally JWT) sources of one process, over one client channel.

    ``on_rotate`` is called with each new :class:`Material` (not the first)."""

    def __init__(self, endpoint: str, timeout_s: float, jwt: bool = False,
                 on_rotate: Callable[[Material], None] | None = None) -> None:
        # Imported here: pdp.identity (every PDP) imports this module; only a PDP on the
        # Workload API needs the library's generated protos loaded.
        from spiffe import JwtSource, WorkloadApiClient, X509Source
        from spiffe.errors import PySpiffeError

        self.endpoint = endpoint
        self.on_rotate = on_rotate
        self._lock = threading.Lock()
        self._version = 0
        self._jwt: Any = None
        try:
            self._client = WorkloadApiClient(endpoint)
        except PySpiffeError as exc:
            raise ConfigError(f"spiffe_endpoint_socket {endpoint}: {exc}") from None
        try:
            self._x509 = X509Source(workload_api_client=self._client,
                                    timeout_in_seconds=timeout_s)
        except PySpiffeError as exc:
            reason = self._diagnose(exc)
            self._client.close()
            raise ConfigError(f"no X.509-SVID from the Workload API at {endpoint} within "
                              f"{timeout_s:g} s: {reason}") from None
        self._x509.subscribe_for_updates(self._refresh)
        self._material = material_of(self._x509.get_x509_context())
        if jwt:
            try:
                self._jwt = JwtSource(workload_api_client=self._client,
                                      timeout_in_seconds=timeout_s)
            except PySpiffeError as exc:
                self.close()
                raise ConfigError(f"no JWT bundle from the Workload API at {endpoint} within "
                                  f"{timeout_s:g} s: {_why(exc)}") from None
        log.info("workload api identity", extra={"fields": {
            "event": "workload_svid", "spiffe_id": self._material.spiffe_id,
            "serial": f"{self._material.serial:x}",
            "not_after": f"{self._material.not_after:%Y-%m-%dT%H:%M:%SZ}",
            "endpoint": endpoint, "jwt_bundles": jwt}})

    def _diagnose(self, exc: BaseException) -> str:
        """Why the stream gave nothing: one plain fetch, which fails with the agent's reason
        (the stream retries PERMISSION_DENIED, so the source only ever says "timeout")."""
        try:
            self._client.fetch_x509_context(timeout=DIAGNOSE_TIMEOUT_S)
        except Exception as fetched:  # the library wraps every failure; we want its cause
            return _why(fetched)
        return _why(exc)

    # --- X.509 -----------------------------------------------------------------

    def _refresh(self) -> None:
        """A Workload API update (on the library's stream thread)."""
        try:
            fresh = material_of(self._x509.get_x509_context())
        except Exception as exc:  # a bad update must not kill the stream thread
            log.error("workload api update unusable", extra={"fields": {"error": str(exc)}})
            return
        with self._lock:
            old = self._material
            if (fresh.chain_pem, fresh.key_pem, fresh.bundle_pem) == \
                    (old.chain_pem, old.key_pem, old.bundle_pem):
                return
            self._material = fresh
            self._version += 1
        log.info("workload api svid rotated", extra={"fields": {
            "event": "workload_svid_rotated", "spiffe_id": fresh.spiffe_id,
            "serial": f"{fresh.serial:x}", "previous_serial": f"{old.serial:x}",
            "not_after": f"{fresh.not_after:%Y-%m-%dT%H:%M:%SZ}",
            "bundle_changed": fresh.bundle_pem != old.bundle_pem}})
        if self.on_rotate is not None:
            self.on_rotate(fresh)

    @property
    def material(self) -> Material:
        with self._lock:
            return self._material

    @property
    def rotations(self) -> int:
        """How many changes of SVID or bundle this process has taken since start."""
        with self._lock:
            return self._version

    def server_credentials(self) -> grpc.ServerCredentials:
        """mTLS credentials that follow the Workload API: gRPC asks the fetcher on every
        new handshake; it answers a new configuration only when something changed."""
        with self._lock:
            served, first = self._version, self._material

        def configuration(m: Material) -> Any:
            return grpc.ssl_server_certificate_configuration(
                [(m.key_pem, m.chain_pem)], root_certificates=m.bundle_pem)

        def fetch() -> Any:
            nonlocal served
            with self._lock:
                if self._version == served:
                    return None
                served, current = self._version, self._material
            return configuration(current)

        return grpc.dynamic_ssl_server_credentials(
            configuration(first), fetch, require_client_authentication=True)

    # --- JWT -------------------------------------------------------------------

    def jwt_keys(self, trust_domain: str) -> dict[str, Any] | None:
        """The JWT authorities (public keys by key id) of ``trust_domain`` as the Workload
        API serves them now; None when it serves no JWT bundle for that trust domain."""
        if self._jwt is None:
            return None
        from spiffe import TrustDomain

        bundle = self._jwt.get_bundle_for_trust_domain(TrustDomain(trust_domain))
        return None if bundle is None else dict(bundle.jwt_authorities)

    # --- health and lifecycle ----------------------------------------------------

    def health(self, now: dt.datetime | None = None) -> tuple[bool, str]:
        """(ok, reason): not ok when a stream has stopped for good, or the SVID was not
        renewed when due (the agent unreachable: it is served until it expires)."""
        now = now or dt.datetime.now(dt.UTC)
        m = self.material
        if now >= m.not_after:
            return False, (f"X.509-SVID {m.spiffe_id} expired at "
                           f"{m.not_after:%Y-%m-%dT%H:%M:%SZ}; no new one from {self.endpoint}")
        if self._x509.is_closed() or (self._jwt is not None and self._jwt.is_closed()):
            return False, f"Workload API stream at {self.endpoint} stopped; serving the last SVID"
        due = m.not_before + (m.not_after - m.not_before) * OVERDUE_FRACTION
        if now >= due:
            return False, (f"X.509-SVID {m.spiffe_id} not renewed by the Workload API at "
                           f"{self.endpoint}; served until {m.not_after:%Y-%m-%dT%H:%M:%SZ}")
        return True, ""

    def close(self) -> None:
        for source in (self._jwt, self._x509):
            if source is not None:
                source.close()
        self._client.close()
