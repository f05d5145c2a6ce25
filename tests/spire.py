"""A real SPIRE (server and agent) on loopback for the workload-identity tests.

The server has its own self-signed CA for the trust domain ``prod`` (the examples'), a
SQLite datastore and join-token node attestation; the agent attests with a join token,
attests workloads with the ``unix`` attestor (uid, gid, and the binary's path) and serves
the SPIFFE Workload API (and Envoy's SDS) on a Unix socket any local user may reach.
Registration entries are created with the ``spire-server entry`` commands, as an
operator would; SVIDs are fetched over the Workload API by processes of a chosen group
(:func:`workload_argv`).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pdp.opa import free_port
from pdp.procs import stop, wait_until
from tests.servers import tool_binary

TRUST_DOMAIN = "prod"

SERVER_CONF = """\
server {{
    bind_address = "127.0.0.1"
    bind_port = "{port}"
    socket_path = "{socket}"
    trust_domain = "{trust_domain}"
    data_dir = "{data}"
    log_level = "WARN"
    ca_ttl = "{ca_ttl}"
    default_x509_svid_ttl = "{x509_ttl}"
    default_jwt_svid_ttl = "{jwt_ttl}"
    ca_key_type = "ec-p256"
}}
plugins {{
    DataStore "sql" {{
        plugin_data {{
            database_type = "sqlite3"
            connection_string = "{data}/datastore.sqlite3"
        }}
    }}
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
    KeyManager "memory" {{
        plugin_data = {{}}
    }}
}}
"""

AGENT_CONF = """\
agent {{
    data_dir = "{data}"
    log_level = "WARN"
    server_address = "127.0.0.1"
    server_port = "{port}"
    socket_path = "{socket}"
    trust_bundle_path = "{bundle}"
    trust_domain = "{trust_domain}"
    join_token = "{token}"
}}
plugins {{
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
    KeyManager "memory" {{
        plugin_data {{}}
    }}
    WorkloadAttestor "unix" {{
        plugin_data {{
            discover_workload_path = true
        }}
    }}
}}
"""


@dataclass
class Spire:
    trust_domain: str
    server_socket: Path  # the server's admin API (entries, bundles, tokens)
    workload_socket: Path  # the agent's Workload API (and SDS)
    bundle: Path  # the trust bundle (PEM) as the server serves it
    dir: Path
    server: subprocess.Popen
    agent: subprocess.Popen
    # The agent node's SPIFFE ID (join-token attestation names it by its token): the
    # parent of every registration entry here.
    agent_node: str = ""
    entries_created: list[str] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        """The Workload API address as SPIFFE_ENDPOINT_SOCKET spells it."""
        return f"unix://{self.workload_socket}"

    def server_cmd(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``spire-server SUBCOMMAND ... -socketPath <admin socket>``."""
        *sub, = args
        split = next((i for i, a in enumerate(sub) if a.startswith("-")), len(sub))
        argv = [tool_binary("spire-server"), *sub[:split], "-socketPath", str(self.server_socket),
                *sub[split:]]
        return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=30)

    def register(self, spiffe_id: str, selectors: Sequence[str], *, x509_ttl_s: int = 0,
                 jwt_ttl_s: int = 0, dns: Sequence[str] = ()) -> str:
        """A registration entry under this agent; its id."""
        args = ["entry", "create", "-parentID", self.agent_node, "-spiffeID", spiffe_id,
                "-output", "json"]
        for s in selectors:
            args += ["-selector", s]
        for d in dns:
            args += ["-dns", d]
        if x509_ttl_s:
            args += ["-x509SVIDTTL", str(x509_ttl_s)]
        if jwt_ttl_s:
            args += ["-jwtSVIDTTL", str(jwt_ttl_s)]
        out = json.loads(self.server_cmd(*args).stdout)
        entry_id = out["results"][0]["entry"]["id"]
        self.entries_created.append(entry_id)
        return entry_id

    def entries(self) -> list[dict]:
        out = json.loads(self.server_cmd("entry", "show", "-output", "json").stdout)
        return out.get("entries") or []

    def delete(self, entry_id: str) -> None:
        self.server_cmd("entry", "delete", "-entryID", entry_id)

    def fetch_x509(self, dest: Path, gid: int | None = None,
                   timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
        """``spire-agent api fetch x509 -write DEST`` as a workload of group ``gid``: the
        SVID (svid.0.pem, svid.0.key) and bundle (bundle.0.pem) the Workload API gives it."""
        dest.mkdir(parents=True, exist_ok=True)
        return subprocess.run(
            [*workload_argv(gid), tool_binary("spire-agent"), "api", "fetch", "x509",
             "-socketPath", str(self.workload_socket), "-write", str(dest),
             "-timeout", f"{int(timeout_s)}s"],
            capture_output=True, text=True, timeout=timeout_s + 10, check=False)


def _start(binary: str, config: Path, socket: Path, log: Path,
           timeout_s: float) -> subprocess.Popen:
    """``spire-server run`` or ``spire-agent run`` on ``config``, once its healthcheck on
    ``socket`` passes."""
    with open(log, "wb") as out:
        proc = subprocess.Popen([binary, "run", "-config", str(config)], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=config.parent)
    try:
        wait_until(lambda: subprocess.run([binary, "healthcheck", "-socketPath", str(socket)],
                                          capture_output=True, timeout=10).returncode == 0,
                   timeout_s, Path(binary).name, proc, log)
    except BaseException:
        stop(proc)
        raise
    return proc


def _server_bundle(server_bin: str, socket: Path) -> str:
    return subprocess.run([server_bin, "bundle", "show", "-socketPath", str(socket)],
                          capture_output=True, text=True, check=True, timeout=30).stdout


@contextlib.contextmanager
def run_spire(x509_ttl: str = "1h", jwt_ttl: str = "5m", ca_ttl: str = "24h",
              timeout_s: float = 60.0) -> Iterator[Spire]:
    server_bin, agent_bin = tool_binary("spire-server"), tool_binary("spire-agent")
    with tempfile.TemporaryDirectory(prefix="aam-test-spire-") as tmp_s:
        tmp = Path(tmp_s)
        tmp.chmod(0o755)  # workloads of other uids reach the Workload API socket below
        public = tmp / "public"
        public.mkdir(mode=0o755)
        server_socket, workload_socket = tmp / "private" / "server.sock", public / "api.sock"
        server_socket.parent.mkdir(mode=0o700)
        port = free_port()
        (tmp / "server.conf").write_text(SERVER_CONF.format(
            port=port, socket=server_socket, trust_domain=TRUST_DOMAIN, data=tmp / "server-data",
            ca_ttl=ca_ttl, x509_ttl=x509_ttl, jwt_ttl=jwt_ttl))
        procs: list[subprocess.Popen] = []
        server_log, agent_log = tmp / "server.log", tmp / "agent.log"
        try:
            procs.append(_start(server_bin, tmp / "server.conf", server_socket, server_log,
                                timeout_s))
            bundle = tmp / "bundle.pem"
            bundle.write_text(_server_bundle(server_bin, server_socket))
            token = json.loads(subprocess.run(
                [server_bin, "token", "generate", "-socketPath", str(server_socket),
                 "-output", "json"],
                capture_output=True, text=True, check=True, timeout=30).stdout)["value"]
            (tmp / "agent.conf").write_text(AGENT_CONF.format(
                port=port, socket=workload_socket, trust_domain=TRUST_DOMAIN,
                data=tmp / "agent-data", bundle=bundle, token=token))
            procs.append(_start(agent_bin, tmp / "agent.conf", workload_socket, agent_log,
                                timeout_s))
            workload_socket.chmod(0o777)
            yield Spire(TRUST_DOMAIN, server_socket, workload_socket, bundle, tmp, procs[0], procs[1],
                        agent_node=f"spiffe://{TRUST_DOMAIN}/spire/agent/join_token/{token}")
        finally:
            for p in reversed(procs):
                stop(p)


def workload_argv(gid: int | None) -> list[str]:
    """The command prefix that makes a child a workload of its own: group ``gid`` (and no
    supplementary groups), which the unix attestor reports as ``unix:gid:<gid>``. The
    tests tell workloads apart by group, not user: a process of another uid could not run
    the interpreter or the tools (both under this user's home). ``setpriv`` rather than
    subprocess's ``group=``: that makes Python fork instead of vfork, and gRPC's fork
    handlers in a process with live channels can then hang the whole test session.
    Needs root (CAP_SETGID)."""
    if gid is None:
        return []
    if os.getuid() != 0:
        raise AssertionError("SPIRE workload tests start workloads in their own group: run as root")
    return ["setpriv", f"--regid={gid}", "--clear-groups", "--"]


def wait_for_svid(spire: Spire, dest: Path, gid: int | None = None,
                  timeout_s: float = 30.0) -> Path:
    """Fetch until the Workload API has an SVID for group ``gid`` (a new entry reaches the
    agent within its sync interval, about 5 s); the directory with svid.0.pem."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        r = spire.fetch_x509(dest, gid, timeout_s=5)
        if r.returncode == 0 and (dest / "svid.0.pem").exists():
            return dest
        last = r.stderr or r.stdout
        time.sleep(0.5)
    raise AssertionError(f"no X.509-SVID for gid {gid} within {timeout_s:.0f} s: {last.strip()}")
