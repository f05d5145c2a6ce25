"""A minimal HTTP/1.1 client for the one hot call: POST JSON to OPA, read the reply.

Why not ``http.client``: per decision it spends about 300 us of CPU (and the
GIL) building the request through validating ``putheader`` calls and parsing
the reply headers with the ``email`` package; this client spends about 100 us
(bench/, "profile"). It speaks only what OPA's Data API needs: one request
per round trip on a keep-alive connection, replies framed by Content-Length
or chunked encoding (Go switches to chunked for bodies past 2 KiB), or by the
peer closing. Sizes are capped; anything else raises :class:`ProtocolError`.

The connection is TCP (``host``, ``port``) or, with ``unix_socket``, a Unix
domain socket (OPA's ``--addr unix:///path``): the same bytes without the TCP
stack in between.
"""

from __future__ import annotations

import socket

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024
_RECV = 256 * 1024


class ProtocolError(OSError):
    """The peer's reply is not HTTP/1.1 we understand, or it closed mid-reply."""


class Http1Connection:
    """One keep-alive connection to ``host:port``, or to the Unix socket ``unix_socket``
    when given (``host`` and ``port`` then only name the Host header); not thread-safe
    (one per thread)."""

    def __init__(self, host: str, port: int, timeout_s: float, unix_socket: str = "") -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self.unix_socket = unix_socket
        self._sock: socket.socket | None = None
        self._buf = b""
        self._host_header = (f"{host}:{port}" if not unix_socket else host or "localhost").encode()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buf = b""

    def _connect(self) -> socket.socket:
        if self._sock is None:
            if self.unix_socket:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.settimeout(self.timeout_s)
                    sock.connect(self.unix_socket)
                except BaseException:
                    sock.close()
                    raise
            else:
                sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock, self._buf = sock, b""
        return self._sock

    def post(self, path: str, body: bytes, content_type: bytes = b"application/json") -> tuple[int, bytes]:
        """Send one POST and return (status, body). Raises OSError (incl. TimeoutError)."""
        return self._exchange(
            b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s"
            % (path.encode(), self._host_header, content_type, len(body), body))

    def get(self, path: str) -> tuple[int, bytes]:
        """Send one GET and return (status, body). Raises OSError (incl. TimeoutError)."""
        return self._exchange(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path.encode(), self._host_header))

    def _exchange(self, request: bytes) -> tuple[int, bytes]:
        sock = self._connect()
        sock.sendall(request)
        status, headers = self._read_head()
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            data = self._read_chunked()
        elif b"content-length" in headers:
            try:
                n = int(headers[b"content-length"])
            except ValueError:
                raise ProtocolError("invalid Content-Length") from None
            if not 0 <= n <= MAX_BODY_BYTES:
                raise ProtocolError("Content-Length out of range")
            data = self._read_exact(n)
        else:
            data = self._read_to_close()
        if headers.get(b"connection", b"").lower() == b"close":
            self.close()
        return status, data

    def _recv(self) -> bytes:
        assert self._sock is not None
        chunk = self._sock.recv(_RECV)
        if not chunk:
            raise ProtocolError("connection closed by peer")
        return chunk

    def _read_head(self) -> tuple[int, dict[bytes, bytes]]:
        while (end := self._buf.find(b"\r\n\r\n")) < 0:
            if len(self._buf) > MAX_HEAD_BYTES:
                raise ProtocolError("reply headers too large")
            self._buf += self._recv()
        head, self._buf = self._buf[:end], self._buf[end + 4:]
        status_line, *lines = head.split(b"\r\n")
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError("malformed status line")
        headers = {}
        for line in lines:
            name, sep, value = line.partition(b":")
            if not sep:
                raise ProtocolError("malformed header line")
            headers[name.strip().lower()] = value.strip()
        return int(parts[1]), headers

    def _read_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._buf += self._recv()
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def _read_line(self) -> bytes:
        while (end := self._buf.find(b"\r\n")) < 0:
            if len(self._buf) > MAX_HEAD_BYTES:
                raise ProtocolError("chunk header too large")
            self._buf += self._recv()
        line, self._buf = self._buf[:end], self._buf[end + 2:]
        return line

    def _read_chunked(self) -> bytes:
        out = bytearray()
        while True:
            size_text = self._read_line().split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ProtocolError("malformed chunk size") from None
            if size == 0:
                while self._read_line():  # trailers, then the empty line
                    pass
                return bytes(out)
            if size < 0 or len(out) + size > MAX_BODY_BYTES:
                raise ProtocolError("reply body too large")
            out += self._read_exact(size)
            if self._read_exact(2) != b"\r\n":
                raise ProtocolError("chunk not terminated by CRLF")

    def _read_to_close(self) -> bytes:
        assert self._sock is not None
        while chunk := self._sock.recv(_RECV):
            self._buf += chunk
            if len(self._buf) > MAX_BODY_BYTES:
                raise ProtocolError("reply body too large")
        data = self._buf
        self.close()
        return data
