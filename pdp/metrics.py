"""Prometheus metrics, served as ``GET /metrics`` on the PDP's HTTP server.

Each :class:`Metrics` owns its registry (not the process-global one), so
several PDPs in one process (tests, embedding) do not collide. The engine
reports each decision through an observer callback; nothing here is on the
request path beyond counter and histogram updates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from pdp.bundles import BundleStore
from pdp.engine import Decision, Request, shadow_disagrees
from pdp.health import UP_VALUE, Components

METRICS_PATH = "/metrics"
# Decision latency is dominated by one OPA round trip (~0.3-3 ms); the tail
# matters up to the OPA timeout (default 500 ms).
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _BundleCollector(Collector):
    """Reads the published bundle at scrape time: no state to keep in sync."""

    def __init__(self, store: BundleStore, metrics: Metrics) -> None:
        self.store = store
        self.metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily | InfoMetricFamily]:
        info = InfoMetricFamily("aam_bundle", "Policy bundle revision the PDP publishes to OPA.")
        pub = self.store.current
        if pub is not None:
            info.add_metric([], {"revision": pub.revision})
        yield info
        g = GaugeMetricFamily("aam_bundle_published", "1 when a bundle is published, else 0.")
        g.add_metric([], 1.0 if pub is not None else 0.0)
        yield g
        # What OPA actually decided with last: lags the published revision
        # for the moment a reload takes, and sticks if OPA cannot load it.
        active = InfoMetricFamily("aam_bundle_active", "Bundle revision of the latest decision.")
        if self.metrics.active_revision:
            active.add_metric([], {"revision": self.metrics.active_revision})
        yield active


class ComponentCollector(Collector):
    """``aam_component_up{component}``: 1 ok, 0.5 degraded, 0 down, read at scrape time."""

    def __init__(self, components: Components) -> None:
        self.components = components

    def collect(self) -> Iterator[GaugeMetricFamily]:
        g = GaugeMetricFamily("aam_component_up", "Component state: 1 ok, 0.5 degraded, 0 down.",
                              labels=("component",))
        for name, s in sorted(self.components.snapshot().items()):
            g.add_metric([name], UP_VALUE[s.state])
        yield g


class Metrics:
    def __init__(self, store: BundleStore | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.decisions = Counter(
            "aam_decisions",
            "Decisions by outcome (allow/deny) and first reason code (empty on allow).",
            ("outcome", "reason"), registry=self.registry)
        self.latency = Histogram(
            "aam_decision_duration_seconds", "Time to decide, including the OPA query.",
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.opa_errors = Counter(
            "aam_opa_errors", "Decisions OPA could not answer (down, slow, no bundle).",
            registry=self.registry)
        self.shadow_disagreements = Counter(
            "aam_shadow_disagreements",
            "Decisions a workload's shadow policy answered differently, by shadow policy and"
            " outcomes (enforced, shadow: allow/deny).",
            ("policy", "enforced", "shadow"), registry=self.registry)
        self.active_revision = ""
        if store is not None:
            self.registry.register(_BundleCollector(store, self))

    def observe(self, req: Request, decision: Decision, elapsed_s: float) -> None:
        """Engine observer: count the decision and its latency."""
        self.latency.observe(elapsed_s)
        if decision.revision:
            self.active_revision = decision.revision
        self._shadow(decision)
        if decision.allow:
            self.decisions.labels("allow", "").inc()
            return
        codes = [r.code for r in decision.reasons]
        self.decisions.labels("deny", codes[0] if codes else "").inc()
        if "engine_unavailable" in codes:
            self.opa_errors.inc()

    def _shadow(self, decision: Decision) -> None:
        """Count a shadow policy's disagreement (the engine parses it with pdp/shadow.py)."""
        shadowed = decision.shadow
        if shadowed is not None and shadow_disagrees(decision):
            self.shadow_disagreements.labels(
                shadowed.policy, "allow" if decision.allow else "deny", shadowed.outcome).inc()

    def watch(self, components: Components) -> None:
        """Export ``components`` as ``aam_component_up``."""
        self.registry.register(ComponentCollector(components))

    def refused(self, code: str) -> None:
        """A caller refused before any decision (identity): counted as a deny."""
        self.decisions.labels("deny", code).inc()

    def route(self) -> Callable[[BaseHTTPRequestHandler], None]:
        return exposition(lambda: generate_latest(self.registry))


def exposition(body: Callable[[], bytes]) -> Callable[[BaseHTTPRequestHandler], None]:
    """A GET /metrics handler serving ``body()`` in Prometheus' text format."""

    def serve(h: BaseHTTPRequestHandler) -> None:
        data = body()
        h.send_response(200)
        h.send_header("Content-Type", CONTENT_TYPE_LATEST)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    return serve
