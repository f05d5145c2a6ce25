"""Issue 19 point 3 (a slice): identity settings through the compiler's SPIFFE parser, errors
that say where a bad value came from, and ``aam serve --print-config`` with secrets masked.

A typo in ``trust_domains`` or ``trusted_gateways`` used to pass and show up only at run
time as a caller that is "not trusted"; here each is refused at load, naming the setting.
"""

from __future__ import annotations

import io
import tomllib
from pathlib import Path

import pytest

from aam.cli.main import run
from compiler import spiffe
from pdp.config import ConfigError, Settings, masked, settings_toml

# The examples: each is refused, by the parser's own reason.
BAD_TRUST_DOMAINS = [
    ("BAD", "invalid character 'A'"),
    ("td$", r"invalid character '\$'"),
    ("td\0", r"invalid character '\\x00'"),
    ("é", "invalid character 'é'"),
    ("prod ", "surrounding whitespace"),
    (" prod", "surrounding whitespace"),
    ("spiffe://prod", "without a scheme"),
    ("prod:8080", "user info or a port"),
    ("user@prod", "user info or a port"),
    ("prod/agents", "must not contain a path"),
    ("", "is empty"),
]
BAD_GATEWAYS = [
    ("spiffe://TD/path", "invalid character 'D'"),
    ("spiffe://prod/./path", "'.' segment"),
    ("spiffe://prod/../path", "'..' segment"),
    ("spiffe://prod/%62", "percent-encoded"),
    ("spiffe://prod/gw?query=1", "query or fragment"),
    ("spiffe://prod/gw#frag", "query or fragment"),
    ("spiffe://user@prod/gw", "user info or a port"),
    ("spiffe://prod:8080/gw", "user info or a port"),
    ("SPIFFE://prod/gw", "lower-case scheme"),
    ("spiffe://prod/gw/", "empty segment"),
    ("spiffe://prod/gw ", "surrounding whitespace"),
    ("gw-a", "must start with 'spiffe://'"),
    ("spiffe://prod", "names a trust domain"),
]


@pytest.mark.parametrize(("value", "reason"), BAD_TRUST_DOMAINS)
def test_a_bad_trust_domain_is_refused_naming_setting_and_value(value: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason) as exc:
        Settings.load(env={}, trust_domains=[value])
    assert str(exc.value).startswith(f"setting trust_domains: {value!r} ")


@pytest.mark.parametrize(("value", "reason"), BAD_GATEWAYS)
def test_a_bad_gateway_is_refused_naming_setting_and_value(value: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason) as exc:
        Settings.load(env={}, trusted_gateways=[value])
    assert str(exc.value).startswith(f"setting trusted_gateways: {value!r} ")


def test_valid_identity_settings_are_kept_as_written() -> None:
    s = Settings.load(env={}, trust_domains=["prod", "example.org", "a-b_c.9"],
                      trusted_gateways=["spiffe://prod/gw/envoy", "spiffe://example.org/ns/x/sa/gw"])
    assert s.trust_domains == ("prod", "example.org", "a-b_c.9")
    assert s.trusted_gateways == ("spiffe://prod/gw/envoy", "spiffe://example.org/ns/x/sa/gw")


def test_parse_trust_domain_agrees_with_parse() -> None:
    """One rule for the trust domain, bare or inside an ID."""
    for td in ("prod", "example.org", "a-b_c.9"):
        assert spiffe.parse_trust_domain(td) == spiffe.parse(f"spiffe://{td}/x").trust_domain
    for td in ("BAD", "td$", "é", "a b"):
        with pytest.raises(spiffe.InvalidSpiffeID):
            spiffe.parse_trust_domain(td)
        with pytest.raises(spiffe.InvalidSpiffeID):
            spiffe.parse(f"spiffe://{td}/x")


# --- the environment's list form --------------------------------------------------------------

def test_env_lists_may_space_their_commas() -> None:
    s = Settings.load(env={"AAM_TRUST_DOMAINS": "prod, example.org ,stage",
                           "AAM_TRUSTED_GATEWAYS": "spiffe://prod/gw/a,\tspiffe://prod/gw/b"})
    assert s.trust_domains == ("prod", "example.org", "stage")
    assert s.trusted_gateways == ("spiffe://prod/gw/a", "spiffe://prod/gw/b")
    assert Settings.load(env={"AAM_TRUST_DOMAINS": ""}).trust_domains == ()


@pytest.mark.parametrize(("value", "message"), [
    ("prod ", "AAM_TRUST_DOMAINS: 'prod ' has surrounding whitespace"),
    (" prod", "AAM_TRUST_DOMAINS: ' prod' has surrounding whitespace"),
    ("prod,,stage", "AAM_TRUST_DOMAINS: 'prod,,stage' has an empty entry"),
    ("prod,", "AAM_TRUST_DOMAINS: 'prod,' has an empty entry"),
    ("Prod", "AAM_TRUST_DOMAINS: 'Prod' is not a trust domain: trust domain has invalid "
             "character 'P'"),
])
def test_env_list_errors_name_the_variable(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        Settings.load(env={"AAM_TRUST_DOMAINS": value})
    assert str(exc.value).startswith(message)


# --- errors from a settings file name the file ------------------------------------------------

@pytest.mark.parametrize(("text", "message"), [
    ('trust_domain = ["prod"]', "setting trust_domain: unknown setting (did you mean trust_domains?)"),
    ('trust_domains = ["BAD"]', "setting trust_domains: 'BAD' is not a trust domain:"),
    ('trust_domains = [" prod"]', "setting trust_domains: ' prod' has surrounding whitespace"),
    ('trust_domains = [1]', "setting trust_domains: must be a list of strings, got [1]"),
    ('trusted_gateways = ["spiffe://prod/%62"]', "setting trusted_gateways: 'spiffe://prod/%62' "
                                                 "is not a SPIFFE ID:"),
    ('opa_timeout_ms = "soon"', "setting opa_timeout_ms: must be an integer, got 'soon'"),
    ('policies = ["a", "b"]', "setting policies: must be a string"),
    # Every other check names its setting the same way.
    ("opa_gogc = 0", "setting opa_gogc: must be positive"),
])
def test_file_errors_name_file_setting_and_reason(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "pdp.toml"
    f.write_text(text + "\n")
    with pytest.raises(ConfigError) as exc:
        Settings.load(f, env={})
    assert str(exc.value).startswith(f"{f}: {message}")


def test_other_checks_name_the_env_variable() -> None:
    with pytest.raises(ConfigError, match=r"^AAM_OPA_GOGC: must be positive"):
        Settings.load(env={"AAM_OPA_GOGC": "0"})


def test_env_over_file_is_blamed_on_the_env(tmp_path: Path) -> None:
    f = tmp_path / "pdp.toml"
    f.write_text('trust_domains = ["prod"]\n')
    with pytest.raises(ConfigError, match=r"^AAM_TRUST_DOMAINS: 'BAD' is not a trust domain"):
        Settings.load(f, env={"AAM_TRUST_DOMAINS": "BAD"})


def test_serve_reports_a_file_error_in_one_line(tmp_path: Path) -> None:
    f = tmp_path / "pdp.toml"
    f.write_text('trusted_gateways = ["spiffe://prod/./gw"]\n')
    out, err = io.StringIO(), io.StringIO()
    assert run(["serve", "--config", str(f)], out, err) == 2
    assert err.getvalue() == (f"aam serve: error: {f}: setting trusted_gateways: "
                              "'spiffe://prod/./gw' is not a SPIFFE ID: SPIFFE ID path must not "
                              "contain a '.' segment\n")


# --- --print-config ---------------------------------------------------------------------------

def _print_config(*argv: str, monkeypatch: pytest.MonkeyPatch | None = None,
                  env: dict[str, str] | None = None) -> str:
    if monkeypatch is not None:
        for k, v in (env or {}).items():
            monkeypatch.setenv(k, v)
    out, err = io.StringIO(), io.StringIO()
    assert run([*argv, "--print-config"], out, err) == 0, err.getvalue()
    return out.getvalue()


def test_print_config_shows_file_env_and_flags_and_masks_the_ledger_password(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "pdp.toml"
    f.write_text('trust_domains = ["prod"]\nopa_timeout_ms = 100\naudit_key_file = "/k/audit.key"\n')
    text = _print_config("serve", "--config", str(f), "--workers", "2", monkeypatch=monkeypatch,
                         env={"AAM_LEDGER_URL": "postgresql://aam:hunter2-s3cret@db:5432/aam",
                              "AAM_OPA_TIMEOUT_MS": "200"})
    assert "hunter2-s3cret" not in text
    values = tomllib.loads(text)
    assert values["ledger_url"] == "postgresql://aam:***@db:5432/aam"
    assert values["trust_domains"] == ["prod"]
    assert values["opa_timeout_ms"] == 200  # env over file
    assert values["workers"] == 2  # flag over both
    assert values["audit_key_file"] == "/k/audit.key"  # a path, not a secret
    assert set(values) == set(Settings.__dataclass_fields__)


def test_print_config_masks_a_libpq_password(monkeypatch: pytest.MonkeyPatch) -> None:
    text = _print_config("serve", monkeypatch=monkeypatch,
                         env={"AAM_LEDGER_URL": "host=db user=aam password=hunter2 dbname=aam"})
    assert "hunter2" not in text
    assert 'ledger_url = "host=db user=aam password=*** dbname=aam"' in text


def test_print_config_round_trips_when_nothing_is_masked(tmp_path: Path) -> None:
    s = Settings.load(env={}, trust_domains=["prod", "example.org"],
                      trusted_gateways=["spiffe://prod/gw"], shutdown_grace_s=2.5)
    f = tmp_path / "again.toml"
    f.write_text(settings_toml(s))
    assert Settings.load(f, env={}) == s


def test_up_print_config_starts_and_writes_nothing(tmp_path: Path) -> None:
    token = tmp_path / "gateway.token"
    text = _print_config("up", "--gateway-token-file", str(token), "--ledger-url", "off")
    assert not token.exists()
    values = tomllib.loads(text)
    assert values["plaintext"] is True and values["gateway_token_file"] == str(token)


@pytest.mark.parametrize(("name", "value", "shown"), [
    ("vault_token", "s.abc", "***"),
    ("client_secret", "xyz", "***"),
    ("db_password", "pw", "***"),
    ("vault_token", "", ""),
    ("vault_token_file", "/run/vault/token", "/run/vault/token"),
    ("bundle_signing_key", "/etc/aam/signing.pem", "/etc/aam/signing.pem"),
    ("ledger_url", "postgresql://u:p@ss/w@h/db", "postgresql://u:***@h/db"),
    ("ledger_url", "postgresql://u@h/db", "postgresql://u@h/db"),
    ("ledger_url", "postgresql://h/db?sslpassword=k&sslmode=verify-full",
     "postgresql://h/db?sslpassword=***&sslmode=verify-full"),
    ("ledger_url", "host=h password='a b' dbname=x", "host=h password=*** dbname=x"),
    ("vault_addr", "https://u:tok@vault:8200", "https://u:***@vault:8200"),
    ("opa_url", "http://127.0.0.1:8181", "http://127.0.0.1:8181"),
    ("opa_timeout_ms", 500, 500),
])
def test_masked(name: str, value: object, shown: object) -> None:
    assert masked(name, value) == shown
