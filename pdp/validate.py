"""Request validation: malformed input is refused before it reaches OPA."""

from __future__ import annotations

import math
import re
from typing import Any

from compiler import spiffe
from pdp.engine import Request
from pdp.errors import InvalidRequest

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,252}$")
_ACTION = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_MCP_METHOD = re.compile(r"^[A-Za-z0-9_./-]{0,128}$")
MCP_MESSAGES = frozenset({"request", "notification", "response", "stream", "end_session"})
MAX_REQUEST_ID = 128


def _check_name(field: str, value: str, pattern: re.Pattern[str] = _NAME) -> None:
    if value and not pattern.match(value):
        raise InvalidRequest(field, f"{value[:80]!r} is not a valid {field}")


def validate(req: Request, payload_bytes: int, max_payload_bytes: int) -> None:
    try:
        spiffe.parse(req.spiffe_id)
    except spiffe.InvalidSpiffeID as exc:
        raise InvalidRequest("identity.spiffe_id", str(exc)) from None
    if req.listing:
        if req.listing != "models" or req.model or req.tool:
            raise InvalidRequest("list", "only \"models\" may be listed, with no model or tool")
    elif not req.model and not req.tool:
        raise InvalidRequest("model", "one of model or tool is required")
    _check_name("model", req.model)
    _check_name("tool", req.tool)
    if req.mcp is not None:
        _check_mcp(req)
    elif req.tool and not req.action:
        raise InvalidRequest("action", "action is required when tool is set")
    if req.action and not req.tool:
        raise InvalidRequest("tool", "tool is required when action is set")
    _check_name("action", req.action, _ACTION)
    if len(req.request_id) > MAX_REQUEST_ID:
        raise InvalidRequest("request_id", f"longer than {MAX_REQUEST_ID} characters")
    if req.estimated_tokens < 0:
        raise InvalidRequest("estimated_tokens", "must not be negative")
    if not math.isfinite(req.estimated_cost_usd) or req.estimated_cost_usd < 0:
        raise InvalidRequest("estimated_cost_usd", "must be a finite, non-negative number")
    if payload_bytes > max_payload_bytes:
        raise InvalidRequest("params", f"params and context exceed {max_payload_bytes} bytes")
    _check_depth("params", req.params)
    _check_depth("context", req.context)


def _check_mcp(req: Request) -> None:
    """An MCP message names its server; only tools/call names an action (the tool)."""
    mcp = req.mcp or {}
    method = mcp.get("method", "")
    if not req.tool:
        raise InvalidRequest("tool", "an MCP message must name its server")
    if not _MCP_METHOD.match(method) or mcp.get("message") not in MCP_MESSAGES:
        raise InvalidRequest("mcp", "not an MCP message the PDP can classify")
    if (method == "tools/call") != bool(req.action):
        raise InvalidRequest("action", "an MCP tools/call, and only it, names the tool as action")


def _check_depth(field: str, value: Any, depth: int = 0) -> None:
    if depth > 32:
        raise InvalidRequest(field, "nested deeper than 32 levels")
    if isinstance(value, dict):
        for v in value.values():
            _check_depth(field, v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _check_depth(field, v, depth + 1)
