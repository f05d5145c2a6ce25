"""The official MCP SDK client through the real Envoy to the MCP SDK's own server.

Both client modes: the 2025-11-25 session (``ClientSession.initialize``: SSE replies,
a GET stream, DELETE on close) and ``mcp.Client``'s default 2026-07-28 stateless mode
(``server/discover``, JSON replies, ``mcp-method``/``mcp-name`` headers). Every
tools/call is decided from the body, tools/list shows only what the workload may
call, and a denial is a JSON-RPC error the SDK shows with AAM's reason.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import httpx2
import pytest
import requests
from envoy.service.ext_proc.v3 import external_processor_pb2, external_processor_pb2_grpc
from mcp import Client, ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from pdp.ledger.types import AuditFilter
from pdp.stack import Stack
from tests.e2e.agents import MCP_PATH, AgentUpstream, tls_context
from tests.e2e.conftest import FINANCE, Pki
from tests.e2e.envoy import Envoy, run_envoy
from tests.e2e.pdp import pdp_port, pdp_token
from tests.e2e.pki import Svid
from tests.vaultsetup import VaultSetup

pytestmark = pytest.mark.integration

AGENT_KEY = "Bearer agent-own-key"
MODERN = "2026-07-28"
EXT_PROC = "envoy.filters.http.ext_proc"


def http_client(pki: Pki, svid: Svid, headers: dict[str, str] | None = None) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(verify=tls_context(pki.domain.bundle, svid),
                              headers={"authorization": AGENT_KEY, **(headers or {})},
                              timeout=httpx2.Timeout(10.0))


@contextlib.asynccontextmanager
async def session(url: str, pki: Pki, svid: Svid) -> AsyncIterator[ClientSession]:
    """Mode (a): the initialize handshake, as ClientSession does it."""
    async with http_client(pki, svid) as http, \
            streamable_http_client(url, http_client=http) as (read, write), \
            ClientSession(read, write, read_timeout_seconds=10) as s:
        await s.initialize()
        yield s


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def text(result: Any) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


def test_session_lifecycle_filtered_list_and_per_tool_decisions(
        agent_envoy: Envoy, agent_upstream: AgentUpstream, pki: Pki, vault: VaultSetup,
        stack: Stack) -> None:
    """Mode (a): initialize, notifications/initialized, the GET stream, tools/list (SSE),
    ping, a granted and an ungranted tools/call, DELETE on close."""
    url = agent_envoy.url + MCP_PATH
    before = len(agent_upstream.seen)

    async def scenario() -> tuple[str, list[str], str, MCPError, MCPError]:
        async with session(url, pki, pki.finance) as s:
            listed = sorted(t.name for t in (await s.list_tools()).tools)
            await s.send_ping()
            read = text(await s.call_tool("read", {"account": "001"}))
            with pytest.raises(MCPError) as denied:
                await s.call_tool("export", {})
            with pytest.raises(MCPError) as ungranted:
                await s.call_tool("purge", {})
            return s.protocol_version, listed, read, denied.value, ungranted.value

    version, listed, read, denied, ungranted = run(scenario())
    assert version == "2025-11-25"
    assert listed == ["read", "search"]
    assert read == "account 001: balance 42"
    assert "action_denied" in denied.message and "export" in denied.message
    assert denied.data["reasons"][0]["code"] == "action_denied"
    assert "action_not_granted" in ungranted.message
    assert "export" not in agent_upstream.tool_runs and "purge" not in agent_upstream.tool_runs

    seen = agent_upstream.seen[before:]
    steps = [(s.method, s.rpc_method) for s in seen if s.path == MCP_PATH]
    for step in [("POST", "initialize"), ("POST", "notifications/initialized"), ("GET", ""),
                 ("POST", "tools/list"), ("POST", "ping"), ("POST", "tools/call"), ("DELETE", "")]:
        assert step in steps, steps
    lists = [s for s in seen if s.rpc_method == "tools/list"]
    assert lists and all(s.response_type.startswith("text/event-stream") for s in lists)
    calls = [s.rpc() for s in seen if s.rpc_method == "tools/call"]
    assert [c["params"]["name"] for c in calls] == ["read"]  # export and purge never arrived
    (call,) = [s for s in seen if s.rpc_method == "tools/call"]
    assert call.headers["authorization"] == f"Bearer {vault.kv_secret}"  # brokered, from OpenBao
    assert all(s.headers.get("authorization") != AGENT_KEY for s in seen)
    # Each message was a decision of the engine: audited with its policy and revision.
    assert stack.ledger is not None
    rows = [r.record() for r in stack.ledger.audit_rows(AuditFilter(workload=FINANCE))]
    by_method = {(r["action"].get("mcp") or {}).get("method"): r for r in rows}
    for method in ("initialize", "notifications/initialized", "tools/list", "ping"):
        row = by_method[method]
        assert (row["outcome"], row["policy"]) == ("allow", "finance-analyst-readonly")
        assert row["revision"] and row["action"]["tool"] == "salesforce.accounts"
    kinds = {(r["action"].get("mcp") or {}).get("message") for r in rows}
    assert {"stream", "end_session"} <= kinds


def test_stateless_client_discovers_lists_json_and_calls(
        agent_envoy: Envoy, agent_upstream: AgentUpstream, pki: Pki) -> None:
    """Mode (b): mcp.Client's default, 2026-07-28 without a session."""
    url = agent_envoy.url + MCP_PATH
    before = len(agent_upstream.seen)

    async def scenario() -> tuple[str, list[str], str, MCPError]:
        async with http_client(pki, pki.finance) as http, \
                Client(streamable_http_client(url, http_client=http), read_timeout_seconds=10) as c:
            listed = sorted(t.name for t in (await c.list_tools()).tools)
            found = text(await c.call_tool("search", {"query": "acme"}))
            with pytest.raises(MCPError) as denied:
                await c.call_tool("export", {})
            return c.session.protocol_version, listed, found, denied.value

    version, listed, found, denied = run(scenario())
    assert version == MODERN
    assert listed == ["read", "search"]
    assert found == "1 account matches acme"
    assert "action_denied" in denied.message
    seen = agent_upstream.seen[before:]
    assert [s.rpc_method for s in seen][:1] == ["server/discover"]
    lists = [s for s in seen if s.rpc_method == "tools/list"]
    assert lists and all(s.response_type.startswith("application/json") for s in lists)
    assert [s.rpc()["params"]["name"] for s in seen if s.rpc_method == "tools/call"] == ["search"]
    assert "export" not in agent_upstream.tool_runs


async def initialize_refused(envoy: Envoy, pki: Pki, svid: Svid,
                             headers: dict[str, str] | None = None) -> MCPError:
    """The MCP SDK's initialize through Envoy as ``svid``, which must be refused."""
    async with http_client(pki, svid, headers) as http, \
            streamable_http_client(envoy.url + MCP_PATH, http_client=http) as (r, w), \
            ClientSession(r, w, read_timeout_seconds=10) as s:
        with pytest.raises(MCPError) as err:
            await s.initialize()
        return err.value


def test_workload_without_a_grant_reads_the_denial_at_initialize(
        agent_envoy: Envoy, agent_upstream: AgentUpstream, pki: Pki) -> None:
    before = len(agent_upstream.seen)
    err = run(initialize_refused(agent_envoy, pki, pki.stranger))
    assert "no_policy" in err.message
    assert err.data["decision_id"]
    assert agent_upstream.seen[before:] == []


def test_sdk_with_forged_routing_headers_gets_nowhere(
        agent_envoy: Envoy, agent_upstream: AgentUpstream, pki: Pki) -> None:
    """Every request claims to be a call of the granted tool: the body says otherwise."""
    before = len(agent_upstream.seen)
    forged = {"mcp-method": "tools/call", "mcp-name": "read"}
    err = run(initialize_refused(agent_envoy, pki, pki.finance, forged))
    assert err.message.startswith("invalid_request:") and "mcp-method" in err.message
    assert agent_upstream.seen[before:] == []


# --- raw JSON-RPC: what an attacker may send -----------------------------------

def modern(method: str, rpc_id: Any = 1, **params: Any) -> dict[str, Any]:
    meta = {"io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {}}
    msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": {**params, "_meta": meta}}
    if rpc_id is not None:
        msg["id"] = rpc_id
    return msg


@pytest.fixture()
def raw(pki: Pki) -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.trust_env = False
        s.verify = str(pki.domain.bundle)
        s.cert = (str(pki.finance.cert), str(pki.finance.key))
        s.headers.update({"accept": "application/json, text/event-stream",
                          "mcp-protocol-version": MODERN, "authorization": AGENT_KEY})
        yield s


def rpc_error(resp: requests.Response, rpc_id: Any) -> tuple[str, str]:
    """The JSON-RPC error AAM answers with: (first reason code, message)."""
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    body = resp.json()
    assert body["jsonrpc"] == "2.0" and body["id"] == rpc_id, body
    err = body["error"]
    assert resp.headers["x-aam-decision-id"] == err["data"]["decision_id"]
    return err["data"]["reasons"][0]["code"], err["message"]


@pytest.mark.parametrize(("case", "body", "headers", "code"), [
    ("consistent headers", modern("tools/call", 11, name="export", arguments={}),
     {"mcp-method": "tools/call", "mcp-name": "export"}, "action_denied"),
    ("headers claim a tools/list", modern("tools/call", 12, name="export", arguments={}),
     {"mcp-method": "tools/list"}, "invalid_request"),
    ("headers name a granted tool", modern("tools/call", "s-13", name="export", arguments={}),
     {"mcp-method": "tools/call", "mcp-name": "read"}, "invalid_request"),
    ("no headers at all", modern("tools/call", 14, name="purge", arguments={}), {},
     "action_not_granted"),
    ("sent as a notification", modern("tools/call", None, name="export", arguments={}),
     {"mcp-method": "notifications/cancelled"}, "invalid_request"),
    ("a notification without headers", modern("tools/call", None, name="export", arguments={}),
     {}, "action_denied"),
    ("a batch", [modern("tools/call", 15, name="read", arguments={"account": "1"}),
                 modern("tools/call", 16, name="export", arguments={})], {}, "invalid_request"),
    ("an unknown method", modern("completion/complete", 17), {"mcp-method": "completion/complete"},
     "mcp_method_not_allowed"),
])
def test_ungranted_tool_never_runs_whatever_the_client_sends(
        agent_envoy: Envoy, agent_upstream: AgentUpstream, raw: requests.Session, case: str,
        body: Any, headers: dict[str, str], code: str) -> None:
    before = len(agent_upstream.seen)
    resp = raw.post(agent_envoy.url + MCP_PATH, json=body, headers=headers)
    assert resp.status_code == 403, (case, resp.status_code, resp.text)
    rpc_id = body.get("id") if isinstance(body, dict) else None
    got, message = rpc_error(resp, rpc_id)
    assert got == code, (case, message)
    assert message.startswith(code + ":"), message
    assert agent_upstream.seen[before:] == []
    assert "export" not in agent_upstream.tool_runs and "purge" not in agent_upstream.tool_runs


def listed_names(resp: requests.Response) -> list[str]:
    return sorted(t["name"] for t in resp.json()["result"]["tools"])


def test_raw_tools_list_json_is_filtered(agent_envoy: Envoy, raw: requests.Session) -> None:
    resp = raw.post(agent_envoy.url + MCP_PATH, json=modern("tools/list", 21),
                    headers={"mcp-method": "tools/list"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["id"] == 21
    assert listed_names(resp) == ["read", "search"]
    assert "export" not in resp.text and "purge" not in resp.text


def test_tools_list_never_passes_unfiltered_when_the_filter_is_blind(
        pki: Pki, stack: Stack, agent_upstream: AgentUpstream, raw: requests.Session) -> None:
    """An Envoy whose ext_proc is not given AAM's decision (no forwarded metadata): the
    processor cannot tell what to filter, so MCP requests are refused, never passed."""

    def blind(conf: dict[str, Any]) -> dict[str, Any]:
        (listener,) = conf["static_resources"]["listeners"]
        for f in listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]:
            if f["name"] == EXT_PROC:
                f["typed_config"].pop("metadata_options")
        return conf

    before = len(agent_upstream.seen)
    with run_envoy(pdp_port=pdp_port(stack), upstream_port=agent_upstream.port, tls=pki.tls,
                   pdp_token=pdp_token(stack), edit=blind) as envoy:
        resp = raw.post(envoy.url + MCP_PATH, json=modern("tools/list", 31),
                        headers={"mcp-method": "tools/list"})
    assert resp.status_code >= 500, resp.text
    assert "export" not in resp.text and "purge" not in resp.text
    body = resp.json()  # the id is unknown to a blind filter: null
    assert body["id"] is None and body["error"]["message"].startswith("filter_unavailable:")
    assert agent_upstream.seen[before:] == []


def test_only_a_trusted_gateway_may_open_a_processing_stream(stack: Stack) -> None:
    """The processor reads AAM's decisions and rewrites responses: like Check, it is the
    gateway's alone (here: no gateway token on the plaintext port)."""
    with grpc.insecure_channel(f"127.0.0.1:{pdp_port(stack)}") as channel:
        stub = external_processor_pb2_grpc.ExternalProcessorStub(channel)
        first = external_processor_pb2.ProcessingRequest(
            request_headers=external_processor_pb2.HttpHeaders())
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Process(iter([first]), timeout=10))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "gateway" in (err.value.details() or "")

