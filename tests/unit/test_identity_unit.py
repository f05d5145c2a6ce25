"""X.509-SVID parsing and settings for identity, without a network."""

from __future__ import annotations

import datetime as dt

import pytest

from pdp.config import ConfigError, Settings
from pdp.errors import Unauthenticated
from pdp.identity import spiffe_id_from_pem
from tests.certs import CA, DAY, NOW


def test_spiffe_id_is_read_from_the_single_uri_san() -> None:
    assert spiffe_id_from_pem(CA().svid("spiffe://prod/agent/a").cert_pem) == "spiffe://prod/agent/a"


def test_expired_svid_is_refused_even_past_tls() -> None:
    pem = CA().svid("spiffe://prod/agent/a", not_before=NOW - 3 * DAY, not_after=NOW - DAY).cert_pem
    with pytest.raises(Unauthenticated, match="client certificate expired at 20"):
        spiffe_id_from_pem(pem)


def test_not_yet_valid_svid_is_refused() -> None:
    pem = CA().svid("spiffe://prod/agent/a", not_before=NOW + DAY, not_after=NOW + 2 * DAY).cert_pem
    with pytest.raises(Unauthenticated, match="not valid before"):
        spiffe_id_from_pem(pem, now=dt.datetime.now(dt.UTC))


def test_ca_certificate_is_not_an_svid() -> None:
    with pytest.raises(Unauthenticated, match="CA certificate"):
        spiffe_id_from_pem(CA().pem)


def test_trusted_gateways_from_env_is_a_comma_list() -> None:
    s = Settings.load(env={"AAM_TRUSTED_GATEWAYS": "spiffe://prod/gw/a, spiffe://prod/gw/b"})
    assert s.trusted_gateways == ("spiffe://prod/gw/a", "spiffe://prod/gw/b")


def test_trusted_gateway_must_be_a_spiffe_id() -> None:
    with pytest.raises(ConfigError, match="not a SPIFFE ID"):
        Settings.load(env={}, trusted_gateways=["gw-a"])


def test_required_jwt_svid_needs_a_bundle() -> None:
    with pytest.raises(ConfigError, match=r"^setting require_jwt_svid: needs jwt_bundle"):
        Settings.load(env={}, require_jwt_svid=True)
