"""Component states and readiness (pdp/health.py, issue 19): the rules, and gRPC health
NOT_SERVING from its first answer while OPA has never answered (no real OPA needed here;
tests/integration/test_health.py kills a real one)."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aam.v1 import pdp_pb2_grpc
from pdp.config import Settings
from pdp.health import BROKER, DEGRADED, DOWN, ENGINE, LEDGER, OK, Components, OpaProbe
from pdp.metrics import Metrics
from pdp.opa import free_port
from pdp.server import SERVICE_NAME, GrpcServer


def test_not_ready_until_the_engine_reports_ok() -> None:
    c = Components()
    assert c.status() == "not_ready"  # nothing known yet: no bundle is known to be active
    c.set(LEDGER, OK)
    assert not c.ready()
    c.set(ENGINE, OK)
    assert c.status() == "ready"
    c.set(ENGINE, DOWN, "OPA unreachable")
    assert c.status() == "not_ready"
    assert c.document()["components"][ENGINE]["reason"] == "OPA unreachable"  # type: ignore[index]


def test_a_ledger_or_broker_outage_is_degraded_and_still_ready() -> None:
    c = Components()
    c.set(ENGINE, OK)
    c.set(LEDGER, DOWN, "connection refused")
    assert c.status() == "degraded" and c.ready()
    c.set(LEDGER, OK)
    c.set(BROKER, DEGRADED, "vault slow")
    assert c.status() == "degraded"


def test_listeners_hear_changes_not_repeats() -> None:
    c = Components()
    heard: list[str] = []
    c.listen(lambda comps: heard.append(comps.status()))
    c.set(ENGINE, OK)
    c.set(ENGINE, OK)
    since = c.snapshot()[ENGINE].since
    c.set(ENGINE, OK)
    assert heard == ["not_ready", "ready"]
    assert c.snapshot()[ENGINE].since == since


def test_the_gauge_reports_each_component() -> None:
    c = Components()
    metrics = Metrics()
    metrics.watch(c)
    c.set(ENGINE, OK)
    c.set(LEDGER, DEGRADED, "slow")
    c.set(BROKER, DOWN, "vault down")
    for name, value in ((ENGINE, 1.0), (LEDGER, 0.5), (BROKER, 0.0)):
        assert metrics.registry.get_sample_value("aam_component_up", {"component": name}) == value


def test_a_probe_of_an_opa_that_never_answers_reports_the_engine_down() -> None:
    c = Components()
    probe = OpaProbe(f"http://127.0.0.1:{free_port()}", c)
    assert c.snapshot()[ENGINE] .state == DOWN  # before any probe: no bundle activated yet
    assert c.snapshot()[ENGINE].reason == "no bundle activated yet"
    probe.check()
    assert c.snapshot()[ENGINE].state == DOWN
    assert "OPA unreachable" in c.snapshot()[ENGINE].reason


def test_grpc_health_is_not_serving_from_start_before_any_bundle() -> None:
    """Right after start, before any probe has run, health already says NOT_SERVING; an
    engine turning ok flips it to SERVING, and down again to NOT_SERVING."""
    c = Components()
    OpaProbe(f"http://127.0.0.1:{free_port()}", c)  # constructed, never run
    settings = Settings.load(env={}, plaintext=True, grpc_addr=f"127.0.0.1:{free_port()}")
    server = GrpcServer(settings, pdp_pb2_grpc.PolicyDecisionServiceServicer(), components=c)
    server.start()
    try:
        with grpc.insecure_channel(settings.grpc_addr) as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            def status(service: str) -> int:
                return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

            not_serving, serving = (health_pb2.HealthCheckResponse.NOT_SERVING,
                                    health_pb2.HealthCheckResponse.SERVING)
            assert [status(s) for s in ("", SERVICE_NAME, ENGINE)] == [not_serving] * 3
            c.set(ENGINE, OK)
            assert [status(s) for s in ("", SERVICE_NAME, ENGINE)] == [serving] * 3
            c.set(ENGINE, DOWN, "OPA unreachable")
            assert status("") == not_serving
    finally:
        server.stop(0)
