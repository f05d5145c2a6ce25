"""Spans of decisions, or nothing: the engine and transports call one small surface.

Tracing is off by default, and off costs a shared no-op context manager per step: the
SDK is not even imported. On (``otlp_endpoint``), each decision is one SERVER span with
a child per step (policy evaluation, ledger, broker), exported in batches over OTLP/gRPC
by the SDK's own thread.

What a span may hold is fixed here and nowhere else: :data:`DECISION_ATTRIBUTES` and the
step attributes, never a param value, a context value, a reason's message or a credential
(tests/integration/test_tracing.py greps every exported span for them).

A W3C ``traceparent`` is a parent only when a trusted gateway sent it in its own call's
metadata. Anyone else's becomes a span link: an agent asking about itself, or the HTTP
headers of the request Envoy's Check carries (the agent wrote those, unless Envoy's own
tracing replaced them, and then Envoy's metadata holds its span). The trace can still be
found from a link, but an agent cannot force its decisions to be sampled (flooding the
collector) or graft the PDP's spans into someone else's trace.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pdp.settingbase import setting_error

if TYPE_CHECKING:
    from pdp.tracing.settings import TracingSettings

DECISION_SPAN = "aam.decision"
EVALUATE_SPAN, STATE_SPAN, COMMIT_SPAN, FINISH_SPAN, CREDENTIAL_SPAN = (
    "aam.policy.evaluate", "aam.ledger.read_state", "aam.ledger.commit", "aam.ledger.finish",
    "aam.broker.credential")
# Every attribute a decision span can carry (with rpc.method, the transport's).
DECISION_ATTRIBUTES = ("aam.decision_id", "aam.request_id", "aam.workload", "aam.model",
                       "aam.tool", "aam.action", "aam.policy", "aam.outcome", "aam.reasons",
                       "aam.bundle_revision", "rpc.method", "error.type")
# Reasons that say a component failed, not that the policy denied: the span's status is ERROR.
UNAVAILABLE = frozenset({"engine_unavailable", "ledger_unavailable", "credential_unavailable"})
TRACEPARENT, TRACESTATE = "traceparent", "tracestate"
# How long a finished span may wait in the batch before export: short enough that a
# trace is readable in the collector a second or two after the call.
EXPORT_DELAY_MS = 1000
# Spans the batch may hold before it drops new ones: several seconds of a saturated PDP
# (about 5 spans per decision) should the collector be slow.
EXPORT_QUEUE = 16384


# Trace context as it arrives: gRPC metadata pairs, or a mapping of header names.
Carrier = Mapping[str, Any] | Iterable[tuple[str, Any]]


class Span(Protocol):
    def set_attribute(self, key: str, value: Any) -> None: ...
    def set_attributes(self, attributes: Mapping[str, Any]) -> None: ...
    def set_status(self, status: Any, description: str | None = None) -> None: ...


class _NullSpan:
    """What a step gets when tracing is off."""

    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        pass

    def set_status(self, status: Any, description: str | None = None) -> None:
        pass

    def __enter__(self) -> _NullSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


_NULL = _NullSpan()


class Tracing:
    """Off: every method returns the shared no-op. See :func:`from_settings` for on."""

    enabled = False

    def parent(self, metadata: Carrier, trusted: bool, method: str,
               headers: Mapping[str, str] | None = None) -> AbstractContextManager[Any]:
        """For the ``with`` block: the W3C trace context (``traceparent``, ``tracestate``) of
        the call's gRPC ``metadata`` (pairs, or a mapping) is the decision span's parent
        (``trusted``) or its link (not); without one, that of the HTTP request ``headers``
        a Check carries, only ever a link (the agent wrote them). ``method`` (Authorize,
        Check) is the span's ``rpc.method``. Off: nothing is even read."""
        return _NULL

    def decision(self) -> AbstractContextManager[Span]:
        """The span of one decision; :meth:`conclude` gives it the outcome."""
        return _NULL

    def conclude(self, span: Span, request: Any, decision: Any) -> None:
        """Set the decision span's attributes (:func:`decision_attributes`)."""

    def step(self, name: str) -> AbstractContextManager[Span]:
        """A child span of the current decision."""
        return _NULL

    def shutdown(self) -> None:
        """Export what is still batched (at most a few seconds)."""


OFF = Tracing()


class _OtelTracing(Tracing):
    enabled = True

    def __init__(self, tracer: Any, provider: Any) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._tracer = tracer
        self._provider = provider
        self._context = context
        self._trace = trace
        self._propagator = TraceContextTextMapPropagator()
        # The link of an untrusted caller's trace context, per thread (a contextvar).
        self._link_key = context.create_key("aam-untrusted-parent")
        self._method_key = context.create_key("aam-rpc-method")

    @contextmanager
    def parent(self, metadata: Carrier, trusted: bool, method: str,
               headers: Mapping[str, str] | None = None) -> Iterator[None]:
        found = carrier(metadata)
        if TRACEPARENT not in found and headers:
            found, trusted = carrier(headers), False
        ctx = self._context.Context()
        if TRACEPARENT in found:
            extracted = self._propagator.extract(found)
            if trusted:
                ctx = extracted
            else:  # a fresh root, linked to what the caller claims
                claimed = self._trace.get_current_span(extracted).get_span_context()
                ctx = self._context.set_value(self._link_key, claimed, ctx)
        token = self._context.attach(self._context.set_value(self._method_key, method, ctx))
        try:
            yield
        finally:
            self._context.detach(token)

    def decision(self) -> AbstractContextManager[Span]:
        claimed = self._context.get_value(self._link_key)
        links = [self._trace.Link(claimed)] if claimed is not None and claimed.is_valid else None
        method = self._context.get_value(self._method_key) or ""
        span = self._tracer.start_span(DECISION_SPAN, kind=self._trace.SpanKind.SERVER,
                                       links=links, attributes={"rpc.method": method})
        return _Current(span, self._context, self._trace)

    def conclude(self, span: Span, request: Any, decision: Any) -> None:
        span.set_attributes(decision_attributes(decision, request))
        failed = next((r.code for r in decision.reasons if r.code in UNAVAILABLE), None)
        if failed is not None:  # a deny is an answer; an unavailable component is an error
            span.set_attribute("error.type", failed)
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, failed))

    def step(self, name: str) -> AbstractContextManager[Span]:
        if not self._trace.get_current_span().is_recording():
            return _NULL  # the decision is not sampled: neither are its steps
        return _Current(self._tracer.start_span(name), self._context, self._trace)

    def shutdown(self) -> None:
        self._provider.shutdown()


class _Current:
    """``span`` as the current span for a ``with`` block, then ended: what the SDK's
    start_as_current_span does, without its generator, and never recording an exception
    (its text may quote what it failed on) nor turning one into the span's status."""

    __slots__ = ("_context", "_span", "_token", "_trace")

    def __init__(self, span: Any, context: Any, trace: Any) -> None:
        self._span, self._context, self._trace = span, context, trace

    def __enter__(self) -> Any:
        self._token = self._context.attach(self._trace.set_span_in_context(self._span))
        return self._span

    def __exit__(self, *exc: object) -> None:
        self._context.detach(self._token)
        self._span.end()


def from_settings(settings: TracingSettings) -> Tracing:
    """:data:`OFF` without an ``otlp_endpoint``; else spans exported there over OTLP/gRPC."""
    if not settings.otlp_endpoint:
        return OFF
    import grpc
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    except ImportError as exc:  # fail at start, with the fix, not at the first export
        raise setting_error("otlp_endpoint", f"the OTLP exporter cannot load ({exc}); if "
                            "xds-protos was installed after opentelemetry-proto it replaced "
                            "the OTLP protos: pip install --force-reinstall --no-deps "
                            "opentelemetry-proto") from None

    secure = settings.otlp_endpoint.startswith("https://")
    credentials = None
    if secure:
        ca = None
        if settings.otlp_ca_file:
            try:
                ca = Path(settings.otlp_ca_file).read_bytes()
            except OSError as exc:
                raise setting_error("otlp_ca_file", f"cannot read {settings.otlp_ca_file}: "
                                                    f"{exc.strerror}") from None
        credentials = grpc.ssl_channel_credentials(ca)
    exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint, insecure=not secure,
                                credentials=credentials)
    return exporting(BatchSpanProcessor(exporter, schedule_delay_millis=EXPORT_DELAY_MS,
                                        max_queue_size=EXPORT_QUEUE), settings)


def exporting(processor: Any, settings: TracingSettings) -> Tracing:
    """Spans through ``processor`` (an SDK SpanProcessor: the OTLP batch, or a test's)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.trace_service_name}),
        sampler=ParentBased(TraceIdRatioBased(settings.trace_sample_ratio)))
    provider.add_span_processor(processor)
    # Not the global provider: the PDP's spans are its own, whatever else the process loads.
    return _OtelTracing(provider.get_tracer("aam.pdp"), provider)


def carrier(pairs: Carrier | None) -> dict[str, str]:
    """The W3C trace context (``traceparent``, ``tracestate``) among gRPC metadata or
    HTTP headers (lower-case names; pairs, or a mapping)."""
    items = pairs.items() if isinstance(pairs, Mapping) else pairs or ()
    return {k: v for k, v in items if k in (TRACEPARENT, TRACESTATE) and isinstance(v, str)}


def decision_attributes(decision: Any, request: Any) -> dict[str, Any]:
    """A decision span's attributes: who asked for what and what was answered; the
    reasons by code only (a message may quote a param)."""
    return {
        "aam.decision_id": decision.decision_id,
        "aam.request_id": request.request_id,
        "aam.workload": request.spiffe_id,
        "aam.model": request.model,
        "aam.tool": request.tool,
        "aam.action": request.action,
        "aam.policy": decision.policy,
        "aam.outcome": "allow" if decision.allow else "deny",
        "aam.reasons": [r.code for r in decision.reasons],
        "aam.bundle_revision": decision.revision,
    }
