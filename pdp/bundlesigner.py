"""The key that signs every bundle the PDP publishes, and what OPA needs to verify it.

Whoever can answer OPA's bundle poll, or alter it in flight, could otherwise
change policy. The PDP signs each published bundle once (``compiler.sign``,
the code ``aam compile --sign-key`` uses) and OPA activates only bundles whose
``.signatures.json`` verifies against the key in its own configuration.

With no key configured, a managed OPA gets an ephemeral key pair made in
memory at start: the private half never leaves this process, the public half
goes into OPA's configuration file. An OPA the PDP does not manage needs a
configured key (``bundle_signing_key``), since only then can its config name it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from compiler import Bundle
from compiler.sign import SigningError, sign
from pdp.config import ConfigError, Settings
from pdp.secretfile import read_secret

SETTING = "bundle_signing_key"
_MIN_HMAC_BYTES = 32
_MIN_RSA_BITS = 2048


@dataclass(frozen=True)
class Verification:
    """What OPA's config holds to verify the PDP's bundles: public key (or HMAC secret)."""

    key_id: str
    algorithm: str
    key: str = field(repr=False)

    def opa_keys(self) -> dict[str, Any]:
        """OPA's top-level ``keys:`` section."""
        return {self.key_id: {"algorithm": self.algorithm, "key": self.key}}

    def opa_signing(self) -> dict[str, Any]:
        """A bundle's ``signing:`` block: its presence makes OPA refuse unsigned bundles."""
        return {"keyid": self.key_id}


@dataclass(frozen=True)
class BundleSigner:
    """Signs bundles with one key; ``source`` says where the key came from (never what it is)."""

    source: str
    verification: Verification
    private: bytes = field(repr=False)

    @property
    def algorithm(self) -> str:
        return self.verification.algorithm

    @property
    def key_id(self) -> str:
        return self.verification.key_id

    def sign(self, bundle: Bundle) -> Bundle:
        try:
            return sign(bundle, self.private, self.algorithm, self.key_id)
        except SigningError as exc:
            raise ConfigError(f"{SETTING} ({self.source}): {exc}") from None

    def describe(self) -> str:
        return f"signed {self.algorithm}, {self.source}"

    @classmethod
    def ephemeral(cls, algorithm: str = "ES256", key_id: str = "aam") -> BundleSigner:
        """A fresh key pair (or HMAC secret) that lives as long as this process."""
        if algorithm == "HS256":
            secret = secrets.token_hex(32)
            return cls("ephemeral key", Verification(key_id, algorithm, secret), secret.encode())
        private = (rsa.generate_private_key(65537, _MIN_RSA_BITS) if algorithm == "RS256"
                   else ec.generate_private_key(ec.SECP256R1()))
        pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return cls("ephemeral key", Verification(key_id, algorithm, _public_pem(private)), pem)

    @classmethod
    def from_file(cls, path: Path | str, algorithm: str, key_id: str) -> BundleSigner:
        """The key in ``path`` (mode 0600): a PEM private key, or for HS256 the secret itself."""
        data = read_secret(path, SETTING)
        where = f"{SETTING} {path}"
        if algorithm == "HS256":
            # Trailing whitespace (the newline of `openssl rand -hex 32 > file`) is not part of
            # the secret: OPA's config holds it as a YAML string, which has none either.
            secret = data.rstrip()
            if len(secret) < _MIN_HMAC_BYTES:
                raise ConfigError(f"{where}: an HS256 secret must be at least {_MIN_HMAC_BYTES} bytes")
            try:
                text = secret.decode("utf-8")
            except UnicodeDecodeError:
                raise ConfigError(f"{where}: an HS256 secret must be text (OPA's config holds it "
                                  "as a string)") from None
            return cls(f"key {path}", Verification(key_id, algorithm, text), secret)
        try:
            private = serialization.load_pem_private_key(data, password=None)
        except TypeError:
            raise ConfigError(f"{where}: the PEM private key is encrypted; give an unencrypted "
                              "key in a 0600 file") from None
        except (ValueError, UnsupportedAlgorithm):
            raise ConfigError(f"{where}: not a PEM private key") from None
        if algorithm == "ES256" and not (isinstance(private, ec.EllipticCurvePrivateKey)
                                         and isinstance(private.curve, ec.SECP256R1)):
            raise ConfigError(f"{where}: ES256 needs an EC P-256 private key")
        if algorithm == "RS256" and not (isinstance(private, rsa.RSAPrivateKey)
                                         and private.key_size >= _MIN_RSA_BITS):
            raise ConfigError(f"{where}: RS256 needs an RSA private key of at least {_MIN_RSA_BITS} bits")
        return cls(f"key {path}", Verification(key_id, algorithm, _public_pem(private)), data)


def _public_pem(private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def from_settings(settings: Settings) -> BundleSigner:
    """The configured key, else an ephemeral one (Settings.validate requires a key for opa_url)."""
    if settings.bundle_signing_key:
        return BundleSigner.from_file(settings.bundle_signing_key, settings.bundle_signing_alg,
                                      settings.bundle_signing_key_id)
    return BundleSigner.ephemeral(settings.bundle_signing_alg, settings.bundle_signing_key_id)
