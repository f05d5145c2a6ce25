# MCP sessions: which MCP messages a workload may send to an MCP server.
#
# On an MCP route the PDP reads each JSON-RPC message from its body, never
# from a header the client sets, and puts what it is in input.mcp:
# {"message": request | notification | response | stream | end_session,
#  "method": the JSON-RPC method, "" for the last three}. input.tool is the
# MCP server (the tool resource).
#
# - tools/call is a tool action like any other: input.action is the tool's
#   name and input.params its arguments (tools.rego, constraints.rego).
# - Lifecycle and discovery messages are allowed to a workload that holds a
#   grant on the server, under the grant's conditions; no action is judged
#   and they cost nothing against the budget.
# - Anything else is denied: fail closed for methods this library does not
#   know (completion/complete, logging/setLevel, tasks/*, ...).
package aam.authz

mcp_message if is_object(input.mcp)

mcp_tool_call if {
	mcp_message
	input.mcp.method == "tools/call"
}

# The streamable HTTP lifecycle of 2025-06-18 / 2025-11-25 sessions and the
# stateless 2026-07-28 revision, and discovery.
mcp_session_methods := {
	"initialize", "ping", "tools/list", "server/discover", "subscriptions/listen",
}

mcp_session_prefixes := {"resources/", "prompts/"}

# The GET stream, DELETE of the session, and the client's replies to requests
# the server sent it (roots, sampling, elicitation).
mcp_session_kinds := {"stream", "end_session", "response"}

mcp_session if {
	mcp_message
	input.mcp.message in mcp_session_kinds
}

mcp_session if {
	mcp_message
	input.mcp.message == "request"
	input.mcp.method in mcp_session_methods
}

mcp_session if {
	mcp_message
	input.mcp.message == "request"
	some prefix in mcp_session_prefixes
	startswith(input.mcp.method, prefix)
}

mcp_session if {
	mcp_message
	input.mcp.message == "notification"
	startswith(input.mcp.method, "notifications/")
}

# A tool action is judged (grants, denies, constraints, price) for a tool
# call: any request outside an MCP route, and tools/call on one. Other MCP
# messages are allowed or denied here as a whole.
tool_action_requested if {
	tool_requested
	not mcp_message
}

tool_action_requested if mcp_tool_call

deny contains reason("mcp_method_not_allowed", msg) if {
	mcp_message
	not mcp_tool_call
	not mcp_session
	msg := sprintf(
		"MCP %s %q is not allowed on %q: only tools/call (decided per tool) and lifecycle and discovery messages pass",
		[input.mcp.message, input.mcp.method, input.tool],
	)
}
