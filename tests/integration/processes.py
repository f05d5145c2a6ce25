"""PDP processes (``aam serve``) for multi-process and crash tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pdp.identity import GATEWAY_TOKEN_HEADER
from pdp.opa import free_port
from tests.integration.pdp import Metadata, audit_key_file, gateway_token_file
from tests.servers import VENV_BIN, opa_binary, stop, wait_until


@dataclass
class PdpProcess:
    addr: str
    proc: subprocess.Popen
    log: Path
    token: str = ""  # the gateway token (gateway_token_file) the PDPs share

    def gateway_channel(self) -> grpc.Channel:
        """A channel to this PDP that presents the gateway token."""
        return grpc.intercept_channel(grpc.insecure_channel(self.addr),
                                      Metadata(((GATEWAY_TOKEN_HEADER, self.token),)))

    def kill9(self) -> None:
        """SIGKILL the PDP and its managed OPA (one process group): a crash."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def _serving(addr: str) -> bool:
    with grpc.insecure_channel(addr) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
    return resp.status == health_pb2.HealthCheckResponse.SERVING


@contextlib.contextmanager
def pdp_processes(n: int, policies: Path, ledger_url: str, tmp: Path,
                  **settings: str) -> Iterator[list[PdpProcess]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AAM_")}
    # Several PDPs, each with its own OPA, share two cores here: these tests are about
    # the ledger, so an OPA answer slowed by that crowd must not read as engine_unavailable.
    env.update({"AAM_PLAINTEXT": "true", "AAM_LEDGER_URL": ledger_url,
                "AAM_OPA_BINARY": opa_binary(), "AAM_LOG_LEVEL": "warning",
                "AAM_OPA_TIMEOUT_MS": "5000",
                # Each PDP one process (a replica; kill9 kills its group): n of them model
                # replicas, and worker processes would multiply the crowd on two cores.
                "AAM_WORKERS": "1"})
    token_file = gateway_token_file(tmp)
    env["AAM_GATEWAY_TOKEN_FILE"] = str(token_file)
    env["AAM_AUDIT_KEY_FILE"] = str(audit_key_file(tmp))  # one keyring, tmp/audit.key, for all
    env.update({f"AAM_{k.upper()}": v for k, v in settings.items()})
    token = token_file.read_text().strip()
    procs: list[PdpProcess] = []
    try:
        for i in range(n):
            addr = f"127.0.0.1:{free_port()}"
            log = tmp / f"pdp{i}.log"
            with open(log, "wb") as out:
                proc = subprocess.Popen(
                    [str(VENV_BIN / "aam"), "serve", "--policies", str(policies), "--grpc-addr", addr],
                    env={**env, "AAM_AUDIT_ANCHOR_FILE": str(tmp / f"pdp{i}.anchor")},
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True)
            procs.append(PdpProcess(addr, proc, log, token))
        for p in procs:
            wait_until(lambda p=p: _serving(p.addr), 60, f"PDP {p.addr}", p.proc, p.log)
        yield procs
    finally:
        for p in procs:
            if p.proc.poll() is None:
                stop(p.proc)
