"""The response processor's exchange, message by message, as Envoy sends them (xds-protos)."""

from __future__ import annotations

import json
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from google.protobuf import struct_pb2

from pdp.extproc import AUTHZ_NAMESPACE, Exchange
from pdp.ledger.gate import CompiledView

MODE = processing_mode_pb2.ProcessingMode
WL = "spiffe://prod/agent/a"
DATA = {"policies": {WL: {"tools": {"crm": {"actions": {"read": True, "export": True},
                                            "deny": {"export": "x"}}}}}, "routes": {}}


def view() -> CompiledView:
    v = CompiledView()
    v.update({"data.json": json.dumps(DATA).encode()}, "data.json")
    return v


def headers(**values: str) -> ep.HttpHeaders:
    """``_status=`` is the pseudo-header ``:status``, ``content_type=`` is ``content-type``."""
    def key(k: str) -> str:
        return ":" + k[1:] if k.startswith("_") else k.replace("_", "-")

    return ep.HttpHeaders(headers=base_pb2.HeaderMap(headers=[
        base_pb2.HeaderValue(key=key(k), raw_value=v.encode()) for k, v in values.items()]))


def request(decision: dict[str, Any] | None, body_mode: int = MODE.BUFFERED,
            **hdrs: str) -> ep.ProcessingRequest:
    msg = ep.ProcessingRequest(request_headers=headers(**{"_method": "POST", **hdrs}))
    msg.protocol_config.response_body_mode = body_mode
    if decision is not None:
        s = struct_pb2.Struct()
        s.update(decision)
        msg.metadata_context.filter_metadata[AUTHZ_NAMESPACE].CopyFrom(s)
    return msg


def decided(method: str = "tools/list", message: str = "request", rpc_id: Any = 7,
            allow: bool = True) -> dict[str, Any]:
    return {"decision_id": "d1", "allow": allow, "workload": WL, "tool": "crm",
            "mcp": {"message": message, "method": method, "id": json.dumps(rpc_id)}}


def response(status: str = "200", ctype: str = "application/json", end: bool = False) -> ep.ProcessingRequest:
    h = headers(_status=status, content_type=ctype, content_length="99")
    h.end_of_stream = end
    return ep.ProcessingRequest(response_headers=h)


def body(data: bytes, end: bool) -> ep.ProcessingRequest:
    return ep.ProcessingRequest(response_body=ep.HttpBody(body=data, end_of_stream=end))


LIST = json.dumps({"jsonrpc": "2.0", "id": 7, "result": {"tools": [
    {"name": "read"}, {"name": "export"}, {"name": "purge"}]}}).encode()


def names(data: bytes) -> list[str]:
    return [t["name"] for t in json.loads(data)["result"]["tools"]]


def test_json_tools_list_is_buffered_and_filtered() -> None:
    x = Exchange(view())
    assert x.handle(request(decided())).HasField("request_headers") and not x.done
    hdrs = x.handle(response())
    assert list(hdrs.response_headers.response.header_mutation.remove_headers) == ["content-length"]
    assert hdrs.mode_override.response_body_mode == MODE.BUFFERED
    out = x.handle(body(LIST, True))
    assert names(out.response_body.response.body_mutation.body) == ["read"]
    assert x.done


def test_event_stream_tools_list_is_streamed_and_no_chunk_passes_raw() -> None:
    x = Exchange(view())
    x.handle(request(decided()))
    assert x.handle(response(ctype="text/event-stream")).mode_override.response_body_mode == MODE.STREAMED
    event = b"event: message\r\ndata: " + LIST + b"\r\n\r\n"
    first = x.handle(body(event[:10], False)).response_body.response.body_mutation
    assert first.clear_body and not x.done  # held back, never forwarded as it came
    rest = x.handle(body(event[10:], True)).response_body.response.body_mutation.body
    assert names(rest.split(b"data: ")[1]) == ["read"]
    assert x.done


def test_messages_that_show_no_tools_close_the_stream_at_once() -> None:
    for info in (decided("tools/call"), decided("initialize"), decided("", "stream")):
        x = Exchange(view())
        assert x.handle(request(info)).HasField("request_headers") and x.done
    x = Exchange(view())
    x.handle(request({"decision_id": "d1", "allow": True, "workload": WL, "tool": "t", "action": "a"}))
    assert x.done  # not an MCP request at all


def test_a_resumed_stream_is_filtered_too() -> None:
    x = Exchange(view())
    x.handle(request(decided("", "stream"), last_event_id="e1"))
    assert not x.done
    assert x.handle(response(ctype="text/event-stream")).mode_override.response_body_mode == MODE.STREAMED


def test_envoys_own_replies_pass_through() -> None:
    x = Exchange(view())  # an ext_authz denial: the stream starts at the response
    out = x.handle(response("403"))
    assert out.HasField("response_headers") and x.done
    assert not out.response_headers.response.HasField("header_mutation")


def refused(out: ep.ProcessingResponse) -> tuple[int, dict[str, Any]]:
    assert out.HasField("immediate_response"), out
    r = out.immediate_response
    assert {h.header.key: h.header.raw_value for h in r.headers.set_headers} == \
        {"content-type": b"application/json"}
    return r.status.code, json.loads(r.body)


def test_a_blind_or_mismatched_filter_refuses() -> None:
    x = Exchange(view())
    status, err = refused(x.handle(request(None)))
    assert status == 500 and err["id"] is None and x.done
    assert err["error"]["message"].startswith("filter_unavailable:")
    status, err = refused(Exchange(view()).handle(request(decided(), body_mode=MODE.NONE)))
    assert (status, err["id"]) == (500, 7)
    status, err = refused(Exchange(view()).handle(request(decided(allow=False))))
    assert status == 500


def test_unreadable_tools_list_responses_never_pass() -> None:
    x = Exchange(view())
    x.handle(request(decided(rpc_id="s-1")))
    status, err = refused(x.handle(response(ctype="text/plain")))
    assert (status, err["id"]) == (502, "s-1")
    assert err["error"]["message"].startswith("response_unfilterable:")
    x = Exchange(view())
    x.handle(request(decided()))
    assert x.handle(response("500", ctype="text/plain")).HasField("response_headers") and x.done
    x = Exchange(view())
    x.handle(request(decided()))
    x.handle(response())
    out = json.loads(x.handle(body(b'{"result": {"tools": [', True)).response_body.response
                     .body_mutation.body)
    assert out["id"] == 7 and out["error"]["message"].startswith("response_unfilterable:")
    x = Exchange(view())
    x.handle(request(decided()))
    assert x.handle(response(end=True)).HasField("response_headers") and x.done  # no body


def test_compressed_answers_are_neither_asked_for_nor_passed() -> None:
    x = Exchange(view())
    first = x.handle(request(decided(), accept_encoding="gzip"))
    assert list(first.request_headers.response.header_mutation.remove_headers) == ["accept-encoding"]
    msg = response()
    msg.response_headers.headers.headers.add(key="content-encoding", raw_value=b"gzip")
    status, err = refused(x.handle(msg))
    assert status == 502 and "compressed" in err["error"]["message"]
