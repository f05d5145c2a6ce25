"""Hot-path replacements behave like what they replaced (bench/ shows why they exist)."""

from __future__ import annotations

import math
import socket
import threading
from collections.abc import Iterator

import pytest
from google.protobuf import json_format, struct_pb2

from pdp.errors import InvalidRequest
from pdp.http1 import Http1Connection, ProtocolError
from pdp.opa import EngineUnavailable, OpaClient
from pdp.service import _struct

SAMPLE = {"a": 1, "b": 2.5, "s": "x", "t": True, "f": False, "n": None,
          "l": [1, "two", [3], {"four": 4}], "nested": {"deep": {"er": [None, {"x": "y"}]}}, "e": {}}


def test_struct_conversion_matches_message_to_dict() -> None:
    s = struct_pb2.Struct()
    s.update(SAMPLE)
    assert _struct(s, "params") == json_format.MessageToDict(s)
    assert _struct(struct_pb2.Struct(), "params") == {}


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_struct_conversion_refuses_non_finite_numbers(bad: float) -> None:
    s = struct_pb2.Struct()
    s.update({"ok": 1, "deep": {"list": [bad]}})
    with pytest.raises(InvalidRequest):
        _struct(s, "context")


Peer = tuple[socket.socket, list[bytes]]
HANG = b"HANG"  # a canned "reply" that never answers


def _read_request(conn: socket.socket) -> bool:
    """Read one request (headers + Content-Length body); False when the client closed."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        got = conn.recv(65536)
        if not got:
            return False
        buf += got
    head, _, body = buf.partition(b"\r\n\r\n")
    n = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < n:
        body += conn.recv(65536)
    return True


@pytest.fixture
def peer() -> Iterator[Peer]:
    """A loopback server answering requests with canned replies, in order; it closes
    the connection after the last reply and after a reply that says Connection: close."""
    srv = socket.create_server(("127.0.0.1", 0))
    replies: list[bytes] = []
    done = threading.Event()

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                while replies and _read_request(conn):
                    reply = replies.pop(0)
                    if reply == HANG:
                        done.wait(5)
                        return
                    conn.sendall(reply)
                    if b"Connection: close" in reply:
                        break

    threading.Thread(target=serve, daemon=True).start()
    yield srv, replies
    done.set()
    srv.close()


def _conn(srv: socket.socket, timeout_s: float = 2.0) -> Http1Connection:
    return Http1Connection("127.0.0.1", srv.getsockname()[1], timeout_s)


def test_http1_reads_content_length_chunked_and_close_delimited_replies(peer: Peer) -> None:
    srv, replies = peer
    replies += [
        b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n{\"result\":1}",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4;ext=1\r\n{\"re\r\n6\r\nsult\":\r\n2\r\n2}\r\n0\r\nX-T: 1\r\n\r\n",
        b"HTTP/1.1 503 Service Unavailable\r\n\r\nbusy",
    ]
    c = _conn(srv)
    assert c.post("/v1/data/x", b"{}") == (200, b'{"result":1}')
    assert c.post("/v1/data/x", b"{}") == (200, b'{"result":2}')  # same keep-alive connection
    assert c.post("/v1/data/x", b"{}") == (503, b"busy")


@pytest.mark.parametrize("reply", [
    b"SPDY/9 200 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort",
])
def test_http1_refuses_malformed_replies(peer: Peer, reply: bytes) -> None:
    srv, replies = peer
    replies.append(reply)
    with pytest.raises(ProtocolError):
        _conn(srv).post("/", b"{}")


def test_opa_client_fails_closed_on_a_hung_or_missing_peer(peer: Peer) -> None:
    srv, replies = peer
    replies.append(HANG)
    client = OpaClient(f"http://127.0.0.1:{srv.getsockname()[1]}", 0.2)
    with pytest.raises(EngineUnavailable, match="did not answer"):
        client.query("/v1/data/x", {})
    srv.close()
    with pytest.raises(EngineUnavailable, match="unreachable"):
        client.query("/v1/data/x", {})


def test_opa_client_retries_once_when_the_kept_alive_connection_was_closed(peer: Peer) -> None:
    srv, replies = peer
    replies += [b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nConnection: close\r\n\r\n{\"result\":1}",
                b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n{\"result\":2}"]
    client = OpaClient(f"http://127.0.0.1:{srv.getsockname()[1]}", 2.0)
    assert client.query("/v1/data/x", {}) == 1
    assert client.query("/v1/data/x", {}) == 2
