"""Runtime bundle signing: settings, key files, the signature and OPA's verification config."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from compiler import compile_paths
from pdp.bundles import BundleStore
from pdp.bundlesigner import BundleSigner, from_settings
from pdp.config import ConfigError, Settings
from pdp.opa import OpaProcess

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def secret_file(tmp: Path, name: str, data: bytes, mode: int = 0o600) -> Path:
    path = tmp / name
    path.write_bytes(data)
    path.chmod(mode)
    return path


def pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def served_files(body: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        return {m.name.lstrip("/"): tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def bundle():  # type: ignore[no-untyped-def]
    return compile_paths([EXAMPLES])


@pytest.mark.parametrize("alg", ["ES256", "RS256", "HS256"])
def test_published_bundle_is_signed_over_every_file(bundle, alg: str) -> None:  # type: ignore[no-untyped-def]
    signer = BundleSigner.ephemeral(alg, "k1")
    pub = BundleStore(signer).publish(bundle)
    assert pub.etag == f'"{bundle.revision}"'  # the ETag stays the revision
    files = served_files(pub.body)
    token = json.loads(files[".signatures.json"])["signatures"][0]
    assert jwt.get_unverified_header(token)["kid"] == "k1"
    payload = jwt.decode(token, signer.verification.key, algorithms=[alg])
    assert {f["name"] for f in payload["files"]} == set(files) - {".signatures.json"}


def test_managed_opa_defaults_to_an_ephemeral_es256_key() -> None:
    a, b = from_settings(Settings.load(env={})), from_settings(Settings.load(env={}))
    assert (a.algorithm, a.key_id, a.source) == ("ES256", "aam", "ephemeral key")
    assert a.verification.key != b.verification.key  # fresh per start
    assert "PUBLIC KEY" in a.verification.key and b"PRIVATE KEY" in a.private


def test_external_opa_needs_a_configured_key() -> None:
    with pytest.raises(ConfigError, match=r"^setting opa_url: needs bundle_signing_key"):
        Settings.load(env={}, opa_url="http://127.0.0.1:8181")
    Settings.load(env={}, opa_url="http://127.0.0.1:8181", bundle_signing_key="/k.pem")


@pytest.mark.parametrize(("setting", "value", "message"), [
    ("bundle_signing_alg", "none", "^AAM_BUNDLE_SIGNING_ALG: must be one of RS256, ES256, HS256"),
    ("bundle_signing_key_id", " ", "^AAM_BUNDLE_SIGNING_KEY_ID: must not be empty"),
])
def test_bad_signing_settings_are_one_line_errors(setting: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.load(env={f"AAM_{setting.upper()}": value})


def test_key_files_give_opa_the_public_half(tmp_path: Path) -> None:
    ec_key, rsa_key = ec.generate_private_key(ec.SECP256R1()), rsa.generate_private_key(65537, 2048)
    es = BundleSigner.from_file(secret_file(tmp_path, "es.pem", pem(ec_key)), "ES256", "aam")
    rs = BundleSigner.from_file(secret_file(tmp_path, "rs.pem", pem(rsa_key)), "RS256", "aam")
    hs = BundleSigner.from_file(secret_file(tmp_path, "hs", b"x" * 40 + b"\n"), "HS256", "aam")
    for signer, key in ((es, ec_key), (rs, rsa_key)):
        assert signer.verification.key.encode() == key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert hs.verification.key == "x" * 40 and hs.private == b"x" * 40  # the newline is not secret
    assert hs.describe() == f"signed HS256, key {tmp_path / 'hs'}"


@pytest.mark.parametrize(("name", "data", "alg", "message"), [
    ("rsa-for-es.pem", "rsa", "ES256", "ES256 needs an EC P-256 private key"),
    ("p384.pem", "p384", "ES256", "ES256 needs an EC P-256 private key"),
    ("ec-for-rs.pem", "ec", "RS256", "RS256 needs an RSA private key of at least 2048 bits"),
    ("junk.pem", "junk", "RS256", "not a PEM private key"),
    ("short", "short", "HS256", "an HS256 secret must be at least 32 bytes"),
])
def test_unusable_keys_are_refused_naming_the_setting(tmp_path: Path, name: str, data: str, alg: str,
                                                      message: str) -> None:
    body = {"rsa": lambda: pem(rsa.generate_private_key(65537, 2048)),
            "p384": lambda: pem(ec.generate_private_key(ec.SECP384R1())),
            "ec": lambda: pem(ec.generate_private_key(ec.SECP256R1())),
            "junk": lambda: b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWp1bms=\n-----END PRIVATE KEY-----\n",
            "short": lambda: b"s3cret-but-short"}[data]()
    path = secret_file(tmp_path, name, body)
    with pytest.raises(ConfigError) as exc:
        BundleSigner.from_file(path, alg, "aam")
    assert str(exc.value) == f"bundle_signing_key {path}: {message}"
    assert exc.value.__cause__ is None  # no chained parser error
    assert exc.value.__context__ is None or exc.value.__suppress_context__
    for line in body.splitlines()[1:-1] or [body]:
        assert line.decode() not in str(exc.value)


def test_a_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "es.pem", pem(ec.generate_private_key(ec.SECP256R1())), 0o644)
    with pytest.raises(ConfigError, match=r"^bundle_signing_key .*: readable by group or others"):
        BundleSigner.from_file(path, "ES256", "aam")


def test_secrets_stay_out_of_reprs(tmp_path: Path) -> None:
    hs = BundleSigner.from_file(secret_file(tmp_path, "hs", b"y" * 40), "HS256", "aam")
    es = BundleSigner.ephemeral()
    assert "y" * 40 not in repr(hs) and "PRIVATE" not in repr(es) and "PUBLIC" not in repr(es)


def test_managed_opa_config_verifies_with_the_signer_key(tmp_path: Path) -> None:
    signer = BundleSigner.ephemeral("ES256", "k2")
    opa = OpaProcess("opa", "127.0.0.1:0", "http://127.0.0.1:1", workdir=tmp_path,
                     verification=signer.verification)
    config = json.loads(opa.config())
    assert config["bundles"]["aam"]["signing"] == {"keyid": "k2"}
    assert config["keys"] == {"k2": {"algorithm": "ES256", "key": signer.verification.key}}
    assert "decision_logs" not in config and "status" not in config
    assert signer.private.decode() not in opa.config()
    unsigned = json.loads(OpaProcess("opa", "127.0.0.1:0", "http://127.0.0.1:1", workdir=tmp_path).config())
    assert "keys" not in unsigned and "signing" not in unsigned["bundles"]["aam"]
