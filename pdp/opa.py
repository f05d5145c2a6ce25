"""Talking to OPA: the Data API client on the hot path and a managed OPA process.

The client keeps one persistent connection per thread, over the minimal
HTTP/1.1 client in :mod:`pdp.http1`: on this hardware ``requests`` costs about
4x what ``http.client`` costs per call, and ``http.client`` about 3x what
``pdp.http1`` costs (see PERF-FACTS and bench/).

Both speak TCP (``http://host:port``) or a Unix domain socket
(``unix:///path``; OPA's ``--addr unix://...``): ``opa_addr = "unix://"`` puts
the managed OPA on a socket in a private 0700 directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pdp import procs
from pdp.config import UNIX_SCHEME, ConfigError, unix_socket_path
from pdp.http1 import Http1Connection
from pdp.secretfile import write_secret

if TYPE_CHECKING:
    from pdp.bundlesigner import Verification

DECISION_PATH = "/v1/data/aam/authz/decision"
# The decision plus the rules that matched (rego/aam/explain.rego), for --explain.
EXPLAIN_PATH = "/v1/data/aam/authz/explanation"


class EngineUnavailable(Exception):
    """OPA could not give an answer (down, slow, no bundle, bad reply)."""


class OpaClient:
    """Data API client; one keep-alive connection per calling thread."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url
        self.unix_socket = ""
        if url.startswith(UNIX_SCHEME):
            try:
                self.unix_socket = unix_socket_path(url, "OPA URL")
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
            self.host, self.port = "localhost", 0
        elif url.startswith("http://"):
            hostport = url[len("http://"):].rstrip("/")
            host, _, port = hostport.rpartition(":")
            self.host, self.port = host.strip("[]"), int(port)
        else:
            raise ValueError(f"OPA URL must be http://host:port or unix:///path, got {url!r}")
        self.timeout_s = timeout_s
        self._local = threading.local()
        self._all: set[Http1Connection] = set()
        self._all_lock = threading.Lock()

    def _conn(self) -> Http1Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = Http1Connection(self.host, self.port, self.timeout_s, self.unix_socket)
            self._local.conn = conn
            with self._all_lock:
                self._all.add(conn)
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
            with self._all_lock:
                self._all.discard(conn)

    def close(self) -> None:
        """Close every thread's keep-alive connection (call once no query is running).

        OPA's graceful shutdown waits for open client connections, so a stack
        that stops OPA closes these first.
        """
        with self._all_lock:
            conns, self._all = self._all, set()
        for conn in conns:
            conn.close()

    def query(self, path: str, input_doc: dict[str, Any]) -> Any:
        """POST input to a Data API path and return ``result`` (raise if undefined)."""
        body = json.dumps({"input": input_doc}, separators=(",", ":")).encode()
        # One retry covers a keep-alive connection OPA closed while idle; a
        # timeout is not retried, since the deadline is already spent.
        for attempt in (0, 1):
            conn = self._conn()
            try:
                status, raw = conn.post(path, body)
                break
            except TimeoutError:
                self._drop()
                raise EngineUnavailable(f"OPA did not answer within {self.timeout_s * 1000:.0f} ms") from None
            except OSError as exc:
                self._drop()
                if attempt:
                    raise EngineUnavailable(f"OPA unreachable at {self.url}: {type(exc).__name__}") from None
        if status != 200:
            raise EngineUnavailable(f"OPA answered HTTP {status}")
        try:
            doc = json.loads(raw)
        except ValueError:
            raise EngineUnavailable("OPA answered with invalid JSON") from None
        if "result" not in doc:
            raise EngineUnavailable("policy bundle not loaded in OPA (decision undefined)")
        return doc["result"]

    def health_status(self, bundles: bool = True, timeout_s: float = 1.0) -> int:
        """OPA's /health HTTP status (200 with ``bundles``: a bundle is active), on a fresh
        connection so a restarted OPA is seen at once. Raises OSError when unreachable."""
        conn = Http1Connection(self.host, self.port, timeout_s, self.unix_socket)
        try:
            status, _ = conn.get("/health?bundles" if bundles else "/health")
            return status
        finally:
            conn.close()

    def healthy(self, bundles: bool = True) -> bool:
        try:
            return self.health_status(bundles) == 200
        except OSError:
            return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class OpaProcess:
    """A child OPA server pulling its bundle from the PDP's bundle service.

    With ``verification`` OPA activates only bundles signed by the PDP's key;
    its config file (public key, or the HMAC secret) is 0600 in a private
    temporary directory.

    ``addr`` is "host:port" (port 0: a free one) or a Unix socket,
    "unix:///dir/opa.sock" or "unix://" (a socket in a fresh private directory).
    A socket's directory must be this user's and closed to group and others
    (created 0700 when missing, and then removed on stop); the socket is 0600.
    """

    def __init__(self, binary: str, addr: str, bundle_url: str, workdir: Path | None = None,
                 gogc: int = 100, verification: Verification | None = None) -> None:
        self.gogc = gogc
        self.verification = verification
        self.unix_socket = ""
        self._made_dir: Path | None = None  # a socket directory this process made
        if addr.startswith(UNIX_SCHEME):
            # Socket paths have no ':' (pdp/config.py), so a ":port" suffix is one a caller
            # added rebuilding the address as f"{host}:{port}": it is dropped, and a restart
            # lands on the same socket. ``addr`` is the spelling to prefer (pdp/stack.py).
            path = unix_socket_path(UNIX_SCHEME + addr[len(UNIX_SCHEME):].split(":", 1)[0],
                                    "opa_addr", allow_auto=True)
            if not path:
                self._made_dir = Path(tempfile.mkdtemp(prefix="aam-opa-sock-"))  # 0700
                path = str(self._made_dir / "opa.sock")
            self.unix_socket = path
            self.host, self.port = UNIX_SCHEME + path, 0
        else:
            host, _, port = addr.rpartition(":")
            self.host = host or "127.0.0.1"
            self.port = int(port) or free_port(self.host)
        self.binary = binary
        self.bundle_url = bundle_url
        self._tmp = tempfile.TemporaryDirectory(prefix="aam-opa-") if workdir is None else None
        self.workdir = Path(self._tmp.name) if self._tmp else workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """What :class:`OpaClient` takes: http://host:port or unix:///path."""
        return UNIX_SCHEME + self.unix_socket if self.unix_socket else f"http://{self.host}:{self.port}"

    @property
    def addr(self) -> str:
        """The listening address, as ``opa_addr`` spells it (to restart on the same one)."""
        return UNIX_SCHEME + self.unix_socket if self.unix_socket else f"{self.host}:{self.port}"

    def _prepare_socket(self) -> None:
        """The socket's directory exists, is a directory of this user's that group and
        others cannot enter, and holds no stale socket (a killed OPA leaves one)."""
        sock = Path(self.unix_socket)
        d = sock.parent
        try:
            d.mkdir(mode=0o700)
            if self._made_dir is None:
                self._made_dir = d
        except FileExistsError:
            pass
        st = os.lstat(d)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise RuntimeError(f"OPA socket directory {d} must be a directory owned by this user "
                               f"with no access for group and others (mode 0700), is "
                               f"{oct(st.st_mode & 0o777)}")
        try:
            st = os.lstat(sock)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise RuntimeError(f"OPA socket path {sock} exists and is not a socket")
        sock.unlink()

    def config(self) -> str:
        # Long polling: OPA holds a request open and the bundle server answers
        # as soon as the revision changes, so a policy edit lands in well under
        # a second instead of waiting for the next poll.
        # No decision_logs section, not even console: false: any such section
        # turns OPA's decision-log plugin on and sends it to the first service
        # (the PDP), buffering every decision in memory without a limit. The
        # PDP writes the audit trail itself.
        bundle: dict[str, Any] = {
            "service": "aam",
            "resource": "bundles/aam.tar.gz",
            "polling": {"min_delay_seconds": 1, "max_delay_seconds": 2,
                        "long_polling_timeout_seconds": 10},
        }
        config: dict[str, Any] = {"services": {"aam": {"url": self.bundle_url}},
                                  "bundles": {"aam": bundle}}
        if self.verification is not None:
            bundle["signing"] = self.verification.opa_signing()
            config["keys"] = self.verification.opa_keys()
        return json.dumps(config, indent=2)

    def start(self, timeout_s: float = 20.0) -> None:
        cfg = self.workdir / "opa-config.json"
        # 0600 whatever the umask, an existing file included: it may hold an HMAC secret.
        write_secret(cfg, self.config().encode(), overwrite=True)
        if self.unix_socket:
            self._prepare_socket()
            listen = ["--addr", self.url, "--unix-socket-perm", "600"]
        else:
            listen = ["--addr", f"{self.host}:{self.port}"]
        log = open(self.workdir / "opa.log", "wb")  # noqa: SIM115 - lives as long as OPA
        self.proc = subprocess.Popen(
            [self.binary, "run", "--server", "--skip-version-check", "--shutdown-grace-period", "2",
             *listen, "--config-file", str(cfg),
             "--log-level", "error", "--log-format", "json"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "GOGC": str(self.gogc)},
        )
        log.close()
        client = OpaClient(self.url, 1.0)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = (self.workdir / "opa.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"OPA exited with {self.proc.returncode}: {tail}")
            if client.healthy(bundles=True):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"OPA did not become ready with a bundle within {timeout_s:.0f} s")

    def stop(self) -> None:
        procs.stop(self.proc, 5)
        if self._tmp:
            self._tmp.cleanup()
            self._tmp = None
        if self._made_dir is not None:
            # Only what this process made: the socket (if OPA left it) and its directory.
            Path(self.unix_socket).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self._made_dir.rmdir()
            self._made_dir = None
