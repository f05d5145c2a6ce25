"""A TCP forwarder a test can start late and cut: a server that "goes away" and "comes back"
without stopping the real one (Vault, for the broker's fault tests)."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading

from pdp.opa import free_port


class Forwarder:
    """Forwards 127.0.0.1:``port`` to ``upstream`` once started; :meth:`cut` closes the
    listener and every open connection (a keep-alive one would outlive the "outage")."""

    def __init__(self, upstream: tuple[str, int], port: int = 0) -> None:
        self.port, self.upstream = port or free_port(), upstream
        self.server: socketserver.ThreadingTCPServer | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    @classmethod
    def to(cls, url: str) -> Forwarder:
        """A forwarder to ``http://host:port``."""
        host, _, port = url.removeprefix("http://").partition(":")
        return cls((host, int(port)))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        upstream, me = self.upstream, self

        class Pipe(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with socket.create_connection(upstream) as up:
                    with me._lock:
                        me._open.update((up, self.request))

                    def pump(src: socket.socket, dst: socket.socket) -> None:
                        with contextlib.suppress(OSError):
                            while data := src.recv(65536):
                                dst.sendall(data)
                        with contextlib.suppress(OSError):
                            dst.shutdown(socket.SHUT_WR)

                    t = threading.Thread(target=pump, args=(up, self.request), daemon=True)
                    t.start()
                    pump(self.request, up)
                    t.join(10)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), Pipe)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def cut(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        with self._lock:
            conns, self._open = self._open, set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
