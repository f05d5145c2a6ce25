"""Settings of the PDP's listeners and processes (pdp/server.py, pdp/workers.py), and of its
logs (pdp/logs.py)."""

from __future__ import annotations

from dataclasses import dataclass

from pdp.settingbase import SettingsPart, check_addr, check_not_negative, check_positive, setting_error


@dataclass(frozen=True)
class ServerSettings(SettingsPart):
    """The gRPC and HTTP listeners, threads and worker processes."""

    # gRPC listener, "host:port".
    grpc_addr: str = "127.0.0.1:50051"
    # Serve gRPC without TLS. Only ever on explicit request (aam up on loopback).
    plaintext: bool = False
    # HTTP listener serving bundles to OPA (and /metrics), "host:port".
    http_addr: str = "127.0.0.1:0"
    # gRPC worker threads (per worker process).
    max_workers: int = 16
    # PDP worker processes serving grpc_addr (and extauthz_addr) together, each its own
    # interpreter (one GIL) with its own engine, ledger connections and broker; the
    # parent keeps compile, bundles, OPA and audit anchors. 0: auto (resolve_workers:
    # one per CPU, but 1 with a SQLite ledger); 1: one process, no children. More than
    # 1 needs a PostgreSQL ledger or none.
    workers: int = 0
    # Largest serialized params + context accepted in one request.
    max_request_bytes: int = 64 * 1024
    # Seconds in-flight calls get to finish on shutdown.
    shutdown_grace_s: float = 5.0
    # Seconds after which a client connection is asked to reconnect (HTTP/2 GOAWAY; its
    # in-flight calls get 30 s more). A connection keeps the certificate it was opened
    # with and the PDP checks the caller's SVID on every call, so a rotated SVID is in use
    # within this long: keep it under half the SVID TTL (SPIRE's default is 1 h). 0: never.
    max_connection_age_s: float = 600.0

    def validate(self) -> None:
        check_addr("grpc_addr", self.grpc_addr)
        check_addr("http_addr", self.http_addr)
        check_positive(self, "max_workers", "max_request_bytes")
        check_not_negative(self, "workers", hint=" (0: one per CPU)")
        check_not_negative(self, "shutdown_grace_s", "max_connection_age_s")


# The levels pdp/logs.py configures (case-insensitive): Python's logging levels.
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


@dataclass(frozen=True)
class LoggingSettings(SettingsPart):
    """The PDP's JSON log lines."""

    # Level of the JSON log lines on stderr: debug, info, warning or error.
    log_level: str = "info"

    def validate(self) -> None:
        if self.log_level.lower() not in LOG_LEVELS:
            raise setting_error("log_level", f"must be one of {', '.join(LOG_LEVELS)}, "
                                             f"got {self.log_level!r}")
