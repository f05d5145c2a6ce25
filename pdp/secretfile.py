"""Files that hold secrets (gateway token, audit key, signing keys): written 0600, read checked.

A secret file readable by group or others is refused rather than used: on a
shared host an agent process running as another user must not be able to read
what proves a gateway or keys the audit chain. Messages name the file, never
its contents.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from pdp.config import ConfigError


def write_secret(path: Path, data: bytes, *, overwrite: bool = False) -> None:
    """Write ``data`` to ``path`` with mode 0600 atomically (a temporary file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.exists() and not overwrite:
        raise ConfigError(f"{path}: already exists; refusing to overwrite a secret")
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dirfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


def read_secret(path: Path | str, setting: str) -> bytes:
    """The contents of a secret file, or a ConfigError naming ``setting`` and the problem."""
    p = Path(path)
    try:
        st = p.stat()
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{setting} {p}: not a regular file")
        if st.st_mode & 0o077:
            raise ConfigError(f"{setting} {p}: readable by group or others (mode "
                              f"{stat.S_IMODE(st.st_mode):04o}); chmod 600 it")
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{setting} {p}: {exc.strerror}") from None
    if not data.strip():
        raise ConfigError(f"{setting} {p}: empty")
    return data


def ensure_secret(path: Path, nbytes: int = 32) -> bytes:
    """Read the secret at ``path``, creating a random one (hex text) when it is missing."""
    if not path.exists():
        with contextlib.suppress(ConfigError):  # another process created it first: read theirs
            write_secret(path, secrets.token_hex(nbytes).encode() + b"\n")
    return read_secret(path, str(path.name))
