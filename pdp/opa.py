"""Talking to OPA: the Data API client on the hot path and a managed OPA process.

The client keeps one persistent connection per thread, over the minimal
HTTP/1.1 client in :mod:`pdp.http1`: on this hardware ``requests`` costs about
4x what ``http.client`` costs per call, and ``http.client`` about 3x what
``pdp.http1`` costs (see PERF-FACTS and bench/).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pdp import procs
from pdp.http1 import Http1Connection

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
        if not url.startswith("http://"):
            raise ValueError(f"OPA URL must be http://host:port, got {url!r}")
        hostport = url[len("http://"):].rstrip("/")
        host, _, port = hostport.rpartition(":")
        self.url = url
        self.host, self.port = host.strip("[]"), int(port)
        self.timeout_s = timeout_s
        self._local = threading.local()
        self._all: set[Http1Connection] = set()
        self._all_lock = threading.Lock()

    def _conn(self) -> Http1Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = Http1Connection(self.host, self.port, self.timeout_s)
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

    def healthy(self, bundles: bool = True) -> bool:
        try:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=1.0)
            conn.request("GET", "/health?bundles" if bundles else "/health")
            ok = conn.getresponse().status == 200
            conn.close()
            return ok
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
    """

    def __init__(self, binary: str, addr: str, bundle_url: str, workdir: Path | None = None,
                 gogc: int = 100, verification: Verification | None = None) -> None:
        host, _, port = addr.rpartition(":")
        self.gogc = gogc
        self.verification = verification
        self.host = host or "127.0.0.1"
        self.port = int(port) or free_port(self.host)
        self.binary = binary
        self.bundle_url = bundle_url
        self._tmp = tempfile.TemporaryDirectory(prefix="aam-opa-") if workdir is None else None
        self.workdir = Path(self._tmp.name) if self._tmp else workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

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
        fd = os.open(cfg, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.config())
        log = open(self.workdir / "opa.log", "wb")  # noqa: SIM115 - lives as long as OPA
        self.proc = subprocess.Popen(
            [self.binary, "run", "--server", "--skip-version-check", "--shutdown-grace-period", "2",
             "--addr", f"{self.host}:{self.port}", "--config-file", str(cfg),
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
