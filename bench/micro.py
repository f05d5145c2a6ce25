"""CPU cost of each piece of the PDP's hot path, per call, in-process.

Measured with ``time.process_time`` (CPU, not wall clock), so a busy shared
machine moves these figures far less than it moves latencies. The
``http.client`` row is the OPA call as the PDP made it before ``pdp.http1``
(kept here as the reference the fix is measured against).
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from google.protobuf import json_format

from aam.v1 import pdp_pb2
from bench.report import table
from pdp import logs
from pdp.engine import Engine
from pdp.opa import OpaClient
from pdp.service import _struct, to_request, to_response
from pdp.validate import validate


def cpu_us(fn: Callable[[], object], n: int) -> float:
    for _ in range(min(n, 50)):
        fn()
    t0 = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t0) / n * 1e6


class _UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a Unix socket (OPA on ``opa_addr = "unix://..."``)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.path)
        self.sock = sock


def _httpclient_query(conn: http.client.HTTPConnection, path: str, input_doc: dict[str, Any]) -> Any:
    body = json.dumps({"input": input_doc}, separators=(",", ":"))
    conn.request("POST", path, body, {"Content-Type": "application/json"})
    return json.loads(conn.getresponse().read())["result"]


def pieces(opa_url: str, path: str, request_json: dict[str, Any], n: int) -> list[tuple[str, float]]:
    """(piece, CPU us per call) for one Authorize request shape."""
    msg = json_format.ParseDict(request_json, pdp_pb2.AuthorizeRequest())
    client = OpaClient(opa_url, 5.0)
    engine = Engine(client)
    req = to_request(msg)
    input_doc = engine.build_input(req)
    hc = _UnixHTTPConnection(client.unix_socket, 5.0) if client.unix_socket else \
        http.client.HTTPConnection(client.host, client.port, timeout=5.0)
    logs.configure("info", io.StringIO())
    decision = engine.decide(req)
    quiet = logging.getLogger("aam.decision")
    rows = [
        ("params+context Struct->dict", cpu_us(
            lambda: (_struct(msg.params, "params"), _struct(msg.context, "context")), n)),
        ("  before: json_format.MessageToDict", cpu_us(
            lambda: (json_format.MessageToDict(msg.params), json_format.MessageToDict(msg.context)), n)),
        ("validate", cpu_us(lambda: validate(req, msg.params.ByteSize() + msg.context.ByteSize(), 1 << 16),
                            n)),
        ("OPA query (pdp.http1)", cpu_us(lambda: client.query(path, input_doc), n)),
        ("  before: OPA query (http.client)", cpu_us(lambda: _httpclient_query(hc, path, input_doc), n)),
        ("decision log line", cpu_us(lambda: quiet.info("decision", extra={"fields": {
            "decision_id": decision.decision_id, "workload": req.spiffe_id, "allow": decision.allow,
            "policy": decision.policy, "reasons": [], "revision": decision.revision}}), n)),
        ("to_response", cpu_us(lambda: to_response(decision, "bench"), n)),
        ("Engine.decide (all of the above but proto work)", cpu_us(lambda: engine.decide(req), n)),
    ]
    hc.close()
    logging.getLogger("aam").handlers.clear()
    return rows


def format_pieces(by_scenario: dict[str, list[tuple[str, float]]]) -> str:
    names = list(by_scenario)
    pieces_ = [p for p, _ in next(iter(by_scenario.values()))]
    rows = [[p, *(f"{dict(by_scenario[s])[p]:.0f}" for s in names)] for p in pieces_]
    return table(["hot-path piece (CPU us per call)", *names], rows)
