"""The decision side of one PDP process: engine, identity and the gRPC listener(s).

The one-process stack (pdp/stack.py) and each worker process (pdp/worker.py) build
exactly this, from a broker and a ledger they own, so both answer the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pdp.broker import Broker
from pdp.compiled import Revisions
from pdp.config import Settings
from pdp.engine import Engine
from pdp.extauthz import ExtAuthzServer, register
from pdp.health import BROKER, DEGRADED, IDENTITY, LEDGER, OK, Components, OpaProbe, Periodic
from pdp.identity import AuditHook, Refusal, log_refusal, open_source
from pdp.identity import from_settings as identity_from_settings
from pdp.ledger import Ledger, LedgerError
from pdp.ledger.gate import Gate, LedgerGate
from pdp.ledger.noop import NullGate
from pdp.ledger.watched import WatchedLedger
from pdp.metrics import Metrics
from pdp.opa import OpaClient
from pdp.server import GrpcServer
from pdp.service import PolicyDecisionServicer
from pdp.tracing.tracer import from_settings as tracing_from_settings
from pdp.workloadapi import WorkloadApiSource

log = logging.getLogger("aam.stack")


class Serving:
    """Built bound (ports taken), started by :meth:`start`. ``reuse_port``: one of several
    worker processes on the same addresses.

    ``components``: where this process's components report (a fresh registry without);
    gRPC health follows it. The engine from the probe of OPA; the ledger (when there is
    one) from every ledger call the gate makes and a ``ping`` every
    ``health_probe_interval_s``; the broker (when it has a backend: Vault) from its logins
    and calls and a token lookup every ``broker_probe_interval_s``. No ledger, or broker
    ``none``: not reported at all. With spiffe_endpoint_socket, ``identity``: degraded
    when the Workload API stopped renewing the SVID (pdp/workloadapi.py)."""

    def __init__(self, settings: Settings, opa_url: str, revisions: Revisions, metrics: Metrics,
                 broker: Broker | None, ledger: Ledger | None, reuse_port: bool = False,
                 components: Components | None = None) -> None:
        s = settings
        self.components = components if components is not None else Components()
        self.probe = OpaProbe(opa_url, self.components, s.health_probe_interval_s)
        self.probes: list[Periodic] = []
        self.watched: WatchedLedger | None = None
        if ledger is not None:
            self.watched = WatchedLedger(ledger, self._reporter(LEDGER))
            self.probes.append(Periodic(LEDGER, self.watched.ping, s.health_probe_interval_s))
        if broker is not None and broker.reports_health:
            broker.watch(self._reporter(BROKER))
            self.probes.append(Periodic(BROKER, broker.check, s.broker_probe_interval_s))
        self.broker = broker
        gate: LedgerGate = NullGate(revisions) if self.watched is None else Gate(
            self.watched, revisions, s.reservation_ttl_s, s.default_estimated_tokens,
            s.ledger_state_ttl_ms / 1000)
        self.engine = Engine(OpaClient(opa_url, s.opa_timeout_ms / 1000),
                             observers=[metrics.observe], broker=broker, gate=gate,
                             tracing=tracing_from_settings(s))
        # This process's own Workload API source (spiffe_endpoint_socket): its SVID for
        # both listeners, its bundles for the handshakes and the JWT-SVIDs.
        self.workload = open_source(s) if s.spiffe_endpoint_socket else None
        if self.workload is not None:
            workload = self.workload
            self.probes.append(Periodic(IDENTITY, lambda: self._report_identity(workload),
                                        s.health_probe_interval_s))
            self._report_identity(workload)
        try:
            self._listen(s, revisions, refusal_hook(gate, metrics), reuse_port)
        except BaseException:
            if self.workload is not None:
                self.workload.close()
            raise

    def _listen(self, s: Settings, revisions: Revisions, audit: AuditHook,
                reuse_port: bool) -> None:
        identity = identity_from_settings(s, audit=audit, workload=self.workload)
        self.grpc: GrpcServer | None = GrpcServer(
            s, PolicyDecisionServicer(self.engine, s, identity), reuse_port, self.components,
            self.workload)
        self.extauthz: ExtAuthzServer | None = None
        if s.extauthz_addr:
            self.extauthz = ExtAuthzServer(s, self.engine, identity, revisions, reuse_port,
                                           self.workload)
        else:
            register(self.grpc.server, self.engine, s, identity, revisions)

    def _report_identity(self, workload: WorkloadApiSource) -> None:
        ok, reason = workload.health()
        m = workload.material
        self.components.set(IDENTITY, OK if ok else DEGRADED, reason, detail={
            "source": "workload_api", "spiffe_id": m.spiffe_id, "serial": f"{m.serial:x}",
            "not_after": f"{m.not_after:%Y-%m-%dT%H:%M:%SZ}"})

    def _reporter(self, name: str) -> Callable[[bool, str], None]:
        def report(ok: bool, reason: str) -> None:
            self.components.set(name, OK if ok else DEGRADED, reason)

        return report

    def start(self) -> None:
        if self.extauthz:
            self.extauthz.start()
        self.probe.check()  # health's first answer is already OPA's, not a guess
        if self.watched is not None:
            self.watched.ping()  # and the ledger's
        if self.broker is not None and self.broker.reports_health \
                and BROKER not in self.components.snapshot():
            self.broker.check()  # the broker's, if its start said nothing yet
        if self.grpc:
            self.grpc.start()  # NOT_SERVING until a probe sees an active bundle
        self.probe.start()
        for probe in self.probes:
            probe.start()

    def stop(self, grace_s: float) -> None:
        """Stop taking calls; in-flight ones get ``grace_s`` to finish."""
        self.probe.stop()
        for probe in self.probes:
            probe.stop()
        if self.extauthz:
            self.extauthz.stop(grace_s)
            self.extauthz = None
        if self.grpc:
            self.grpc.stop(grace_s)
            self.grpc = None
        self.engine.opa.close()
        self.engine.tracing.shutdown()  # export what is batched
        if self.workload is not None:
            self.workload.close()
            self.workload = None


def refusal_hook(gate: LedgerGate, metrics: Metrics) -> AuditHook:
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
