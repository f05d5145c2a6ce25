"""The running PDP: bundle server, OPA (managed or external), engine and gRPC.

``aam up`` and ``aam serve`` both build a :class:`Stack`; they differ only in
settings (``up`` is plaintext on loopback with embedded defaults).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from compiler import Bundle, CompileError, compile_paths
from compiler.bundle import DATA_PATH
from pdp import broker as brokers
from pdp import bundlesigner
from pdp.broker import Broker
from pdp.broker.metrics import BrokerCollector
from pdp.bundles import BUNDLE_PATH, BundleStore, HttpServer
from pdp.bundlesigner import BundleSigner
from pdp.compiled import Revisions
from pdp.config import Settings, split_addr
from pdp.engine import Engine
from pdp.extauthz import ExtAuthzServer, register
from pdp.identity import AuditHook, Refusal, log_refusal
from pdp.identity import from_settings as identity_from_settings
from pdp.ledger import Ledger, LedgerError
from pdp.ledger import startup as ledger_startup
from pdp.ledger.anchor import AnchorWriter
from pdp.ledger.gate import Gate, LedgerGate
from pdp.ledger.noop import NullGate
from pdp.metrics import METRICS_PATH, Metrics
from pdp.opa import OpaClient, OpaProcess
from pdp.server import GrpcServer
from pdp.service import PolicyDecisionServicer

log = logging.getLogger("aam.stack")


class Stack:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.policies = Path(settings.policies)
        self.store = BundleStore()
        self.metrics = Metrics(self.store)
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

    def compile(self) -> Bundle:
        return compile_paths([self.policies])

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
        self.broker = brokers.build(s)
        self.broker.start()
        self.metrics.registry.register(BrokerCollector(self.broker))
        self._publish(self.compile())
        # Keyed (refuses to start without audit_key_file), migrated, anchor checked.
        self.ledger, self.anchors = ledger_startup.open_for(s)
        if self.anchors is not None:
            self.anchors.start()
        host, port = split_addr(s.http_addr, "http_addr")
        self.http = HttpServer(host, port, self.store)
        self.http.routes[METRICS_PATH] = self.metrics.route()
        self.http.start()
        opa_url = s.opa_url
        if not opa_url:
            self.opa = OpaProcess(s.opa_path(), s.opa_addr, self.http.url, gogc=s.opa_gogc,
                                  verification=signer.verification)
            self.opa.start()
            opa_url = self.opa.url
        gate: LedgerGate = NullGate(self.revisions) if self.ledger is None else Gate(
            self.ledger, self.revisions, s.reservation_ttl_s, s.default_estimated_tokens,
            s.ledger_state_ttl_ms / 1000)
        engine = Engine(OpaClient(opa_url, s.opa_timeout_ms / 1000), observers=[self.metrics.observe],
                        broker=self.broker, gate=gate)
        self.engine = engine
        identity = identity_from_settings(s, audit=self._refusal_hook(gate, self.metrics))
        self.grpc = GrpcServer(s, PolicyDecisionServicer(engine, s, identity))
        if s.extauthz_addr:
            self.extauthz = ExtAuthzServer(s, engine, identity, self.revisions)
            self.extauthz.start()
        else:
            register(self.grpc.server, engine, s, identity, self.revisions)
        self.grpc.start()
        if self.opa is not None:
            threading.Thread(target=self._supervise_opa, name="aam-opa-supervisor",
                             daemon=True).start()
        if s.watch:
            self._watcher = threading.Thread(target=self._watch, name="aam-watch", daemon=True)
            self._watcher.start()

    def _publish(self, bundle: Bundle) -> None:
        """Parse the bundle's data once; the broker sees it first, so it stops issuing for
        removed grants before OPA does. Decisions read it once OPA has pulled it."""
        revision = self.revisions.update(bundle.files, DATA_PATH)
        if self.broker is not None:
            self.broker.adopt(revision.compiled)
        self.store.publish(bundle)

    @staticmethod
    def _refusal_hook(gate: LedgerGate, metrics: Metrics) -> AuditHook:
        """Identity refusals go to the log, the decision counter and, with a ledger,
        the audit table."""

        def hook(refusal: Refusal) -> None:
            log_refusal(refusal)
            metrics.refused(refusal.code)
            try:
                gate.record_refusal(refusal.caller, refusal.asserted, refusal.code, refusal.message)
            except LedgerError:
                log.error("identity refusal not audited: ledger unavailable")

        return hook

    @property
    def opa_url(self) -> str:
        return self.opa.url if self.opa else self.settings.opa_url

    @property
    def bundle_url(self) -> str:
        return (self.http.url if self.http else "") + BUNDLE_PATH

    def _snapshot(self) -> tuple[tuple[str, int, int], ...]:
        files = sorted(p for p in self.policies.rglob("*") if p.is_file()) \
            if self.policies.is_dir() else [self.policies]
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
        engine answers DENY engine_unavailable (fail closed)."""
        while not self._stop.wait(interval_s):
            opa = self.opa
            if opa is None or opa.proc is None or opa.proc.poll() is None:
                continue
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
        """Recompile and publish; on errors keep serving the previous bundle."""
        try:
            bundle = self.compile()
        except CompileError as exc:
            log.error("policy change rejected; previous bundle stays active",
                      extra={"fields": {"errors": [str(d) for d in exc.diagnostics]}})
            return False
        current = self.store.current
        if current is None or current.revision != bundle.revision:
            self._publish(bundle)
            log.info("bundle published", extra={"fields": {"revision": bundle.revision}})
        return True

    def stop(self) -> None:
        self._stop.set()
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

    def wait(self) -> None:
        self._stop.wait()

    def request_stop(self) -> None:
        self._stop.set()
