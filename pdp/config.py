"""Typed settings for the PDP, from one place: defaults < TOML file < env < flags.

Each component declares the settings it owns, with their defaults and checks, in a small
module beside its code (a frozen dataclass with a ``validate``, e.g. pdp/ledgersettings.py;
the registry is :data:`COMPONENTS`). :class:`Settings` composes them into one flat dataclass
(``settings.ledger_url``, flat TOML keys) and :meth:`Settings.load` fills it.

Environment variables are ``AAM_`` plus the upper-cased field name, e.g.
``AAM_OPA_TIMEOUT_MS=100``. Nothing else in the code base reads the
environment for configuration.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from pdp.brokersettings import BrokerSettings
from pdp.consolesettings import ConsoleSettings
from pdp.extauthzsettings import ExtAuthzSettings
from pdp.healthsettings import HealthSettings
from pdp.identitysettings import IdentitySettings
from pdp.ledgersettings import LedgerSettings
from pdp.opasettings import OpaSettings
from pdp.policysettings import PolicySettings
from pdp.serversettings import LoggingSettings, ServerSettings
from pdp.settingbase import (
    DEFAULT_TOOLS_DIR,
    MAX_UNIX_PATH,
    REPO_ROOT,
    UNIX_SCHEME,
    ConfigError,
    SettingsPart,
    part,
    setting_error,
    split_addr,
    sqlite_ledger,
    unix_socket_path,
)
from pdp.tracing.settings import TracingSettings

__all__ = [
    "COMPONENTS", "DEFAULT_SQLITE_LEDGER", "DEFAULT_STATE_DIR", "DEFAULT_TOOLS_DIR",
    "LAST_UP_LEDGER", "MASK", "MAX_UNIX_PATH", "REPO_ROOT", "SECRET_SUFFIXES", "UNIX_SCHEME",
    "BrokerSettings", "ConfigError", "ConsoleSettings", "ExtAuthzSettings", "HealthSettings",
    "IdentitySettings", "LedgerSettings",
    "LoggingSettings", "OpaSettings", "PolicySettings", "ServerSettings", "Settings",
    "SettingsPart", "TracingSettings", "masked", "part", "resolve_workers", "setting_error",
    "settings_dict", "settings_from_dict", "settings_toml", "split_addr", "sqlite_ledger",
    "unix_socket_path", "up_project_dir", "usable_cpus",
]

# Where aam up keeps its state: the embedded ledger and the development secrets
# (gateway token, audit key, audit anchor), each a 0600 file (pdp/secretfile.py).
DEFAULT_STATE_DIR = Path(
    os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "aam"
# Before ledgers were per project, aam up kept one here (still read when nothing newer is).
DEFAULT_SQLITE_LEDGER = DEFAULT_STATE_DIR / "ledger.sqlite3"
# The ledger URL of the latest aam up, for the reading commands (aam audit, replay, shadow).
LAST_UP_LEDGER = DEFAULT_STATE_DIR / "last-up-ledger"


def up_project_dir(policies: Path) -> Path:
    """aam up's state for one policy directory: its own embedded ledger, so two clones or
    two policy sets never share spend, rates or an audit chain."""
    resolved = policies.resolve()
    slug = re.sub(r"[^a-z0-9]+", "-", resolved.name.lower()).strip("-") or "policies"
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    return DEFAULT_STATE_DIR / "projects" / f"{slug}-{digest}"


# Every component's settings, in the order --print-config shows them.
COMPONENTS: tuple[type[SettingsPart], ...] = (
    ServerSettings, LoggingSettings, PolicySettings, ExtAuthzSettings, OpaSettings,
    IdentitySettings, BrokerSettings, LedgerSettings, HealthSettings, TracingSettings,
    ConsoleSettings,
)


# The bases are COMPONENTS reversed: a dataclass takes its bases' fields from the last base
# to the first, so this keeps COMPONENTS' order (grpc_addr first).
@dataclass(frozen=True)
class Settings(ConsoleSettings, TracingSettings, HealthSettings, LedgerSettings, BrokerSettings,
               IdentitySettings, OpaSettings, ExtAuthzSettings, PolicySettings, LoggingSettings,
               ServerSettings):
    """Every setting of the PDP: the components' settings side by side, flat (no field of
    its own). A component given only its part: ``part(settings, LedgerSettings)``."""

    @classmethod
    def load(
        cls,
        file: Path | None = None,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> Settings:
        """defaults < ``file`` (TOML) < ``env`` (``AAM_*``) < ``overrides`` (flags; None is
        unset). An error names where the bad value came from: ``FILE: setting KEY: reason``,
        ``AAM_KEY: reason`` or ``setting KEY: reason`` for a flag."""
        values: dict[str, Any] = {}
        # Where each value came from, for the error message: the file, or its AAM_ variable.
        origin: dict[str, str] = {}
        known = {f.name: f for f in fields(cls)}
        if file is not None:
            try:
                from_file = tomllib.loads(file.read_text())
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"{file}: {exc}") from None
            unknown = sorted(set(from_file) - set(known))
            if unknown:
                raise ConfigError("; ".join(f"{file}: setting {k}: {_unknown(k, known)}"
                                            for k in unknown))
            values.update(from_file)
            origin.update(dict.fromkeys(from_file, str(file)))
        env = os.environ if env is None else env
        for name in known:
            key = f"AAM_{name.upper()}"
            if key in env:
                values[name] = env[key]
                origin[name] = key
        given = {k: v for k, v in overrides.items() if v is not None}
        unknown = sorted(set(given) - set(known))
        if unknown:  # a caller's mistake, not a user's: flags map to known settings
            raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
        values.update(given)
        for k in given:
            origin.pop(k, None)
        try:
            settings = replace(cls(), **{k: _coerce(known[k].type, k, v) for k, v in values.items()})
            settings.validate()
        except ConfigError as exc:
            raise _located(exc, origin) from None
        return settings

    def validate(self) -> None:
        """Each component's checks, then those that span components. Every refusal is a
        :func:`setting_error` naming the setting whose value is wrong."""
        for component in COMPONENTS:
            component.validate(self)
        if self.workers > 1 and sqlite_ledger(self.ledger_url):
            raise setting_error("workers", f"{self.workers} needs a PostgreSQL ledger (or none): "
                                           "the SQLite ledger (ledger_url) admits one writer at a "
                                           "time, so its PDP runs as one process (workers = 1, "
                                           "or 0 for auto)")


def resolve_workers(settings: Settings) -> int:
    """How many PDP processes serve: ``workers``, or for 0 (auto) one per CPU, since one
    PDP process is bound to about one core by its GIL. With a SQLite ledger auto is 1:
    SQLite serialises every write on one file lock, so more processes only queue on it,
    and ``validate`` refuses more than 1 there."""
    if settings.workers > 0:
        return settings.workers
    if sqlite_ledger(settings.ledger_url):
        return 1
    return usable_cpus()


def usable_cpus(cgroup: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """``os.cpu_count()``, but no more than this process may run on (its CPU affinity) or
    use (a cgroup v2 CPU quota, as a container's CPU limit sets, rounded up): a pod limited
    to 2 CPUs on a 64-core node gets 2 workers, not 64."""
    cpus = os.cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        cpus = min(cpus, len(os.sched_getaffinity(0)) or cpus)
    try:
        quota, period = cgroup.read_text().split()[:2]
        if quota != "max" and int(period) > 0:
            cpus = min(cpus, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def settings_dict(settings: Settings) -> dict[str, Any]:
    """Every setting, JSON-ready: what a worker process is given (pdp/workers.py)."""
    return {f.name: list(v) if isinstance(v := getattr(settings, f.name), tuple) else v
            for f in fields(settings)}


def settings_from_dict(values: Mapping[str, Any]) -> Settings:
    """The inverse of :func:`settings_dict` (already validated by the parent)."""
    return Settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


# Settings whose values are secrets by name; *_file and *_key settings are paths to secrets,
# not secrets, and print as they are.
SECRET_SUFFIXES = ("_token", "_secret", "_password")
MASK = "***"
# scheme://user:PASSWORD@host: the password of a URL's user info, up to the last '@', so
# one with an unescaped '/' or '@' is masked whole (at worst more than the password).
_URL_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/?#@:]*:)(.*)(@)", re.S)
# password=..., sslpassword=...: libpq's keyword form, or a URL's query parameter.
_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&']+)", re.I)


def masked(name: str, value: Any) -> Any:
    """``value`` as it may be shown (aam serve --print-config): a secret-named setting
    entirely masked, a password inside a connection string or URL replaced by ***."""
    if name.endswith(SECRET_SUFFIXES):
        return MASK if value else value
    if isinstance(value, str):
        value = _URL_PASSWORD.sub(lambda m: m[1] + MASK + m[3], value)
        return _KEYWORD_PASSWORD.sub(lambda m: m[1] + MASK, value)
    return value


def settings_toml(settings: Settings) -> str:
    """Every effective setting as a TOML ``--config`` file would write it, secrets masked:
    what ``--print-config`` shows, loadable again when nothing was masked."""
    return "".join(f"{f.name} = {_toml(masked(f.name, getattr(settings, f.name)))}\n"
                   for f in fields(settings))


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    # A JSON string is a TOML basic string (the same escapes), non-ASCII kept as it is.
    return json.dumps(str(value), ensure_ascii=False)


_KINDS = {"bool": "a boolean (true or false)", "int": "an integer", "float": "a number",
          "str": "a string"}


def _coerce(typ: Any, name: str, value: Any) -> Any:
    typ = typ if isinstance(typ, str) else typ.__name__
    if typ.startswith("tuple"):
        return _coerce_list(name, value)
    try:
        if typ == "bool":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if typ == "int":
            return int(value)
        if typ == "float":
            return float(value)
        if isinstance(value, (list, dict)):  # str() would turn a TOML array into text
            raise TypeError(value)
        return str(value)
    except (TypeError, ValueError):
        raise setting_error(name, f"must be {_KINDS.get(typ, typ)}, got {value!r}") from None


def _coerce_list(name: str, value: Any) -> tuple[str, ...]:
    """A TOML array of strings, taken as written; or the environment's comma-separated
    string, whose separator may have spaces around it (``"a, b"``). Nothing else is
    stripped: whitespace at either end of the value, or inside a TOML string, stays and
    fails validation, rather than being trimmed silently."""
    if isinstance(value, str):
        if value == "":
            return ()
        items = re.split(r"[ \t]*,[ \t]*", value)
        if "" in items:
            raise setting_error(name, f"{value!r} has an empty entry (a stray comma)")
        return tuple(items)
    if not isinstance(value, (list, tuple)) or not all(isinstance(i, str) for i in value):
        raise setting_error(name, f"must be a list of strings, got {value!r}")
    return tuple(value)


def _unknown(key: str, known: Mapping[str, Any]) -> str:
    """Why a key is refused, with the setting it was likely meant to be."""
    import difflib

    close = difflib.get_close_matches(key, known, n=1)
    return "unknown setting" + (f" (did you mean {close[0]}?)" if close else "")


def _located(exc: ConfigError, origin: Mapping[str, str]) -> ConfigError:
    """``exc`` (a :func:`setting_error`) with the place its setting's value came from:
    ``FILE: setting KEY: reason`` or ``AAM_KEY: reason``; a default's or a flag's stays
    ``setting KEY: reason``."""
    name, reason = exc.setting, exc.reason
    where = None if name is None else origin.get(name)
    if name is None or where is None:  # a default or a flag: the message already names the setting
        return exc
    env = where == f"AAM_{name.upper()}"
    return ConfigError(f"{where}: {reason}" if env else f"{where}: setting {name}: {reason}",
                       setting=name, reason=reason)
