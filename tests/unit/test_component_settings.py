"""Issue 19 point 3: each component declares its settings, with defaults and checks, beside
its code; pdp.config composes them into one flat ``Settings`` and loads it from file < env <
flags, and every refusal names the file (or variable), the key and the reason."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import FrozenInstanceError, fields
from pathlib import Path

import pytest

from pdp.config import (
    COMPONENTS,
    BrokerSettings,
    ConfigError,
    ConsoleSettings,
    ExtAuthzSettings,
    HealthSettings,
    IdentitySettings,
    LedgerSettings,
    LoggingSettings,
    OpaSettings,
    PolicySettings,
    ServerSettings,
    Settings,
    TracingSettings,
    part,
    settings_dict,
    settings_from_dict,
    settings_toml,
)

# One invalid value of a setting of each component: (key, TOML value, env value, reason).
INVALID = {
    ServerSettings: ("grpc_addr", '"localhost"', "localhost", "must be host:port, got 'localhost'"),
    LoggingSettings: ("log_level", '"loud"', "loud",
                      "must be one of debug, info, warning, error, critical, got 'loud'"),
    PolicySettings: ("policy_source", '"git"', "git", "must be directory or kubernetes, got 'git'"),
    ExtAuthzSettings: ("extauthz_addr", '"envoy"', "envoy", "must be host:port, got 'envoy'"),
    OpaSettings: ("opa_timeout_ms", "0", "0", "must be positive, got 0"),
    IdentitySettings: ("jwt_audience", '" "', " ", "must not be empty"),
    BrokerSettings: ("credential_min_remaining_s", "-1.5", "-1.5", "must not be negative, got -1.5"),
    LedgerSettings: ("ledger_pool_size", "0", "0", "must be positive, got 0"),
    HealthSettings: ("broker_probe_interval_s", "0", "0", "must be positive, got 0.0"),
    TracingSettings: ("trace_sample_ratio", "1.5", "1.5", "must be between 0 and 1, got 1.5"),
    ConsoleSettings: ("console_addr", '"console"', "console", "must be host:port, got 'console'"),
}


def test_settings_is_the_components_side_by_side() -> None:
    names = [f.name for c in COMPONENTS for f in fields(c)]
    assert len(names) == len(set(names)), "a setting is declared by two components"
    assert names == [f.name for f in fields(Settings)]  # flat, in COMPONENTS' order
    assert all(issubclass(Settings, c) for c in COMPONENTS)
    assert set(INVALID) == set(COMPONENTS)


def test_a_component_can_be_given_only_its_part() -> None:
    s = Settings.load(env={}, ledger_url="off", ledger_pool_size=3, otlp_endpoint="http://c:4317")
    ledger = part(s, LedgerSettings)
    assert type(ledger) is LedgerSettings and ledger.ledger_pool_size == 3
    assert not hasattr(ledger, "grpc_addr")
    assert TracingSettings.of(s) == TracingSettings(otlp_endpoint="http://c:4317")
    with pytest.raises(FrozenInstanceError):
        ledger.ledger_url = "x"  # type: ignore[misc]


@pytest.mark.parametrize("component", COMPONENTS, ids=lambda c: c.__name__)
def test_each_component_validates_its_own_part(component: type) -> None:
    component().validate()  # the defaults are valid
    key, _, env_value, reason = INVALID[component]
    bad = component(**{key: _typed(component, key, env_value)})
    with pytest.raises(ConfigError) as exc:
        bad.validate()
    assert str(exc.value) == f"setting {key}: {reason}"
    assert (exc.value.setting, exc.value.reason) == (key, reason)


def _typed(component: type, key: str, text: str) -> object:
    typ = {f.name: f.type for f in fields(component)}[key]
    return {"int": int, "float": float}.get(typ, str)(text)


def test_an_unknown_key_names_the_file_and_the_likely_setting(tmp_path: Path) -> None:
    f = tmp_path / "pdp.toml"
    f.write_text('ledger_pool_size = 4\notlp_endpoints = "http://c:4317"\nnot_a_thing = 1\n')
    with pytest.raises(ConfigError) as exc:
        Settings.load(f, env={})
    assert str(exc.value) == (f"{f}: setting not_a_thing: unknown setting; "
                              f"{f}: setting otlp_endpoints: unknown setting (did you mean "
                              "otlp_endpoint?)")


@pytest.mark.parametrize("component", COMPONENTS, ids=lambda c: c.__name__)
def test_an_invalid_file_value_names_file_key_and_reason(tmp_path: Path, component: type) -> None:
    key, toml_value, _, reason = INVALID[component]
    f = tmp_path / "pdp.toml"
    f.write_text(f"shutdown_grace_s = 2.5\n{key} = {toml_value}\n")
    with pytest.raises(ConfigError) as exc:
        Settings.load(f, env={})
    assert str(exc.value) == f"{f}: setting {key}: {reason}"


@pytest.mark.parametrize("component", COMPONENTS, ids=lambda c: c.__name__)
def test_an_invalid_env_value_names_the_variable_and_reason(tmp_path: Path, component: type) -> None:
    key, toml_value, env_value, reason = INVALID[component]
    f = tmp_path / "pdp.toml"
    f.write_text(f"{key} = {toml_value}\n")  # the env wins, and is blamed
    with pytest.raises(ConfigError) as exc:
        Settings.load(f, env={f"AAM_{key.upper()}": env_value})
    assert str(exc.value) == f"AAM_{key.upper()}: {reason}"


@pytest.mark.parametrize("component", COMPONENTS, ids=lambda c: c.__name__)
def test_an_invalid_flag_value_names_the_setting_and_reason(component: type) -> None:
    key, _, env_value, reason = INVALID[component]
    with pytest.raises(ConfigError) as exc:
        Settings.load(env={}, **{key: _typed(component, key, env_value)})
    assert str(exc.value) == f"setting {key}: {reason}"


@pytest.mark.parametrize(("given", "key", "reason"), [
    # A check across settings names the one whose value is wrong and, in its reason, the other.
    ({"workers": 2, "ledger_url": "sqlite:///tmp/l.db"}, "workers",
     "2 needs a PostgreSQL ledger (or none)"),
    ({"opa_url": "http://opa:8181"}, "opa_url", "needs bundle_signing_key"),
    ({"require_jwt_svid": True}, "require_jwt_svid", "needs jwt_bundle"),
    ({"broker": "vault"}, "broker", "vault needs vault_addr"),
    ({"broker": "vault", "vault_addr": "vault:8200"}, "vault_addr", "must be http://... or https://..."),
    ({"broker": "vault", "vault_addr": "http://v:8200", "vault_role_id": "r"}, "vault_role_id",
     "needs vault_secret_id_file"),
    ({"broker": "vault", "vault_addr": "http://v:8200", "vault_role_id": "r",
      "vault_secret_id_file": "/s", "vault_token_file": "/t"}, "vault_token_file",
     "is set beside vault_role_id"),
    ({"policy_source": "kubernetes", "kube_api_url": "http://k"}, "kube_api_url", "must be https://"),
    ({"policy_source": "kubernetes", "kube_ca_file": ""}, "kube_ca_file",
     "must not be empty with policy_source = kubernetes"),
    ({"otlp_ca_file": "/ca.pem", "otlp_endpoint": "http://c:4317"}, "otlp_ca_file",
     "needs an https:// otlp_endpoint"),
])
def test_checks_across_settings_name_the_wrong_one(tmp_path: Path, given: dict[str, object],
                                                   key: str, reason: str) -> None:
    f = tmp_path / "pdp.toml"
    f.write_text("".join(f"{k} = {_toml_literal(v)}\n" for k, v in given.items()))
    with pytest.raises(ConfigError) as exc:
        Settings.load(f, env={})
    assert str(exc.value).startswith(f"{f}: setting {key}: {reason}")


def _toml_literal(value: object) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else (
        str(value) if isinstance(value, int) else f'"{value}"')


@pytest.mark.parametrize("endpoint", ["", "http://127.0.0.1:4317", "https://collector:4317",
                                      "https://collector.obs.svc:4317/", "http://[::1]:4317"])
def test_tracing_endpoints_that_load(endpoint: str) -> None:
    assert Settings.load(env={"AAM_OTLP_ENDPOINT": endpoint}).otlp_endpoint == endpoint


@pytest.mark.parametrize("endpoint", ["collector:4317", "grpc://c:4317", "http://c", "http://c:",
                                      "http://c:99999", "http://c:4317/v1/traces", "http://u@c:4317",
                                      "http://c:4317?x=1", "http://:4317", " http://c:4317"])
def test_tracing_endpoints_that_are_refused(endpoint: str) -> None:
    with pytest.raises(ConfigError) as exc:
        Settings.load(env={"AAM_OTLP_ENDPOINT": endpoint})
    assert str(exc.value) == ("AAM_OTLP_ENDPOINT: must be http://host:port or https://host:port, "
                              f"got {endpoint!r}")


def test_tracing_defaults_and_other_checks() -> None:
    s = Settings.load(env={})
    assert (s.otlp_endpoint, s.otlp_ca_file, s.trace_sample_ratio, s.trace_service_name) == (
        "", "", 1.0, "aam-pdp")
    s = Settings.load(env={"AAM_OTLP_ENDPOINT": "https://c:4317", "AAM_OTLP_CA_FILE": "/ca.pem",
                           "AAM_TRACE_SAMPLE_RATIO": "0", "AAM_TRACE_SERVICE_NAME": "pdp-eu"})
    assert (s.otlp_ca_file, s.trace_sample_ratio, s.trace_service_name) == ("/ca.pem", 0.0, "pdp-eu")
    for env, message in [
        ({"AAM_OTLP_CA_FILE": "/ca.pem"}, "AAM_OTLP_CA_FILE: needs an https:// otlp_endpoint, got ''"),
        ({"AAM_TRACE_SAMPLE_RATIO": "-0.1"}, "AAM_TRACE_SAMPLE_RATIO: must be between 0 and 1, got -0.1"),
        ({"AAM_TRACE_SAMPLE_RATIO": "nan"}, "AAM_TRACE_SAMPLE_RATIO: must be between 0 and 1, got nan"),
        ({"AAM_TRACE_SERVICE_NAME": ""}, "AAM_TRACE_SERVICE_NAME: must be non-empty without "
                                         "surrounding whitespace, got ''"),
        ({"AAM_TRACE_SERVICE_NAME": " aam"}, "AAM_TRACE_SERVICE_NAME: must be non-empty without "
                                             "surrounding whitespace, got ' aam'"),
    ]:
        with pytest.raises(ConfigError) as exc:
            Settings.load(env=env)
        assert str(exc.value) == message


def test_workers_and_print_config_carry_every_components_settings(tmp_path: Path) -> None:
    s = Settings.load(env={}, ledger_url="off", trusted_gateways=["spiffe://prod/gw"],
                      otlp_endpoint="https://c:4317", trace_sample_ratio=0.25, log_level="debug")
    assert settings_from_dict(settings_dict(s)) == s
    f = tmp_path / "again.toml"
    f.write_text(settings_toml(s))
    assert Settings.load(f, env={}) == s


def test_importing_config_stays_cheap() -> None:
    """No component's settings module pulls in a heavy dependency (the CLI imports config)."""
    heavy = ("grpc", "psycopg", "hvac", "jwt", "cryptography", "requests", "yaml", "compiler",
             "opentelemetry", "pdp.ledger", "pdp.broker", "pdp.server", "pdp.opa")
    code = ("import sys, pdp.config; print('\\n'.join(sorted(sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.split()
    assert not [m for m in loaded if m in heavy or m.startswith(tuple(h + "." for h in heavy))]
