"""The decision side of one PDP process: engine, identity and the gRPC listener(s).

The one-process stack (pdp/stack.py) and each worker process (pdp/worker.py) build
exactly this, from a broker and a ledger they own, so both answer the same way.
"""

from __future__ import annotations

import logging

from pdp.broker import Broker
from pdp.compiled import Revisions
from pdp.config import Settings
from pdp.engine import Engine
from pdp.extauthz import ExtAuthzServer, register
from pdp.health import Components, OpaProbe
from pdp.identity import AuditHook, Refusal, log_refusal
from pdp.identity import from_settings as identity_from_settings
from pdp.ledger import Ledger, LedgerError
from pdp.ledger.gate import Gate, LedgerGate
from pdp.ledger.noop import NullGate
from pdp.metrics import Metrics
from pdp.opa import OpaClient
from pdp.server import GrpcServer
from pdp.service import PolicyDecisionServicer

log = logging.getLogger("aam.stack")


class Serving:
    """Built bound (ports taken), started by :meth:`start`. ``reuse_port``: one of several
    worker processes on the same addresses.

    ``components``: where the probe of this process's OPA reports (a fresh registry
    without); gRPC health follows it."""

    def __init__(self, settings: Settings, opa_url: str, revisions: Revisions, metrics: Metrics,
                 broker: Broker | None, ledger: Ledger | None, reuse_port: bool = False,
                 components: Components | None = None) -> None:
        s = settings
        self.components = components if components is not None else Components()
        self.probe = OpaProbe(opa_url, self.components)
        gate: LedgerGate = NullGate(revisions) if ledger is None else Gate(
            ledger, revisions, s.reservation_ttl_s, s.default_estimated_tokens,
            s.ledger_state_ttl_ms / 1000)
        self.engine = Engine(OpaClient(opa_url, s.opa_timeout_ms / 1000),
                             observers=[metrics.observe], broker=broker, gate=gate)
        identity = identity_from_settings(s, audit=refusal_hook(gate, metrics))
        self.grpc: GrpcServer | None = GrpcServer(
            s, PolicyDecisionServicer(self.engine, s, identity), reuse_port, self.components)
        self.extauthz: ExtAuthzServer | None = None
        if s.extauthz_addr:
            self.extauthz = ExtAuthzServer(s, self.engine, identity, revisions, reuse_port)
        else:
            register(self.grpc.server, self.engine, s, identity, revisions)

    def start(self) -> None:
        if self.extauthz:
            self.extauthz.start()
        self.probe.check()  # health's first answer is already OPA's, not a guess
        if self.grpc:
            self.grpc.start()  # NOT_SERVING until a probe sees an active bundle
        self.probe.start()

    def stop(self, grace_s: float) -> None:
        """Stop taking calls; in-flight ones get ``grace_s`` to finish."""
        self.probe.stop()
        if self.extauthz:
            self.extauthz.stop(grace_s)
            self.extauthz = None
        if self.grpc:
            self.grpc.stop(grace_s)
            self.grpc = None
        self.engine.opa.close()


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
