"""What the agent's client reads when the gateway answers for AAM: status, headers, body.

A denial must be readable by the client that gets it, or the reason is lost:
the MCP SDK shows only a JSON-RPC error that echoes the request's id, the
OpenAI SDK only an ``{"error": {"message", "type", "code"}}`` object. Every
denial also keeps AAM's own fields (``decision_id``, ``reasons``) and names the
decision in a header. Infrastructure failures get a fixed sentence (INTERNAL).
Transport-free: pdp/extauthz.py and pdp/extproc.py turn these into protobufs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pdp.engine import Decision
from pdp.httpmap import Surface

# Denies that mean "try again later" rather than "not allowed".
THROTTLED = frozenset({"budget_exhausted", "rate_limited"})
# Throttled, but not worth an automatic retry: the budget resets in hours, not seconds.
NO_RETRY = frozenset({"budget_exhausted"})
DEFAULT_RETRY_AFTER_S = 60
# Infrastructure failures: the agent gets a fixed sentence, never the internal detail.
INTERNAL = {
    "engine_unavailable": "the policy engine is unavailable; the request is denied",
    "ledger_unavailable": "the usage ledger is unavailable; the request is denied",
    "credential_unavailable": "no credential could be issued for this call; the request is denied",
}
# JSON-RPC error codes: AAM's denial (implementation-defined range) and a malformed request.
RPC_DENIED = -32001
RPC_INVALID = -32600
# OpenAI error "type" per reason code; anything else is permission_denied.
OPENAI_TYPES = {
    "invalid_request": "invalid_request_error",
    "unauthenticated": "authentication_error",
    "budget_exhausted": "insufficient_quota",
    "rate_limited": "rate_limit_exceeded",
    **dict.fromkeys(INTERNAL, "server_error"),
}


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def reasons_of(d: Decision) -> list[dict[str, str]]:
    return [{"code": r.code, "message": INTERNAL.get(r.code, r.message)} for r in d.reasons]


def sentence(reasons: Sequence[dict[str, str]], decision_id: str) -> str:
    """``code: sentence; code: sentence (decision <id>)``: the code first, for people and greps."""
    text = "; ".join(f"{r['code']}: {r['message']}" for r in reasons) or "denied: denied by policy"
    return f"{text} (decision {decision_id})"


def denial(d: Decision, surface: Surface, decision_header: str) -> Reply:
    """The denial of ``d`` in the shape ``surface``'s client reads."""
    reasons = reasons_of(d)
    codes = {r["code"] for r in reasons}
    throttled = bool(codes & THROTTLED)
    headers = {"content-type": "application/json", decision_header: d.decision_id}
    if throttled:
        retry = d.retry_after_s if d.retry_after_s is not None else DEFAULT_RETRY_AFTER_S
        headers["retry-after"] = str(max(1, math.ceil(retry)))
    if codes & NO_RETRY:
        headers["x-should-retry"] = "false"  # the OpenAI SDK retries a 429 twice otherwise
    own: dict[str, Any] = {"decision_id": d.decision_id, "reasons": reasons}
    first = reasons[0]["code"] if reasons else "denied"
    if surface.kind == "mcp":
        body: dict[str, Any] = jsonrpc_error(surface.rpc_id, sentence(reasons, d.decision_id),
                                             RPC_INVALID if first == "invalid_request" else RPC_DENIED,
                                             own)
    elif surface.kind == "openai":
        body = {"error": {"message": sentence(reasons, d.decision_id),
                          "type": OPENAI_TYPES.get(first, "permission_denied"),
                          "code": first, "param": None}, **own}
    else:
        body = own
    return Reply(429 if throttled else 403, headers, dumps(body))


def jsonrpc_error(rpc_id: Any, message: str, code: int = RPC_DENIED,
                  data: dict[str, Any] | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "id": rpc_id, "error": err}


def models_list(d: Decision, decision_header: str) -> Reply:
    """GET /v1/models answered by the PDP: the aliases ``d`` allows, OpenAI list shape."""
    data = [{"id": alias, "object": "model", "created": 0, "owned_by": "aam"} for alias in d.models]
    return Reply(200, {"content-type": "application/json", decision_header: d.decision_id},
                 dumps({"object": "list", "data": data}))


def dumps(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()
