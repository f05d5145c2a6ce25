"""What the PDP can honestly say about itself: component states and readiness (issue 19).

gRPC health, ``/readyz`` and ``aam_component_up`` all read one :class:`Components`
registry, so they cannot disagree. The engine's state comes from a probe of OPA's
``/health?bundles`` (200 only once a bundle is activated): a replica whose OPA has no
bundle, or is down, is not ready, so an orchestrator stops sending it traffic instead
of the replica denying everything with ``engine_unavailable``.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler

from pdp.http1 import Http1Connection
from pdp.opa import OpaClient

log = logging.getLogger("aam.health")
OK, DEGRADED, DOWN = "ok", "degraded", "down"
ENGINE, BUNDLE_SERVER, LEDGER, BROKER = "engine", "bundle_server", "ledger", "broker"
# The PDP's own SVID from the Workload API (spiffe_endpoint_socket, pdp/workloadapi.py).
IDENTITY = "identity"
# Components whose outage stops every decision: not ready while they are down. The others
# (ledger, broker) make the PDP degraded: it still decides, and says why it is degraded.
ESSENTIAL = frozenset({ENGINE})
UP_VALUE = {OK: 1.0, DEGRADED: 0.5, DOWN: 0.0}
HEALTHZ_PATH, READYZ_PATH = "/healthz", "/readyz"
PROBE_INTERVAL_S = 1.0  # the default of health_probe_interval_s (pdp/healthsettings.py)
PROBE_TIMEOUT_S = 1.0
# Where OPA keeps each activated bundle's manifest (its revision among it): OPA 1.x serves
# it on the Data API; /v1/status would need the status plugin.
BUNDLES_DATA_PATH = "/v1/data/system/bundles"
REASON_MAX = 200
# What must never reach a reason: a URL's user:password, key=value secrets of a libpq
# connection string, a bearer or Vault token.
_SECRETS = (
    (re.compile(r"(\w+://)[^/@\s]*@"), r"\1***@"),
    (re.compile(r"(?i)\b(password|passwd|pwd|secret(?:_id)?|token|sslpassword)\s*[=:]\s*\S+"),
     r"\1=***"),
    (re.compile(r"(?i)\b(bearer)\s+\S+"), r"\1 ***"),
    (re.compile(r"\b(?:hvs|hvb|hvr|s|b|r)\.[A-Za-z0-9_-]{20,}"), "***"),
)


def safe_reason(text: str) -> str:
    """A reason fit to show anyone who can read /readyz: one line, bounded, no secret."""
    text = " ".join(str(text).split())
    for pattern, repl in _SECRETS:
        text = pattern.sub(repl, text)
    return text if len(text) <= REASON_MAX else text[:REASON_MAX - 1] + "…"


@dataclass(frozen=True)
class State:
    state: str  # ok, degraded or down
    reason: str  # why, when not ok (the last error)
    since: float  # wall-clock seconds: when it entered this state
    # What else is known while in it, e.g. {"revision": ...} for the engine and the bundle
    # server; a change of detail alone keeps ``since``.
    detail: dict[str, str] = field(default_factory=dict)


Listener = Callable[["Components"], None]


class Components:
    """Named component states, thread-safe; listeners hear every change (not every probe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, State] = {}
        self._listeners: list[Listener] = []

    def set(self, name: str, state: str, reason: str = "",
            detail: Mapping[str, str] | None = None) -> None:
        """``detail`` None keeps the component's current detail; ``{}`` clears it. The
        reason is passed through :func:`safe_reason`."""
        if state not in UP_VALUE:
            raise ValueError(f"component state must be ok, degraded or down, got {state!r}")
        reason = safe_reason(reason) if reason else ""
        with self._lock:
            old = self._states.get(name)
            details = dict(detail) if detail is not None else (old.detail if old else {})
            if old is not None and (old.state, old.reason, old.detail) == (state, reason, details):
                return
            since = old.since if old is not None and old.state == state else time.time()
            self._states[name] = State(state, reason, since, details)
            listeners = list(self._listeners)
        for listener in listeners:
            listener(self)

    def listen(self, listener: Listener) -> None:
        """Call ``listener`` on every change, and once now."""
        with self._lock:
            self._listeners.append(listener)
        listener(self)

    def snapshot(self) -> dict[str, State]:
        with self._lock:
            return dict(self._states)

    def status(self) -> str:
        """``ready``, ``degraded`` (ready, something non-essential is not ok) or ``not_ready``.

        Not ready until the engine has reported at all: the first bundle must be active."""
        states = self.snapshot()
        engine = states.get(ENGINE)
        if engine is None or engine.state == DOWN:
            return "not_ready"
        if any(s.state == DOWN for n, s in states.items() if n in ESSENTIAL):
            return "not_ready"
        return "ready" if all(s.state == OK for s in states.values()) else "degraded"

    def ready(self) -> bool:
        return self.status() != "not_ready"

    def document(self) -> dict[str, object]:
        """The JSON body of ``/readyz``."""
        return {"status": self.status(),
                "components": {n: asdict(s) for n, s in sorted(self.snapshot().items())}}


class OpaProbe:
    """Every ``interval_s``, ask OPA whether a bundle is active and set the engine's state.

    Starts the engine ``down`` ("no bundle activated yet"), so nothing reports ready
    before the first successful probe."""

    def __init__(self, url: str, components: Components, interval_s: float = PROBE_INTERVAL_S,
                 timeout_s: float = PROBE_TIMEOUT_S) -> None:
        self.url = url
        self.components = components
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.opa = OpaClient(url, timeout_s)  # parses the URL (TCP or Unix socket) once
        self._periodic = Periodic(ENGINE, self.check, interval_s)
        components.set(ENGINE, DOWN, "no bundle activated yet")

    def check(self) -> None:
        """One probe: a fresh connection each time, so a restarted OPA is seen at once."""
        try:
            status = self.opa.health_status(bundles=True, timeout_s=self.timeout_s)
        except OSError as exc:
            self.components.set(ENGINE, DOWN, f"OPA unreachable at {self.url}: {type(exc).__name__}",
                                detail={})
            return
        if status == 200:
            revision = self.revision()
            self.components.set(ENGINE, OK, detail={"revision": revision} if revision else None)
        else:
            self.components.set(ENGINE, DOWN, f"OPA has no active bundle (health HTTP {status})",
                                detail={})

    def revision(self) -> str:
        """The revision of the bundle OPA has active, from its bundle manifests ("": not
        known). Several bundles (an external OPA): ``name=revision`` of each, by name."""
        conn = Http1Connection(self.opa.host, self.opa.port, self.timeout_s, self.opa.unix_socket)
        try:
            status, raw = conn.get(BUNDLES_DATA_PATH)
            bundles = json.loads(raw).get("result") if status == 200 else None
        except (OSError, ValueError, AttributeError):
            return ""
        finally:
            conn.close()
        if not isinstance(bundles, dict):
            return ""
        revs = {str(n): str((b.get("manifest") or {}).get("revision") or "")
                for n, b in bundles.items() if isinstance(b, dict)}
        if len(revs) == 1:
            return next(iter(revs.values()))
        return ",".join(f"{n}={r}" for n, r in sorted(revs.items()))

    def start(self) -> None:
        """Probe every ``interval_s`` from now on (the first probe is the caller's
        :meth:`check`, so health's first answer is already OPA's)."""
        self._periodic.start()

    def stop(self) -> None:
        self._periodic.stop(self.timeout_s + 1)


class Periodic:
    """Run ``check`` now and then every ``interval_s`` on a thread of its own (a check
    that blocks, a ledger waiting out its connect timeout, delays no other probe)."""

    def __init__(self, name: str, check: Callable[[], None],
                 interval_s: float = PROBE_INTERVAL_S) -> None:
        self.name = name
        self.check = check
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"aam-probe-{self.name}",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception as exc:  # a probe must not die of one bad check
                log.warning("health probe failed", extra={"fields": {
                    "component": self.name, "error": type(exc).__name__}})

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None


def healthz(h: BaseHTTPRequestHandler) -> None:
    """Liveness: the process answers HTTP. Readiness is /readyz."""
    _send(h, 200, b'{"status":"live"}')


def readyz_route(components: Components) -> Callable[[BaseHTTPRequestHandler], None]:
    """200 when ready (degraded included), 503 when not; the body names every component."""

    def serve(h: BaseHTTPRequestHandler) -> None:
        doc = components.document()
        _send(h, 503 if doc["status"] == "not_ready" else 200,
              json.dumps(doc, separators=(",", ":")).encode())

    return serve


def _send(h: BaseHTTPRequestHandler, code: int, body: bytes) -> None:
    h.send_response(code)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)
