"""The tracer's rules without servers: what a span holds, whose traceparent is a parent,
and what an error leaves out (spans kept by the SDK's in-memory exporter)."""

from __future__ import annotations

import secrets
import sys
from typing import Any

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from pdp.config import ConfigError, Settings
from pdp.engine import Engine, Request
from pdp.opa import EngineUnavailable
from pdp.tracing import tracer
from pdp.tracing.settings import TracingSettings

W = "spiffe://prod/agent/w"
SECRET = f"s3cret-{secrets.token_hex(8)}"


class FakeOpa:
    def __init__(self, fail: str = "") -> None:
        self.fail = fail

    def query(self, path: str, doc: dict[str, Any]) -> Any:
        if self.fail:
            raise EngineUnavailable(self.fail)
        return {"allow": False, "reasons": [{"code": "action_denied", "message":
                                             f"no {doc['params'].get('q')} for you"}],
                "policy": "p", "revision": "rev-1"}


@pytest.fixture
def spans() -> tuple[tracer.Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    return tracer.exporting(SimpleSpanProcessor(exporter), TracingSettings()), exporter


def test_off_imports_no_sdk_and_hands_out_one_no_op() -> None:
    assert tracer.from_settings(TracingSettings()) is tracer.OFF
    assert tracer.OFF.decision() is tracer.OFF.step("x") is tracer.OFF.parent({}, True, "m")
    code = ("import sys; from pdp.tracing import tracer; from pdp.engine import Engine; "
            "print(any(m.startswith('opentelemetry.sdk') for m in sys.modules))")
    import subprocess
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_decision_span_holds_codes_not_messages_nor_params(spans: Any) -> None:
    tracing, exporter = spans
    engine = Engine(FakeOpa(), tracing=tracing)  # type: ignore[arg-type]
    header = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
    with tracing.parent({"traceparent": header}, True, "Authorize"):
        d = engine.decide(Request(W, tool="crm", action="read", params={"q": SECRET},
                                  context={"note": SECRET}, request_id="r-1"))
    by_name = {s.name: s for s in exporter.get_finished_spans()}
    assert set(by_name) == {"aam.decision", "aam.policy.evaluate"}  # no ledger: no ledger steps
    decision = by_name["aam.decision"]
    assert decision.kind == SpanKind.SERVER
    assert format(decision.context.trace_id, "032x") == header[3:35]
    assert format(decision.parent.span_id, "016x") == header[36:52]
    assert dict(decision.attributes) == {
        "rpc.method": "Authorize", "aam.decision_id": d.decision_id, "aam.request_id": "r-1",
        "aam.workload": W, "aam.model": "", "aam.tool": "crm", "aam.action": "read",
        "aam.policy": "p", "aam.outcome": "deny", "aam.reasons": ("action_denied",),
        "aam.bundle_revision": "rev-1"}
    assert set(decision.attributes) <= set(tracer.DECISION_ATTRIBUTES)
    for span in by_name.values():
        assert span.parent is not None
        assert SECRET not in span.to_json()


def test_an_unavailable_engine_is_an_error_span_without_the_exception_text(spans: Any) -> None:
    tracing, exporter = spans
    engine = Engine(FakeOpa(fail=f"OPA said {SECRET}"), tracing=tracing)  # type: ignore[arg-type]
    with tracing.parent({}, True, "Check"):
        engine.decide(Request(W, tool="crm", action="read"))
    decision = next(s for s in exporter.get_finished_spans() if s.name == "aam.decision")
    assert decision.status.status_code == StatusCode.ERROR
    assert decision.attributes["error.type"] == "engine_unavailable"
    assert decision.parent is None and decision.attributes["rpc.method"] == "Check"
    assert all(SECRET not in s.to_json() and not s.events for s in exporter.get_finished_spans())


@pytest.mark.parametrize("header", ["garbage", "00-" + "0" * 32 + "-" + "1" * 16 + "-01",
                                    "ff-" + "a" * 32 + "-" + "b" * 16 + "-01", "x" * 10_000])
def test_a_malformed_traceparent_starts_a_fresh_trace(spans: Any, header: str) -> None:
    tracing, exporter = spans
    with tracing.parent({"traceparent": header}, True, "Authorize"):
        Engine(FakeOpa(), tracing=tracing).decide(Request(W))  # type: ignore[arg-type]
    decision = next(s for s in exporter.get_finished_spans() if s.name == "aam.decision")
    assert decision.parent is None and not decision.links


def test_an_untrusted_traceparent_is_a_link_and_cannot_force_sampling() -> None:
    exporter = InMemorySpanExporter()
    tracing = tracer.exporting(SimpleSpanProcessor(exporter),
                               TracingSettings(trace_sample_ratio=0.0))
    header = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"  # "sampled"
    engine = Engine(FakeOpa(), tracing=tracing)  # type: ignore[arg-type]
    with tracing.parent({"traceparent": header}, False, "Authorize"):
        engine.decide(Request(W))
    assert exporter.get_finished_spans() == ()  # ratio 0: nothing, whatever the agent says
    with tracing.parent({"traceparent": header}, True, "Authorize"):
        engine.decide(Request(W))
    assert exporter.get_finished_spans()  # a trusted gateway's sampled parent is followed


def test_carrier_takes_only_the_w3c_fields() -> None:
    meta = (("x-aam-gateway-token", SECRET), ("traceparent", "tp"), ("tracestate", "ts"),
            ("grpc-trace-bin", b"\x00"))
    assert tracer.carrier(meta) == {"traceparent": "tp", "tracestate": "ts"}
    assert tracer.carrier(None) == {}


@pytest.mark.parametrize("key,value,reason", [
    ("otlp_endpoint", "127.0.0.1:4317", "must be http://host:port or https://host:port"),
    ("otlp_endpoint", "http://user:pw@collector:4317", "must be http://host:port"),
    ("otlp_endpoint", "http://collector:4317/v1/traces", "must be http://host:port"),
    ("otlp_ca_file", "/ca.pem", "needs an https:// otlp_endpoint"),
    ("trace_sample_ratio", "1.5", "must be between 0 and 1"),
    ("trace_sample_ratio", "nan", "must be between 0 and 1"),
])
def test_tracing_settings_are_checked_where_they_come_from(key: str, value: str, reason: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.load(env={f"AAM_{key.upper()}": value})
    assert str(err.value).startswith(f"AAM_{key.upper()}: ") and reason in str(err.value)
