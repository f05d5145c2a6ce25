"""Request validation of the new request kinds: MCP messages and the models listing."""

from __future__ import annotations

import pytest

from pdp.engine import Request
from pdp.errors import InvalidRequest
from pdp.validate import validate

WL = "spiffe://prod/agent/a"


def field_of(req: Request) -> str:
    with pytest.raises(InvalidRequest) as err:
        validate(req, 0, 1024)
    return str(err.value).split(":", 1)[0]


def test_mcp_messages_name_a_server_and_only_tools_call_an_action() -> None:
    validate(Request(WL, tool="crm", mcp={"message": "request", "method": "tools/list"}), 0, 1024)
    validate(Request(WL, tool="crm", action="read",
                     mcp={"message": "request", "method": "tools/call"}), 0, 1024)
    assert field_of(Request(WL, tool="crm", action="read",
                            mcp={"message": "request", "method": "tools/list"})) == "action"
    assert field_of(Request(WL, tool="crm", mcp={"message": "request", "method": "tools/call"})) == \
        "action"
    assert field_of(Request(WL, tool="crm", mcp={"message": "batch", "method": ""})) == "mcp"
    assert field_of(Request(WL, tool="crm", mcp={"message": "request", "method": "a b"})) == "mcp"
    assert field_of(Request(WL, model="m", mcp={"message": "stream", "method": ""})) == "tool"
    assert field_of(Request(WL, tool="crm")) == "action"  # outside MCP, as before


def test_only_models_may_be_listed_and_alone() -> None:
    validate(Request(WL, listing="models"), 0, 1024)
    assert field_of(Request(WL, listing="tools")) == "list"
    assert field_of(Request(WL, listing="models", model="m")) == "list"
    assert field_of(Request(WL)) == "model"
