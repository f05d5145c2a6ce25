"""SPIFFE ID parsing by the rules of the SPIFFE-ID specification (section 2)."""

from __future__ import annotations

import string
from dataclasses import dataclass

MAX_LENGTH = 2048
_TD_CHARS = frozenset(string.ascii_lowercase + string.digits + ".-_")
_PATH_CHARS = frozenset(string.ascii_letters + string.digits + ".-_")


class InvalidSpiffeID(ValueError):
    """The string is not a SPIFFE ID; the message says which rule it breaks."""


@dataclass(frozen=True)
class SpiffeID:
    trust_domain: str
    path: str

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}{self.path}"


def parse_trust_domain(raw: str) -> str:
    """A bare trust domain name (``prod``, ``example.org``), as a setting names one: no
    scheme, user info, port or path, and only the characters the spec allows, so a typo
    fails here rather than as a caller that is never trusted."""
    return _trust_domain(raw, "trust domain")


def _trust_domain(td: str, what: str) -> str:
    if not td:
        raise InvalidSpiffeID(f"{what} is empty" if what == "trust domain"
                              else "SPIFFE ID has an empty trust domain")
    if "://" in td:
        raise InvalidSpiffeID(f"{what} must be a bare name, without a scheme such as 'spiffe://'")
    if "@" in td or ":" in td:
        raise InvalidSpiffeID(f"{what} must not contain user info or a port")
    if "/" in td:
        raise InvalidSpiffeID(f"{what} must not contain a path")
    if len(td.encode()) > MAX_LENGTH:
        raise InvalidSpiffeID(f"{what} is longer than {MAX_LENGTH} bytes")
    bad = sorted(set(td) - _TD_CHARS)
    if bad:
        raise InvalidSpiffeID(
            f"{what} has invalid character {bad[0]!r}"
            " (allowed: lower-case letters, digits, '.', '-', '_')"
        )
    return td


def parse(raw: str) -> SpiffeID:
    if not raw:
        raise InvalidSpiffeID("SPIFFE ID is empty")
    if len(raw.encode()) > MAX_LENGTH:
        raise InvalidSpiffeID(f"SPIFFE ID is longer than {MAX_LENGTH} bytes")
    if not raw.startswith("spiffe://"):
        raise InvalidSpiffeID("SPIFFE ID must start with 'spiffe://' (lower-case scheme)")
    rest = raw[len("spiffe://"):]
    if "?" in rest or "#" in rest:
        raise InvalidSpiffeID("SPIFFE ID must not have a query or fragment")
    if "%" in rest:
        raise InvalidSpiffeID("SPIFFE ID must not contain percent-encoded characters")
    td, slash, path = rest.partition("/")
    _trust_domain(td, "SPIFFE ID trust domain")
    if not slash:
        return SpiffeID(td, "")
    if not path:
        raise InvalidSpiffeID("SPIFFE ID path must not end with '/'")
    for segment in path.split("/"):
        if segment == "":
            raise InvalidSpiffeID("SPIFFE ID path has an empty segment ('//' or trailing '/')")
        if segment in (".", ".."):
            raise InvalidSpiffeID(f"SPIFFE ID path must not contain a {segment!r} segment")
        bad = sorted(set(segment) - _PATH_CHARS)
        if bad:
            raise InvalidSpiffeID(
                f"SPIFFE ID path has invalid character {bad[0]!r}"
                " (allowed: letters, digits, '.', '-', '_')"
            )
    return SpiffeID(td, "/" + path)
