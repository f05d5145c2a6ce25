"""Systems under test, started as separate processes so their CPU and RSS are theirs.

:class:`AamStack` runs ``aam up`` (PDP + managed OPA, the shipped path) on a
policy directory; the OPA it manages is also the "OPA alone" baseline, called
directly over its Data API with the same input, so both see the same Rego and
the same data. Other systems (opa-envoy-plugin, a ledger database) add a class
here with the same small surface: ``start``, ``stop``, ``pids``, ``addr(kind)``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from bench.procstat import children
from pdp import procs
from pdp.opa import free_port


class TargetError(RuntimeError):
    """A system under test did not start; the message carries its log tail."""


class AamStack:
    """``aam up`` on loopback: gRPC PDP + bundle server + managed OPA; with ``settings``
    it is ``aam serve`` on a settings file (plaintext, loopback) carrying them."""

    def __init__(self, policies: Path, settings: dict[str, Any] | None = None) -> None:
        self.policies = policies
        self.settings = settings or {}
        self.grpc_addr = f"127.0.0.1:{free_port()}"
        self.opa_url = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="aam-bench-stack-")
        self.log = Path(self._tmp.name) / "pdp.log"
        self.out = Path(self._tmp.name) / "pdp.out"

    def start(self, timeout_s: float = 120.0) -> AamStack:
        aam = Path(sys.executable).parent / "aam"
        # A fresh embedded ledger per stack (aam up's default store), not the user's own.
        ledger = f"sqlite://{self._tmp.name}/ledger.sqlite3"
        argv = [str(aam), "up", "--policies", str(self.policies), "--grpc-addr", self.grpc_addr,
                "--no-watch", "--no-vault", "--ledger-url", ledger]
        if self.settings:
            conf = Path(self._tmp.name) / "pdp.toml"
            conf.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in {
                "plaintext": True, "grpc_addr": self.grpc_addr, "policies": str(self.policies),
                "ledger_url": ledger, "ledger_migrate": True, **self.settings}.items()))
            argv = [str(aam), "serve", "--config", str(conf)]
        with open(self.out, "wb") as out, open(self.log, "wb") as err:
            self.proc = subprocess.Popen(
                argv,
                stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                env=_env(),
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise TargetError(f"aam up exited {self.proc.returncode}: {self._tail()}")
            m = re.search(r"^opa\s+(http://\S+)", self.out.read_text(), re.M)
            if m and _grpc_ready(self.grpc_addr):
                self.opa_url = m.group(1)
                return self
            time.sleep(0.1)
        self.stop()
        raise TargetError(f"aam up not ready within {timeout_s:.0f} s: {self._tail()}")

    def _tail(self) -> str:
        return (self.out.read_text(errors="replace") + self.log.read_text(errors="replace"))[-1500:]

    @property
    def pids(self) -> dict[str, int]:
        assert self.proc is not None
        opa = [p for p in children(self.proc.pid) if _comm(p) == "opa"]
        return {"pdp": self.proc.pid, **({"opa": opa[0]} if opa else {})}

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


def _grpc_ready(addr: str) -> bool:
    with grpc.insecure_channel(addr) as ch:
        try:
            grpc.channel_ready_future(ch).result(timeout=0.5)
            return True
        except grpc.FutureTimeoutError:
            return False
