"""Upstreams and clients for real agent SDKs behind Envoy.

:class:`AgentUpstream` serves, on one loopback port, the MCP SDK's own server
(``MCPServer`` over streamable HTTP) for ``salesforce.accounts`` and a small
OpenAI-compatible model API. It records every request (headers, body and the
response's content type) and every tool that actually ran, so a test can prove
what reached the upstream and what never did.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from mcp.server.mcpserver import MCPServer
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse, Response, StreamingResponse

from tests.e2e.pki import Svid

RESOURCE = "salesforce.accounts"
MCP_PATH = f"/mcp/{RESOURCE}"
# The tools the server offers: finance-analyst-readonly grants read and search, denies
# export, and says nothing of purge.
TOOLS = ("read", "search", "export", "purge")


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes = b""
    response_type: str = ""  # the content-type the upstream answered with

    def rpc(self) -> Any:
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None

    @property
    def rpc_method(self) -> str:
        msg = self.rpc()
        return str(msg.get("method", "")) if isinstance(msg, dict) else ""


@dataclass
class AgentUpstream:
    seen: list[Seen] = field(default_factory=list)
    tool_runs: list[str] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # --- the application ---------------------------------------------------------

    def _mcp(self) -> MCPServer:
        srv = MCPServer("salesforce-accounts", version="1")
        runs = self.tool_runs

        @srv.tool()
        def read(account: str) -> str:
            """Read one account."""
            runs.append("read")
            return f"account {account}: balance 42"

        @srv.tool()
        def search(query: str) -> str:
            """Search accounts."""
            runs.append("search")
            return f"1 account matches {query}"

        @srv.tool()
        def export() -> str:
            """Export every account (denied by policy)."""
            runs.append("export")
            return "ALL ACCOUNTS"

        @srv.tool()
        def purge() -> str:
            """Delete every account (granted to no one)."""
            runs.append("purge")
            return "PURGED"

        @srv.custom_route("/v1/chat/completions", methods=["POST"])
        async def chat(request: StarletteRequest) -> Response:
            body = json.loads(await request.body() or b"{}")
            model = str(body.get("model", ""))
            if body.get("stream"):
                return StreamingResponse(_chunks(model), media_type="text/event-stream")
            return JSONResponse({
                "id": "c1", "object": "chat.completion", "created": 1, "model": model,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "Hello"}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

        @srv.custom_route("/v1/models", methods=["GET"])
        async def models(request: StarletteRequest) -> Response:
            # The PDP answers GET /v1/models itself; reaching this is a test failure.
            return JSONResponse({"object": "list", "data": [
                {"id": "upstream-only", "object": "model", "created": 1, "owned_by": "upstream"}]})

        return srv

    def _recording(self, app: Any) -> Any:
        seen = self.seen

        async def recorder(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            entry = Seen(scope["method"], scope["path"],
                         {k.decode().lower(): v.decode() for k, v in scope["headers"]})
            seen.append(entry)

            async def receive_recorded() -> Any:
                message = await receive()
                if message.get("type") == "http.request":
                    entry.body += message.get("body", b"")
                return message

            async def send_recorded(message: dict[str, Any]) -> None:
                if message.get("type") == "http.response.start":
                    for k, v in message.get("headers", ()):
                        if k.lower() == b"content-type":
                            entry.response_type = v.decode()
                await send(message)

            await app(scope, receive_recorded, send_recorded)

        return recorder

    # --- lifecycle ---------------------------------------------------------------

    def __enter__(self) -> AgentUpstream:
        app = self._mcp().streamable_http_app(streamable_http_path=MCP_PATH)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self._recording(app), log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="agent-upstream", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the agent upstream (uvicorn) did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)

    # --- queries -----------------------------------------------------------------

    def mcp(self, rpc_method: str = "") -> list[Seen]:
        return [s for s in self.seen if s.path == MCP_PATH
                and (not rpc_method or s.rpc_method == rpc_method)]

    def find(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]


async def _chunks(model: str) -> Any:
    for token in ("Hel", "lo"):
        chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": model,
                 "choices": [{"index": 0, "delta": {"content": token}, "finish_reason": None}]}
        yield f"data: {json.dumps(chunk)}\n\n"
    yield "data: [DONE]\n\n"


def tls_context(bundle: Any, svid: Svid) -> ssl.SSLContext:
    """A client context presenting ``svid`` and trusting only the test trust domain."""
    ctx = ssl.create_default_context(cafile=str(bundle))
    ctx.load_cert_chain(str(svid.cert), str(svid.key))
    return ctx
