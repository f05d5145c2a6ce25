"""Signed bundles against the real OPA: accepted when intact, refused when tampered."""

from __future__ import annotations

import contextlib
import gzip
import http.server
import io
import json
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from compiler.sign import file_digest
from tests.integration.pdp import EXAMPLES
from tests.servers import opa_binary, run_opa

ROOT = Path(__file__).resolve().parents[2]
AAM = str(ROOT / ".venv" / "bin" / "aam")


def keypair(tmp: Path, alg: str) -> tuple[Path, str]:
    """(signing key file, what OPA's --verification-key takes)."""
    if alg == "HS256":
        secret = "s3cret-for-tests-only-0123456789abcdef"
        (tmp / "hs.key").write_text(secret)
        return tmp / "hs.key", secret
    key = rsa.generate_private_key(65537, 2048) if alg == "RS256" else ec.generate_private_key(ec.SECP256R1())
    priv = tmp / f"{alg}.pem"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    pub = tmp / f"{alg}.pub.pem"
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, str(pub)


def compile_signed(policies: Path, out: Path, key: Path, alg: str) -> None:
    r = subprocess.run([AAM, "compile", str(policies), "-o", str(out), "--sign-key", str(key),
                        "--signing-alg", alg], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"signed {alg}" in r.stdout


def read_tar(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def write_tar(files: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, body in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return gzip.compress(raw.getvalue())


def tampered(bundle: bytes) -> bytes:
    """Same signature, but the data now grants the finance agent a model it lacks."""
    files = read_tar(bundle)
    data = json.loads(files["/aam/compiled/data.json"])
    data["policies"]["spiffe://prod/agent/finance-analyst"]["models"]["gpt-evil"] = True
    files["/aam/compiled/data.json"] = json.dumps(data).encode()
    return write_tar(files)


def test_signature_lists_every_file_with_opa_digests(tmp_path: Path) -> None:
    key, _ = keypair(tmp_path, "HS256")
    out = tmp_path / "b.tar.gz"
    compile_signed(EXAMPLES, out, key, "HS256")
    files = read_tar(out.read_bytes())
    token = json.loads(files["/.signatures.json"])["signatures"][0]
    import jwt

    payload = jwt.decode(token, key.read_text(), algorithms=["HS256"])
    names = {f["name"] for f in payload["files"]}
    assert names == {n.lstrip("/") for n in files} - {".signatures.json"}
    for f in payload["files"]:
        assert f["hash"] == file_digest(f["name"], files["/" + f["name"]])


@pytest.mark.parametrize("alg", ["RS256", "ES256", "HS256"])
def test_real_opa_accepts_signed_and_refuses_tampered(tmp_path: Path, alg: str) -> None:
    key, verification = keypair(tmp_path, alg)
    good = tmp_path / "good.tar.gz"
    compile_signed(EXAMPLES, good, key, alg)
    verify = ["--verification-key", verification, "--signing-alg", alg]
    with run_opa("--bundle", str(good), *verify) as opa:
        rev = requests.get(f"{opa.url}/v1/data/aam/compiled/revision", timeout=5).json()["result"]
    assert len(rev) == 64

    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(tampered(good.read_bytes()))
    r = subprocess.run([opa_binary(), "run", "--server", "--addr", "127.0.0.1:0", "--bundle", str(bad),
                        *verify], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "digest mismatch" in r.stdout + r.stderr


class _Bundles(http.server.BaseHTTPRequestHandler):
    current: bytes = b""
    served: int = 0

    def do_GET(self) -> None:
        type(self).served += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Length", str(len(self.current)))
        self.end_headers()
        self.wfile.write(self.current)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def bundle_server() -> Iterator[tuple[str, type[_Bundles]]]:
    handler = type("Handler", (_Bundles,), {})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", handler
    finally:
        srv.shutdown()
        srv.server_close()


def wait_for(check: object, what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_opa_keeps_previous_bundle_when_update_is_tampered(tmp_path: Path) -> None:
    key, public = keypair(tmp_path, "RS256")
    first = tmp_path / "first.tar.gz"
    compile_signed(EXAMPLES, first, key, "RS256")
    second_src = tmp_path / "policies"
    second_src.mkdir()
    for f in EXAMPLES.glob("*.yaml"):
        (second_src / f.name).write_text(f.read_text().replace("daily_usd: 75", "daily_usd: 80"))
    second = tmp_path / "second.tar.gz"
    compile_signed(second_src, second, key, "RS256")
    config = tmp_path / "opa.yaml"
    with bundle_server() as (url, handler):
        handler.current = first.read_bytes()
        config.write_text(json.dumps({
            "services": {"aam": {"url": url}},
            "bundles": {"aam": {"service": "aam", "resource": "bundle.tar.gz",
                                "polling": {"min_delay_seconds": 1, "max_delay_seconds": 1},
                                "signing": {"keyid": "aam"}}},
            "keys": {"aam": {"algorithm": "RS256", "key": Path(public).read_text()}},
        }))
        with run_opa("--config-file", str(config)) as opa:
            def revision() -> str | None:
                r = requests.get(f"{opa.url}/v1/data/aam/compiled/revision", timeout=5)
                return r.json().get("result")

            def models() -> dict:
                return requests.get(f"{opa.url}/v1/data/aam/compiled/policies", timeout=5).json()["result"][
                    "spiffe://prod/agent/finance-analyst"]["models"]

            wait_for(lambda: revision() is not None, "the first signed bundle")
            first_rev = revision()
            handler.current = tampered(first.read_bytes())
            handler.served = 0
            wait_for(lambda: handler.served >= 3, "OPA to poll the tampered bundle")
            assert revision() == first_rev
            assert "gpt-evil" not in models()
            handler.current = second.read_bytes()
            wait_for(lambda: revision() != first_rev, "the next signed bundle")
            assert "gpt-evil" not in models()
