"""``GET /metrics`` of a PDP with worker processes: the workers' series summed at scrape time.

Each worker serves its own registry on a private loopback endpoint (pdp/worker.py);
the parent scrapes them when it is scraped, so there is no state to keep in sync.
Counters and histograms are summed per label set. A worker that dies takes its
counts with it, so its last scrape is kept and added to the sum ("retired"): the
sum never goes back, which Prometheus would read as a counter reset. Decisions a
worker made after its last scrape and before it died are not counted. Besides the
sums: ``aam_workers`` (worker processes serving), ``aam_worker_restarts_total`` and
``aam_worker_resident_memory_bytes{worker}`` (each worker's RSS, from /proc).
"""

from __future__ import annotations

import contextlib
import http.client
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import NamedTuple

from prometheus_client import generate_latest
from prometheus_client.core import InfoMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from pdp.metrics import METRICS_PATH, Metrics, exposition

SCRAPE_TIMEOUT_S = 2.0
# The worker's latest decision's revision: not summed; the parent shows the newest one.
ACTIVE = "aam_bundle_active"
ACTIVE_SAMPLE = ACTIVE + "_info"
_SUMMED = ("counter", "histogram", "summary")

SampleKey = tuple[str, tuple[tuple[str, str], ...]]  # sample name, sorted labels


@dataclass
class Family:
    name: str
    doc: str
    type: str
    samples: dict[SampleKey, float] = field(default_factory=dict)


Families = dict[str, Family]


class Member(NamedTuple):
    """A worker process as the scrape sees it: its slot, a number no other process of this
    parent has (a slot's next process gets a new one), its pid and its metrics URL ("" until
    it serves)."""

    index: int
    serial: int
    pid: int
    url: str


class ActiveRevision(Collector):
    """A worker's ``aam_bundle_active`` (its latest decision's revision): the parent has the
    bundle collector of pdp/metrics.py, a worker only this part of it."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[InfoMetricFamily]:
        info = InfoMetricFamily(ACTIVE, "Bundle revision of the latest decision.")
        if self.metrics.active_revision:
            info.add_metric([], {"revision": self.metrics.active_revision})
        yield info


def families(metrics: Iterable[Metric]) -> Families:
    """Metrics (a registry's, or parsed text) as families; ``*_created`` is dropped: a
    creation time does not sum, and Prometheus's text format does not need it."""
    out: Families = {}
    for m in metrics:
        if m.name.endswith("_created"):
            continue
        fam = out.setdefault(m.name, Family(m.name, m.documentation, m.type))
        for s in m.samples:
            if not s.name.endswith("_created"):
                key = (s.name, tuple(sorted(s.labels.items())))
                fam.samples[key] = fam.samples.get(key, 0.0) + s.value
    return out


def add(into: Families, more: Families, only: tuple[str, ...] = ()) -> None:
    """Sum ``more`` into ``into`` (``only``: just families of these types)."""
    for name, fam in more.items():
        if only and fam.type not in only:
            continue
        mine = into.setdefault(name, Family(name, fam.doc, fam.type))
        if mine.type != fam.type:
            continue  # not the same metric: keep the first
        for key, value in fam.samples.items():
            mine.samples[key] = mine.samples.get(key, 0.0) + value


def _gauge(name: str, doc: str, values: Iterable[tuple[dict[str, str], float]]) -> Family:
    fam = Family(name, doc, "gauge")
    for labels, value in values:
        fam.samples[(name, tuple(sorted(labels.items())))] = value
    return fam


def rss_bytes(pid: int) -> float | None:
    """Resident set size from /proc (Linux); None when unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def scrape(url: str, timeout_s: float = SCRAPE_TIMEOUT_S) -> Families:
    """A worker's /metrics, parsed; raises OSError when it cannot answer."""
    host, _, port = url.removeprefix("http://").partition(":")
    conn = http.client.HTTPConnection(host, int(port.split("/", 1)[0]), timeout=timeout_s)
    try:
        conn.request("GET", METRICS_PATH)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise OSError(f"worker metrics answered HTTP {resp.status}")
    except http.client.HTTPException as exc:
        raise OSError(str(exc)) from None
    finally:
        conn.close()
    return families(text_string_to_metric_families(body.decode()))


class WorkerMetrics:
    """Sums the workers' series into the parent's /metrics (see the module docstring).

    ``members`` lists the workers now; ``newest`` picks, of the revisions the workers
    last decided with, the one published last (the parent's aam_bundle_active)."""

    def __init__(self, members: Callable[[], list[Member]], newest: Callable[[list[str]], str],
                 restarts: Callable[[], int]) -> None:
        self.members = members
        self.newest = newest
        self.restarts = restarts
        self._last: dict[int, Families] = {}  # by serial: each process's latest scrape
        self._gone: set[int] = set()  # serials retired: a scrape in flight must not revive them
        self._retired: Families = {}
        self._lock = threading.Lock()

    def retire(self, serial: int) -> None:
        """That worker process is gone: keep its last counts in the sum."""
        with self._lock:
            self._gone.add(serial)
            last = self._last.pop(serial, None)
            if last is not None:
                add(self._retired, last, _SUMMED)

    def merged(self, parent: Metrics) -> Families:
        members = self.members()
        fresh: dict[int, Families] = {}
        active: list[str] = []
        for m in members:
            if m.url:
                with contextlib.suppress(OSError, ValueError):
                    fresh[m.serial] = fams = scrape(m.url)
                    fam = fams.pop(ACTIVE_SAMPLE, None)
                    active += [dict(labels).get("revision", "") for _, labels in
                               (fam.samples if fam else ())]
        parent.active_revision = self.newest(active) or parent.active_revision
        with self._lock:
            self._last.update({k: v for k, v in fresh.items() if k not in self._gone})
            per_worker = [self._last[m.serial] for m in members if m.serial in self._last]
            out: Families = {}
            add(out, self._retired)
        merged = families(parent.registry.collect())
        add(merged, out)
        for fams in per_worker:
            add(merged, fams)
        serving = sum(1 for m in members if m.serial in fresh)
        merged["aam_workers"] = _gauge("aam_workers", "PDP worker processes serving.",
                                       [({}, float(serving))])
        restarts = Family("aam_worker_restarts", "PDP worker processes restarted after they "
                          "exited.", "counter")
        restarts.samples[("aam_worker_restarts_total", ())] = float(self.restarts())
        merged[restarts.name] = restarts
        merged["aam_worker_resident_memory_bytes"] = _gauge(
            "aam_worker_resident_memory_bytes", "Resident memory of each PDP worker process.",
            [({"worker": str(m.index)}, rss) for m in members
             if (rss := rss_bytes(m.pid)) is not None])
        return merged

    def route(self, parent: Metrics) -> Callable[[BaseHTTPRequestHandler], None]:
        return exposition(lambda: generate_latest(_Registry(self.merged(parent))))  # type: ignore[arg-type]


class _Registry:
    """What generate_latest reads: ``collect()``."""

    def __init__(self, fams: Families) -> None:
        self.fams = fams

    def collect(self) -> Iterator[Metric]:
        for fam in self.fams.values():
            m = Metric(fam.name, fam.doc, fam.type)
            for (sample, labels), value in fam.samples.items():
                m.add_sample(sample, dict(labels), value)
            yield m

