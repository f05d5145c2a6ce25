"""The console's listener: its own address, GET only, every page authenticated off loopback.

- Off unless ``console_addr`` is set. On an address other than loopback the settings
  refuse to load without ``console_token_file`` or ``console_mtls`` (pdp/consolesettings.py).
- With a token (a 0600 file, at least 32 characters) every request needs
  ``Authorization: Bearer TOKEN`` or the cookie the login form sets (HttpOnly,
  SameSite=Strict; Secure under TLS), whose value is an HMAC of the token, never the token.
  ``POST /login`` is the one request that is not a GET.
- With ``console_mtls`` it serves TLS (tls_cert, tls_key) and admits only client
  certificates that chain to ``tls_client_ca``.
- Open on loopback (no token), it still checks the Host header, so a web page that
  rebinds its DNS name to 127.0.0.1 cannot read the console from a browser.
- Every response: a CSP that allows no script at all, X-Frame-Options DENY, no caching.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import ssl
import threading
import time
from collections.abc import Callable
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape

from pdp.config import ConfigError, Settings, split_addr
from pdp.console import views
from pdp.console.token import check_token
from pdp.consolesettings import loopback_host
from pdp.ledger import LedgerError

log = logging.getLogger("aam.console")
HERE = Path(__file__).resolve().parent
COOKIE = "aam_console"
MAX_FORM_BYTES = 4096
PAGE_CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'")
# A chart is an SVG document shown as an image: its own <style> only, never a script.
SVG_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
HEADERS = {
    "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Resource-Policy": "same-origin",
}
NAV = (("/", "Decisions"), ("/workload", "Workloads"), ("/denials", "Denials"),
       ("/audit", "Audit chain"), ("/revisions", "Bundle revisions"), ("/shadow", "Shadow"))

Page = Callable[[dict[str, str]], tuple[str, dict[str, Any]]]


class ConsoleServer:
    def __init__(self, settings: Settings, sources: views.Sources) -> None:
        self.settings = settings
        self.sources = sources
        host, port = split_addr(settings.console_addr, "console_addr")
        self.token = check_token(settings.console_token_file) if settings.console_token_file else None
        self.session = (hmac.new(self.token, b"aam-console-session", hashlib.sha256).hexdigest()
                        if self.token else "")
        self.tls = self._tls_context() if settings.console_mtls else None
        self.env = Environment(loader=FileSystemLoader(HERE / "templates"),
                               autoescape=select_autoescape(default=True, default_for_string=True),
                               trim_blocks=True, lstrip_blocks=True)
        self.css = (HERE / "static" / "console.css").read_bytes()
        self.pages: dict[str, Page] = {
            "/": lambda q: ("decisions.html", views.decisions(sources, q)),
            "/workload": lambda q: ("workload.html", views.workload(sources, q)),
            "/denials": lambda q: ("denials.html", views.denials(sources, q)),
            "/audit": lambda q: ("audit.html", views.audit(sources)),
            "/revisions": lambda q: ("revisions.html", views.revisions(sources)),
            "/shadow": lambda q: ("shadow.html", views.shadow(sources, q)),
        }
        self.charts: dict[str, Callable[[dict[str, str]], bytes]] = {
            "/chart/denials.svg": lambda q: views.denials_chart(sources, q),
            "/chart/spend.svg": lambda q: views.spend_chart(sources, q),
        }
        console = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "aam-console"
            sys_version = ""

            def do_GET(self) -> None:
                console.get(self)

            def do_POST(self) -> None:
                console.post(self)

            def _refuse(self) -> None:
                console.send(self, 405, b"method not allowed: the console is read-only\n",
                             "text/plain; charset=utf-8", extra={"Allow": "GET"})

            do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_TRACE = do_CONNECT = _refuse

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        if self.tls is not None:
            self._httpd.socket = self.tls.wrap_socket(self._httpd.socket, server_side=True,
                                                      do_handshake_on_connect=False)
        self.host, self.port = host, self._httpd.server_address[1]
        self._thread: threading.Thread | None = None

    def _tls_context(self) -> ssl.SSLContext:
        s = self.settings
        missing = [n for n in ("tls_cert", "tls_key", "tls_client_ca") if not getattr(s, n)]
        if missing:
            raise ConfigError(f"setting console_mtls: needs {', '.join(missing)}",
                              setting="console_mtls", reason=f"needs {', '.join(missing)}")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(s.tls_cert, s.tls_key)
        ctx.load_verify_locations(s.tls_client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/"

    def start(self) -> None:
        if self.sources.chain is not None:
            self.sources.chain.start()
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="aam-console",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # --- requests -----------------------------------------------------------

    def _host_ok(self, h: BaseHTTPRequestHandler) -> bool:
        """Off loopback auth protects the console; on loopback without it, the Host header
        must name loopback (a DNS-rebound name would not)."""
        if self.token or self.tls:
            return True
        host = (h.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]")
        return loopback_host(host)

    def _authorized(self, h: BaseHTTPRequestHandler) -> bool:
        if self.token is None:
            return True
        auth = h.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer " and hmac.compare_digest(auth[7:].strip().encode(), self.token):
            return True
        try:
            morsel = SimpleCookie(h.headers.get("Cookie", "")).get(COOKIE)
        except CookieError:
            morsel = None
        return morsel is not None and hmac.compare_digest(morsel.value.encode(), self.session.encode())

    def get(self, h: BaseHTTPRequestHandler) -> None:
        started = time.perf_counter()
        url = urlsplit(h.path)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        if not self._host_ok(h):
            self.send(h, 421, b"misdirected request: use 127.0.0.1 or localhost\n",
                      "text/plain; charset=utf-8")
            return
        if url.path == "/console.css":
            self.send(h, 200, self.css, "text/css; charset=utf-8")
            return
        if url.path == "/login":
            self.page(h, 200, "login.html", {"error": ""}, "/login")
            return
        if not self._authorized(h):
            self.page(h, 401, "login.html", {"error": ""}, "/login",
                      extra={"WWW-Authenticate": 'Bearer realm="aam console"'})
            return
        try:
            if url.path in self.charts:
                self.send(h, 200, self.charts[url.path](query), "image/svg+xml",
                          csp=SVG_CSP)
                return
            route = self.pages.get(url.path)
            if route is None:
                self.page(h, 404, "error.html", {"message": "no such page"}, url.path)
                return
            template, context = route(query)
        except views.BadRequest as exc:
            self.page(h, 400, "error.html", {"message": str(exc)}, url.path)
            return
        except LedgerError as exc:
            self.page(h, 503, "error.html", {"message": f"the ledger did not answer: {exc}"},
                      url.path)
            return
        except Exception:
            log.exception("console page failed", extra={"fields": {"path": url.path}})
            self.page(h, 500, "error.html", {"message": "this page failed; the PDP log says why"},
                      url.path)
            return
        context["elapsed_ms"] = round((time.perf_counter() - started) * 1000, 1)
        self.page(h, 200, template, context, url.path)

    def post(self, h: BaseHTTPRequestHandler) -> None:
        if urlsplit(h.path).path != "/login" or not self._host_ok(h):
            h._refuse()  # type: ignore[attr-defined]
            return
        try:
            length = int(h.headers.get("Content-Length") or "0")
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_FORM_BYTES:
            self.send(h, 413, b"form too large\n", "text/plain; charset=utf-8")
            return
        form = dict(parse_qsl(h.rfile.read(length).decode("utf-8", "replace")))
        given = form.get("token", "").strip().encode()
        if self.token is None:
            self.redirect(h, "/")
            return
        if not hmac.compare_digest(given, self.token):
            self.page(h, 401, "login.html", {"error": "wrong token"}, "/login")
            return
        cookie = (f"{COOKIE}={self.session}; Path=/; HttpOnly; SameSite=Strict"
                  + ("; Secure" if self.tls else ""))
        self.redirect(h, "/", {"Set-Cookie": cookie})

    def redirect(self, h: BaseHTTPRequestHandler, where: str, extra: dict[str, str] | None = None) -> None:
        self.send(h, 303, b"", "text/plain; charset=utf-8", extra={"Location": where, **(extra or {})})

    def page(self, h: BaseHTTPRequestHandler, code: int, template: str, context: dict[str, Any],
             path: str, extra: dict[str, str] | None = None) -> None:
        body = self.env.get_template(template).render(
            nav=NAV, path=path, authed=self.token is not None, **context).encode()
        self.send(h, code, body, "text/html; charset=utf-8", extra=extra)

    def send(self, h: BaseHTTPRequestHandler, code: int, body: bytes, ctype: str,
             csp: str = PAGE_CSP, extra: dict[str, str] | None = None) -> None:
        h.send_response(code)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Content-Security-Policy", csp)
        for k, v in {**HEADERS, **(extra or {})}.items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)
