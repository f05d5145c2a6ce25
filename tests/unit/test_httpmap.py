"""The HTTP -> decision-request mapping, without servers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pdp.config import ConfigError
from pdp.httpmap import (
    HttpMapping,
    HttpRequest,
    MappingError,
    Surface,
    ToolRoute,
    surface_of,
    to_request,
    workload_of,
)

WL = "spiffe://prod/agent/a"
LAX = HttpMapping(require_peer_certificate=False)


def http(path: str, body: Any = None, method: str = "POST", **kw: Any) -> HttpRequest:
    raw = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else b"")
    return HttpRequest(method=method, path=path, headers=kw.pop("headers", {}), body=raw,
                       principal=kw.pop("principal", WL), **kw)


def code_of(m: HttpMapping, h: HttpRequest) -> str:
    with pytest.raises(MappingError) as err:
        to_request(m, h)
    return err.value.code


def test_model_call_reads_model_and_estimates_tokens() -> None:
    req = to_request(LAX, http("/v1/chat/completions?stream=1",
                               {"model": "m", "max_tokens": 50, "messages": ["y" * 96]}))
    assert (req.model, req.tool, req.spiffe_id) == ("m", "", WL)
    assert req.estimated_tokens == 50 + -(-len(json.dumps(
        {"model": "m", "max_tokens": 50, "messages": ["y" * 96]})) // 4)
    req = to_request(LAX, http("/v1/chat/completions", {"model": "m", "max_completion_tokens": 7}))
    assert req.estimated_tokens >= 7


@pytest.mark.parametrize("body", [{"model": 3}, {}, None, {"model": "m", "max_tokens": -1},
                                  {"model": "m", "max_tokens": True}, b"{", b"\xff"])
def test_bad_model_bodies_are_invalid(body: Any) -> None:
    assert code_of(LAX, http("/v1/chat/completions", body)) == "invalid_request"


def test_partial_body_is_never_judged() -> None:
    h = http("/tools/r/read", {"a": 1}, partial_body=True)
    assert code_of(LAX, h) == "invalid_request"


def test_tool_route_takes_resource_action_and_params() -> None:
    req = to_request(LAX, http("/tools/salesforce.accounts/search?q=1", {"q": "acme"},
                               context_extensions={"surface": "tools"}))
    assert (req.tool, req.action, req.params, req.context) == \
        ("salesforce.accounts", "search", {"q": "acme"}, {"surface": "tools"})
    assert to_request(LAX, http("/tools/a%2Eb/read")).tool == "a.b"
    assert code_of(LAX, http("/tools/r/read", method="GET")) == "route_not_mapped"
    assert code_of(LAX, http("/tools/r/read/extra")) == "route_not_mapped"
    assert code_of(LAX, http("/tools/a%2Fb/read")) == "route_not_mapped"
    assert code_of(LAX, http("/tools/r/read", [1])) == "invalid_request"


def test_mcp_tools_call() -> None:
    def mcp(body: Any) -> HttpRequest:
        return http("/mcp/github.repos", body)

    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "list", "arguments": {"org": "x"}}}
    req = to_request(LAX, mcp(call))
    assert (req.tool, req.action, req.params) == ("github.repos", "list", {"org": "x"})
    listing = to_request(LAX, mcp({**call, "method": "tools/list", "params": {}}))
    assert (listing.tool, listing.action, listing.mcp) == \
        ("github.repos", "", {"message": "request", "method": "tools/list"})
    assert code_of(LAX, mcp([call])) == "invalid_request"
    assert code_of(LAX, mcp({**call, "params": {"arguments": {}}})) == "invalid_request"
    assert code_of(LAX, mcp({**call, "params": {"name": "x", "arguments": [1]}})) == "invalid_request"
    assert code_of(LAX, mcp({**call, "jsonrpc": "1.0"})) == "invalid_request"


def test_routes_from_toml_with_fixed_resource_and_header_match(tmp_path: Path) -> None:
    f = tmp_path / "m.toml"
    f.write_text('''
model_paths = ["/llm/chat"]
strip_headers = ["Authorization", "X-Token"]
require_peer_certificate = false
fallback_chain_header = ""

[[tool_routes]]
method = "DELETE"
path = "/crm/accounts/{action}"
resource = "salesforce.accounts"
headers = { "X-Tenant" = "acme" }
''')
    m = HttpMapping.load(str(f))
    assert m.strip_headers == ("authorization", "x-token")
    assert m.fallback_chain_header == ""
    assert to_request(m, http("/llm/chat", {"model": "m"})).model == "m"
    req = to_request(m, http("/crm/accounts/delete", method="DELETE", headers={"x-tenant": "acme"}))
    assert (req.tool, req.action) == ("salesforce.accounts", "delete")
    assert code_of(m, http("/crm/accounts/delete", method="DELETE")) == "route_not_mapped"
    assert code_of(m, http("/v1/chat/completions", {"model": "m"})) == "route_not_mapped"


@pytest.mark.parametrize(("text", "needle"), [
    ("nope = 1", "unknown key"),
    ("[[tool_routes]]\npath = '/x'", "needs {resource}"),
    ("[[tool_routes]]\npath = '/x/{resource}'", "needs {action}"),
    ("[[tool_routes]]\npath = 'x/{resource}/{action}'", "must start with '/'"),
    ("[[tool_routes]]\npath = '/{resource}/{action}'\nverb = 'GET'", "tool_routes"),
    ("model_paths = [", "m.toml"),
])
def test_bad_mapping_files_are_config_errors(tmp_path: Path, text: str, needle: str) -> None:
    f = tmp_path / "m.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        HttpMapping.load(str(f))


def test_defaults_when_no_file() -> None:
    assert HttpMapping.load("") == HttpMapping()
    assert ToolRoute("/t/{resource}/{action}").match("POST", "/t/a/b", {}) == \
        {"resource": "a", "action": "b"}


def test_xfcc_only_when_trusted_and_unambiguous() -> None:
    trusted = HttpMapping(trust_xfcc=True)

    def wl(m: HttpMapping, xfcc: str) -> str:
        return workload_of(m, http("/", principal="", headers={"x-forwarded-client-cert": xfcc}))

    assert wl(trusted, f'By=spiffe://prod/gw;Hash=ab;Subject="O=a,CN=b";URI={WL}') == WL
    for bad in (f"URI={WL},URI=spiffe://prod/agent/b", "Hash=ab", f"URI={WL};URI={WL}", ""):
        with pytest.raises(MappingError):
            wl(trusted, bad)
    with pytest.raises(MappingError):
        wl(HttpMapping(), f"URI={WL}")


def test_principal_needs_a_matching_certificate_by_default() -> None:
    with pytest.raises(MappingError, match="no peer certificate"):
        workload_of(HttpMapping(), http("/"))
    assert workload_of(LAX, http("/")) == WL


def test_shipped_mapping_file_spells_out_the_defaults() -> None:
    shipped = Path(__file__).resolve().parents[2] / "deploy" / "envoy" / "mapping.toml"
    assert HttpMapping.load(str(shipped)) == HttpMapping()


def test_mcp_routes_carry_the_whole_session() -> None:
    def at(method: str, body: Any = None, **kw: Any) -> HttpRequest:
        return http("/mcp/crm", body, method=method, **kw)

    init = to_request(LAX, at("POST", {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                                       "params": {"protocolVersion": "2025-11-25"}}))
    assert (init.tool, init.action, init.params, init.mcp) == \
        ("crm", "", {}, {"message": "request", "method": "initialize"})
    assert to_request(LAX, at("GET")).mcp == {"message": "stream", "method": ""}
    assert to_request(LAX, at("DELETE")).mcp == {"message": "end_session", "method": ""}
    assert code_of(LAX, at("PUT", {})) == "invalid_request"
    assert code_of(LAX, at("POST", [{"jsonrpc": "2.0", "id": 1, "method": "ping"}])) == "invalid_request"
    forged = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "export"}}
    assert code_of(LAX, at("POST", forged, headers={"mcp-method": "tools/list"})) == "invalid_request"
    assert code_of(LAX, at("POST", forged, partial_body=True)) == "invalid_request"
    dup = b'{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/call"}'
    assert code_of(LAX, at("POST", dup)) == "invalid_request"
    assert code_of(LAX, at("POST", b"")) == "invalid_request"


@pytest.mark.parametrize("route", [
    "path = '/mcp/{resource}'\nmcp = true\nheaders = { 'mcp-method' = 'tools/call' }",
    "path = '/mcp/{resource}/{action}'\nmcp = true",
    "path = '/mcp/{resource}'\nmcp = true\naction = 'session'",
])
def test_an_mcp_route_cannot_be_chosen_by_the_client(tmp_path: Path, route: str) -> None:
    """A header-matched MCP rule plus a catch-all let a client pick the rule that decides."""
    f = tmp_path / "m.toml"
    f.write_text("[[tool_routes]]\n" + route)
    with pytest.raises(ConfigError, match="JSON-RPC body only"):
        HttpMapping.load(str(f))


def test_models_path_is_a_listing() -> None:
    req = to_request(LAX, http("/v1/models", method="GET", context_extensions={"s": "m"}))
    assert (req.listing, req.model, req.tool, req.context) == ("models", "", "", {"s": "m"})
    assert code_of(LAX, http("/v1/models", {})) == "route_not_mapped"  # POST
    off = HttpMapping(require_peer_certificate=False, models_path="")
    assert code_of(off, http("/v1/models", method="GET")) == "route_not_mapped"


def test_surface_follows_the_route() -> None:
    call = {"jsonrpc": "2.0", "id": "x-1", "method": "tools/call", "params": {"name": "a"}}
    assert surface_of(LAX, http("/mcp/crm", call)) == Surface("mcp", "x-1")
    assert surface_of(LAX, http("/mcp/crm", b"{broken")) == Surface("mcp", None)
    assert surface_of(LAX, http("/mcp/crm", method="GET")) == Surface("mcp", None)
    assert surface_of(LAX, http("/v1/chat/completions?x", {})) == Surface("openai")
    assert surface_of(LAX, http("/v1/models", method="GET")) == Surface("openai")
    assert surface_of(LAX, http("/v1/embeddings", {})) == Surface("openai")
    assert surface_of(LAX, http("/tools/crm/read", {})) == Surface()
    assert surface_of(LAX, http("/elsewhere", {})) == Surface()
