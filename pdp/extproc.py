"""Envoy's external processor (ext_proc v3, ``ExternalProcessor/Process``) for MCP routes:
tools/list results cut to the tools the workload may call.

Envoy opens one bidirectional stream per HTTP request (ext_proc runs after
ext_authz, which has already decided the request). The first message, the request
headers, carries ext_authz's dynamic metadata: the workload, the MCP server and what
the JSON-RPC message is. Only a tools/list, or a resumed GET stream (which may replay
one), needs its response rewritten; for anything else the processor answers and
closes the stream, and Envoy carries on without it (no thread held for a long-lived
stream). The visible tools come from the bundle revision ext_authz decided the
request with (granted actions minus denied ones); JSON bodies are buffered, event
streams filtered event by event.

Fail closed: a stream whose request carries no AAM decision (metadata not forwarded)
or whose body will not be sent is refused with an error reply; a response that
cannot be read is replaced by an error; anything unexpected aborts the stream, which
Envoy turns into a 500 (``failure_mode_allow: false``). A stream that starts at the
response headers is a reply Envoy made itself (an ext_authz denial): passed through.
Like Check, only a trusted gateway may open a stream.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import json_format

from pdp import identity as identities
from pdp import mcp
from pdp.compiled import Revisions
from pdp.errors import ServiceError
from pdp.replies import RPC_DENIED, dumps, jsonrpc_error

log = logging.getLogger("aam.extproc")

SERVICE_NAME = ep.DESCRIPTOR.services_by_name["ExternalProcessor"].full_name
AUTHZ_NAMESPACE = "envoy.filters.http.ext_authz"
_MODE = processing_mode_pb2.ProcessingMode
# Response body modes in which the processor sees the whole body.
_SEES_BODY = frozenset({_MODE.BUFFERED, _MODE.STREAMED})
MAX_JSON_BYTES = 8 * 1024 * 1024


class ExternalProcessorServicer(external_processor_pb2_grpc.ExternalProcessorServicer):
    def __init__(self, revisions: Revisions, identity: identities.Identity) -> None:
        self.revisions = revisions
        self.identity = identity

    def Process(self, request_iterator: Iterator[ep.ProcessingRequest],
                context: grpc.ServicerContext) -> Iterator[ep.ProcessingResponse]:
        try:
            # It reads AAM's decisions and rewrites what agents receive: gateways only.
            self.identity.require_gateway(context, "open a processing stream")
        except ServiceError as exc:
            context.abort(exc.code, str(exc))
        exchange = Exchange(self.revisions)
        try:
            for msg in request_iterator:
                yield exchange.handle(msg)
                if exchange.done:
                    return  # a clean close: Envoy carries on without the processor
        except Exception:
            log.exception("response processing failed; the response is refused")
        else:
            return
        context.abort(grpc.StatusCode.INTERNAL, "response processing failed; see PDP logs")


class Exchange:
    """One HTTP request and its response, as Envoy shows them to the processor."""

    def __init__(self, revisions: Revisions) -> None:
        self.revisions = revisions
        self.done = False
        self.requested = False  # the request headers came: this is an upstream response
        self.allowed: frozenset[str] = frozenset()
        self.rpc_id: Any = None
        self.sse: mcp.SseFilter | None = None
        self.json: bytearray | None = None

    def handle(self, msg: ep.ProcessingRequest) -> ep.ProcessingResponse:
        kind = msg.WhichOneof("request")
        if kind == "request_headers":
            return self._request(msg)
        if kind == "response_headers":
            return self._response_headers(msg.response_headers)
        if kind == "response_body":
            return self._response_body(msg.response_body)
        raise ValueError(f"unexpected ext_proc message {kind!r} (check processing_mode)")

    def _request(self, msg: ep.ProcessingRequest) -> ep.ProcessingResponse:
        self.requested = True
        decision = _decision(msg)
        if not decision.get("decision_id"):
            log.error("no AAM decision reached the response processor: forward the ext_authz "
                      "metadata (metadata_options.forwarding_namespaces.untyped)")
            return self._refuse(500, "filter_unavailable",
                                "the gateway's response filter cannot tell what this response may show")
        info = decision.get("mcp")
        if not isinstance(info, dict):
            return self._finish(ep.ProcessingResponse(request_headers=ep.HeadersResponse()))
        self.rpc_id = _rpc_id(info.get("id"))
        if decision.get("allow") is not True:  # a denied request never gets here
            return self._refuse(500, "filter_unavailable", "the response filter saw a denied request")
        resumed = info.get("message") == "stream" and "last-event-id" in _headers(msg.request_headers)
        if info.get("method") != "tools/list" and not resumed:
            return self._finish(ep.ProcessingResponse(request_headers=ep.HeadersResponse()))
        if msg.protocol_config.response_body_mode not in _SEES_BODY:
            return self._refuse(500, "filter_unavailable",
                                "the gateway does not send MCP responses to the filter (response_body_mode)")
        # The tools of the revision ext_authz decided this request with (pdp/compiled.py).
        compiled = self.revisions.for_decision(str(decision.get("revision", ""))).compiled
        self.allowed = mcp.visible_tools(compiled.policy(str(decision.get("workload", ""))),
                                         str(decision.get("tool", "")))
        # A compressed answer could not be read: ask the server for plain bytes.
        return ep.ProcessingResponse(request_headers=ep.HeadersResponse(response=ep.CommonResponse(
            header_mutation=ep.HeaderMutation(remove_headers=["accept-encoding"]))))

    def _response_headers(self, msg: ep.HttpHeaders) -> ep.ProcessingResponse:
        passed = ep.ProcessingResponse(response_headers=ep.HeadersResponse())
        if not self.requested or msg.end_of_stream:
            return self._finish(passed)  # Envoy's own reply, or no body to filter
        headers = _headers(msg)
        ctype = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if headers.get("content-encoding", "identity").strip().lower() != "identity":
            return self._refuse(502, "response_unfilterable",
                                "the MCP server compressed its tools/list answer")
        if ctype not in ("application/json", "text/event-stream"):
            if headers.get(":status", "").startswith("2"):
                return self._refuse(502, "response_unfilterable",
                                    f"the MCP server answered tools/list as {ctype or 'untyped'} data")
            return self._finish(passed)  # an HTTP error without JSON carries no tool list
        reply = ep.ProcessingResponse(response_headers=ep.HeadersResponse(response=ep.CommonResponse(
            header_mutation=ep.HeaderMutation(remove_headers=["content-length"]))))  # body changes
        if ctype == "text/event-stream":
            self.sse = mcp.SseFilter(self.allowed)
            reply.mode_override.response_body_mode = _MODE.STREAMED  # events as they come
        else:
            self.json = bytearray()
            reply.mode_override.response_body_mode = _MODE.BUFFERED
        return reply

    def _response_body(self, body: ep.HttpBody) -> ep.ProcessingResponse:
        end = body.end_of_stream
        if self.sse is not None:
            out = self.sse.feed(body.body, end)
        elif self.json is not None:
            self.json += body.body
            if len(self.json) > MAX_JSON_BYTES:
                raise mcp.Unreadable("the MCP server's tools/list response is too large to filter")
            out = self._filtered_json() if end else b""
        else:
            raise ValueError("a response body the processor did not ask for")
        # Always a mutation: an empty reply would let Envoy forward the chunk unfiltered.
        mutation = ep.BodyMutation(body=out) if out else ep.BodyMutation(clear_body=True)
        reply = ep.ProcessingResponse(response_body=ep.BodyResponse(
            response=ep.CommonResponse(body_mutation=mutation)))
        return self._finish(reply) if end else reply

    def _filtered_json(self) -> bytes:
        assert self.json is not None
        try:
            return mcp.filter_json(bytes(self.json), self.allowed)
        except mcp.Unreadable as exc:
            return dumps(_error(self.rpc_id, "response_unfilterable", str(exc)))

    def _finish(self, reply: ep.ProcessingResponse) -> ep.ProcessingResponse:
        self.done = True
        return reply

    def _refuse(self, status: int, code: str, message: str) -> ep.ProcessingResponse:
        """An error reply instead of the response: what the client may read is unknown."""
        return self._finish(ep.ProcessingResponse(immediate_response=ep.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=status),  # enum values are HTTP codes
            headers=ep.HeaderMutation(set_headers=[_header("content-type", "application/json")]),
            body=dumps(_error(self.rpc_id, code, message)), details=code)))


def _error(rpc_id: Any, code: str, message: str) -> dict[str, Any]:
    return jsonrpc_error(rpc_id, f"{code}: {message}", RPC_DENIED,
                         {"reasons": [{"code": code, "message": message}]})


def _decision(msg: ep.ProcessingRequest) -> dict[str, Any]:
    """ext_authz's dynamic metadata for this request (pdp/extauthz.py _metadata)."""
    namespaces = msg.metadata_context.filter_metadata
    if AUTHZ_NAMESPACE not in namespaces:
        return {}
    return json_format.MessageToDict(namespaces[AUTHZ_NAMESPACE])


def _rpc_id(text: Any) -> Any:
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return None
    return value if mcp.valid_id(value) else None


def _headers(msg: ep.HttpHeaders) -> dict[str, str]:
    return {h.key.lower(): (h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value)
            for h in msg.headers.headers}


def _header(key: str, value: str) -> base_pb2.HeaderValueOption:
    # ext_proc reads raw_value (Envoy sends an empty header for value=), unlike ext_authz.
    return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, raw_value=value.encode()))


def register(server: grpc.Server, revisions: Revisions, identity: identities.Identity) -> None:
    external_processor_pb2_grpc.add_ExternalProcessorServicer_to_server(
        ExternalProcessorServicer(revisions, identity), server)
