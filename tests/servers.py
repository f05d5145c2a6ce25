"""Real servers for integration tests: OPA, PostgreSQL, OpenBao, on loopback.

Each starts on a free port in a temporary directory and is stopped at the end
of the session. A missing binary fails the test run loudly: integration
tests never skip.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from pdp import devvault
from pdp.config import Settings
from pdp.opa import free_port
from pdp.procs import stop, wait_until

VENV_BIN = Path(__file__).resolve().parent.parent / ".venv" / "bin"


def require_binary(name: str, path: str | None) -> str:
    if path and os.access(path, os.X_OK):
        return path
    pytest.fail(f"{name} binary not found ({path or 'not on PATH'}); run scripts/setup", pytrace=False)
    raise AssertionError  # unreachable; pytest.fail raises


# --- OPA ---------------------------------------------------------------------

@dataclass
class Opa:
    url: str
    proc: subprocess.Popen
    binary: str


def opa_binary() -> str:
    try:
        return Settings.load(env={}).opa_path()
    except Exception as exc:
        pytest.fail(str(exc), pytrace=False)
        raise


@contextlib.contextmanager
def run_opa(*args: str) -> Iterator[Opa]:
    binary = opa_binary()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="aam-test-opa-") as tmp:
        log = Path(tmp) / "opa.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [binary, "run", "--server", "--skip-version-check", "--addr", f"127.0.0.1:{port}",
                 "--log-level", "error", *args],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: requests.get(f"{url}/health", timeout=1).ok, 20, "OPA", proc, log)
            yield Opa(url, proc, binary)
        finally:
            stop(proc)


# --- PostgreSQL --------------------------------------------------------------

@dataclass
class Postgres:
    host: str
    port: int
    user: str
    password: str
    dbname: str
    datadir: Path
    # How to stop and start the same cluster again (fault tests).
    argv: tuple[str, ...] = ()
    popen_kwargs: dict = field(default_factory=dict)
    log: Path | None = None
    proc: subprocess.Popen | None = None

    def stop(self) -> None:
        """Fast shutdown (SIGINT): clients are disconnected, the WAL is flushed."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
            stop(self.proc)
            self.proc = None

    def start(self) -> None:
        assert self.log is not None and self.proc is None
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(list(self.argv), stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, **self.popen_kwargs)
        import psycopg

        wait_until(lambda: psycopg.connect(self.dsn, connect_timeout=1).close() is None,
                   30, "PostgreSQL", self.proc, self.log)

    def dsn_for(self, dbname: str, user: str = "", password: str = "") -> str:
        return (f"host={self.host} port={self.port} user={user or self.user} "
                f"password={password or self.password} dbname={dbname}")

    @property
    def dsn(self) -> str:
        return (f"host={self.host} port={self.port} user={self.user} "
                f"password={self.password} dbname={self.dbname}")


def postgres_bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda p: int(Path(p).parent.parent.name))
    if not found:
        pytest.fail("PostgreSQL server not found under /usr/lib/postgresql; run scripts/setup",
                    pytrace=False)
    return Path(found[-1]).parent


@contextlib.contextmanager
def run_postgres(fsync: bool = False) -> Iterator[Postgres]:
    """A throw-away cluster. As root, the server runs as the 'postgres' user.

    ``fsync`` off (tests) trades durability for speed; benchmarks turn it on.
    """
    bindir = postgres_bindir()
    as_user: dict = {}
    tmp = tempfile.mkdtemp(prefix="aam-test-pg-")
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
        as_user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    datadir = Path(tmp) / "data"
    password = secrets.token_urlsafe(16)
    pwfile = Path(tmp) / "pw"
    pwfile.write_text(password)
    if as_user:
        os.chown(pwfile, as_user["user"], as_user["group"])
    port = free_port()
    log = Path(tmp) / "postgres.log"
    subprocess.run(
        [str(bindir / "initdb"), "-D", str(datadir), "-U", "aam", "--pwfile", str(pwfile),
         "-A", "scram-sha-256", "--no-sync", "-E", "UTF8", "--locale", "C"],
        check=True, capture_output=True, cwd=tmp, **as_user)
    argv = (str(bindir / "postgres"), "-D", str(datadir), "-h", "127.0.0.1", "-p", str(port),
            "-k", tmp, "-c", f"fsync={'on' if fsync else 'off'}", "-c", "max_connections=200",
            "-c", "shared_buffers=64MB")
    pg = Postgres("127.0.0.1", port, "aam", password, "postgres", datadir,
                  argv=argv, popen_kwargs={"cwd": tmp, **as_user}, log=log)
    try:
        pg.start()
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


# --- OpenBao -----------------------------------------------------------------

@dataclass
class OpenBao:
    addr: str
    root_token: str
    proc: subprocess.Popen


@contextlib.contextmanager
def run_openbao() -> Iterator[OpenBao]:
    """``bao server -dev``: in-memory, unsealed, with a random root token."""
    server = devvault.start_server(require_binary("bao", str(VENV_BIN / "bao")))
    try:
        yield OpenBao(server.addr, server.root_token, server.proc)
    finally:
        server.stop()
