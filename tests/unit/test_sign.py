"""Bundle signing details that the real-OPA tests do not reach."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from aam.cli.main import run
from compiler.sign import file_digest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_structured_digest_is_canonical_like_opa() -> None:
    # Key order and whitespace do not matter; numbers keep their text; U+2028 is escaped as Go does.
    a = file_digest("aam/compiled/data.json", b'{"b": 1.50, "a": "x\xe2\x80\xa8y"}')
    b = file_digest("aam/compiled/data.json", b'{"a":"x\\u2028y","b":1.50}')
    assert a == b == hashlib.sha256(b'{"a":"x\\u2028y","b":1.50}').hexdigest()


def test_policy_digest_is_raw_bytes() -> None:
    assert file_digest("aam/authz.rego", b"package x\n") == hashlib.sha256(b"package x\n").hexdigest()


def test_unusable_key_is_a_located_error_without_key_material(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\nTOPSECRETbutbroken\n-----END PRIVATE KEY-----\n")
    out, err = io.StringIO(), io.StringIO()
    code = run(["compile", str(EXAMPLES), "-o", str(tmp_path / "b.tar.gz"), "--sign-key", str(key)], out, err)
    assert code == 1
    assert err.getvalue().startswith(f"{key}: error: cannot sign with RS256: the key is not a usable PEM")
    assert "TOPSECRET" not in err.getvalue()
    assert not (tmp_path / "b.tar.gz").exists()


def test_missing_key_file(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = run(["compile", str(EXAMPLES), "-o", str(tmp_path / "b.tar.gz"), "--sign-key",
                str(tmp_path / "nope.pem")], out, err)
    assert code == 1
    assert "cannot read signing key: No such file or directory" in err.getvalue()


def test_unknown_algorithm_is_a_usage_error(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = run(["compile", str(EXAMPLES), "--sign-key", "k", "--signing-alg", "none"], out, err)
    assert code == 2
