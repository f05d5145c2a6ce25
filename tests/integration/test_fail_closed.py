"""Fail closed against a real OPA: killed, frozen, malformed input, shutdown drains."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aam.v1 import pdp_pb2
from pdp.opa import OpaProcess, free_port
from pdp.stack import Stack
from tests.integration.pdp import FINANCE, request, running_stack, signing_key_file, stub
from tests.servers import opa_binary, wait_until

ALLOW, DENY = pdp_pb2.DECISION_ALLOW, pdp_pb2.DECISION_DENY


def metric(stack: Stack, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"{stack.http.url}/metrics", timeout=5) as r:  # type: ignore[union-attr]
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


class Load:
    """Clients calling Authorize in a loop, recording every outcome in order."""

    def __init__(self, stack: Stack, clients: int = 2) -> None:
        self.stack = stack
        self.outcomes: list[tuple[float, int, tuple[str, ...]]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        channel, pdp = stub(self.stack)
        with channel:
            while not self._stop.is_set():
                try:
                    r = pdp.Authorize(request(model="reasoning-high"), timeout=10)
                    self.outcomes.append((time.monotonic(), r.decision,
                                          tuple(x.code for x in r.reasons)))
                except grpc.RpcError as exc:
                    self.errors.append(f"{exc.code().name}: {exc.details()}")

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(20)

    def seen_since(self, t0: float, decision: int) -> bool:
        return any(t > t0 and d == decision for t, d, _ in list(self.outcomes))


@pytest.fixture
def external_opa_stack(tmp_path: Path) -> Iterator[tuple[Stack, int]]:
    """A PDP pointed at an OPA it does not manage, so the test can kill and restart it."""
    port = free_port()
    with running_stack(opa_url=f"http://127.0.0.1:{port}", opa_timeout_ms=300,
                       bundle_signing_key=str(signing_key_file(tmp_path))) as stack:
        yield stack, port


def start_opa(stack: Stack, port: int) -> OpaProcess:
    opa = OpaProcess(opa_binary(), f"127.0.0.1:{port}", stack.http.url,  # type: ignore[union-attr]
                     verification=stack.signer.verification)  # type: ignore[union-attr]
    opa.start()
    return opa


def test_opa_killed_mid_run_denies_then_recovers(external_opa_stack: tuple[Stack, int]) -> None:
    stack, port = external_opa_stack
    opa = start_opa(stack, port)
    try:
        with Load(stack) as load:
            wait_until(lambda: load.seen_since(0, ALLOW), 20, "first ALLOW")
            opa.proc.kill()  # type: ignore[union-attr]
            opa.proc.wait()  # type: ignore[union-attr]
            killed = time.monotonic()
            wait_until(lambda: load.seen_since(killed, DENY), 20, "DENY while OPA is down")
            opa.stop()
            opa = start_opa(stack, port)
            back = time.monotonic()
            wait_until(lambda: load.seen_since(back, ALLOW), 20, "ALLOW once OPA is back")
    finally:
        opa.stop()
    assert load.errors == []
    down = {codes for t, d, codes in load.outcomes if d == DENY}
    assert down == {("engine_unavailable",)}
    assert metric(stack, "aam_opa_errors_total") == sum(
        1 for _, d, _ in load.outcomes if d == DENY)


def test_frozen_opa_times_out_to_deny_then_recovers(external_opa_stack: tuple[Stack, int]) -> None:
    stack, port = external_opa_stack
    opa = start_opa(stack, port)
    pid = opa.proc.pid  # type: ignore[union-attr]
    channel, pdp = stub(stack)
    try:
        assert pdp.Authorize(request(model="reasoning-high"), timeout=10).decision == ALLOW
        os.kill(pid, signal.SIGSTOP)
        try:
            slow = pdp.Authorize(request(model="reasoning-high"), timeout=10)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert slow.decision == DENY
        assert [(r.code, r.message) for r in slow.reasons] == [
            ("engine_unavailable", "policy engine unavailable: OPA did not answer within 300 ms")]
        assert len(slow.decision_id) == 32
        wait_until(lambda: pdp.Authorize(request(model="reasoning-high"), timeout=10).decision
                   == ALLOW, 20, "ALLOW after OPA thawed")
    finally:
        channel.close()
        opa.stop()


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_stack(max_request_bytes=4096) as s:
        yield s


@pytest.mark.parametrize(("fields", "field"), [
    ({"workload": "", "model": "reasoning-high"}, "identity.spiffe_id"),
    ({"workload": "https://prod/agent/x", "model": "reasoning-high"}, "identity.spiffe_id"),
    ({}, "model"),
    ({"tool": "salesforce.accounts"}, "action"),
    ({"action": "read"}, "model"),
    ({"tool": "salesforce.accounts", "action": "Read Everything"}, "action"),
    ({"model": "reasoning high"}, "model"),
    ({"model": "reasoning-high", "request_id": "r" * 129}, "request_id"),
    ({"model": "reasoning-high", "estimated_tokens": -1}, "estimated_tokens"),
    ({"model": "reasoning-high", "estimated_cost_usd": float("nan")}, "estimated_cost_usd"),
    ({"tool": "salesforce.accounts", "action": "read", "params": {"q": "x" * 5000}}, "params"),
    ({"tool": "salesforce.accounts", "action": "read", "context": {"c": "x" * 5000}}, "params"),
], ids=["no-identity", "not-spiffe", "empty", "no-action", "no-tool", "bad-action", "bad-model",
        "long-request-id", "negative-tokens", "nan-cost", "big-params", "big-context"])
def test_malformed_request_is_invalid_argument_naming_the_field(
        stack: Stack, fields: dict, field: str) -> None:
    channel, pdp = stub(stack)
    with channel:
        with pytest.raises(grpc.RpcError) as info:
            pdp.Authorize(request(**fields), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details().startswith(f"{field}: ")
        # and the service keeps serving
        assert pdp.Authorize(request(model="reasoning-high"), timeout=10).decision == ALLOW


def nested(levels: int) -> dict:
    out: dict = {}
    inner = out
    for _ in range(levels):
        inner["n"] = {}
        inner = inner["n"]
    return out


@pytest.mark.parametrize(("levels", "message"), [
    (33, "params: nested deeper than 32 levels"),
    # past protobuf's own decoding depth limit: refused before it is a message
    (60, "request: cannot be decoded (malformed, or nested too deeply)"),
])
def test_deeply_nested_params_are_refused(stack: Stack, levels: int, message: str) -> None:
    channel, pdp = stub(stack)
    with channel, pytest.raises(grpc.RpcError) as info:
        pdp.Authorize(request(tool="salesforce.accounts", action="read", params=nested(levels)),
                      timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == message


def test_message_over_the_grpc_cap_is_refused(stack: Stack) -> None:
    channel, pdp = stub(stack)
    with channel, pytest.raises(grpc.RpcError) as info:
        pdp.Authorize(request(tool="salesforce.accounts", action="read",
                              params={"blob": "x" * (2 * 1024 * 1024)}), timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_graceful_shutdown_drains_in_flight_calls() -> None:
    with running_stack(opa_timeout_ms=20_000, shutdown_grace_s=30) as stack:
        assert stack.opa is not None and stack.grpc is not None
        opa_pid = stack.opa.proc.pid  # type: ignore[union-attr]
        entered = threading.Semaphore(0)
        engine = stack.engine
        assert engine is not None
        real_query = engine.opa.query

        def counting_query(*args: object, **kwargs: object) -> object:
            entered.release()
            return real_query(*args, **kwargs)  # type: ignore[arg-type]

        engine.opa.query = counting_query  # type: ignore[method-assign]
        channel, pdp = stub(stack)
        os.kill(opa_pid, signal.SIGSTOP)  # every call now waits inside the PDP
        try:
            with futures.ThreadPoolExecutor(4) as pool:
                calls = [pool.submit(pdp.Authorize, request(model="reasoning-high"), timeout=60)
                         for _ in range(4)]
                for _ in calls:
                    assert entered.acquire(timeout=20)
                stopper = threading.Thread(target=stack.grpc.stop, args=(30,))
                stopper.start()
                health = health_pb2_grpc.HealthStub(channel)

                def closed() -> bool:
                    try:
                        health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    except grpc.RpcError:
                        return True
                    return False

                wait_until(closed, 20, "server refusing new calls")
                with pytest.raises(grpc.RpcError) as late:
                    pdp.Authorize(request(model="reasoning-high"), timeout=5)
                os.kill(opa_pid, signal.SIGCONT)
                results = [c.result() for c in calls]
                stopper.join(30)
        finally:
            os.kill(opa_pid, signal.SIGCONT)
            channel.close()
    assert late.value.code() == grpc.StatusCode.UNAVAILABLE
    assert [r.decision for r in results] == [ALLOW] * 4
    assert not stopper.is_alive()


def test_metrics_count_decisions_by_outcome_and_reason(stack: Stack) -> None:
    before_deny = metric(stack, 'aam_decisions_total{outcome="deny",reason="action_denied"}')
    channel, pdp = stub(stack)
    with channel:
        pdp.Authorize(request(tool="salesforce.accounts", action="export"), timeout=10)
        pdp.Authorize(request(workload=FINANCE, model="reasoning-high"), timeout=10)
    assert metric(stack, 'aam_decisions_total{outcome="deny",reason="action_denied"}') == before_deny + 1
    assert metric(stack, 'aam_decisions_total{outcome="allow",reason=""}') >= 1
    assert metric(stack, "aam_decision_duration_seconds_count") >= 2
    rev = stack.store.current.revision  # type: ignore[union-attr]
    assert metric(stack, f'aam_bundle_info{{revision="{rev}"}}') == 1
    assert metric(stack, f'aam_bundle_active_info{{revision="{rev}"}}') == 1


def _gogc(pid: int) -> str:
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next((e.decode().split("=", 1)[1] for e in env if e.startswith(b"GOGC=")), "")


def test_managed_opa_killed_is_restarted_and_decisions_recover() -> None:
    with running_stack(opa_timeout_ms=300, opa_gogc=250) as stack:
        assert stack.opa is not None and stack.opa.proc is not None
        first = stack.opa.proc
        assert _gogc(first.pid) == "250"
        with Load(stack) as load:
            wait_until(lambda: load.seen_since(0, ALLOW), 20, "first ALLOW")
            first.kill()
            killed = time.monotonic()
            wait_until(lambda: load.seen_since(killed, ALLOW) and stack.opa.proc is not first,
                       30, "ALLOW from the restarted OPA")
            assert _gogc(stack.opa.proc.pid) == "250"  # type: ignore[union-attr]
    assert load.errors == []
    assert {codes for _, d, codes in load.outcomes if d == DENY} <= {("engine_unavailable",)}
