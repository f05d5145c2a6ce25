"""MCP over streamable HTTP: what one HTTP request to an MCP server is, read from its body.

A client controls every header it sends, so the PDP classifies each MCP message
from the JSON-RPC body alone; ``mcp-method`` / ``mcp-name`` (2026-07-28 clients
send them for routing) only have to agree with the body, or the request is
refused. Which messages are allowed is policy (rego/aam/mcp.rego); this module
only says what the message is (OPA's ``input.mcp``). It also filters tools/list
results down to the tools a workload may call (JSON and text/event-stream), for
the response processor (pdp/extproc.py). Protobuf-free, no I/O.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pdp.compiled import CompiledPolicy

# HTTP methods of streamable HTTP besides POST: the server-to-client stream and the
# end of a session. Their messages have no JSON-RPC method.
HTTP_MESSAGES = {"GET": "stream", "DELETE": "end_session"}
_METHOD = re.compile(r"[A-Za-z0-9_./-]{1,128}")
MAX_ID_CHARS = 200
# Headers that name the body's method and target (2026-07-28); each must match the body.
METHOD_HEADER = "mcp-method"
NAME_HEADER = "mcp-name"
# The params field mcp-name names, per method.
_NAMED = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
# One server-sent event larger than this is refused rather than held.
MAX_EVENT_CHARS = 4 * 1024 * 1024


class Unreadable(ValueError):
    """The request is not one MCP message the PDP can classify with certainty."""


@dataclass(frozen=True)
class Message:
    """One MCP message: ``kind`` is request, notification, response, stream or end_session."""

    kind: str
    method: str = ""
    rpc_id: Any = None
    has_id: bool = False
    name: str = ""  # tools/call: the tool
    arguments: dict[str, Any] = field(default_factory=dict)  # tools/call: its arguments

    def as_input(self) -> dict[str, str]:
        """OPA's ``input.mcp``."""
        return {"message": self.kind, "method": self.method}


def read(http_method: str, body: Any, headers: Mapping[str, str]) -> Message:
    """Classify one HTTP request on an MCP route (``body`` is the parsed JSON or None)."""
    if http_method in HTTP_MESSAGES:
        _agree(headers, "", "")
        return Message(HTTP_MESSAGES[http_method])
    if http_method != "POST":
        raise Unreadable(f"MCP over streamable HTTP uses POST, GET and DELETE, not {http_method[:16]}")
    if isinstance(body, list):
        raise Unreadable("JSON-RPC batches are not accepted on MCP routes; send one message per request")
    if not isinstance(body, dict) or body.get("jsonrpc") != "2.0":
        raise Unreadable("MCP body must be one JSON-RPC 2.0 message object")
    has_id = "id" in body
    rpc_id = body.get("id")
    if has_id and not valid_id(rpc_id):
        raise Unreadable("JSON-RPC id must be a string or an integer")
    method = body.get("method")
    if method is None:
        if has_id and ("result" in body) != ("error" in body):
            _agree(headers, "", "")
            return Message("response", rpc_id=rpc_id, has_id=True)
        raise Unreadable("JSON-RPC message is neither a request, a notification nor a response")
    if not isinstance(method, str) or not _METHOD.fullmatch(method):
        raise Unreadable("JSON-RPC method must be a name of at most 128 letters, digits and ./_-")
    params = body.get("params", {})
    if not isinstance(params, dict):
        raise Unreadable("JSON-RPC params must be an object")
    named = params.get(_NAMED[method]) if method in _NAMED else None
    _agree(headers, method, named)
    kind = "request" if has_id else "notification"
    if method != "tools/call":
        return Message(kind, method, rpc_id, has_id)
    if not isinstance(named, str) or not named:
        raise Unreadable("MCP tools/call without params.name")
    arguments = params.get("arguments", {})
    if not isinstance(arguments, dict):
        raise Unreadable("MCP params.arguments must be an object")
    return Message(kind, method, rpc_id, has_id, named, arguments)


def loads(body: bytes) -> Any:
    """JSON as the PDP decides on it. A duplicate key is refused: parsers differ on which
    copy wins, so the server could read another tool than the one decided."""
    try:
        return json.loads(body, object_pairs_hook=_unique)
    except Unreadable:  # a ValueError too: _unique's duplicate key
        raise
    except (ValueError, RecursionError):
        raise Unreadable("request body is not valid JSON") from None


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise Unreadable("JSON object with a duplicate key")
    return out


def valid_id(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, str) and len(value) <= MAX_ID_CHARS)


def _agree(headers: Mapping[str, str], method: str, named: Any) -> None:
    """Routing headers may only repeat the body: a mismatch could steer a downstream hop."""
    if METHOD_HEADER in headers and headers[METHOD_HEADER] != method:
        raise Unreadable(f"the {METHOD_HEADER} header {headers[METHOD_HEADER][:80]!r} does not match "
                         f"the body's method {method!r}")
    if NAME_HEADER in headers and (not isinstance(named, str) or headers[NAME_HEADER] != named):
        raise Unreadable(f"the {NAME_HEADER} header {headers[NAME_HEADER][:80]!r} does not match the body")


def peek_id(body: bytes) -> tuple[bool, Any]:
    """(found, id) of a JSON-RPC body, best effort, for an error reply that must echo it."""
    try:
        msg = json.loads(body)
    except (ValueError, RecursionError):
        return False, None
    if isinstance(msg, dict) and valid_id(msg.get("id")):
        return True, msg["id"]
    return False, None


# --- tools/list filtering -----------------------------------------------------------

def visible_tools(policy: CompiledPolicy | None, resource: str) -> frozenset[str]:
    """The tools a workload may call on ``resource``: granted actions minus denied ones."""
    grant = policy.tools.get(resource) if policy is not None else None
    return grant.visible if grant is not None else frozenset()


def filter_message(msg: Any, allowed: frozenset[str]) -> Any:
    """A JSON-RPC message with ``result.tools`` cut to ``allowed`` (others unchanged)."""
    if isinstance(msg, list):
        return [filter_message(m, allowed) for m in msg]
    if not (isinstance(msg, dict) and isinstance(msg.get("result"), dict)
            and isinstance(msg["result"].get("tools"), list)):
        return msg
    tools = [t for t in msg["result"]["tools"] if isinstance(t, dict) and t.get("name") in allowed]
    return {**msg, "result": {**msg["result"], "tools": tools}}


def filter_json(body: bytes, allowed: frozenset[str]) -> bytes:
    """A whole JSON body, filtered and re-serialized: the client reads exactly what we read."""
    if not body.strip():
        return body
    try:
        msg = json.loads(body)
    except (ValueError, RecursionError):
        raise Unreadable("the MCP server's JSON response cannot be read") from None
    return _dumps(filter_message(msg, allowed))


def _dumps(msg: Any) -> bytes:
    return json.dumps(msg, separators=(",", ":"), ensure_ascii=False).encode()


class SseFilter:
    """Filters a text/event-stream as it arrives, chunk by chunk.

    Every complete event is parsed (CRLF, LF or CR line ends) and written back in one
    canonical form, so a client can never frame the bytes differently from us; an
    event split across chunks waits for its end. An event whose data is not JSON is
    dropped: it could not be checked.
    """

    def __init__(self, allowed: frozenset[str]) -> None:
        self.allowed = allowed
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._pending = ""
        self._started = False

    def feed(self, chunk: bytes, end: bool) -> bytes:
        text = self._pending + self._decoder.decode(chunk, final=end)
        if not self._started and text:
            text, self._started = text.removeprefix("\ufeff"), True
        hold = ""
        if not end and text.endswith("\r"):  # may be the first half of a CRLF
            text, hold = text[:-1], "\r"
        *events, rest = text.replace("\r\n", "\n").replace("\r", "\n").split("\n\n")
        if end:
            events, rest = [*events, rest], ""
        if len(rest) > MAX_EVENT_CHARS:
            raise Unreadable("an event of the MCP server's stream is too large to check")
        self._pending = rest + hold
        return "".join(self._event(e) for e in events).encode()

    def _event(self, raw: str) -> str:
        fields: list[tuple[str, str]] = []
        data: list[str] = []
        for line in raw.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, sep, value = line.partition(":")
            value = value[1:] if sep and value.startswith(" ") else value
            if name == "data":
                data.append(value)
            elif name in ("event", "id", "retry"):
                fields.append((name, value))
        out = "".join(f"{k}: {v}\n" for k, v in fields)
        if data:
            try:
                msg = json.loads("\n".join(data))
            except (ValueError, RecursionError):
                return ""
            out += "data: " + _dumps(filter_message(msg, self.allowed)).decode() + "\n"
        return out + "\n" if out else ""
