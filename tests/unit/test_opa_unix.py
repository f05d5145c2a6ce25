"""OPA over a Unix socket: settings, the client's AF_UNIX connection, the socket directory."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from pdp.config import ConfigError, Settings
from pdp.opa import OpaClient, OpaProcess


def test_settings_take_unix_socket_addresses_and_refuse_bad_ones() -> None:
    assert Settings.load(env={}, opa_addr="unix://").opa_addr == "unix://"
    assert Settings.load(env={}, opa_addr="unix:///run/aam/opa.sock").opa_addr == "unix:///run/aam/opa.sock"
    assert Settings.load(env={"AAM_OPA_ADDR": "unix:///tmp/x/opa.sock"}).opa_addr == "unix:///tmp/x/opa.sock"
    Settings.load(env={}, opa_url="unix:///run/opa.sock", bundle_signing_key="/k.pem")
    for bad in ("unix://relative/opa.sock", "unix:///tmp/a:b.sock", "unix:///" + "x" * 200, "unix:///tmp/d/"):
        with pytest.raises(ConfigError, match=r"^setting opa_addr: must be unix:///absolute/path"):
            Settings.load(env={}, opa_addr=bad)
    with pytest.raises(ConfigError, match=r"^setting opa_url: must be unix:///absolute/path"):
        Settings.load(env={}, opa_url="unix://", bundle_signing_key="/k.pem")
    with pytest.raises(ConfigError, match=r"^setting opa_url: must be http://host:port or unix:///path"):
        Settings.load(env={}, opa_url="https://opa:8181", bundle_signing_key="/k.pem")
    with pytest.raises(ConfigError, match=r"^setting opa_addr: must be host:port"):
        Settings.load(env={}, opa_addr="localhost")


def _one_reply_server(path: Path, replies: list[bytes]) -> tuple[socket.socket, list[bytes]]:
    """A Unix-socket server answering each request on one connection with the next reply."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)
    seen: list[bytes] = []

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            for reply in replies:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(body) < length:
                    body += conn.recv(65536)
                seen.append(head + b"\r\n\r\n" + body)
                conn.sendall(reply)

    threading.Thread(target=serve, daemon=True).start()
    return srv, seen


def test_client_queries_and_checks_health_over_one_unix_connection(tmp_path: Path) -> None:
    body = b'{"result":{"allow":true}}'
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    srv, seen = _one_reply_server(tmp_path / "opa.sock", [ok, ok])
    with srv:
        client = OpaClient(f"unix://{tmp_path}/opa.sock", 2.0)
        assert (client.host, client.port, client.unix_socket) == ("localhost", 0, f"{tmp_path}/opa.sock")
        assert client.query("/v1/data/x", {"a": 1}) == {"allow": True}
        assert client.query("/v1/data/x", {"a": 2}) == {"allow": True}  # same keep-alive connection
        client.close()
    assert seen[0].startswith(b"POST /v1/data/x HTTP/1.1\r\nHost: localhost\r\n")
    assert seen[1].endswith(b'{"input":{"a":2}}')
    with pytest.raises(ValueError, match="unix:///path"):
        OpaClient("ftp://opa", 1.0)


def test_health_over_unix_socket_and_nobody_listening(tmp_path: Path) -> None:
    srv, seen = _one_reply_server(tmp_path / "h.sock", [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"])
    with srv:
        assert OpaClient(f"unix://{tmp_path}/h.sock", 1.0).healthy()
    assert seen[0].startswith(b"GET /health?bundles HTTP/1.1\r\n")
    assert not OpaClient(f"unix://{tmp_path}/nobody.sock", 1.0).healthy()


def test_process_address_round_trips_and_private_directory_is_required(tmp_path: Path) -> None:
    auto = OpaProcess("opa", "unix://", "http://127.0.0.1:1", workdir=tmp_path)
    d = Path(auto.unix_socket).parent
    assert d.stat().st_mode & 0o777 == 0o700 and auto.url == auto.addr == f"unix://{auto.unix_socket}"
    # pdp/stack.py's supervisor restarts on f"{host}:{port}": the same socket.
    again = OpaProcess("opa", f"{auto.host}:{auto.port}", "http://127.0.0.1:1", workdir=tmp_path)
    assert again.unix_socket == auto.unix_socket and again.addr == auto.addr
    auto.stop()
    assert not d.exists()

    tcp = OpaProcess("opa", "127.0.0.1:0", "http://127.0.0.1:1", workdir=tmp_path)
    assert tcp.url == f"http://127.0.0.1:{tcp.port}" and tcp.addr == f"127.0.0.1:{tcp.port}"

    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    opa = OpaProcess("/nonexistent/opa", f"unix://{shared}/opa.sock", "http://127.0.0.1:1", workdir=tmp_path)
    with pytest.raises(RuntimeError, match="mode 0700"):
        opa.start()
    os.chmod(shared, 0o700)
    (shared / "opa.sock").write_text("not a socket")
    with pytest.raises(RuntimeError, match="exists and is not a socket"):
        opa.start()
    assert shared.exists()  # not made by the PDP: left alone
