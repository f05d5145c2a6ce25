"""N PDP worker processes on one port: the parent's side (pdp/worker.py is the child's).

Why: a PDP process spends about one core at most (the GIL), so on a machine with more
cores the decision side runs as N processes, each a fresh interpreter (``python -m
pdp.worker``: grpc does not survive fork) with its own engine, ledger connections,
Gate and broker, all listening on ``grpc_addr`` (and ``extauthz_addr``) with
SO_REUSEPORT (pdp/reuseport.py). The parent (pdp/stack.py) keeps compile, the bundle
server, OPA, the policy watcher and the audit anchors.

The channel is a pair of pipes of JSON lines. Parent to worker (its stdin): first the
boot message, with the settings whole (never in argv or the environment: the ledger
URL may hold a password), the audit chain head to check before the first append, and
the compiled data of every kept revision; then each newly published revision. EOF
means the parent is gone, and the worker stops. Worker to parent (its stdout):
``learned`` (a revision's seq), ``ready`` (it serves: health SERVING; with its
private metrics URL), ``head`` (its newest audit row, for the anchor), ``components``
(its own ledger's and broker's states, on every change: the parent's /readyz and
gRPC health show the worst of them, the reason naming the worker) and ``error``
(it could not start, and why).

Revisions: :meth:`Workers.publish` hands a new revision to every worker and waits
(up to ``ACK_TIMEOUT_S``) until each has learned it before the parent publishes the
bundle to OPA, so, as in one process, a worker knows every revision OPA can answer
with, and its broker stops issuing for removed grants before OPA has the bundle.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from pdp.compiled import KEEP
from pdp.config import ConfigError, Settings, settings_dict
from pdp.health import BROKER, IDENTITY, LEDGER, OK, UP_VALUE, Components
from pdp.ledger.types import ChainHead, LedgerError
from pdp.workermetrics import Member, WorkerMetrics

log = logging.getLogger("aam.workers")
# How long a publish waits for every worker to learn a revision before OPA may have it.
ACK_TIMEOUT_S = 5.0
# How long a worker may take to serve (import, ledger pool, listeners) on a busy machine.
READY_TIMEOUT_S = 60.0
# The components each worker reports of its own (the parent has no ledger or broker of
# its own when workers run); the engine and bundle server are the parent's.
# (identity: each worker has its own Workload API source.)
WORKER_COMPONENTS = (LEDGER, BROKER, IDENTITY)
# Beyond shutdown_grace_s: the worker's audit writer drains its last batch.
DRAIN_S = 15.0
_ERRORS: dict[str, type[Exception]] = {"config": ConfigError, "ledger": LedgerError}


class WorkerError(RuntimeError):
    """A worker process did not start; the message says which one and why."""


class WorkerProcess:
    """One worker process and its two pipes (see the module docstring)."""

    def __init__(self, index: int, serial: int, boot: dict[str, Any],
                 on_head: Callable[[ChainHead], None],
                 on_components: Callable[[], None] = lambda: None) -> None:
        self.index = index
        self.serial = serial
        self.on_head = on_head
        self.on_components = on_components
        # Its ledger's and broker's last reported states: name -> (state, reason).
        self.components: dict[str, tuple[str, str]] = {}
        self.metrics_url = ""
        self.learned = 0  # the newest revision seq it has acknowledged
        self.error: tuple[str, str] | None = None  # (kind, message) of a failed start
        self.ready = False
        self.gone = False  # its stdout closed: it exited
        self._changed = threading.Condition()
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        # stderr is the parent's: the worker's JSON log lines go where the parent's go.
        self.proc = subprocess.Popen([sys.executable, "-m", "pdp.worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, close_fds=True)
        self.send(boot)
        self._sender = threading.Thread(target=self._send_loop, daemon=True,
                                        name=f"aam-worker{index}-send")
        self._reader = threading.Thread(target=self._read_loop, daemon=True,
                                        name=f"aam-worker{index}-read")
        self._sender.start()
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def member(self) -> Member:
        return Member(self.index, self.serial, self.pid, self.metrics_url if self.ready else "")

    def send(self, message: dict[str, Any]) -> None:
        """Queue a message; a thread writes it, so a stuck worker never blocks the caller."""
        self._outbox.put(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    def _send_loop(self) -> None:
        assert self.proc.stdin is not None
        try:
            while (line := self._outbox.get()) is not None:
                self.proc.stdin.write(line)
                self.proc.stdin.flush()
        except (OSError, ValueError):  # it exited: nothing more to tell it
            pass
        finally:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def _read_loop(self) -> None:
        assert self.proc.stdout is not None
        try:
            for raw in self.proc.stdout:
                try:
                    msg = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(msg, dict):
                    self._handle(msg)
        finally:
            with self._changed:
                self.gone = True
                self._changed.notify_all()

    def _handle(self, msg: dict[str, Any]) -> None:
        if "head" in msg:
            seq, hash_ = msg["head"]
            self.on_head(ChainHead(int(seq), str(hash_)))
        with self._changed:
            if "learned" in msg:
                self.learned = max(self.learned, int(msg["learned"]))
            if "ready" in msg:
                self.metrics_url = str(msg["ready"].get("metrics", ""))
                self.ready = True
            if "error" in msg:
                self.error = (str(msg.get("kind", "")), str(msg["error"]))
            reported = msg.get("components")
            if isinstance(reported, dict):
                self.components = {
                    str(n): (str(c.get("state")), str(c.get("reason", "")))
                    for n, c in reported.items()
                    if n in WORKER_COMPONENTS and isinstance(c, dict) and c.get("state") in UP_VALUE}
            self._changed.notify_all()
        if isinstance(msg.get("components"), dict):
            self.on_components()

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Return once it serves; raise (ConfigError, LedgerError or WorkerError) if it
        failed, exited or took too long."""
        with self._changed:
            self._changed.wait_for(lambda: self.ready or self.gone or self.error is not None,
                                   timeout_s)
            ready, error = self.ready, self.error
        if ready:
            return
        if error is not None:
            kind, message = error
            raise _ERRORS.get(kind, WorkerError)(f"PDP worker {self.index}: {message}")
        if self.gone:
            code = self.proc.wait()
            raise WorkerError(f"PDP worker {self.index} exited with {code} before serving "
                              "(its log lines above say why)")
        raise WorkerError(f"PDP worker {self.index} did not serve within {timeout_s:.0f} s")

    def wait_learned(self, seq: int, deadline: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.learned >= seq or self.gone,
                                          max(0.0, deadline - time.monotonic())) \
                and self.learned >= seq

    def terminate(self) -> None:
        """SIGTERM: stop taking calls, let in-flight ones finish, drain the audit writer."""
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float) -> None:
        """Wait for the exit (SIGKILL after ``timeout_s``) and for its last messages."""
        try:
            self.proc.wait(max(0.0, timeout_s))
        except subprocess.TimeoutExpired:
            log.error("PDP worker did not stop in time; killed",
                      extra={"fields": {"worker": self.index, "pid": self.pid}})
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        self._outbox.put(None)
        self._sender.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class Workers:
    """``count`` worker processes, restarted when one dies. Made before the first publish
    (so every revision is kept for them), started once OPA serves."""

    def __init__(self, count: int, newest: Callable[[list[str]], str] = lambda revisions: "",
                 components: Components | None = None) -> None:
        self.count = count
        self.components = components  # where the workers' ledger and broker states go
        self.settings: Settings | None = None
        self.procs: list[WorkerProcess | None] = [None] * count
        self.restarts = 0
        self._head: ChainHead | None = None
        self._kept: list[dict[str, Any]] = []  # the last KEEP revisions: {seq, revision, data}
        self._serials = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self.metrics = WorkerMetrics(self.members, newest, lambda: self.restarts)

    # --- the parent's view ------------------------------------------------------------

    def head(self) -> ChainHead | None:
        """The newest audit row any worker wrote (or the head at start): what the anchor
        names. The chain is one sequence, so the newest row covers every older one."""
        return self._head

    def _on_head(self, head: ChainHead) -> None:
        with self._lock:
            if self._head is None or head.seq > self._head.seq:
                self._head = head

    def members(self) -> list[Member]:
        with self._lock:
            return [p.member() for p in self.procs if p is not None]

    def pids(self) -> list[int]:
        return [m.pid for m in self.members()]

    def _on_components(self) -> None:
        """The worst of the live workers' states, per component, into the parent's
        registry; the reason names the worker (and how many more are not ok)."""
        if self.components is None:
            return
        with self._lock:
            reports = [(p.index, dict(p.components)) for p in self.procs if p is not None]
        for name in WORKER_COMPONENTS:
            states = [(i, c[name]) for i, c in reports if name in c]
            if not states:
                continue
            bad = sorted(((i, st) for i, st in states if st[0] != OK),
                         key=lambda x: (UP_VALUE[x[1][0]], x[0]))
            if not bad:
                self.components.set(name, OK)
                continue
            index, (state, reason) = bad[0]
            more = f" (+{len(bad) - 1} more worker{'s' if len(bad) > 2 else ''})" \
                if len(bad) > 1 else ""
            self.components.set(name, state, f"worker {index}: {reason}{more}")

    # --- lifecycle --------------------------------------------------------------------

    def _spawn(self, index: int) -> WorkerProcess:
        """Start slot ``index``'s process (call with the lock held, so no publish is missed:
        it boots with every kept revision and is sent each later one)."""
        assert self.settings is not None
        self._serials += 1
        head = self._head
        boot = {"worker": index, "settings": settings_dict(self.settings),
                "head": [head.seq, head.hash] if head is not None else None,
                "revisions": list(self._kept)}
        proc = WorkerProcess(index, self._serials, boot, self._on_head, self._on_components)
        self.procs[index] = proc
        return proc

    def start(self, settings: Settings, head: ChainHead | None) -> None:
        """Start every worker on ``settings`` (concrete ports, the OPA to ask: pdp/stack.py)
        and return once all serve; a failed one raises (the caller stops the rest: fail
        closed). ``head``: the audit chain head the parent's anchor names (None: none)."""
        with self._lock:
            self.settings, self._head = settings, head
            started = [self._spawn(i) for i in range(self.count)]
        for proc in started:
            proc.wait_ready()
        log.info("PDP workers serving", extra={"fields": {
            "workers": self.count, "pids": [p.pid for p in started]}})
        self._supervisor = threading.Thread(target=self._supervise, name="aam-worker-supervisor",
                                            daemon=True)
        self._supervisor.start()

    def publish(self, seq: int, revision: str, data: bytes) -> None:
        """Give every worker a newly published revision (``seq`` in the parent's publish
        order) and wait until each has learned it, at most ``ACK_TIMEOUT_S``."""
        item = {"seq": seq, "revision": revision, "data": data.decode()}
        with self._lock:
            self._kept = [*self._kept, item][-KEEP:]
            live = [p for p in self.procs if p is not None and p.alive]
            for p in live:
                p.send({"revision": item})
        deadline = time.monotonic() + ACK_TIMEOUT_S
        late = [p.index for p in live if not p.wait_learned(seq, deadline) and p.alive]
        if late:
            log.warning("PDP workers did not confirm a new revision in time; publishing it anyway "
                        "(they learn it before deciding on it)",
                        extra={"fields": {"revision": revision, "workers": late}})

    def _supervise(self, interval_s: float = 0.5) -> None:
        """Restart a worker that exited, in its slot (the others serve meanwhile); a start
        that fails is retried, backing off up to 30 s."""
        failures = 0
        while not self._stopping.wait(interval_s):
            for index, proc in enumerate(self.procs):
                if proc is None or proc.alive or self._stopping.is_set():
                    continue
                log.error("PDP worker exited; restarting", extra={"fields": {
                    "worker": index, "pid": proc.pid, "exit_code": proc.proc.returncode}})
                proc.wait(0)
                self.metrics.retire(proc.serial)
                with self._lock:
                    if self._stopping.is_set():
                        return
                    fresh = self._spawn(index)
                    self.restarts += 1
                try:
                    fresh.wait_ready()
                except (WorkerError, ConfigError, LedgerError) as exc:
                    if self._stopping.is_set():
                        return
                    failures += 1
                    log.error("PDP worker restart failed; will retry",
                              extra={"fields": {"worker": index, "error": str(exc)}})
                    fresh.proc.kill()
                    self._stopping.wait(min(30.0, 2.0 ** failures))
                    continue
                failures = 0
                log.info("PDP worker restarted", extra={"fields": {"worker": index,
                                                                  "pid": fresh.pid}})

    def stop(self, grace_s: float) -> None:
        """SIGTERM every worker, wait for each to drain (SIGKILL after ``grace_s`` plus the
        audit writer's drain), and collect their last chain heads."""
        self._stopping.set()
        with self._lock:
            procs = [p for p in self.procs if p is not None]
        for p in procs:
            p.terminate()
        deadline = time.monotonic() + grace_s + DRAIN_S
        for p in procs:
            p.wait(deadline - time.monotonic())
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join(READY_TIMEOUT_S)
        with self._lock:  # a restart the supervisor began as the stop came
            late = [p for p in self.procs if p is not None and p not in procs]
        for p in late:
            p.terminate()
            p.wait(grace_s + DRAIN_S)

