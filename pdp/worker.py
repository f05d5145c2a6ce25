"""A PDP worker process (``python -m pdp.worker``), started and supervised by pdp/workers.py.

It answers decisions on the shared addresses (SO_REUSEPORT) with its own engine, ledger
connections, Gate and broker, asking the parent's OPA; it learns every revision the
parent publishes over its stdin, and reports over its stdout (the protocol is in
pdp/workers.py). SIGTERM, or EOF on stdin (the parent is gone), stops it gracefully:
in-flight calls get ``shutdown_grace_s``, then the audit writer drains. Ctrl-C is
ignored here: it reaches the whole process group, and the parent stops the workers
in order.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from typing import IO, Any

from compiler.bundle import DATA_PATH
from pdp import broker as brokers
from pdp import logs, memory
from pdp.broker import Broker
from pdp.broker.metrics import BrokerCollector
from pdp.bundles import BUNDLE_PATH, BundleStore, HttpServer
from pdp.compiled import Revision, Revisions
from pdp.config import ConfigError, Settings, settings_from_dict
from pdp.health import Components
from pdp.ledger import Ledger, LedgerError, open_ledger
from pdp.ledger.startup import load_keyring
from pdp.ledger.types import ChainHead
from pdp.metrics import METRICS_PATH, Metrics
from pdp.serving import Serving
from pdp.workermetrics import ActiveRevision
from pdp.workers import WORKER_COMPONENTS

log = logging.getLogger("aam.worker")
# How long a decision on a revision this worker has not learned yet waits for it. Only
# when the parent gave up waiting for this worker's confirmation (pdp/workers.py).
LEARN_WAIT_S = 2.0


class LearnedRevisions(Revisions):
    """The parent's published revisions, learned in its publish order (so ``active`` moves
    as the parent's does). A decision OPA answered on a revision not learned yet waits
    for it briefly instead of reading another revision's view (pdp/compiled.py's rule)."""

    def __init__(self, wait_s: float = LEARN_WAIT_S) -> None:
        super().__init__()
        self.wait_s = wait_s
        self._learned = threading.Condition()
        self._missing: set[str] = set()  # waited for in vain: not waited for again

    def learn(self, data: bytes) -> Revision:
        rev = self.update({DATA_PATH: data}, DATA_PATH)
        with self._learned:
            self._learned.notify_all()
        return rev

    def decided(self, revision: str) -> Revision | None:
        rev = super().decided(revision)
        if rev is not None or not revision or revision in self._missing:
            return rev
        with self._learned:
            self._learned.wait_for(lambda: self.get(revision) is not None, self.wait_s)
        rev = super().decided(revision)
        if rev is None:
            if len(self._missing) > 64:
                self._missing.clear()
            self._missing.add(revision)
        return rev


class Channel:
    """JSON lines to the parent; a parent that is gone is not an error here."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self._lock = threading.Lock()

    def send(self, **message: Any) -> None:
        line = json.dumps(message, separators=(",", ":")) + "\n"
        with self._lock:
            try:
                self.out.write(line)
                self.out.flush()
            except (OSError, ValueError):
                pass


class Worker:
    def __init__(self, boot: dict[str, Any], channel: Channel, stop: threading.Event) -> None:
        self.index = int(boot["worker"])
        self.settings: Settings = settings_from_dict(boot["settings"])
        head = boot.get("head")
        self.head = ChainHead(int(head[0]), str(head[1])) if head else None
        self.channel = channel
        self.stopping = stop
        self.revisions = LearnedRevisions()
        self.metrics = Metrics()
        self.broker: Broker | None = None
        self.ledger: Ledger | None = None
        self.serving: Serving | None = None
        self.http: HttpServer | None = None
        self._reported = self.head
        self._components_sent: dict[str, Any] | None = None
        self._components_lock = threading.Lock()
        self._learn_lock = threading.Lock()
        # Popped: the compiled data (MBs per revision) is kept as views, not as JSON text.
        for item in boot.pop("revisions", None) or ():
            self._learn(item)

    @property
    def metrics_url(self) -> str:
        return self.http.url if self.http else ""

    def start(self) -> None:
        s = self.settings
        self.broker = brokers.build(s)
        self.broker.start()
        with self._learn_lock:
            if self.revisions.newest.seq:
                self.broker.adopt(self.revisions.newest.compiled)
        self.metrics.registry.register(BrokerCollector(self.broker))
        self.metrics.registry.register(ActiveRevision(self.metrics))
        threading.Thread(target=self._read_parent, name="aam-worker-revisions", daemon=True).start()
        if s.ledger_url not in ("", "off"):  # the parent migrated it and checked the anchor
            self.ledger = open_ledger(s.ledger_url, s.ledger_pool_size, s.ledger_timeout_ms / 1000,
                                      load_keyring(s))
            assert self.ledger is not None
            self.ledger.head = self.head
        self.serving = Serving(s, s.opa_url, self.revisions, self.metrics, self.broker,
                               self.ledger, reuse_port=True)
        self.http = HttpServer("127.0.0.1", 0, BundleStore())  # private: the parent scrapes it
        self.http.routes.pop(BUNDLE_PATH)
        self.http.routes[METRICS_PATH] = self.metrics.route()
        self.http.start()
        self.serving.start()  # health SERVING from here
        self.serving.components.listen(self._send_components)
        threading.Thread(target=self._report_heads, name="aam-worker-head", daemon=True).start()

    def _send_components(self, components: Components) -> None:
        """Its ledger's and broker's states to the parent, when they change (the parent
        probes OPA itself and serves the bundles)."""
        doc = {n: {"state": st.state, "reason": st.reason}
               for n, st in components.snapshot().items() if n in WORKER_COMPONENTS}
        with self._components_lock:
            if doc == self._components_sent:
                return
            self._components_sent = doc
        self.channel.send(components=doc)

    def _learn(self, item: dict[str, Any]) -> None:
        """A revision the parent published: its view, the broker's, then the confirmation."""
        with self._learn_lock:
            rev = self.revisions.learn(str(item["data"]).encode())
            if self.broker is not None:
                self.broker.adopt(rev.compiled)
        self.channel.send(learned=int(item["seq"]))
        memory.release_freed()  # the parse's garbage, after the parent heard back

    def _read_parent(self) -> None:
        try:
            for line in sys.stdin:
                msg = json.loads(line)
                if isinstance(msg, dict) and "revision" in msg:
                    self._learn(msg["revision"])
        except (OSError, ValueError) as exc:
            log.error("worker channel broken", extra={"fields": {"error": type(exc).__name__}})
        self.stopping.set()  # EOF: the parent is gone

    def _report_heads(self) -> None:
        while not self.stopping.wait(self.settings.audit_anchor_interval_s):
            self._report_head()

    def _report_head(self) -> None:
        head = self.ledger.head if self.ledger is not None else None
        if head is not None and head != self._reported:
            self._reported = head
            self.channel.send(head=[head.seq, head.hash])

    def stop(self) -> None:
        if self.serving is not None:
            self.serving.stop(self.settings.shutdown_grace_s)
            self.serving = None
        if self.http is not None:
            self.http.stop()
            self.http = None
        if self.broker is not None:
            self.broker.close()
            self.broker = None
        if self.ledger is not None:
            self.ledger.close()  # the audit writer drains first ...
            self._report_head()  # ... so the parent's last anchor names the final head
            self.ledger = None


def _kind(exc: BaseException) -> str:
    return "config" if isinstance(exc, ConfigError) else "ledger" if isinstance(exc, LedgerError) \
        else "runtime"


class _WorkerField(logging.Filter):
    """Every log line says which worker wrote it."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        fields = getattr(record, "fields", None)
        record.fields = {**fields, "worker": self.index} if isinstance(fields, dict) \
            else {"worker": self.index}
        return True


def main() -> int:
    # The parent reads this process's stdout as its channel: keep it for that, and send
    # whatever else prints there to stderr.
    channel = Channel(os.fdopen(os.dup(1), "w"))
    os.dup2(2, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    line = sys.stdin.readline()
    if not line:
        return 1
    boot = json.loads(line)
    del line  # the revisions' JSON text: only their parsed views are kept
    settings = settings_from_dict(boot["settings"])
    logs.configure(settings.log_level, sys.stderr)
    for handler in logging.getLogger("aam").handlers:
        handler.addFilter(_WorkerField(int(boot["worker"])))
    worker: Worker | None = None
    try:
        worker = Worker(boot, channel, stopping)
        worker.start()
    except Exception as exc:  # the parent shows it as one line: no traceback
        message = str(exc) if isinstance(exc, ConfigError | LedgerError | RuntimeError | OSError) \
            else f"{type(exc).__name__}: {exc}"
        channel.send(error=message, kind=_kind(exc))
        if worker is not None:
            worker.stop()
        return 1
    channel.send(ready={"metrics": worker.metrics_url, "pid": os.getpid()})
    memory.release_freed()
    while not stopping.wait(0.5):
        pass
    worker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
