"""The shipped sample settings load and mean what their comments say."""

from __future__ import annotations

from pathlib import Path

from pdp.config import Settings

SAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "pdp" / "pdp.toml"


def test_sample_settings_load() -> None:
    s = Settings.load(SAMPLE, env={})
    assert s.plaintext is False
    assert s.trust_domains == ("prod",)
    assert s.trusted_gateways == ("spiffe://prod/gateway/envoy",)
    assert s.require_jwt_svid is True
    assert s.opa_timeout_ms == 250


def test_env_overrides_the_file() -> None:
    assert Settings.load(SAMPLE, env={"AAM_OPA_TIMEOUT_MS": "100"}).opa_timeout_ms == 100


def test_sample_settings_use_vault_with_approle() -> None:
    s = Settings.load(SAMPLE, env={})
    assert s.broker == "vault"
    assert s.vault_role_id and s.vault_secret_id_file and not s.vault_token_file
