package aam.mcp_test

import data.aam.authz

fixture := {
	"revision": "r1",
	"policies": {
		"spiffe://prod/agent/a": {
			"name": "a-policy",
			"models": {"m1": true, "m0": true},
			"budget": {"per_request_usd": 0.0001},
			"tools": {"crm.accounts": {
				"rule": "spec.tools[0]",
				"actions": {"read": true},
				"deny": {"export": "spec.tools[0].deny"},
				"price_usd": 5,
				"constraints": [{"param": "limit", "path": ["limit"], "required": true, "rule": "spec.tools[0].constraints[0]"}],
			}},
		},
		"spiffe://prod/agent/toolsonly": {"name": "tools-only", "tools": {}},
	},
	"routes": {},
}

mcp(message, method, extra) := object.union(
	{
		"identity": {"spiffe_id": "spiffe://prod/agent/a"}, "model": "", "tool": "crm.accounts", "action": "",
		"mcp": {"message": message, "method": method},
	},
	extra,
)

codes(d) := {r.code | some r in d.reasons}

decide(inp) := d if {
	d := authz.decision with input as inp with data.aam.compiled as fixture
}

test_lifecycle_and_discovery_pass_for_a_grant_holder if {
	every m in ["initialize", "ping", "tools/list", "server/discover", "subscriptions/listen", "resources/read", "prompts/get"] {
		d := decide(mcp("request", m, {}))
		d.allow
		d.policy == "a-policy"
	}
	every n in ["notifications/initialized", "notifications/cancelled"] {
		decide(mcp("notification", n, {})).allow
	}
	every k in ["stream", "end_session", "response"] {
		decide(mcp(k, "", {})).allow
	}
}

test_lifecycle_needs_a_grant_on_that_server if {
	codes(decide(mcp("request", "initialize", {"tool": "hr.salaries"}))) == {"tool_not_granted"}
	codes(decide(mcp("request", "initialize", {"identity": {"spiffe_id": "spiffe://prod/agent/zz"}}))) == {"no_policy"}
}

test_lifecycle_skips_action_constraint_and_price if {
	# The grant's price (5) is over the per-request cap and limit is required: neither
	# applies to a message that calls no tool.
	d := decide(mcp("request", "tools/list", {}))
	d.allow
	authz.tool_cost_usd == 0 with input as mcp("request", "tools/list", {}) with data.aam.compiled as fixture
}

test_tools_call_is_decided_per_tool if {
	call := mcp("request", "tools/call", {"action": "read", "params": {"limit": 1}, "estimate": {"cost_usd": 0}})
	codes(decide(call)) == {"budget_exhausted"} # priced like any tool action: 5 > cap
	codes(decide(object.union(call, {"action": "export"}))) == {"action_denied", "budget_exhausted"}
	codes(decide(object.union(call, {"action": "purge"}))) == {"action_not_granted", "budget_exhausted"}
	no_limit := mcp("request", "tools/call", {"action": "read", "estimate": {"cost_usd": 0}})
	codes(decide(no_limit)) == {"constraint_violated", "budget_exhausted"}

	# a tools/call sent as a notification is still a tools/call
	codes(decide(mcp("notification", "tools/call", {"action": "export"}))) == {"action_denied", "budget_exhausted", "constraint_violated"}
}

test_anything_else_is_denied if {
	every m in ["completion/complete", "logging/setLevel", "tasks/get", "sampling/createMessage"] {
		d := decide(mcp("request", m, {}))
		codes(d) == {"mcp_method_not_allowed"}
		contains(d.reasons[0].message, m)
	}
	codes(decide(mcp("notification", "initialize", {}))) == {"mcp_method_not_allowed"}
	codes(decide(mcp("request", "notifications/initialized", {}))) == {"mcp_method_not_allowed"}
	codes(decide(mcp("batch", "", {}))) == {"mcp_method_not_allowed"}
}

test_without_input_mcp_nothing_changes if {
	d := decide({"identity": {"spiffe_id": "spiffe://prod/agent/a"}, "model": "", "tool": "crm.accounts", "action": "", "params": {"limit": 1}})
	codes(d) == {"action_not_granted", "budget_exhausted"}
}

test_explain_names_the_session_rule if {
	e := authz.explanation with input as mcp("request", "tools/list", {}) with data.aam.compiled as fixture
	some m in e.matched
	m.rule == "mcp.session"
	contains(m.source, "tools/list")
}

test_models_list_names_the_allowed_aliases if {
	inp := {"identity": {"spiffe_id": "spiffe://prod/agent/a"}, "model": "", "tool": "", "action": "", "list": "models"}
	d := decide(inp)
	d.allow
	d.models == ["m0", "m1"]
	e := authz.explanation with input as inp with data.aam.compiled as fixture
	some m in e.matched
	m.rule == "models.list"
}

test_models_list_denied_without_models_or_policy if {
	none := decide({"identity": {"spiffe_id": "spiffe://prod/agent/toolsonly"}, "model": "", "tool": "", "action": "", "list": "models"})
	codes(none) == {"model_not_allowed"}
	none.models == []
	nobody := decide({"identity": {"spiffe_id": "spiffe://prod/agent/zz"}, "model": "", "tool": "", "action": "", "list": "models"})
	codes(nobody) == {"no_policy"}
}

test_other_decisions_list_no_models if {
	d := decide({"identity": {"spiffe_id": "spiffe://prod/agent/a"}, "model": "m1", "tool": "", "action": ""})
	d.models == []
}
