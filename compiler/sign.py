"""Bundle signing the way OPA verifies it (``.signatures.json``).

OPA expects one compact JWS whose payload lists every file of the bundle
with its SHA-256: raw bytes for policies, and for structured files
(``data.json``, ``.manifest``) a digest of the parsed JSON written back with
sorted keys and no spaces, strings escaped like Go's encoder. A file missing
from the list, or any digest mismatch, makes OPA refuse the whole bundle.

JWS encoding and key handling come from PyJWT (with ``cryptography``): it
gets ES256's raw r||s signature format and PEM parsing right, which is easy
to get subtly wrong by hand.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from decimal import Decimal
from pathlib import PurePosixPath
from typing import Any

import jwt

from compiler.bundle import Bundle, canonical_json

SIGNATURES = ".signatures.json"
ALGORITHMS = ("RS256", "ES256", "HS256")
_STRUCTURED = ("data.json", "data.yaml", ".manifest")


class SigningError(Exception):
    """The key or algorithm cannot sign; the message never holds key material."""


@dataclass(frozen=True)
class Literal:
    """A JSON number kept as written: OPA hashes numbers by their text."""

    text: str


def _go_string(s: str) -> str:
    # Python's escaping matches Go's encoder with SetEscapeHTML(false), except
    # that Go also escapes U+2028 and U+2029.
    return json.dumps(s, ensure_ascii=False).replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _canonical(value: Any, out: list[str]) -> None:
    if isinstance(value, dict):
        out.append("{")
        for i, key in enumerate(sorted(value, key=lambda k: k.encode())):
            if i:
                out.append(",")
            out.append(_go_string(key) + ":")
            _canonical(value[key], out)
        out.append("}")
    elif isinstance(value, list):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _canonical(item, out)
        out.append("]")
    elif isinstance(value, Literal):
        out.append(value.text)
    elif isinstance(value, str):
        out.append(_go_string(value))
    else:
        out.append(json.dumps(value))


def file_digest(name: str, body: bytes) -> str:
    """The hex SHA-256 OPA computes for one bundle file."""
    if PurePosixPath(name).name in _STRUCTURED:
        value = json.loads(body, parse_float=Literal, parse_int=Literal,
                           parse_constant=lambda c: Decimal(c))
        out: list[str] = []
        _canonical(value, out)
        return hashlib.sha256("".join(out).encode()).hexdigest()
    return hashlib.sha256(body).hexdigest()


def sign(bundle: Bundle, key: bytes, algorithm: str = "RS256", key_id: str = "default") -> Bundle:
    """A copy of ``bundle`` with ``.signatures.json`` covering every file."""
    if algorithm not in ALGORITHMS:
        raise SigningError(f"unsupported signing algorithm {algorithm!r} (use {', '.join(ALGORITHMS)})")
    files = {n: b for n, b in bundle.files.items() if n != SIGNATURES}
    payload = {"files": [{"name": n, "hash": file_digest(n, files[n]), "algorithm": "SHA-256"}
                         for n in sorted(files)]}
    try:
        token = jwt.encode(payload, key, algorithm=algorithm, headers={"kid": key_id})
    except (ValueError, TypeError, jwt.exceptions.PyJWTError) as exc:
        kind = "secret" if algorithm == "HS256" else "PEM private key"
        raise SigningError(f"cannot sign with {algorithm}: the key is not a usable {kind}"
                           f" ({type(exc).__name__})") from None
    files[SIGNATURES] = canonical_json({"signatures": [token]})
    return Bundle(bundle.revision, files)
