"""Broker counters for /metrics, read at scrape time: events and cached leases, never values."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from pdp.broker.broker import Broker

EVENTS = ("issued", "reused", "renewed", "revoked", "unavailable")


class BrokerCollector(Collector):
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        c = CounterMetricFamily("aam_broker_credentials", "Brokered credentials by event.",
                                labels=("event",))
        for event in EVENTS:
            c.add_metric([event], float(self.broker.stats[event]))
        yield c
        g = GaugeMetricFamily("aam_broker_leases_cached",
                              "Leases cached per (workload, resource, scope).")
        g.add_metric([], float(len(self.broker.cached())))
        yield g
