"""The running PDP: bundle server, OPA (managed or external), engine and gRPC.

``aam up`` and ``aam serve`` both build a :class:`Stack`; they differ only in
settings (``up`` is plaintext on loopback with embedded defaults). With one worker
(resolve_workers) everything runs in this process; with more, the decision side
(pdp/serving.py) runs in worker processes on the same port (pdp/workers.py) and this
process keeps compile, bundles, OPA, the watcher and the audit anchors.
"""

from __future__ import annotations

import logging
import socket
import threading
from dataclasses import replace
from pathlib import Path

from compiler import Bundle, CompileError, compile_paths
from compiler.bundle import DATA_PATH
from compiler.errors import Diagnostic
from pdp import broker as brokers
from pdp import bundlesigner, memory, reuseport
from pdp.broker import Broker
from pdp.broker.metrics import BrokerCollector
from pdp.bundles import BUNDLE_PATH, BundleStore, HttpServer
from pdp.bundlesigner import BundleSigner
from pdp.compiled import Revisions
from pdp.config import Settings, resolve_workers, split_addr
from pdp.console import ConsoleServer, RevisionLog, console_server
from pdp.engine import Engine
from pdp.extauthz import ExtAuthzServer
from pdp.health import (
    BUNDLE_SERVER,
    DEGRADED,
    DOWN,
    ENGINE,
    HEALTHZ_PATH,
    OK,
    READYZ_PATH,
    Components,
    OpaProbe,
    Periodic,
    healthz,
    readyz_route,
)
from pdp.kubesource import KubeSource
from pdp.ledger import Ledger
from pdp.ledger import startup as ledger_startup
from pdp.ledger.anchor import AnchorWriter
from pdp.ledger.types import ChainHead
from pdp.metrics import METRICS_PATH, Metrics
from pdp.opa import OpaProcess
from pdp.server import GrpcServer
from pdp.serving import Serving
from pdp.workers import Workers

log = logging.getLogger("aam.stack")


class Stack:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.policies = Path(settings.policies)
        # policy_source = kubernetes: the custom resources, kept as files in a private
        # directory compiled and watched like any other (pdp/kubesource.py).
        self.source: KubeSource | None = None
        self.store = BundleStore()
        self.metrics = Metrics(self.store)
        # What gRPC health (one process), /readyz and aam_component_up report (pdp/health.py).
        self.components = Components()
        self.metrics.watch(self.components)
        self.probe: OpaProbe | None = None
        self.probes: list[Periodic] = []  # the ledger's and broker's (pdp/serving.py)
        self.http: HttpServer | None = None
        self.opa: OpaProcess | None = None
        self.grpc: GrpcServer | None = None
        self.engine: Engine | None = None
        self.extauthz: ExtAuthzServer | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.broker: Broker | None = None
        # Every published bundle's typed data, for ledger limits and prices, the broker
        # and the response processor; each decision reads the revision OPA decided with.
        self.revisions = Revisions()
        self.ledger: Ledger | None = None
        self.anchors: AnchorWriter | None = None  # checkpoints of the audit chain's head
        self.signer: BundleSigner | None = None  # signs every bundle published to OPA
        self.workers: Workers | None = None  # with more than one worker: their supervisor
        self._held: list[socket.socket] = []  # the ports the workers share (pdp/reuseport.py)
        # The read-only console (console_addr), and what it shows of the bundles published.
        self.history = RevisionLog()
        self.components.listen(self.history.on_components)
        self.console: ConsoleServer | None = None

    def compile(self) -> Bundle:
        return compile_paths([self.policies], self._shadow)

    @property
    def _shadow(self) -> list[Path]:
        return [Path(self.settings.shadow_policies)] if self.settings.shadow_policies else []

    def start(self) -> None:
        """Start everything or nothing: a failure stops what already started."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        s = self.settings
        signer = bundlesigner.from_settings(s)  # first: a bad key stops the start here
        self.signer = self.store.signer = signer
        count = resolve_workers(s)
        if count > 1:  # the workers' ports first: one in use stops the start here
            self._hold_ports()
            self.workers = Workers(count, self._newest, self.components)
        else:
            self.broker = brokers.build(s)
            self.broker.start()
            self.metrics.registry.register(BrokerCollector(self.broker))
        if s.policy_source == "kubernetes":
            self.source = KubeSource(s)
            self.policies = self.source.directory
            self.source.start()
        try:
            bundle = self.compile()
        except CompileError as exc:
            self._report(None, exc.diagnostics)
            raise
        self._publish(bundle)
        self._report(bundle.revision, [])
        # Keyed (refuses to start without audit_key_file), migrated, anchor checked.
        self.ledger, self.anchors = ledger_startup.open_for(s)
        head = self.ledger.head if self.ledger is not None else None
        if self.workers is not None and self.ledger is not None:
            self.ledger.close()  # the workers write; this process only checked the anchor
            self.ledger = None
        if self.anchors is not None and self.workers is None:
            self.anchors.start()
        host, port = split_addr(s.http_addr, "http_addr")
        self.http = HttpServer(host, port, self.store)
        self.http.routes[METRICS_PATH] = (self.metrics.route() if self.workers is None
                                          else self.workers.metrics.route(self.metrics))
        self.http.routes[HEALTHZ_PATH] = healthz
        self.http.routes[READYZ_PATH] = readyz_route(self.components)
        self.http.start()
        # Listening, the first bundle published.
        self.components.set(BUNDLE_SERVER, OK, detail={"revision": bundle.revision})
        opa_url = s.opa_url
        if not opa_url:
            self.opa = OpaProcess(s.opa_path(), s.opa_addr, self.http.url, gogc=s.opa_gogc,
                                  verification=signer.verification)
            self.opa.start()
            opa_url = self.opa.url
        if self.workers is not None:
            # Each worker probes OPA for its own gRPC health; this probe is for /readyz here.
            self.probe = OpaProbe(opa_url, self.components, s.health_probe_interval_s)
            self.probe.check()
            self.probe.start()
            self._start_workers(opa_url, head)
        else:
            serving = Serving(s, opa_url, self.revisions, self.metrics, self.broker, self.ledger,
                              components=self.components)
            self.engine, self.grpc, self.extauthz = serving.engine, serving.grpc, serving.extauthz
            self.probe, self.probes = serving.probe, serving.probes
            serving.start()
        if self.opa is not None:
            threading.Thread(target=self._supervise_opa, name="aam-opa-supervisor",
                             daemon=True).start()
        if s.console_addr:
            self.console = console_server(s, self.ledger, self.revisions, self.history)
            self.console.start()
        if s.watch or self.source is not None:
            self._watcher = threading.Thread(target=self._watch, name="aam-watch", daemon=True)
            self._watcher.start()

    def _hold_ports(self) -> None:
        """Hold grpc_addr (and extauthz_addr) for the workers, port 0 made concrete: the
        settings then name the port every worker binds, and clients connect to."""
        s = self.settings
        held, grpc_addr = reuseport.hold(s.grpc_addr, "grpc_addr")
        self._held.append(held)
        extauthz_addr = s.extauthz_addr
        if extauthz_addr:
            held, extauthz_addr = reuseport.hold(extauthz_addr, "extauthz_addr")
            self._held.append(held)
        self.settings = replace(s, grpc_addr=grpc_addr, extauthz_addr=extauthz_addr)

    def _start_workers(self, opa_url: str, head: ChainHead | None) -> None:
        """The workers, on this OPA; they neither migrate nor anchor (this process does)."""
        assert self.workers is not None
        self.workers.start(replace(self.settings, opa_url=opa_url, workers=self.workers.count,
                                   ledger_migrate=False, audit_anchor_file="", watch=False), head)
        if self.anchors is not None:
            self.anchors.head = self.workers.head  # the newest row any worker wrote
            self.anchors.start()

    def _newest(self, revisions: list[str]) -> str:
        """Of the revisions the workers last decided with, the one published last."""
        seqs = {r: rev.seq for r in revisions if (rev := self.revisions.get(r)) is not None}
        return max(seqs, key=seqs.__getitem__) if seqs else ""

    def _publish(self, bundle: Bundle) -> None:
        """Parse the bundle's data once; the broker sees it first, so it stops issuing for
        removed grants before OPA does. Decisions read it once OPA has pulled it."""
        revision = self.revisions.update(bundle.files, DATA_PATH)
        if self.broker is not None:
            self.broker.adopt(revision.compiled)
        if self.workers is not None:  # each worker's view and broker too, before OPA's
            data = bundle.files[DATA_PATH]
            self.workers.publish(revision.seq, revision.id,
                                 data if isinstance(data, bytes) else str(data).encode())
        self.store.publish(bundle)
        self.history.published(revision.id, len(revision.compiled.policies))
        memory.release_freed()  # the compile's garbage: RSS back from its peak

    @property
    def opa_url(self) -> str:
        return self.opa.url if self.opa else self.settings.opa_url

    @property
    def bundle_url(self) -> str:
        return (self.http.url if self.http else "") + BUNDLE_PATH

    def _snapshot(self) -> tuple[tuple[str, int, int], ...]:
        files = sorted(p for root in (self.policies, *self._shadow)
                       for p in (root.rglob("*") if root.is_dir() else [root]) if p.is_file())
        out = []
        for f in files:
            try:
                st = f.stat()
            except OSError:
                continue
            out.append((str(f), st.st_mtime_ns, st.st_size))
        return tuple(out)

    def _watch(self, interval_s: float = 0.25, settle_s: float = 0.05) -> None:
        last = self._snapshot()
        while not self._stop.wait(interval_s):
            snap = self._snapshot()
            if snap == last:
                continue
            # Debounce: an editor or tool that truncates and rewrites a file
            # shows an empty or half-written file for a moment; compile only
            # once the tree has stopped changing.
            while not self._stop.wait(settle_s):
                settled = self._snapshot()
                if settled == snap:
                    break
                snap = settled
            last = snap
            self.reload()

    def _supervise_opa(self, interval_s: float = 0.5) -> None:
        """Restart a managed OPA that died, on the same address; meanwhile the
        engine answers DENY engine_unavailable (fail closed). The engine is reported down
        at once: a restart can be quicker than the health probe's interval."""
        announced = None  # the dead process already reported (a failed restart retries)
        while not self._stop.wait(interval_s):
            opa = self.opa
            if opa is None or opa.proc is None or opa.proc.poll() is None:
                continue
            if announced is not opa.proc:
                announced = opa.proc
                self.components.set(ENGINE, DOWN, f"managed OPA exited with code "
                                                  f"{opa.proc.returncode}; restarting",
                                    detail={})
            log.error("managed OPA exited; restarting",
                      extra={"fields": {"exit_code": opa.proc.returncode}})
            opa.stop()
            fresh = OpaProcess(opa.binary, opa.addr, opa.bundle_url, gogc=opa.gogc,
                               verification=opa.verification)
            try:
                fresh.start()
            except (RuntimeError, OSError) as exc:
                log.error("OPA restart failed; will retry", extra={"fields": {"error": str(exc)}})
                continue
            if self._stop.is_set():
                fresh.stop()
                return
            self.opa = fresh

    def reload(self) -> bool:
        """Recompile and publish; on errors keep serving the previous bundle (the bundle
        server is then degraded, saying which revision it kept and why, until a change
        publishes)."""
        current = self.store.current
        kept = current.revision if current is not None else ""
        try:
            bundle = self.compile()
        except CompileError as exc:
            log.error("policy change rejected; previous bundle stays active",
                      extra={"fields": {"errors": [str(d) for d in exc.diagnostics]}})
            self._report(None, exc.diagnostics)
            first = str(exc.diagnostics[0]) if exc.diagnostics else "compile error"
            more = len(exc.diagnostics) - 1
            self.components.set(BUNDLE_SERVER, DEGRADED, f"policy change rejected, revision "
                                f"{kept[:12]} kept: {first}" + (f" (+{more} more)" if more > 0 else ""))
            return False
        if current is None or current.revision != bundle.revision:
            try:
                self._publish(bundle)
            except Exception as exc:
                log.exception("publishing a bundle failed; previous bundle stays active",
                              extra={"fields": {"revision": bundle.revision}})
                self.components.set(BUNDLE_SERVER, DEGRADED, f"publishing revision "
                                    f"{bundle.revision[:12]} failed ({type(exc).__name__}), "
                                    f"revision {kept[:12]} kept")
                return False
            log.info("bundle published", extra={"fields": {"revision": bundle.revision}})
        self.components.set(BUNDLE_SERVER, OK, detail={"revision": bundle.revision})
        self._report(bundle.revision, [])
        return True

    def _report(self, revision: str | None, diagnostics: list[Diagnostic]) -> None:
        """The compile's outcome to the policy source (custom resources' status)."""
        if self.source is not None:
            self.source.report(revision, diagnostics)

    def stop(self) -> None:
        self._stop.set()
        if self.console:
            self.console.stop()
            self.console = None
        if self.probe:
            self.probe.stop()
            self.probe = None
        for probe in self.probes:
            probe.stop()
        self.probes = []
        if self.source:
            self.source.stop()
            self.source = None
        if self.workers:
            self.workers.stop(self.settings.shutdown_grace_s)  # they drain their audit writers
        if self.extauthz:
            self.extauthz.stop(self.settings.shutdown_grace_s)
            self.extauthz = None
        if self.grpc:
            self.grpc.stop(self.settings.shutdown_grace_s)
            self.grpc = None
        self.store.close()  # release OPA's long poll, or its shutdown waits it out
        if self.engine:
            self.engine.opa.close()  # and our keep-alive connections
        if self.opa:
            self.opa.stop()
            self.opa = None
        if self.http:
            self.http.stop()
            self.http = None
        if self.broker:
            self.broker.close()
            self.broker = None
        if self.ledger:
            self.ledger.close()  # the audit writer drains first ...
            self.ledger = None
        if self.anchors:
            self.anchors.stop()  # ... so the last anchor names the final head
            self.anchors = None
        for held in self._held:
            held.close()
        self._held = []

    def wait(self) -> None:
        self._stop.wait()

    def request_stop(self) -> None:
        self._stop.set()
