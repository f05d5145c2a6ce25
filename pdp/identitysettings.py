"""Settings of who may call the PDP (pdp/identity.py): its mTLS certificate and trust
bundle, the trust domains and gateways it trusts, the plaintext gateway token, JWT-SVIDs."""

from __future__ import annotations

from dataclasses import dataclass

from pdp.settingbase import (
    UNIX_SCHEME,
    SettingsPart,
    check_positive,
    check_unix_socket,
    setting_error,
)

# What the Workload API replaces: with spiffe_endpoint_socket none of these may be set.
FILE_IDENTITY = ("tls_cert", "tls_key", "tls_client_ca", "jwt_bundle")


@dataclass(frozen=True)
class IdentitySettings(SettingsPart):
    """mTLS, trusted domains and gateways, the gateway token, JWT-SVIDs."""

    # --- mTLS on the gRPC port (ignored when plaintext = true) ---
    # PEM files: the PDP's own X.509-SVID (chain) and key, and the X.509 trust
    # bundle (CA certificates) that client SVIDs must chain to.
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    # Trust domains whose SVIDs may call; empty means the PDP's own trust
    # domain (from tls_cert's URI SAN).
    trust_domains: tuple[str, ...] = ()
    # SPIFFE IDs of gateways that may ask on behalf of other workloads. Any
    # other caller may only ask about itself. Only gateways receive credential
    # values, may call Check and may report usage (RecordUsage).
    trusted_gateways: tuple[str, ...] = ()
    # Plaintext mode only: a file (mode 0600, at least 32 characters) holding the
    # token a gateway sends as gRPC metadata x-aam-gateway-token. Its holder is a
    # trusted gateway; without it a plaintext port has no gateway, so it answers
    # no credential value and refuses Check and RecordUsage. aam up writes one.
    gateway_token_file: str = ""
    # When a gateway asks on behalf of an agent, the agent's JWT-SVID must be
    # forwarded (Identity.jwt_svid) and is verified against jwt_bundle.
    require_jwt_svid: bool = False
    # JWKS file (SPIFFE JWT trust bundle) and the audience JWT-SVIDs must name.
    jwt_bundle: str = ""
    jwt_audience: str = "aam-pdp"
    # --- the SPIFFE Workload API instead of files (pdp/workloadapi.py) ---
    # "unix:///path/to/agent.sock" (SPIFFE_ENDPOINT_SOCKET's form): the PDP's own
    # X.509-SVID, the X.509 trust bundle and the JWT bundle come from the Workload
    # API and rotate without a restart. Excludes tls_cert, tls_key, tls_client_ca,
    # jwt_bundle and plaintext.
    spiffe_endpoint_socket: str = ""
    # Seconds the start waits for the first X.509-SVID (and JWT bundle); none by
    # then: the PDP refuses to start.
    spiffe_start_timeout_s: float = 15.0

    def validate(self) -> None:
        check_positive(self, "spiffe_start_timeout_s")
        if self.spiffe_endpoint_socket:
            self._validate_workload_api()
        elif self.require_jwt_svid and not self.jwt_bundle:
            raise setting_error("require_jwt_svid", "needs jwt_bundle (a JWKS file) or "
                                                    "spiffe_endpoint_socket")
        if not self.jwt_audience.strip():
            raise setting_error("jwt_audience", "must not be empty")
        self._validate_spiffe()

    def _validate_workload_api(self) -> None:
        if not self.spiffe_endpoint_socket.startswith(UNIX_SCHEME):
            raise setting_error("spiffe_endpoint_socket", "must be unix:///absolute/path (the "
                                f"SPIFFE_ENDPOINT_SOCKET form), got {self.spiffe_endpoint_socket!r}")
        check_unix_socket("spiffe_endpoint_socket", self.spiffe_endpoint_socket)
        # validate() runs on the composed Settings too: plaintext is the server's setting.
        if getattr(self, "plaintext", False):
            raise setting_error("spiffe_endpoint_socket",
                                "cannot be combined with plaintext: the Workload API's SVID "
                                "is for mTLS")
        for name in FILE_IDENTITY:
            if getattr(self, name):
                raise setting_error("spiffe_endpoint_socket",
                                    f"cannot be combined with {name}: the Workload API serves "
                                    "the PDP's SVID and bundles (unset one of them)")

    def _validate_spiffe(self) -> None:
        """trust_domains and trusted_gateways by the compiler's SPIFFE parser, as written:
        a typo otherwise shows only at run time, as a caller that is never trusted."""
        from compiler import spiffe  # here: config stays cheap to import

        for name, check, what in (("trust_domains", spiffe.parse_trust_domain, "a trust domain"),
                                  ("trusted_gateways", spiffe.parse, "a SPIFFE ID")):
            for value in getattr(self, name):
                if value != value.strip():
                    raise setting_error(name, f"{value!r} has surrounding whitespace")
                try:
                    parsed = check(value)
                except spiffe.InvalidSpiffeID as exc:
                    raise setting_error(name, f"{value!r} is not {what}: {exc}") from None
                if name == "trusted_gateways" and not parsed.path:
                    raise setting_error(name, f"{value!r} is not a SPIFFE ID of a workload: it "
                                              "names a trust domain (add the gateway's path)")
