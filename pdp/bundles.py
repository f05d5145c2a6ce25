"""Bundle distribution: the PDP serves its current bundle to OPA over HTTP.

OPA polls ``GET /bundles/aam.tar.gz`` with ``If-None-Match``; an unchanged
bundle costs a 304. With long polling (``Prefer: wait=N``) the request is
held until a new revision is published or N seconds pass.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

from compiler import Bundle

BUNDLE_PATH = "/bundles/aam.tar.gz"
LONG_POLL_CONTENT_TYPE = "application/vnd.openpolicyagent.bundles"
_WAIT = re.compile(r"wait=(\d+)")

log = logging.getLogger("aam.http")


@dataclass(frozen=True)
class Published:
    revision: str
    etag: str
    body: bytes


class Signer(Protocol):
    def sign(self, bundle: Bundle) -> Bundle: ...


class BundleStore:
    """The bundle currently published; swapped atomically, waited on by long polls.

    With a ``signer`` every bundle is signed as it is published (once, not per
    poll). The ETag stays the revision: a new signature alone is not a new bundle.
    """

    def __init__(self, signer: Signer | None = None) -> None:
        self.signer = signer
        self._current: Published | None = None
        self._changed = threading.Condition()
        self._closed = False

    def publish(self, bundle: Bundle) -> Published:
        served = bundle if self.signer is None else self.signer.sign(bundle)
        pub = Published(bundle.revision, f'"{bundle.revision}"', served.to_tar_gz())
        with self._changed:
            self._current = pub
            self._changed.notify_all()
        return pub

    @property
    def current(self) -> Published | None:
        return self._current

    def wait_for_change(self, etag: str | None, timeout_s: float) -> Published | None:
        with self._changed:
            self._changed.wait_for(
                lambda: self._closed or (self._current is not None and self._current.etag != etag),
                timeout_s)
            return self._current

    def close(self) -> None:
        """Answer every held long poll now, so OPA can shut down without waiting them out."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()


Route = Callable[[BaseHTTPRequestHandler], None]


class _QuietHTTPServer(ThreadingHTTPServer):
    """socketserver prints a traceback to stderr for any error in a handler, a
    client that hangs up mid-response included; here that is one log line."""

    def handle_error(self, request: object, client_address: object) -> None:
        exc = sys.exc_info()[1]
        hung_up = isinstance(exc, ConnectionError | TimeoutError)
        (log.debug if hung_up else log.warning)(
            "http client connection ended with an error",
            extra={"fields": {"client": str(client_address), "error": type(exc).__name__}})


class HttpServer:
    """The PDP's small HTTP side: bundles for OPA, plus routes added by others."""

    def __init__(self, host: str, port: int, store: BundleStore) -> None:
        self.store = store
        self.routes: dict[str, Route] = {BUNDLE_PATH: self._serve_bundle}
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                route = server.routes.get(self.path.split("?", 1)[0])
                if route is None:
                    self.send_error(404)
                    return
                route(self)

            # Nothing here accepts a write. A caller that sends one (an OPA configured
            # to report decision logs or status to its first service, which is this
            # server) is counted and logged once, so the misconfiguration shows.
            def _refuse(self) -> None:
                server.refused(self.command, self.path.split("?", 1)[0])
                self.send_error(405)

            do_POST = do_PUT = do_PATCH = do_DELETE = _refuse

            def log_message(self, *args: object) -> None:
                pass

        self.unexpected: Counter[str] = Counter()  # "METHOD /path" of refused requests
        self._unexpected_lock = threading.Lock()
        self.httpd = _QuietHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="aam-http", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def refused(self, method: str, path: str) -> None:
        what = f"{method} {path}"
        with self._unexpected_lock:
            self.unexpected[what] += 1
            first = self.unexpected[what] == 1
        if first:
            log.warning("refused a request the PDP's HTTP server does not serve; is a client "
                        "(OPA decision logs or status?) reporting here?",
                        extra={"fields": {"request": what}})

    def _serve_bundle(self, h: BaseHTTPRequestHandler) -> None:
        etag = h.headers.get("If-None-Match")
        wait = _WAIT.search(h.headers.get("Prefer", ""))
        pub = self.store.current
        if wait and pub is not None and pub.etag == etag:
            pub = self.store.wait_for_change(etag, min(int(wait.group(1)), 60))
        if pub is None:
            h.send_error(503, "no bundle published yet")
            return
        if pub.etag == etag:
            h.send_response(304)
            h.send_header("ETag", pub.etag)
            h.send_header("Content-Length", "0")
            if wait:
                h.send_header("Content-Type", LONG_POLL_CONTENT_TYPE)
            h.end_headers()
            return
        h.send_response(200)
        h.send_header("ETag", pub.etag)
        h.send_header("Content-Type", LONG_POLL_CONTENT_TYPE if wait else "application/gzip")
        h.send_header("Content-Length", str(len(pub.body)))
        h.end_headers()
        h.wfile.write(pub.body)
