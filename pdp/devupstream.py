"""The demo upstream behind ``aam up --envoy``: an MCP server per tool and a model endpoint.

So that a first-hour user can point the official ``mcp`` and ``openai`` SDKs at
the local Envoy and see an allow, a deny and an injected credential without
running services of their own. One loopback HTTP server holds:

- ``/mcp/<resource>``: an MCP server (the ``mcp`` SDK's own ``MCPServer``, streamable
  HTTP) for every ``Tool`` document, one MCP tool per action;
- ``/v1/chat/completions``: an OpenAI-compatible answer (also ``stream=True``) that
  says which route the PDP chose;
- ``/tools/<resource>/<action>``: a JSON answer for plain HTTP tool calls.

It reports what reached it on the operator's console: for each request whether
the gateway injected a credential, shown as a fingerprint (never the value), and
whether the agent's own ``authorization`` was stripped. It needs the ``mcp`` SDK
(the dev extras); it is for development only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TextIO

from compiler.model import Tool

# Headers a gateway may inject for a brokered credential (ToolCredential inject.header).
_CREDENTIAL_HEADERS = ("authorization", "x-api-key", "x-db-credential")


class DemoUnavailable(RuntimeError):
    """The ``mcp`` SDK (dev extras) is not installed."""


def fingerprint(value: str) -> str:
    """What the console shows of a credential: enough to compare, nothing to use."""
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()[:12]


@dataclass
class DemoUpstream:
    port: int
    server: Any  # uvicorn.Server
    thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _mcp_server(tool: Tool) -> Any:
    from mcp.server.mcpserver import MCPServer

    server = MCPServer(f"demo {tool.resource}", version="0.1")
    for action in tool.actions:
        server.add_tool(_tool_function(tool.resource, action), name=action,
                        description=f"{action} on {tool.resource} (demo)")
    return server


def _tool_function(resource: str, action: str) -> Callable[..., str]:
    def run(query: str = "", account_id: str = "", limit: int = 10) -> str:
        return f"demo {resource} {action} ran (query={query!r}, account_id={account_id!r}, limit={limit})"

    return run


def _report(out: TextIO, lock: threading.Lock) -> Callable[[dict[str, Any]], None]:
    """An ASGI middleware callback: one console line per request that reached the upstream."""

    def report(scope: dict[str, Any]) -> None:
        headers = {k.decode().lower(): v.decode(errors="replace") for k, v in scope.get("headers", ())}
        injected = [f"{h}: {fingerprint(headers[h])}" for h in _CREDENTIAL_HEADERS if h in headers]
        line = (f"upstream   {scope.get('method', '')} {scope.get('path', '')}  "
                f"decision {headers.get('x-aam-decision-id', '-')}  "
                + (f"credential injected ({', '.join(injected)})" if injected
                   else "no credential header (the agent's own was stripped)"))
        with lock:
            print(line, file=out, flush=True)

    return report


def start(tools: tuple[Tool, ...], port: int, out: TextIO) -> DemoUpstream:
    """Serve the demo upstream on 127.0.0.1:``port`` in a background thread."""
    try:
        import uvicorn
        from mcp.server.transport_security import TransportSecuritySettings
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse, Response, StreamingResponse
        from starlette.routing import Route
    except ImportError as exc:
        raise DemoUnavailable(
            f"the demo upstream needs the mcp SDK ({exc.name} is missing): install the dev extras "
            "(scripts/setup), or name your own upstream with --upstream HOST:PORT") from None

    # Envoy forwards the agent's Host (127.0.0.1:<envoy port>): no DNS-rebinding guard is
    # needed on a loopback demo behind the gateway.
    open_host = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    apps = [_mcp_server(t).streamable_http_app(streamable_http_path=f"/mcp/{t.resource}",
                                                json_response=False, transport_security=open_host)
            for t in tools]

    async def chat(request: Request) -> Response:
        body = await request.json()
        route = {k.removeprefix("x-aam-route-"): v for k, v in request.headers.items()
                 if k.startswith("x-aam-route-")}
        text = (f"demo model upstream: the PDP routed alias {body.get('model')!r} to "
                f"{route.get('provider', '?')}/{route.get('model', '?')}; "
                f"agent authorization stripped: {'authorization' not in request.headers}")
        if body.get("stream"):
            async def events() -> AsyncIterator[bytes]:
                for i, word in enumerate(text.split(" ")):
                    chunk = {"id": "demo", "object": "chat.completion.chunk", "created": int(time.time()),
                             "model": body.get("model"), "choices": [{
                                 "index": 0, "delta": {"content": ("" if i == 0 else " ") + word},
                                 "finish_reason": None}]}
                    yield f"data: {json.dumps(chunk)}\n\n".encode()
                yield b"data: [DONE]\n\n"
            return StreamingResponse(events(), media_type="text/event-stream")
        return JSONResponse({
            "id": "demo", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model"),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": len(text.split()), "total_tokens": 0},
        })

    async def tool_call(request: Request) -> Response:
        return JSONResponse({"ok": True, "resource": request.path_params["resource"],
                             "action": request.path_params["action"]})

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            for a in apps:
                await stack.enter_async_context(a.router.lifespan_context(a))
            yield

    routes = [r for a in apps for r in a.routes]
    routes += [Route("/v1/chat/completions", chat, methods=["POST"]),
               Route("/tools/{resource}/{action}", tool_call, methods=["POST"])]
    app = Starlette(routes=routes, lifespan=lifespan)
    report = _report(out, threading.Lock())

    async def reporting(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            report(scope)
        await app(scope, receive, send)

    server = uvicorn.Server(uvicorn.Config(reporting, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, name="aam-demo-upstream", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the demo upstream did not start on 127.0.0.1:{port}")
        time.sleep(0.05)
    return DemoUpstream(port, server, thread)
