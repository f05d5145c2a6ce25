"""The parent's /metrics over worker processes (pdp/workermetrics.py): sums, and a dead
worker's counts kept so that a counter never goes back."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pdp import workermetrics
from pdp.engine import Decision, Request
from pdp.metrics import Metrics
from pdp.workermetrics import ActiveRevision, Families, Member, WorkerMetrics, families


def worker(allows: int, revision: str = "") -> Metrics:
    """A worker's registry after ``allows`` allowed decisions on ``revision``."""
    m = Metrics()
    m.registry.register(ActiveRevision(m))
    for _ in range(allows):
        m.observe(Request("spiffe://t/w"), Decision(True, (), "p", "d", revision), 0.001)
    return m


def decisions(fams: Families) -> float:
    return sum(fams["aam_decisions"].samples.values())


def test_sums_workers_and_keeps_a_dead_workers_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    served = {"http://w0": worker(3, "r1"), "http://w1": worker(4, "r2")}
    members = [Member(0, 1, 101, "http://w0"), Member(1, 2, 102, "http://w1")]

    def scrape(url: str) -> Families:
        if url not in served:
            raise OSError("connection refused")
        text = generate_latest(served[url].registry).decode()  # what its endpoint serves
        return families(text_string_to_metric_families(text))

    monkeypatch.setattr(workermetrics, "scrape", scrape)
    wm = WorkerMetrics(lambda: list(members), lambda revs: max(revs, default=""), lambda: 0)
    parent = Metrics()
    out = wm.merged(parent)
    assert decisions(out) == 7
    assert out["aam_decision_duration_seconds"].samples[
        ("aam_decision_duration_seconds_count", ())] == 7
    assert out["aam_workers"].samples[("aam_workers", ())] == 2
    assert parent.active_revision == "r2"  # the newest of the workers' latest

    del served["http://w0"]  # worker 0 dies: its last scrape still counts ...
    assert decisions(wm.merged(parent)) == 7
    wm.retire(1)  # ... and once retired, its replacement starts from 0 beside it
    members[0] = Member(0, 3, 103, "http://w0b")
    served["http://w0b"] = worker(1)
    out = wm.merged(parent)
    assert decisions(out) == 8
    assert out["aam_workers"].samples[("aam_workers", ())] == 2
    text = generate_latest(workermetrics._Registry(out)).decode()  # type: ignore[arg-type]
    assert 'aam_decisions_total{outcome="allow",reason=""} 8.0' in text
    assert "_created" not in text
