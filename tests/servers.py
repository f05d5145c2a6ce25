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


# --- Kubernetes API server (kube-apiserver on kine/SQLite) ------------------

@dataclass
class Kube:
    """A real kube-apiserver: its URL, an admin bearer token and the CA to trust."""

    url: str
    token: str
    ca_file: str
    proc: subprocess.Popen
    log: Path

    def session(self) -> requests.Session:
        """HTTPS with the server's own CA (never verify=False) and the admin token."""
        s = requests.Session()
        # With trust_env, requests lets REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE override a
        # Session's verify (psf/requests#3829), and proxies do not belong on loopback.
        s.trust_env = False
        s.verify = self.ca_file
        s.headers["Authorization"] = f"Bearer {self.token}"
        return s


def tool_binary(name: str) -> str:
    """A tool scripts/setup builds into the tools dir (outside the repo), or fail loudly."""
    from pdp.config import DEFAULT_TOOLS_DIR

    return require_binary(name, str(DEFAULT_TOOLS_DIR / "bin" / name))


def _service_account_key(path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


@contextlib.contextmanager
def run_kube_apiserver(timeout_s: float = 60.0) -> Iterator[Kube]:
    """kine (etcd's API on a temp SQLite file) and kube-apiserver, both on loopback.

    Authentication is a static token in group system:masters; the serving
    certificate is the self-signed one kube-apiserver writes into --cert-dir,
    whose chain (leaf, then its CA) is what clients verify against.
    """
    kine_bin, kas_bin = tool_binary("kine"), tool_binary("kube-apiserver")
    with tempfile.TemporaryDirectory(prefix="aam-test-kube-") as tmp_s:
        tmp = Path(tmp_s)
        kine_port, port = free_port(), free_port()
        token = secrets.token_urlsafe(24)
        (tmp / "tokens.csv").write_text(f'{token},aam-admin,aam-admin,"system:masters"\n')
        _service_account_key(tmp / "sa.key")
        kine_log, kas_log = tmp / "kine.log", tmp / "kube-apiserver.log"
        procs: list[subprocess.Popen] = []
        try:
            with open(kine_log, "wb") as out:
                procs.append(subprocess.Popen(
                    [kine_bin, "--endpoint", f"sqlite://{tmp}/state.db?_journal=WAL&cache=shared",
                     "--listen-address", f"127.0.0.1:{kine_port}",
                     "--metrics-bind-address", "0"],  # 0: no metrics listener (default :8080)
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tmp))
            try:
                wait_until(lambda: _port_open(kine_port), 20, "kine", procs[0], kine_log)
            except RuntimeError as exc:
                tail = kine_log.read_text(errors="replace")[-3000:]
                pytest.fail(f"{exc}\n--- kine log tail ---\n{tail}", pytrace=False)
            with open(kas_log, "wb") as out:
                procs.append(subprocess.Popen(
                    [kas_bin,
                     f"--etcd-servers=http://127.0.0.1:{kine_port}",
                     "--storage-media-type=application/json",
                     "--endpoint-reconciler-type=none",
                     "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
                     f"--secure-port={port}", f"--cert-dir={tmp / 'certs'}",
                     f"--token-auth-file={tmp / 'tokens.csv'}",
                     "--authorization-mode=RBAC",
                     f"--service-account-key-file={tmp / 'sa.key'}",
                     f"--service-account-signing-key-file={tmp / 'sa.key'}",
                     "--service-account-issuer=https://kubernetes.default.svc",
                     "--service-cluster-ip-range=10.96.0.0/24"],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tmp))
            url = f"https://127.0.0.1:{port}"
            kube = Kube(url, token, str(tmp / "certs" / "apiserver.crt"), procs[1], kas_log)

            def ready() -> bool:
                return Path(kube.ca_file).exists() and kube.session().get(f"{url}/readyz", timeout=2).ok

            try:
                wait_until(ready, timeout_s, "kube-apiserver", procs[1], kas_log)
            except RuntimeError as exc:
                tail = kas_log.read_text(errors="replace")[-3000:]
                pytest.fail(f"{exc}\n--- kube-apiserver log tail ---\n{tail}", pytrace=False)
            yield kube
        finally:
            for proc in reversed(procs):
                stop(proc)


def _port_open(port: int) -> bool:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


@dataclass
class Jaeger:
    """A real Jaeger (v2, on the OpenTelemetry Collector) with in-memory storage."""

    otlp_endpoint: str  # OTLP/gRPC receiver, "http://127.0.0.1:PORT"
    query_url: str  # the query service's HTTP API (the UI's): /api/traces/{id}
    proc: subprocess.Popen
    log: Path

    def trace(self, trace_id: str) -> dict | None:
        """One trace as Jaeger stores it (spans with tags, references, processes), or None."""
        r = requests.get(f"{self.query_url}/api/traces/{trace_id}", timeout=5)
        if r.status_code == 404:
            return None
        r.raise_for_status()
        data = r.json().get("data") or []
        return data[0] if data else None

    def traces(self, service: str, limit: int = 1000) -> list[dict]:
        """The service's recent traces, newest first."""
        r = requests.get(f"{self.query_url}/api/traces",
                         params={"service": service, "limit": limit, "lookback": "1h"}, timeout=10)
        r.raise_for_status()
        return r.json().get("data") or []


JAEGER_CONFIG = """\
service:
  extensions: [jaeger_storage, jaeger_query, healthcheckv2]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  healthcheckv2:
    use_v2: true
    http:
      endpoint: 127.0.0.1:{health}
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:{query_http}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{otlp}
processors:
  batch:
    timeout: 200ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"""


@contextlib.contextmanager
def run_jaeger(timeout_s: float = 30.0) -> Iterator[Jaeger]:
    """Jaeger all-in-one on loopback: an OTLP/gRPC receiver and the query API, every port free."""
    binary = tool_binary("jaeger")
    ports = {"health": free_port(), "query_http": free_port(), "query_grpc": free_port(),
             "otlp": free_port()}
    with tempfile.TemporaryDirectory(prefix="aam-test-jaeger-") as tmp:
        config, log = Path(tmp) / "jaeger.yaml", Path(tmp) / "jaeger.log"
        config.write_text(JAEGER_CONFIG.format(**ports))
        with open(log, "wb") as out:
            proc = subprocess.Popen([binary, "--config", f"file:{config}"], stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tmp)
        query = f"http://127.0.0.1:{ports['query_http']}"
        try:
            wait_until(lambda: requests.get(f"http://127.0.0.1:{ports['health']}/status",
                                            timeout=1).ok
                       and requests.get(f"{query}/api/services", timeout=1).ok
                       and _port_open(ports["otlp"]), timeout_s, "Jaeger", proc, log)
            yield Jaeger(f"http://127.0.0.1:{ports['otlp']}", query, proc, log)
        finally:
            stop(proc)
