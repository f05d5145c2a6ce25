"""Who is calling: the SPIFFE ID of the gRPC peer, and who it may ask about.

The gRPC port speaks mTLS with X.509-SVIDs: the TLS layer checks the chain
against the trust bundle and the validity period; this module reads the
caller's SPIFFE ID from the certificate's single URI SAN and decides whether
the caller may ask about the workload named in the request. An agent may
only ask about itself; configured gateways may ask on behalf of agents and,
when required, must forward the agent's JWT-SVID, verified here against a
JWKS trust bundle (a file, or the Workload API's: pdp/workloadapi.py). Every
refusal is reported to an audit hook (a log line by default; the ledger routes
it to the audit table) before the caller gets UNAUTHENTICATED or PERMISSION_DENIED.
"""

from __future__ import annotations

import datetime as dt
import functools
import hmac
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc
import jwt
from cryptography import x509

from compiler import spiffe
from pdp.config import ConfigError, Settings
from pdp.errors import PermissionDenied, ServiceError, Unauthenticated
from pdp.secretfile import read_secret
from pdp.workloadapi import WorkloadApiSource

log = logging.getLogger("aam.identity")

# Signature algorithms the JWT-SVID specification allows (no HMAC, no "none").
JWT_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512")


# gRPC metadata a gateway sends on a plaintext port to prove it is one (the
# contents of gateway_token_file). Over mTLS the gateway's SVID is the proof.
GATEWAY_TOKEN_HEADER = "x-aam-gateway-token"


class JwtSvidInvalid(Unauthenticated):
    default_reason = "jwt_svid_invalid"


@dataclass(frozen=True)
class Caller:
    """The authenticated peer; ``spiffe_id`` is empty on an explicit plaintext port.

    ``gateway`` is what decides who receives credential values, may call Check
    and may report usage: a configured trusted gateway over mTLS, or the holder
    of the gateway token on a plaintext port."""

    spiffe_id: str
    gateway: bool = False


@dataclass(frozen=True)
class Refusal:
    """An identity refusal, for the audit trail. Never carries a token."""

    caller: str
    asserted: str
    # stable: unauthenticated, untrusted_domain, not_self, jwt_svid_invalid,
    # not_gateway, gateway_token_invalid
    code: str
    message: str


AuditHook = Callable[[Refusal], None]


def log_refusal(refusal: Refusal) -> None:
    """Default audit hook until the ledger's audit table takes these."""
    log.warning("identity refused", extra={"fields": {
        "event": "identity_refused", "caller": refusal.caller, "asserted": refusal.asserted,
        "code": refusal.code, "message": refusal.message,
    }})


class Identity(Protocol):
    def authenticate(self, context: grpc.ServicerContext) -> Caller:
        """Return the authenticated caller, or raise Unauthenticated."""
        ...

    def check(self, context: grpc.ServicerContext, asserted: str, jwt_svid: str) -> Caller:
        """Return the caller if it may ask about ``asserted``; raise a ServiceError if not."""
        ...

    def require_gateway(self, context: grpc.ServicerContext, what: str) -> Caller:
        """Return the caller if it is a trusted gateway; else raise PermissionDenied
        (audited), naming ``what`` it may not do."""
        ...


def _not_gateway(caller: str, what: str, how: str) -> PermissionDenied:
    who = f"caller {caller}" if caller else "this caller"
    return PermissionDenied(f"{who} is not a trusted gateway; only gateways may {what} ({how})",
                            reason="not_gateway")


class PlaintextIdentity:
    """No peer identity: only ever used when ``plaintext = true`` is set explicitly.

    Anyone on the port may ask about any workload, so nothing secret is answered
    unless the caller sends the gateway token (metadata ``x-aam-gateway-token``)
    from ``gateway_token_file``. Without a configured token there is no gateway.
    """

    def __init__(self, gateway_token: bytes | None = None, audit: AuditHook = log_refusal) -> None:
        self.token = gateway_token
        self.audit = audit

    def authenticate(self, context: grpc.ServicerContext) -> Caller:
        sent = next((v for k, v in context.invocation_metadata() or () if k == GATEWAY_TOKEN_HEADER),
                    None)
        if sent is None:
            return Caller("")
        given = sent.encode() if isinstance(sent, str) else bytes(sent)
        if self.token is None or not hmac.compare_digest(given, self.token):
            message = ("the gateway token does not match gateway_token_file"
                       if self.token is not None else
                       "a gateway token was sent but this PDP has no gateway_token_file")
            self.audit(Refusal("", "", "gateway_token_invalid", message))
            raise Unauthenticated(message, reason="gateway_token_invalid")
        return Caller("", gateway=True)

    def check(self, context: grpc.ServicerContext, asserted: str, jwt_svid: str) -> Caller:
        return self.authenticate(context)

    def require_gateway(self, context: grpc.ServicerContext, what: str) -> Caller:
        caller = self.authenticate(context)
        if not caller.gateway:
            how = (f"on a plaintext port a gateway sends the {GATEWAY_TOKEN_HEADER} metadata"
                   if self.token is not None else
                   "this plaintext PDP has no gateway_token_file, so it has no gateways")
            exc = _not_gateway("", what, how)
            self.audit(Refusal("", "", exc.reason, str(exc)))
            raise exc
        return caller


def read_gateway_token(path: str) -> bytes:
    """The gateway token: the file's first line, at least 32 characters."""
    token = read_secret(path, "gateway_token_file").strip()
    if len(token) < 32:
        raise ConfigError(f"gateway_token_file {path}: the token must be at least 32 characters")
    return token


# --- X.509-SVID --------------------------------------------------------------

@dataclass(frozen=True)
class _Svid:
    spiffe_id: str
    not_before: dt.datetime
    not_after: dt.datetime


@functools.lru_cache(maxsize=1024)
def _parse_svid(pem: bytes) -> _Svid:
    """Parse once per distinct certificate; the validity check is per call."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise Unauthenticated("client certificate cannot be parsed") from None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if not uris:
        raise Unauthenticated(
            "client certificate has no URI SAN; an X.509-SVID carries exactly one SPIFFE ID")
    if len(uris) > 1:
        raise Unauthenticated(
            f"client certificate has {len(uris)} URI SANs; an X.509-SVID carries exactly one")
    try:
        sid = spiffe.parse(uris[0])
    except spiffe.InvalidSpiffeID as exc:
        raise Unauthenticated(f"client certificate URI SAN is not a SPIFFE ID: {exc}") from None
    try:
        ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        ca = False
    if ca:
        raise Unauthenticated("client certificate is a CA certificate, not an X.509-SVID")
    return _Svid(str(sid), cert.not_valid_before_utc, cert.not_valid_after_utc)


def spiffe_id_from_pem(pem: bytes, now: dt.datetime | None = None) -> str:
    """The SPIFFE ID of a leaf X.509-SVID, or Unauthenticated saying what is wrong."""
    svid = _parse_svid(pem)
    now = now or dt.datetime.now(dt.UTC)
    if now > svid.not_after:
        raise Unauthenticated(f"client certificate expired at {svid.not_after:%Y-%m-%dT%H:%M:%SZ}")
    if now < svid.not_before:
        raise Unauthenticated(
            f"client certificate is not valid before {svid.not_before:%Y-%m-%dT%H:%M:%SZ}")
    return svid.spiffe_id


def peer_spiffe_id(context: grpc.ServicerContext) -> str:
    auth = context.auth_context()
    certs = auth.get("x509_pem_cert") or []
    if not certs:
        raise Unauthenticated("no client certificate: the PDP requires an X.509-SVID (mTLS)")
    return spiffe_id_from_pem(certs[0])


# --- JWT-SVID ----------------------------------------------------------------

class JwksFile:
    """JWT-SVID verification keys from a JWKS trust bundle file (re-read when it changes)."""

    def __init__(self, bundle: Path) -> None:
        self.bundle = bundle
        self._lock = threading.Lock()
        self._mtime: int | None = None
        self._keys: dict[str, Any] = {}
        self._load()

    def _load(self) -> None:
        try:
            mtime = os.stat(self.bundle).st_mtime_ns
            if mtime == self._mtime:
                return
            doc = json.loads(self.bundle.read_text())
        except (OSError, ValueError) as exc:
            if self._mtime is None:
                raise ConfigError(f"jwt_bundle {self.bundle}: {exc}") from None
            return  # keep the last good bundle; the next change is picked up
        keys: dict[str, Any] = {}
        for entry in doc.get("keys", ()) if isinstance(doc, dict) else ():
            if not isinstance(entry, dict) or entry.get("use") == "x509-svid" or "kid" not in entry:
                continue
            try:
                keys[str(entry["kid"])] = jwt.PyJWK(entry).key
            except jwt.PyJWTError as exc:
                log.warning("jwt bundle key skipped",
                            extra={"fields": {"kid": entry["kid"], "error": str(exc)}})
        self._keys, self._mtime = keys, mtime

    def keys_for(self, subject: str) -> dict[str, Any]:
        """The keys by key id, whoever the subject: one file serves every trust domain."""
        with self._lock:
            self._load()
            return self._keys


class WorkloadJwks:
    """JWT-SVID verification keys from the JWT bundle the Workload API serves now for the
    subject's trust domain (spiffe_endpoint_socket): looked up at verification time, so a
    key the agent has rotated in is known at once."""

    def __init__(self, source: WorkloadApiSource) -> None:
        self.source = source

    def keys_for(self, subject: str) -> dict[str, Any]:
        try:
            domain = spiffe.parse(subject).trust_domain
        except spiffe.InvalidSpiffeID as exc:
            raise JwtSvidInvalid(f"identity.jwt_svid: subject is not a SPIFFE ID: {exc}") from None
        keys = self.source.jwt_keys(domain)
        if keys is None:
            raise JwtSvidInvalid(f"identity.jwt_svid: the Workload API serves no JWT bundle "
                                 f"for trust domain {domain!r}")
        return keys


class JwtKeys(Protocol):
    def keys_for(self, subject: str) -> dict[str, Any]: ...


class JwtSvidVerifier:
    """Verifies JWT-SVIDs against the keys of a trust bundle: a file's, or the Workload API's."""

    def __init__(self, keys: JwtKeys, audience: str) -> None:
        self.keys = keys
        self.audience = audience

    def verify(self, token: str, subject: str) -> None:
        """Raise Unauthenticated unless ``token`` is a valid JWT-SVID for ``subject``."""
        keys = self.keys.keys_for(subject)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise JwtSvidInvalid("identity.jwt_svid: not a JWT") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in JWT_ALGORITHMS:
            raise JwtSvidInvalid(f"identity.jwt_svid: algorithm {alg!r} is not allowed")
        key = keys.get(str(kid)) if kid is not None else None
        if key is None:
            raise JwtSvidInvalid(f"identity.jwt_svid: key id {kid!r} is not in the trust bundle")
        try:
            claims = jwt.decode(token, key, algorithms=[alg], audience=self.audience,
                                options={"require": ["exp", "sub", "aud"]})
        except jwt.ExpiredSignatureError:
            raise JwtSvidInvalid("identity.jwt_svid: expired") from None
        except jwt.InvalidAudienceError:
            raise JwtSvidInvalid(
                f"identity.jwt_svid: audience does not include {self.audience!r}") from None
        except jwt.MissingRequiredClaimError as exc:
            raise JwtSvidInvalid(f"identity.jwt_svid: missing the {exc.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise JwtSvidInvalid("identity.jwt_svid: signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise JwtSvidInvalid(f"identity.jwt_svid: invalid ({type(exc).__name__})") from None
        if claims.get("sub") != subject:
            raise JwtSvidInvalid(
                f"identity.jwt_svid: subject {str(claims.get('sub'))[:200]!r} is not the "
                f"asserted workload {subject!r}")


class WorkloadJwtVerifier(JwtSvidVerifier):
    """A verifier on the Workload API's JWT bundles (:class:`WorkloadJwks`)."""

    def __init__(self, source: WorkloadApiSource, audience: str) -> None:
        super().__init__(WorkloadJwks(source), audience)


# --- the policy: self, or a trusted gateway ----------------------------------

class SpiffeIdentity:
    def __init__(self, trust_domains: frozenset[str], gateways: frozenset[str],
                 jwt_verifier: JwtSvidVerifier | None, require_jwt: bool = False,
                 audit: AuditHook = log_refusal) -> None:
        self.trust_domains = trust_domains
        self.require_jwt = require_jwt
        self.gateways = gateways
        self.jwt = jwt_verifier
        self.audit = audit

    def authenticate(self, context: grpc.ServicerContext) -> Caller:
        return self.check(context, "", "", authorize=False)

    def check(self, context: grpc.ServicerContext, asserted: str, jwt_svid: str,
              authorize: bool = True) -> Caller:
        caller = ""
        try:
            caller = peer_spiffe_id(context)
            self._check_domain(caller)
            if not authorize:
                return Caller(caller, gateway=caller in self.gateways)
            return self._authorize(caller, asserted, jwt_svid)
        except ServiceError as exc:
            self.audit(Refusal(caller, asserted, exc.reason, str(exc)))
            raise

    def require_gateway(self, context: grpc.ServicerContext, what: str) -> Caller:
        caller = self.authenticate(context)
        if not caller.gateway:
            exc = _not_gateway(caller.spiffe_id, what, "gateways are listed in trusted_gateways")
            self.audit(Refusal(caller.spiffe_id, "", exc.reason, str(exc)))
            raise exc
        return caller

    def _check_domain(self, caller: str) -> None:
        domain = spiffe.parse(caller).trust_domain
        if domain not in self.trust_domains:
            raise Unauthenticated(
                f"caller {caller} is in trust domain {domain!r}, which is not trusted "
                f"(trusted: {', '.join(sorted(self.trust_domains))})", reason="untrusted_domain")

    def _authorize(self, caller: str, asserted: str, jwt_svid: str) -> Caller:
        if caller in self.gateways:
            if jwt_svid or (self.require_jwt and asserted != caller):
                if not jwt_svid:
                    raise JwtSvidInvalid(
                        f"identity.jwt_svid: required when gateway {caller} asks for {asserted}")
                if self.jwt is None:
                    raise JwtSvidInvalid("identity.jwt_svid: no jwt_bundle configured to verify it")
                self.jwt.verify(jwt_svid, asserted)
            return Caller(caller, gateway=True)
        if caller == asserted:
            return Caller(caller)
        raise PermissionDenied(f"caller {caller} may only ask about itself, not {asserted}",
                               reason="not_self")


def own_trust_domain(cert_pem: bytes) -> str:
    try:
        return spiffe.parse(_parse_svid(cert_pem).spiffe_id).trust_domain
    except Unauthenticated as exc:
        raise ConfigError(f"tls_cert is not an X.509-SVID: {exc}") from None


def _read(name: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{name} {path}: {exc.strerror}") from None


def _require_tls(settings: Settings) -> None:
    missing = [n for n in ("tls_cert", "tls_key", "tls_client_ca") if not getattr(settings, n)]
    if missing:
        raise ConfigError(f"mTLS needs {', '.join(missing)}; plaintext must be set explicitly")


def server_credentials(settings: Settings,
                       workload: WorkloadApiSource | None = None) -> grpc.ServerCredentials:
    """mTLS: the PDP's SVID, and client SVIDs required to chain to the trust bundle; with
    spiffe_endpoint_socket both from the Workload API (``workload``, else one opened here),
    rotating without a restart."""
    if settings.spiffe_endpoint_socket:
        return (workload or open_source(settings)).server_credentials()
    _require_tls(settings)
    return grpc.ssl_server_credentials(
        [(_read("tls_key", settings.tls_key), _read("tls_cert", settings.tls_cert))],
        root_certificates=_read("tls_client_ca", settings.tls_client_ca),
        require_client_auth=True,
    )


def from_settings(settings: Settings, audit: AuditHook = log_refusal,
                  workload: WorkloadApiSource | None = None) -> Identity:
    """``workload``: this process's Workload API source when spiffe_endpoint_socket is set
    (else one is opened here)."""
    if settings.plaintext:
        token = read_gateway_token(settings.gateway_token_file) if settings.gateway_token_file else None
        return PlaintextIdentity(token, audit)
    if settings.gateway_token_file:
        raise ConfigError("gateway_token_file is for plaintext mode; over mTLS a gateway is a "
                          "SPIFFE ID in trusted_gateways")
    verifier: JwtSvidVerifier | None
    if settings.spiffe_endpoint_socket:
        workload = workload or open_source(settings)
        own = workload.material.trust_domain
        verifier = (WorkloadJwtVerifier(workload, settings.jwt_audience)
                    if wants_jwt_bundles(settings) else None)
    else:
        _require_tls(settings)
        own = own_trust_domain(_read("tls_cert", settings.tls_cert))
        verifier = (JwtSvidVerifier(JwksFile(Path(settings.jwt_bundle)), settings.jwt_audience)
                    if settings.jwt_bundle else None)
    domains = frozenset(settings.trust_domains) or frozenset({own})
    if settings.require_jwt_svid and verifier is None:
        raise ConfigError("require_jwt_svid needs jwt_bundle or spiffe_endpoint_socket")
    return SpiffeIdentity(domains, frozenset(settings.trusted_gateways), verifier,
                          settings.require_jwt_svid, audit)


def wants_jwt_bundles(settings: Settings) -> bool:
    """Whether the PDP verifies JWT-SVIDs at all: only gateways forward them."""
    return settings.require_jwt_svid or bool(settings.trusted_gateways)


def open_source(settings: Settings) -> WorkloadApiSource:
    """This process's Workload API source (pdp/serving.py opens one per process and closes
    it on stop; one opened here for a lone server lives as long as the process)."""
    return WorkloadApiSource(settings.spiffe_endpoint_socket, settings.spiffe_start_timeout_s,
                             jwt=wants_jwt_bundles(settings))
