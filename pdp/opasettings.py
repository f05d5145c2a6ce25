"""Settings of the OPA the PDP queries (pdp/opa.py) and of the signing of the bundles it
serves it (pdp/bundlesigner.py)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from pdp.settingbase import (
    DEFAULT_TOOLS_DIR,
    UNIX_SCHEME,
    ConfigError,
    SettingsPart,
    check_addr,
    check_positive,
    check_unix_socket,
    setting_error,
)


@dataclass(frozen=True)
class OpaSettings(SettingsPart):
    """The OPA queried per decision, and the signing of its bundles."""

    # URL of an OPA the PDP does not manage; empty means start one as a child.
    # "http://host:port", or "unix:///abs/path.sock" for an OPA on a Unix socket.
    opa_url: str = ""
    # OPA binary for a managed OPA; empty means the tools dir, then PATH.
    opa_binary: str = ""
    # Address of the managed OPA, "host:port" (port 0 picks a free one), or a Unix
    # socket: "unix:///abs/dir/opa.sock" (dir is created 0700 if missing, and must be
    # this user's and closed to group and others; the socket is 0600), or "unix://"
    # for a socket in a fresh private directory. TCP keep-alive stays the default:
    # on this 2-core machine the socket's gain is small (bench/RESULTS.md, issue 23).
    opa_addr: str = "127.0.0.1:0"
    # Per-decision deadline for the OPA query, after which the PDP denies.
    opa_timeout_ms: int = 500
    # Go's GC target (GOGC) for the managed OPA. OPA allocates ~80 KB per decision;
    # 400 collects a quarter as often as Go's default 100, for about a fifth less OPA
    # CPU per decision (bench/RESULTS.md) at the cost of a larger heap between GCs.
    opa_gogc: int = 400
    # --- Signing of the bundle served to OPA (OPA refuses unsigned or altered ones) ---
    # File (mode 0600) with the key that signs every published bundle: a PEM private
    # key (RS256, ES256) or the HMAC secret (HS256). Empty: a managed OPA gets an
    # ephemeral key pair made at start; an external OPA (opa_url) requires a key,
    # whose public half its config names (deploy/opa/config.yaml).
    bundle_signing_key: str = ""
    bundle_signing_alg: str = "ES256"
    # Key id in the signature and OPA's config (keys.<id>, bundles.aam.signing.keyid).
    bundle_signing_key_id: str = "aam"

    def validate(self) -> None:
        if self.opa_addr.startswith(UNIX_SCHEME):
            check_unix_socket("opa_addr", self.opa_addr, allow_auto=True)
        else:
            check_addr("opa_addr", self.opa_addr)
        if self.opa_url.startswith(UNIX_SCHEME):
            check_unix_socket("opa_url", self.opa_url)
        elif self.opa_url and not self.opa_url.startswith("http://"):
            raise setting_error("opa_url", f"must be http://host:port or unix:///path, got {self.opa_url!r}")
        check_positive(self, "opa_timeout_ms")
        check_positive(self, "opa_gogc", hint=" (Go's default is 100)")
        self._validate_bundle_signing()

    def _validate_bundle_signing(self) -> None:
        from compiler.sign import ALGORITHMS  # here: config stays cheap to import

        if self.bundle_signing_alg not in ALGORITHMS:
            raise setting_error("bundle_signing_alg", f"must be one of {', '.join(ALGORITHMS)}, "
                                                      f"got {self.bundle_signing_alg!r}")
        if not self.bundle_signing_key_id.strip():
            raise setting_error("bundle_signing_key_id", "must not be empty")
        if self.opa_url and not self.bundle_signing_key:
            # Blamed on opa_url, the value that was set: bundle_signing_key is just missing.
            raise setting_error("opa_url", "needs bundle_signing_key: an OPA the PDP does not "
                                           "manage verifies bundles only with a key its own "
                                           "config names (deploy/opa/config.yaml)")

    def opa_path(self) -> str:
        """The OPA binary to run, or a ConfigError saying how to get one."""
        candidates = [self.opa_binary] if self.opa_binary else [
            str(DEFAULT_TOOLS_DIR / "bin" / "opa"), shutil.which("opa") or ""]
        for c in candidates:
            if c and os.access(c, os.X_OK):
                return c
        raise ConfigError(
            "OPA binary not found (looked in "
            f"{', '.join(c for c in candidates if c) or 'PATH'}); run scripts/setup"
        )
