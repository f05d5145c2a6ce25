"""A PDP whose identity comes from a real SPIRE (spiffe_endpoint_socket), and its clients.

The PDP runs as ``aam serve`` in a group of its own (:func:`as_group`), so
the SPIRE agent attests it as ``unix:gid:<gid>`` the way it attests any workload in
production, and only that entry's SVID is its identity; pytest (gid 0, as every other
root process here) never is. Clients hold SVIDs their workloads fetched from the same
Workload API. Used by tests/integration/test_spire_pdp.py and bench/spire_rotation.py.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aam.v1 import pdp_pb2, pdp_pb2_grpc
from pdp.opa import free_port
from tests.integration.pdp import audit_key_file
from tests.servers import VENV_BIN, opa_binary, stop, tool_binary, wait_until
from tests.spire import Spire, wait_for_svid, workload_argv

PDP_ID = "spiffe://prod/aam/pdp"
GATEWAY = "spiffe://prod/gateway/envoy"
FINANCE = "spiffe://prod/agent/finance-analyst"
CLAIMS = "spiffe://prod/agent/claims-assistant"
# SPIRE's SVIDs carry no IP SAN; the PDP's entry gets this DNS SAN for gRPC's host check.
PDP_HOST = "localhost"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@dataclass(frozen=True)
class Creds:
    """An X.509-SVID as a workload fetched it (spire-agent api fetch x509 -write)."""

    dir: Path

    @property
    def chain(self) -> bytes:
        return (self.dir / "svid.0.pem").read_bytes()

    @property
    def key(self) -> bytes:
        return (self.dir / "svid.0.key").read_bytes()

    @property
    def bundle(self) -> bytes:
        return (self.dir / "bundle.0.pem").read_bytes()

    @property
    def leaf(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.chain)


def as_group(gid: int, argv: list[str]) -> list[str]:
    """``argv`` run as a workload of group ``gid`` (tests/spire.py workload_argv: setpriv,
    never Popen(group=), whose fork can hang on gRPC's fork handlers)."""
    return [*workload_argv(gid), *argv]


def fetch_x509(spire: Spire, dest: Path, gid: int, timeout_s: float = 5
               ) -> subprocess.CompletedProcess[str]:
    """``spire-agent api fetch x509 -write DEST`` as workload ``gid``."""
    return spire.fetch_x509(dest, gid, timeout_s)


def fetch(spire: Spire, dest: Path, gid: int, timeout_s: float = 30) -> Creds:
    """Fetch until the Workload API has an SVID for ``gid`` (a new entry takes ~5 s)."""
    return Creds(wait_for_svid(spire, dest, gid, timeout_s))


def policies_without_vault(dest: Path) -> Path:
    """The examples without the ToolCredential: these tests run no Vault, and a tool with
    a credential but no broker is denied; the grants are the examples' own."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in EXAMPLES.glob("*.yaml"):
        if f.name != "salesforce-credential.yaml":
            (dest / f.name).write_bytes(f.read_bytes())
    return dest


def channel(addr: str, creds: Creds, fresh: bool = False) -> grpc.Channel:
    """An mTLS channel presenting ``creds``; ``fresh``: its own connection (a new TLS
    handshake), not one shared with other channels of this process."""
    options = [("grpc.ssl_target_name_override", PDP_HOST)]
    if fresh:
        options.append(("grpc.use_local_subchannel_pool", 1))
    return grpc.secure_channel(addr, grpc.ssl_channel_credentials(
        creds.bundle, creds.key, creds.chain), options=options)


def authorize_stub(ch: grpc.Channel) -> pdp_pb2_grpc.PolicyDecisionServiceStub:
    return pdp_pb2_grpc.PolicyDecisionServiceStub(ch)


def ask(workload: str, jwt_svid: str = "", **fields: str) -> pdp_pb2.AuthorizeRequest:
    return pdp_pb2.AuthorizeRequest(
        identity=pdp_pb2.Identity(spiffe_id=workload, jwt_svid=jwt_svid), **fields)


def served_certificate(addr: str, creds: Creds) -> x509.Certificate:
    """The certificate the PDP presents in a new TLS handshake (verified against the
    SPIRE bundle), read with the ssl module: what every new connection gets."""
    host, port = addr.rsplit(":", 1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=creds.bundle.decode())
    ctx.set_alpn_protocols(["h2"])
    # The client side of mTLS: the PDP requires a client SVID.
    key_file = creds.dir / "svid.0.key"
    ctx.load_cert_chain(creds.dir / "svid.0.pem", key_file)
    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=PDP_HOST) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def uri_san(cert: x509.Certificate) -> list[str]:
    return cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier)


def jwt_svid(spire: Spire, gid: int, audience: str) -> str:
    """``spire-agent api fetch jwt`` as workload ``gid``: its JWT-SVID for ``audience``."""
    deadline = time.monotonic() + 30
    while True:
        r = subprocess.run(as_group(gid, [
            tool_binary("spire-agent"), "api", "fetch", "jwt", "-audience", audience,
            "-socketPath", str(spire.workload_socket), "-output", "json"]),
            capture_output=True, text=True, timeout=30, check=False)
        if r.returncode == 0:
            docs = json.loads(r.stdout)
            return docs[0]["svids"][0]["svid"]
        if time.monotonic() > deadline:
            raise AssertionError(f"no JWT-SVID for gid {gid}: {r.stderr}")
        time.sleep(0.5)


@dataclass
class SpirePdp:
    addr: str
    proc: subprocess.Popen
    log: Path
    gateway: Creds  # a trusted gateway's SVID, from the Workload API

    def health(self, service: str = "") -> int:
        with channel(self.addr, self.gateway, fresh=True) as ch:
            return health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=5).status

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def serve_argv(policies: Path, addr: str) -> list[str]:
    return [str(VENV_BIN / "aam"), "serve", "--policies", str(policies), "--grpc-addr", addr]


def pdp_env(spire: Spire, tmp: Path, **settings: str) -> dict[str, str]:
    """``aam serve``'s environment: the Workload API, an embedded ledger in ``tmp`` (budgets
    need ledger state), GATEWAY trusted."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AAM_") and k != "SPIFFE_ENDPOINT_SOCKET"}
    env.update({"AAM_SPIFFE_ENDPOINT_SOCKET": spire.endpoint,
                "AAM_LEDGER_URL": f"sqlite://{tmp}/ledger.sqlite3", "AAM_LEDGER_MIGRATE": "true",
                "AAM_AUDIT_KEY_FILE": str(audit_key_file(tmp)),
                "AAM_AUDIT_ANCHOR_FILE": str(tmp / "audit.anchor"),
                "AAM_OPA_BINARY": opa_binary(), "AAM_WORKERS": "1", "AAM_LOG_LEVEL": "info",
                "AAM_TRUSTED_GATEWAYS": GATEWAY, "AAM_OPA_TIMEOUT_MS": "5000"})
    env.update({f"AAM_{k.upper()}": v for k, v in settings.items()})
    return env


@contextlib.contextmanager
def spire_pdp(spire: Spire, tmp: Path, pdp_gid: int, gateway_gid: int, *,
              pdp_ttl_s: int = 0, **settings: str) -> Iterator[SpirePdp]:
    """``aam serve`` as workload ``pdp_gid`` (registered as PDP_ID with ``pdp_ttl_s``),
    ready when gRPC health answers SERVING to the gateway (``gateway_gid``'s SVID)."""
    spire.register(PDP_ID, [f"unix:gid:{pdp_gid}"], x509_ttl_s=pdp_ttl_s, dns=[PDP_HOST])
    spire.register(GATEWAY, [f"unix:gid:{gateway_gid}"])
    gateway = fetch(spire, tmp / "gateway", gateway_gid)
    fetch(spire, tmp / "pdp-probe", pdp_gid)  # the entry has reached the agent
    addr = f"127.0.0.1:{free_port()}"
    log = tmp / "pdp.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            as_group(pdp_gid, serve_argv(policies_without_vault(tmp / "policies"), addr)),
            env=pdp_env(spire, tmp, **settings), stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
    pdp = SpirePdp(addr, proc, log, gateway)
    try:
        wait_until(lambda: pdp.health() == health_pb2.HealthCheckResponse.SERVING, 90,
                   f"PDP {addr} on SPIRE", proc, log)
        yield pdp
    finally:
        stop(proc)


# --- load across rotations ----------------------------------------------------------

@dataclass
class Load:
    """What a load run saw: decisions, failures (any RPC error or a decision that is not
    the expected one or names another policy), latencies and serials."""

    ok: int = 0
    failures: list[str] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    pdp_serials: list[int] = field(default_factory=list)  # in the order first seen
    agent_serials: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def saw(self, serials: list[int], serial: int) -> None:
        with self.lock:
            if serial not in serials:
                serials.append(serial)

    def record(self, latency_s: float, failure: str = "") -> None:
        with self.lock:
            if failure:
                self.failures.append(failure)
            else:
                self.ok += 1
                self.latencies_s.append(latency_s)


# (asked-about workload, tool, action) -> (decision, policy) the examples give.
EXPECTED = {
    (FINANCE, "salesforce.accounts", "read"): (pdp_pb2.DECISION_ALLOW, "finance-analyst-readonly"),
    (FINANCE, "salesforce.accounts", "export"): (pdp_pb2.DECISION_DENY, "finance-analyst-readonly"),
    (CLAIMS, "crm.customers", "read"): (pdp_pb2.DECISION_DENY, "claims-assistant"),
}


def check_decision(resp: pdp_pb2.AuthorizeResponse, workload: str, tool: str,
                   action: str) -> str:
    """"" when the decision is the one the examples give ``workload``, else why not."""
    decision, policy = EXPECTED[(workload, tool, action)]
    if resp.decision != decision or resp.policy != policy:
        return (f"{workload} {tool}/{action}: {pdp_pb2.Decision.Name(resp.decision)} by "
                f"{resp.policy!r} {[r.code for r in resp.reasons]}, expected "
                f"{pdp_pb2.Decision.Name(decision)} by {policy!r}")
    return ""


def run_load(pdp: SpirePdp, spire: Spire, tmp: Path, agent_gid: int, duration_s: float,
             threads: int = 4, jwt: dict[str, str] | None = None) -> Load:
    """For ``duration_s``: the gateway on one kept-alive connection asking about two
    workloads in turn (forwarding their JWT-SVIDs from ``jwt``); the agent (re-fetching
    its SVID from the Workload API every 2 s, as a SPIFFE client does) on a fresh
    connection per call asking about itself; and
    the PDP's served certificate read every 0.5 s. Every decision is checked."""
    load = Load()
    stop_at = time.monotonic() + duration_s
    agent = [fetch(spire, tmp / "agent-0", agent_gid)]  # before the load's threads start
    load.saw(load.agent_serials, agent[0].leaf.serial_number)
    cases = [(FINANCE, "salesforce.accounts", "read"), (CLAIMS, "crm.customers", "read"),
             (FINANCE, "salesforce.accounts", "export")]

    def call(stub: pdp_pb2_grpc.PolicyDecisionServiceStub, workload: str, tool: str,
             action: str, token: str = "") -> None:
        t0 = time.perf_counter()
        try:
            resp = stub.Authorize(ask(workload, token, tool=tool, action=action), timeout=10)
        except grpc.RpcError as exc:
            load.record(0, f"{workload} {tool}/{action}: {exc.code().name} {exc.details()}")
            return
        load.record(time.perf_counter() - t0, check_decision(resp, workload, tool, action))

    def gateway_kept_alive(offset: int) -> None:
        with channel(pdp.addr, pdp.gateway) as ch:
            stub = authorize_stub(ch)
            i = offset
            while time.monotonic() < stop_at:
                workload, tool, action = cases[i % 2]
                call(stub, workload, tool, action, (jwt or {}).get(workload, ""))
                i += 1

    def agent_fresh() -> None:
        i = 0
        while time.monotonic() < stop_at:
            creds = agent[-1]
            with channel(pdp.addr, creds, fresh=True) as ch:
                call(authorize_stub(ch), *cases[0 if i % 2 else 2])
            i += 1

    def refetch_agent() -> None:
        n = 0
        while time.monotonic() < stop_at:
            time.sleep(0.5)
            while (tmp / "agent-svids" / str(n + 1)).is_dir():  # complete (renamed) only
                n += 1
                creds = Creds(tmp / "agent-svids" / str(n))
                load.saw(load.agent_serials, creds.leaf.serial_number)
                agent.append(creds)

    def watch_pdp() -> None:
        while time.monotonic() < stop_at:
            try:
                cert = served_certificate(pdp.addr, pdp.gateway)
                load.saw(load.pdp_serials, cert.serial_number)
                if uri_san(cert) != [PDP_ID]:
                    load.record(0, f"PDP served {uri_san(cert)}")
            except OSError as exc:
                load.record(0, f"handshake to the PDP failed: {exc}")
            time.sleep(0.5)

    workers = [threading.Thread(target=gateway_kept_alive, args=(i,)) for i in range(threads // 2)]
    workers += [threading.Thread(target=agent_fresh) for _ in range(threads - threads // 2)]
    workers += [threading.Thread(target=refetch_agent), threading.Thread(target=watch_pdp)]
    with refetching(spire, tmp / "agent-svids", agent_gid):
        for t in workers:
            t.start()
        for t in workers:
            t.join()
    return load


@contextlib.contextmanager
def refetching(spire: Spire, dest: Path, gid: int, every_s: float = 2.0) -> Iterator[None]:
    """The agent workload (group ``gid``) fetching its SVID from the Workload API every
    ``every_s`` into ``dest``/1, 2, ... (each renamed into place when complete).

    One long-lived shell, started once: no process is started from this gRPC-busy
    interpreter while the load runs."""
    dest.mkdir(parents=True, exist_ok=True)
    script = (f'i=0; while :; do i=$((i+1)); t="{dest}/.tmp$i"; mkdir -p "$t"; '
              f'"{tool_binary("spire-agent")}" api fetch x509 -socketPath "{spire.workload_socket}" '
              f'-write "$t" -timeout 5s >/dev/null 2>&1 && mv "$t" "{dest}/$i"; sleep {every_s}; done')
    proc = subprocess.Popen(as_group(gid, ["/bin/sh", "-c", script]), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        yield
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the shell and a fetch it may be running
        proc.wait(10)


def not_after(cert: x509.Certificate) -> dt.datetime:
    return cert.not_valid_after_utc
