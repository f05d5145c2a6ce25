"""Health that tells the truth (issue 19), with a real managed OPA: gRPC health and /readyz
go NOT_SERVING / 503 while OPA is down, and back once the supervisor's restarted OPA has
activated the bundle; ``aam status`` prints the components and its exit code follows."""

from __future__ import annotations

import io
import signal

import grpc
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aam.cli.main import run
from pdp.health import ENGINE
from pdp.opa import free_port
from pdp.procs import wait_until
from pdp.server import SERVICE_NAME
from tests.integration.ledgers import fresh_database
from tests.integration.pdp import NOT_SERVING, SERVING, health_status, readyz, running_stack
from tests.servers import Postgres

_health, _readyz = health_status, readyz


def test_health_follows_opa_down_and_back() -> None:
    with running_stack() as stack:
        assert stack.opa is not None and stack.opa.proc is not None
        wait_until(lambda: _health(stack) == SERVING, 20, "health SERVING")
        assert _health(stack, SERVICE_NAME) == SERVING
        ready = _readyz(stack)
        assert ready.status_code == 200
        assert ready.json()["components"][ENGINE]["state"] == "ok"
        assert requests.get(stack.http.url + "/healthz", timeout=5).status_code == 200  # type: ignore[union-attr]

        # Every health change, as gRPC streams it, and every component change: the restart
        # can be quicker than any poll, so the outage is read from what was reported.
        heard: list[dict[str, object]] = []
        stack.components.listen(lambda c: heard.append(c.document()))
        channel = grpc.insecure_channel(stack.settings.grpc_addr)
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(),
                                                          timeout=60)
        assert next(watch).status == SERVING
        first = stack.opa.proc
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert next(watch).status == NOT_SERVING
        assert next(watch).status == SERVING  # the supervisor's fresh OPA activated the bundle
        watch.cancel()
        channel.close()
        down = [d for d in heard if d["status"] == "not_ready"]
        assert down, heard
        engine = down[0]["components"][ENGINE]  # type: ignore[index]
        assert engine["state"] == "down" and "exited" in engine["reason"]
        wait_until(lambda: stack.opa is not None and stack.opa.proc is not first, 30,
                   "supervisor restarted OPA")
        wait_until(lambda: _health(stack) == SERVING and _readyz(stack).status_code == 200, 30,
                   "health SERVING again")
        assert _health(stack, SERVICE_NAME) == SERVING


def test_grpc_health_is_not_serving_while_opa_is_down() -> None:
    """With the supervisor unable to bring OPA back (its binary gone), the outage lasts:
    gRPC health must say NOT_SERVING, for "" and the decision service."""
    with running_stack() as stack:
        assert stack.opa is not None and stack.opa.proc is not None
        wait_until(lambda: _health(stack) == SERVING, 20, "health SERVING")
        stack.opa.binary = "/nonexistent/opa"  # the restart fails, and is retried
        stack.opa.proc.send_signal(signal.SIGKILL)
        wait_until(lambda: _health(stack) == NOT_SERVING, 20, "health NOT_SERVING")
        assert _health(stack, SERVICE_NAME) == NOT_SERVING
        assert _health(stack, ENGINE) == NOT_SERVING
        r = _readyz(stack)
        assert r.status_code == 503 and r.json()["status"] == "not_ready"
        # First the supervisor's reason (OPA exited), then the probe's own (unreachable).
        wait_until(lambda: "OPA unreachable" in _readyz(stack).json()["components"][ENGINE][
            "reason"], 20, "the probe's reason")


def aam(*argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(list(argv), out, err)
    return code, out.getvalue() + err.getvalue()


def test_aam_status_prints_components_and_exits_by_readiness() -> None:
    with running_stack() as stack:
        assert stack.http is not None
        wait_until(lambda: _health(stack) == SERVING, 20, "health SERVING")
        code, out = aam("status", "--addr", stack.settings.grpc_addr, "--http", stack.http.url)
        assert code == 0, out
        assert "grpc overall: SERVING" in out
        assert f"grpc {SERVICE_NAME}: SERVING" in out
        assert "engine: ok" in out and "bundle_server: ok" in out
        assert out.rstrip().endswith("ready")
    code, out = aam("status", "--addr", f"127.0.0.1:{free_port()}", "--timeout", "2")
    assert code == 1
    assert "unreachable" in out and out.rstrip().endswith("not ready")


def test_worker_mode_reports_health_from_each_worker_and_readyz_from_the_parent(
        postgres: Postgres) -> None:
    """Workers set their own gRPC health from their own probe; the parent's /readyz and
    aam_component_up come from its probe of the same OPA."""
    with running_stack(ledger_url=fresh_database(postgres), workers=2) as stack:
        assert stack.workers is not None and stack.http is not None
        wait_until(lambda: _health(stack) == SERVING, 20, "workers' health SERVING")
        assert _readyz(stack).json()["components"][ENGINE]["state"] == "ok"
        text = requests.get(stack.http.url + "/metrics", timeout=10).text
        assert 'aam_component_up{component="engine"} 1.0' in text
