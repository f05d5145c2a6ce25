"""MCP messages read from the body, and tools/list filtering, without servers."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pdp import mcp
from pdp.compiled import CompiledPolicy

CALL = {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "read", "arguments": {"account": "1"}}}


def unreadable(http_method: str, body: Any, headers: dict[str, str] | None = None) -> str:
    with pytest.raises(mcp.Unreadable) as err:
        mcp.read(http_method, body, headers or {})
    return str(err.value)


def test_messages_are_classified_from_the_body() -> None:
    call = mcp.read("POST", CALL, {})
    assert (call.kind, call.method, call.rpc_id, call.name, call.arguments) == \
        ("request", "tools/call", 3, "read", {"account": "1"})
    assert call.as_input() == {"message": "request", "method": "tools/call"}
    note = mcp.read("POST", {"jsonrpc": "2.0", "method": "notifications/initialized"}, {})
    assert (note.kind, note.has_id) == ("notification", False)
    reply = mcp.read("POST", {"jsonrpc": "2.0", "id": "s1", "result": {}}, {})
    assert (reply.kind, reply.method, reply.rpc_id) == ("response", "", "s1")
    assert mcp.read("GET", None, {}).kind == "stream"
    assert mcp.read("DELETE", None, {}).kind == "end_session"


@pytest.mark.parametrize(("method", "body", "needle"), [
    ("POST", [CALL], "batches"),
    ("POST", {**CALL, "jsonrpc": "1.0"}, "JSON-RPC 2.0"),
    ("POST", "tools/call", "JSON-RPC 2.0"),
    ("POST", {**CALL, "id": None}, "id must be"),
    ("POST", {**CALL, "id": True}, "id must be"),
    ("POST", {**CALL, "id": 1.5}, "id must be"),
    ("POST", {**CALL, "id": "x" * 201}, "id must be"),
    ("POST", {"jsonrpc": "2.0", "id": 1}, "neither"),
    ("POST", {"jsonrpc": "2.0", "id": 1, "result": {}, "error": {}}, "neither"),
    ("POST", {**CALL, "method": "tools call"}, "method must be"),
    ("POST", {**CALL, "method": 7}, "method must be"),
    ("POST", {**CALL, "params": []}, "params must be"),
    ("POST", {**CALL, "params": {"arguments": {}}}, "params.name"),
    ("POST", {**CALL, "params": {"name": "x", "arguments": [1]}}, "arguments must be"),
    ("PUT", CALL, "POST, GET and DELETE"),
])
def test_anything_else_is_unreadable(method: str, body: Any, needle: str) -> None:
    assert needle in unreadable(method, body)


@pytest.mark.parametrize(("headers", "ok"), [
    ({"mcp-method": "tools/call", "mcp-name": "read"}, True),
    ({"mcp-method": "tools/call"}, True),
    ({}, True),
    ({"mcp-method": "tools/list"}, False),
    ({"mcp-method": "tools/call", "mcp-name": "export"}, False),
    ({"mcp-name": "export"}, False),
])
def test_routing_headers_must_repeat_the_body(headers: dict[str, str], ok: bool) -> None:
    if ok:
        assert mcp.read("POST", CALL, headers).name == "read"
    else:
        assert "does not match" in unreadable("POST", CALL, headers)


def test_routing_headers_on_other_messages() -> None:
    read = {"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": "x://1"}}
    assert mcp.read("POST", read, {"mcp-method": "resources/read", "mcp-name": "x://1"}).kind == "request"
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    assert "does not match" in unreadable("POST", ping, {"mcp-name": "read"})
    assert "does not match" in unreadable("GET", None, {"mcp-method": "tools/call"})
    assert "does not match" in unreadable("POST", {"jsonrpc": "2.0", "id": 1, "result": {}},
                                          {"mcp-method": "tools/call"})


def test_peek_id_is_best_effort() -> None:
    assert mcp.peek_id(json.dumps(CALL).encode()) == (True, 3)
    assert mcp.peek_id(b"[1]") == (False, None)
    assert mcp.peek_id(b"{") == (False, None)
    assert mcp.peek_id(b'{"id": null}') == (False, None)


POLICY = CompiledPolicy.from_data("spiffe://prod/agent/a", {
    "tools": {"crm": {"actions": {"read": True, "search": True, "export": True},
                      "deny": {"export": "spec.tools[0].deny"}}}})
ALLOWED = frozenset({"read", "search"})


def tools_result(*names: str, rpc_id: Any = 7) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rpc_id,
            "result": {"tools": [{"name": n, "inputSchema": {}} for n in names], "nextCursor": "c"}}


def test_visible_tools_are_granted_minus_denied() -> None:
    assert mcp.visible_tools(POLICY, "crm") == ALLOWED
    assert mcp.visible_tools(POLICY, "other") == frozenset()
    assert mcp.visible_tools(None, "crm") == frozenset()


def test_json_results_are_filtered_and_reserialized() -> None:
    body = json.dumps(tools_result("read", "export", "purge", "search")).encode()
    out = json.loads(mcp.filter_json(body, ALLOWED))
    assert [t["name"] for t in out["result"]["tools"]] == ["read", "search"]
    assert out["result"]["nextCursor"] == "c" and out["id"] == 7
    # Duplicate keys: we keep what a JSON parser keeps, and write only that.
    dup = b'{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"read"}],"tools":[{"name":"export"}]}}'
    assert b"export" not in mcp.filter_json(dup, ALLOWED)
    err = b'{"jsonrpc":"2.0","id":1,"error":{"code":-1,"message":"no"}}'
    assert json.loads(mcp.filter_json(err, ALLOWED)) == json.loads(err)
    assert mcp.filter_json(b"", ALLOWED) == b""
    with pytest.raises(mcp.Unreadable):
        mcp.filter_json(b'{"result": {"tools": [', ALLOWED)


def sse(*events: str, sep: str = "\r\n") -> bytes:
    return "".join(e.replace("\n", sep) + sep + sep for e in events).encode()


def event(msg: Any, rid: str = "") -> str:
    head = f"id: {rid}\n" if rid else ""
    return f"{head}event: message\ndata: {json.dumps(msg)}"


def names_in(stream: bytes) -> list[str]:
    out = []
    for block in stream.decode().split("\n\n"):
        for line in block.split("\n"):
            if line.startswith("data: "):
                msg = json.loads(line[6:])
                out += [t["name"] for t in msg.get("result", {}).get("tools", [])]
    return out


@pytest.mark.parametrize("sep", ["\r\n", "\n", "\r"])
def test_event_streams_are_filtered_however_they_are_chunked(sep: str) -> None:
    raw = b"\xef\xbb\xbf" + sse(": keep-alive", event({"jsonrpc": "2.0", "method": "notifications/x"}),
                                event(tools_result("read", "export", "search"), "e1"), sep=sep)
    for size in (1, 2, 7, len(raw)):
        f = mcp.SseFilter(ALLOWED)
        out = b"".join(f.feed(raw[i:i + size], False) for i in range(0, len(raw), size))
        out += f.feed(b"", True)
        assert names_in(out) == ["read", "search"], size
        assert out.count(b"\n\n") == 2 and b"\r" not in out
        assert b"id: e1\nevent: message\ndata: " in out


def test_event_stream_edge_cases() -> None:
    f = mcp.SseFilter(ALLOWED)
    assert f.feed(b"data: not json\n\n", False) == b""  # cannot be checked: dropped
    assert f.feed(b"id: 5\nretry: 100\n\n", False) == b"id: 5\nretry: 100\n\n"
    multi = (b'data: {"jsonrpc": "2.0", "id": 1,\n'
             b'data: "result": {"tools": [{"name": "export"}]}}\n\n')  # one event, two data lines
    assert names_in(f.feed(multi, False)) == []
    tail = json.dumps(tools_result("export", "read")).encode()
    assert f.feed(b"data: " + tail, False) == b""  # waits for the event's end
    assert names_in(f.feed(b"", True)) == ["read"]  # the stream's end ends it
    big = mcp.SseFilter(ALLOWED)
    with pytest.raises(mcp.Unreadable):
        big.feed(b"data: " + b"x" * (mcp.MAX_EVENT_CHARS + 1), False)
    utf = mcp.SseFilter(ALLOWED)
    data = b"data: " + json.dumps(tools_result("read", rpc_id="é"), ensure_ascii=False).encode() + b"\n\n"
    split = data.index("é".encode()) + 1  # inside the two-byte character
    assert json.loads(utf.feed(data[:split], False) + utf.feed(data[split:], True)
                      .split(b"data: ")[1])["id"] == "é"


def test_duplicate_keys_are_refused_not_guessed() -> None:
    """Python keeps the last copy, another server may keep the first: decide on neither."""
    dup = (b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
           b'"params":{"name":"read"},"params":{"name":"export"}}')
    with pytest.raises(mcp.Unreadable, match="duplicate"):
        mcp.loads(dup)
    with pytest.raises(mcp.Unreadable, match="not valid JSON"):
        mcp.loads(b"{")
    assert mcp.loads(b'{"a": {"b": 1}}') == {"a": {"b": 1}}
