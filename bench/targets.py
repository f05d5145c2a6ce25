"""Systems under test, started as separate processes so their CPU and RSS are theirs.

:class:`AamStack` runs ``aam up`` (PDP + managed OPA, the shipped path) on a
policy directory; the OPA it manages is also the "OPA alone" baseline, called
directly over its Data API with the same input, so both see the same Rego and
the same data. :class:`ExtAuthzStack` is an ext_authz baseline (opa-envoy-plugin,
or opa-extauthz, its stand-in built by scripts/setup); :class:`LedgerServer` is
where every AAM stack of one run keeps its ledger (a co-located PostgreSQL by
default, or each stack's embedded SQLite).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc

from bench.procstat import children
from compiler import compile_paths
from compiler.testsuite import FRESH_LEDGER
from pdp import procs
from pdp.config import DEFAULT_TOOLS_DIR
from pdp.identity import GATEWAY_TOKEN_HEADER
from pdp.ledger.keyring import ensure_file
from pdp.metrics import METRICS_PATH
from pdp.opa import free_port
from pdp.secretfile import ensure_secret


class TargetError(RuntimeError):
    """A system under test did not start; the message carries its log tail."""


class AamStack:
    """``aam up`` on loopback: gRPC PDP + bundle server + managed OPA; with ``settings``
    it is ``aam serve`` on a settings file (plaintext, loopback) carrying them."""

    def __init__(self, policies: Path, settings: dict[str, Any] | None = None) -> None:
        self.policies = policies
        self.settings = settings or {}
        self.grpc_addr = f"127.0.0.1:{free_port()}"
        self.opa_url = ""  # http://host:port, or unix:///path with opa_addr = "unix://..."
        self.metrics_url = ""  # the PDP's Prometheus endpoint (decisions by outcome)
        self.proc: subprocess.Popen[bytes] | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="aam-bench-stack-")
        self.log = Path(self._tmp.name) / "pdp.log"
        self.out = Path(self._tmp.name) / "pdp.out"
        # The load generator asks as the gateway does, presenting the gateway token.
        self.token_file = Path(self._tmp.name) / "gateway.token"
        self.metadata: dict[str, str] = {}

    def start(self, timeout_s: float = 120.0) -> AamStack:
        aam = Path(sys.executable).parent / "aam"
        # A fresh embedded ledger per stack (aam up's default store), not the user's own.
        ledger = f"sqlite://{self._tmp.name}/ledger.sqlite3"
        ensure_secret(self.token_file)
        self.metadata = {GATEWAY_TOKEN_HEADER: self.token_file.read_text().strip()}
        argv = [str(aam), "up", "--policies", str(self.policies), "--grpc-addr", self.grpc_addr,
                "--no-watch", "--no-vault", "--ledger-url", ledger,
                "--gateway-token-file", str(self.token_file)]
        if self.settings:
            conf = Path(self._tmp.name) / "pdp.toml"
            conf.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in {
                "plaintext": True, "grpc_addr": self.grpc_addr, "policies": str(self.policies),
                "ledger_url": ledger, "ledger_migrate": True,
                "gateway_token_file": str(self.token_file),
                "audit_key_file": str(self._audit_key()),
                "audit_anchor_file": f"{self._tmp.name}/audit.anchor", **self.settings}.items()))
            argv = [str(aam), "serve", "--config", str(conf)]
        with open(self.out, "wb") as out, open(self.log, "wb") as err:
            self.proc = subprocess.Popen(
                argv,
                stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                # aam up keeps its audit key and anchor in the state dir: this stack's own.
                env={**_env(), "XDG_STATE_HOME": self._tmp.name},
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise TargetError(f"aam up exited {self.proc.returncode}: {self._tail()}")
            banner = self.out.read_text()
            m = re.search(r"^opa\s+((?:http|unix)://\S+)", banner, re.M)
            b = re.search(r"^bundles\s+(http://[^/\s]+)", banner, re.M)
            if m and b and _grpc_ready(self.grpc_addr):
                self.opa_url = m.group(1)
                self.metrics_url = b.group(1) + METRICS_PATH
                return self
            time.sleep(0.1)
        self.stop()
        raise TargetError(f"aam up not ready within {timeout_s:.0f} s: {self._tail()}")

    def _audit_key(self) -> Path:
        path = Path(self._tmp.name) / "audit.key"
        ensure_file(path)
        return path

    def _tail(self) -> str:
        return (self.out.read_text(errors="replace") + self.log.read_text(errors="replace"))[-1500:]

    @property
    def pids(self) -> dict[str, int | list[int]]:
        """The PDP (with worker processes: the parent first, then each worker, measured as
        one) and its managed OPA."""
        assert self.proc is not None
        kids = children(self.proc.pid)
        opa = [p for p in kids if _comm(p) == "opa"]
        workers = self.worker_pids
        return {"pdp": [self.proc.pid, *workers] if workers else self.proc.pid,
                **({"opa": opa[0]} if opa else {})}

    @property
    def worker_pids(self) -> list[int]:
        """The PDP's worker processes (pdp/worker.py); [] when it runs as one process."""
        assert self.proc is not None
        return [p for p in children(self.proc.pid) if "pdp.worker" in _cmdline(p)]

    @property
    def connections(self) -> int:
        """gRPC connections for the load generator: the kernel spreads connections, not calls,
        over worker processes, so a few per worker (2 for one process, as before)."""
        return max(2, 4 * len(self.worker_pids))

    @property
    def profile_pid(self) -> int:
        """The process that decides: the first worker, else the PDP itself."""
        assert self.proc is not None
        return next(iter(self.worker_pids), self.proc.pid)

    def stop(self) -> None:
        procs.stop(self.proc, 15)
        self._tmp.cleanup()

    def __enter__(self) -> AamStack:
        return self if self.proc else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _env() -> dict[str, str]:
    """The shipped defaults: no AAM_* setting of the caller leaks into the stack."""
    return {k: v for k, v in os.environ.items() if not k.startswith("AAM_")}


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _grpc_ready(addr: str) -> bool:
    with grpc.insecure_channel(addr) as ch:
        try:
            grpc.channel_ready_future(ch).result(timeout=0.5)
            return True
        except grpc.FutureTimeoutError:
            return False


class LedgerServer:
    """The ledger of every AAM stack in one run: ``postgres`` is a throw-away PostgreSQL
    cluster on loopback with fsync on (durable, as in production), one fresh database
    per stack; ``sqlite`` leaves each stack its own embedded store."""

    KINDS = ("postgres", "sqlite")

    def __init__(self, kind: str) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"ledger must be one of {self.KINDS}, not {kind!r}")
        self.kind = kind
        self.pg: Any = None
        self._exit = contextlib.ExitStack()
        self._databases = 0

    def __enter__(self) -> LedgerServer:
        if self.kind == "postgres":
            import pytest

            from tests.servers import run_postgres

            try:
                self.pg = self._exit.enter_context(run_postgres(fsync=True))
            except (Exception, pytest.fail.Exception) as exc:  # no server installed: pytest.fail
                self._exit.close()
                raise TargetError(f"PostgreSQL did not start: {exc}") from exc
        return self

    def __exit__(self, *exc: object) -> None:
        self._exit.close()

    @property
    def label(self) -> str:
        if self.pg is not None:
            return (f"PostgreSQL {self.pg_version()} on loopback, fsync on, a fresh database per "
                    "stack (budget/rate reservation and hash-chained audit row per decision)")
        return "embedded SQLite, a fresh file per stack (--ledger sqlite)"

    def pg_version(self) -> str:
        import psycopg

        with psycopg.connect(self.pg.dsn) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]).split()[0] if row else "?"

    def trees(self) -> dict[str, int]:
        """Process trees whose CPU a decision also costs: PostgreSQL's postmaster and backends
        (the embedded store runs inside the PDP)."""
        proc = getattr(self.pg, "proc", None)
        return {"pg": proc.pid} if proc is not None else {}

    def settings(self) -> dict[str, Any]:
        """AamStack settings for one more stack: {} keeps its embedded SQLite ledger."""
        if self.pg is None:
            return {}
        import psycopg

        self._databases += 1
        name = f"aam_bench_{self._databases}"
        with psycopg.connect(self.pg.dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return {"ledger_url": self.pg.dsn_for(name)}


@dataclass(frozen=True)
class ExtAuthzServer:
    """An ext_authz baseline: a Go process answering Envoy's Check with OPA evaluating
    AAM's bundle through bench/rego/envoy_shim.rego. ``stack`` names the scenarios it
    serves (scenarios.Scenario.stack)."""

    name: str
    stack: str
    binary: Path
    # Why there may be no binary, and what to do about it.
    missing: str

    def argv(self, grpc_addr: str, bundle: Path, shim: Path) -> list[str]:
        if self.stack == "plugin":  # opa-envoy-plugin is `opa run` with the plugin compiled in
            return [str(self.binary), "run", "--server", "--skip-version-check",
                    "--addr", f"127.0.0.1:{free_port()}", "--log-level", "error",
                    "--set", f"plugins.envoy_ext_authz_grpc.addr={grpc_addr}",
                    "--set", f"plugins.envoy_ext_authz_grpc.path={SHIM_PATH}",
                    # With no services configured this leaves the decision-log plugin
                    # off (with one, it would report there: see pdp/opa.py).
                    "--set", "decision_logs.console=false",
                    "--bundle", str(bundle), str(shim)]
        return [str(self.binary), "-addr", grpc_addr, "-query", "data." + SHIM_PATH.replace("/", "."),
                "-bundle", str(bundle), "-bundle", str(shim)]


SHIM = Path(__file__).resolve().parent / "rego" / "envoy_shim.rego"
SHIM_PATH = "aambench/envoy/allow"
BIN = DEFAULT_TOOLS_DIR / "bin"
PLUGIN = ExtAuthzServer(
    "opa-envoy-plugin", "plugin", BIN / "opa-envoy-plugin",
    f"no opa-envoy-plugin binary (looked in {BIN}): the Go module proxy refuses "
    "github.com/open-policy-agent/opa-envoy-plugin, so scripts/setup cannot build it; pass "
    "--opa-envoy-plugin PATH to a binary you built")
SDK = ExtAuthzServer(
    "opa-extauthz", "sdk", BIN / "opa-extauthz",
    f"no opa-extauthz binary (looked in {BIN}): run scripts/setup, which builds bench/opa_extauthz")


def extauthz_servers(plugin: str = "") -> list[ExtAuthzServer]:
    """The ext_authz baselines: opa-envoy-plugin (``plugin``, else the tools directory's)
    and opa-extauthz, the one scripts/setup builds."""
    return [replace(PLUGIN, binary=Path(plugin)) if plugin else PLUGIN, SDK]


class ExtAuthzStack:
    """An :class:`ExtAuthzServer` serving ext_authz gRPC with AAM's bundle plus a shim
    (bench/rego/envoy_shim.rego) that maps the CheckRequest onto AAM's decision."""

    def __init__(self, server: ExtAuthzServer, policies: Path) -> None:
        self.server = server
        self.policies = policies
        self.grpc_addr = f"127.0.0.1:{free_port()}"
        self.opa_url = ""
        self.metrics_url = ""  # the Go baselines count nothing we read
        self.metadata: dict[str, str] = {}  # the Go baselines take no gateway token
        self.proc: subprocess.Popen[bytes] | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix=f"aam-bench-{server.stack}-")

    def start(self, timeout_s: float = 60.0) -> ExtAuthzStack:
        if not self.server.binary.is_file():
            raise TargetError(self.server.missing)
        work = Path(self._tmp.name)
        bundle = work / "bundle.tar.gz"
        bundle.write_bytes(compile_paths([self.policies]).to_tar_gz())
        shim = work / "shim"  # a second bundle (root aambench): the shim and a fresh ledger's state
        (shim / "aambench").mkdir(parents=True)
        (shim / ".manifest").write_text(json.dumps({"roots": ["aambench"]}))
        (shim / "aambench" / "envoy_shim.rego").write_bytes(SHIM.read_bytes())
        (shim / "aambench" / "data.json").write_text(json.dumps({"fresh_ledger": FRESH_LEDGER}))
        log = work / "server.log"
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(self.server.argv(self.grpc_addr, bundle, shim),
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            procs.wait_until(lambda: _grpc_ready(self.grpc_addr), timeout_s, self.server.name,
                             self.proc, log)
        except Exception as exc:
            self.stop()
            raise TargetError(f"{self.server.name} did not start: {exc}") from exc
        return self

    @property
    def pids(self) -> dict[str, int]:
        assert self.proc is not None
        return {"opa": self.proc.pid}

    def stop(self) -> None:
        procs.stop(self.proc)
        self._tmp.cleanup()

    def __enter__(self) -> ExtAuthzStack:
        return self if self.proc else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def decisions(metrics_url: str) -> dict[str, float]:
    """The PDP's decision counters: {"allow": n, "deny": n, "deny:<reason>": n, ...}
    ({} without an endpoint)."""
    if not metrics_url:
        return {}
    with urllib.request.urlopen(metrics_url, timeout=5) as r:  # loopback, the stack's own
        text = r.read().decode()
    out: dict[str, float] = {}
    for m in re.finditer(r'^aam_decisions_total\{(.*?)\} (\S+)$', text, re.M):
        labels = dict(re.findall(r'(\w+)="(.*?)"', m.group(1)))
        outcome, value = labels.get("outcome", "?"), float(m.group(2))
        out[outcome] = out.get(outcome, 0.0) + value
        if labels.get("reason"):
            key = f"{outcome}:{labels['reason']}"
            out[key] = out.get(key, 0.0) + value
    return out
