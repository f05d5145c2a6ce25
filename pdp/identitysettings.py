"""Settings of who may call the PDP (pdp/identity.py): its mTLS certificate and trust
bundle, the trust domains and gateways it trusts, the plaintext gateway token, JWT-SVIDs."""

from __future__ import annotations

from dataclasses import dataclass

from pdp.settingbase import SettingsPart, setting_error


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

    def validate(self) -> None:
        if self.require_jwt_svid and not self.jwt_bundle:
            raise setting_error("require_jwt_svid", "needs jwt_bundle (a JWKS file)")
        if not self.jwt_audience.strip():
            raise setting_error("jwt_audience", "must not be empty")
        self._validate_spiffe()

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
