"""One address, several listening processes: the parent's hold on a SO_REUSEPORT port.

Worker processes (pdp/workers.py) listen on the same address with SO_REUSEPORT, and
the kernel spreads new connections over them. The parent first checks that nothing
listens there (a second PDP must fail on a taken port, as one process does, rather
than join it), then holds the port with a socket bound with SO_REUSEPORT that never
listens: it takes no connections, the workers (same user) can join it, and no other
program can take the port while a worker restarts. Port 0 becomes a concrete free
port here, so that every worker binds the same one.
"""

from __future__ import annotations

import socket

from pdp.config import ConfigError, split_addr


def hold(addr: str, name: str) -> tuple[socket.socket, str]:
    """Check ``addr`` ("host:port") is free and hold it; returns the socket (close it to
    let go) and the address with its concrete port."""
    host, port = split_addr(addr, name)
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, IndexError) as exc:
        raise ConfigError(f"{name}: cannot resolve {host!r}: {exc}") from None
    if port:
        probe = socket.socket(family, kind, proto)
        # SO_REUSEADDR: connections in TIME_WAIT from an earlier PDP are no listener.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(sockaddr)
        except OSError:
            raise ConfigError(f"cannot listen on {addr} (address in use?)") from None
        finally:
            probe.close()
    held = socket.socket(family, kind, proto)
    try:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        held.bind(sockaddr)
    except OSError as exc:
        held.close()
        raise ConfigError(f"cannot listen on {addr}: {exc.strerror}") from None
    return held, f"{addr.rpartition(':')[0]}:{held.getsockname()[1]}"
