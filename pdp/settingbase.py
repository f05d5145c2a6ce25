"""What every component's settings module shares: the located error and the address checks.

A component declares the settings it owns as a frozen dataclass beside its code (e.g.
pdp/ledgersettings.py) with a ``validate`` of its own; pdp/config.py composes them into one
``Settings`` and loads it. Those modules import this one, never pdp.config (which imports
them), and nothing heavy: pdp.config is imported by every ``aam`` command.
"""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

REPO_ROOT = Path(__file__).resolve().parent.parent
# Where scripts/setup puts built tools (OPA, ...): outside the repo, shared by clones.
DEFAULT_TOOLS_DIR = Path(
    os.environ.get("AAM_TOOLS_DIR")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aam" / "tools"
)


class ConfigError(ValueError):
    """A setting is missing, malformed or unsafe; the message names it.

    ``setting`` and ``reason``, when set, let ``Settings.load`` say where the bad value
    came from (``FILE: setting KEY: reason``, ``AAM_KEY: reason``) instead of only its name.
    """

    def __init__(self, message: str, setting: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.setting = setting
        self.reason = reason if reason is not None else message


def setting_error(name: str, reason: str) -> ConfigError:
    """A ConfigError about one setting: ``setting NAME: reason``. A check that involves two
    settings names the one whose value is wrong, and its reason names the other."""
    return ConfigError(f"setting {name}: {reason}", setting=name, reason=reason)


P = TypeVar("P", bound="SettingsPart")


class SettingsPart:
    """Base of a component's settings dataclass (no fields of its own)."""

    def validate(self) -> None:
        """This component's checks; each raises :func:`setting_error`."""

    @classmethod
    def of(cls: type[P], settings: Any) -> P:
        """Only this component's part of ``settings`` (a composed ``Settings``)."""
        return part(settings, cls)


def part(settings: Any, cls: type[P]) -> P:
    """The ``cls`` component's settings taken from ``settings`` (any object with its fields,
    e.g. the composed ``Settings``): what a component needs, and nothing else."""
    return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})  # type: ignore[arg-type]


def sqlite_ledger(ledger_url: str) -> bool:
    """Whether ``ledger_url`` names the embedded SQLite store (pdp/ledger open_ledger)."""
    return ledger_url.lower().startswith("sqlite:")


UNIX_SCHEME = "unix://"
# sockaddr_un.sun_path is 108 bytes on Linux, the terminating NUL included.
MAX_UNIX_PATH = 107


def unix_socket_path(addr: str, name: str = "address", allow_auto: bool = False) -> str:
    """The socket path of a ``unix:///abs/path`` address ("" for ``unix://`` when
    ``allow_auto``: a socket in a fresh private directory)."""
    path = addr[len(UNIX_SCHEME):]
    if not path and allow_auto:
        return ""
    if not path.startswith("/") or len(path.encode()) > MAX_UNIX_PATH or path.endswith("/") \
            or ":" in path or "\0" in path:
        reason = (f"must be unix:///absolute/path (at most {MAX_UNIX_PATH} bytes, no ':')"
                  + (" or unix://" if allow_auto else "") + f", got {addr!r}")
        raise ConfigError(f"{name} {reason}", reason=reason)
    return path


def split_addr(addr: str, name: str = "address") -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        reason = f"must be host:port, got {addr!r}"
        raise ConfigError(f"{name} {reason}", reason=reason)
    return host.strip("[]"), int(port)


def check_addr(name: str, addr: str) -> tuple[str, int]:
    """:func:`split_addr` of a setting's value, refused as ``setting NAME: reason``."""
    try:
        return split_addr(addr, name)
    except ConfigError as exc:
        raise setting_error(name, exc.reason) from None


def check_unix_socket(name: str, addr: str, allow_auto: bool = False) -> str:
    """:func:`unix_socket_path` of a setting's value, refused as ``setting NAME: reason``."""
    try:
        return unix_socket_path(addr, name, allow_auto)
    except ConfigError as exc:
        raise setting_error(name, exc.reason) from None


def check_positive(self: Any, *names: str, hint: str = "") -> None:
    """Each of ``names`` must be above 0."""
    for name in names:
        if not getattr(self, name) > 0:
            raise setting_error(name, f"must be positive{hint}, got {getattr(self, name)!r}")


def check_not_negative(self: Any, *names: str, hint: str = "") -> None:
    """Each of ``names`` must be 0 or more."""
    for name in names:
        if not getattr(self, name) >= 0:
            raise setting_error(name, f"must not be negative{hint}, got {getattr(self, name)!r}")
