package aam.authz_test

import data.aam.authz

fixture := {
	"revision": "r1",
	"policies": {"spiffe://prod/agent/a": {
		"name": "a-policy",
		"models": {"m1": true},
		"tools": {"crm.accounts": {
			"rule": "spec.tools[0]",
			"actions": {"read": true},
			"deny": {"export": "spec.tools[0].deny"},
		}},
	}},
	"routes": {"m1": {"alias": "m1", "allow_fallbacks": true, "targets": [{"provider": "p", "model": "x"}]}},
}

req(extra) := object.union({"identity": {"spiffe_id": "spiffe://prod/agent/a"}, "model": "", "tool": "", "action": ""}, extra)

codes(d) := {r.code | some r in d.reasons}

test_model_allowed if {
	d := authz.decision with input as req({"model": "m1"}) with data.aam.compiled as fixture
	d.allow
	d.policy == "a-policy"
	d.route.alias == "m1"
	d.revision == "r1"
	d.reasons == []
}

test_model_not_allowed if {
	d := authz.decision with input as req({"model": "m2"}) with data.aam.compiled as fixture
	not d.allow
	codes(d) == {"model_not_allowed"}
	d.route == null
}

test_tool_read_allowed if {
	d := authz.decision with input as req({"tool": "crm.accounts", "action": "read"}) with data.aam.compiled as fixture
	d.allow
}

test_tool_export_denied_names_rule if {
	d := authz.decision with input as req({"tool": "crm.accounts", "action": "export"}) with data.aam.compiled as fixture
	not d.allow
	codes(d) == {"action_denied"}
	contains(d.reasons[0].message, "spec.tools[0].deny")
}

test_tool_action_not_granted if {
	d := authz.decision with input as req({"tool": "crm.accounts", "action": "write"}) with data.aam.compiled as fixture
	codes(d) == {"action_not_granted"}
}

test_tool_not_granted if {
	d := authz.decision with input as req({"tool": "hr.salaries", "action": "read"}) with data.aam.compiled as fixture
	codes(d) == {"tool_not_granted"}
}

test_unknown_workload_denied if {
	d := authz.decision with input as {"identity": {"spiffe_id": "spiffe://prod/agent/zz"}, "model": "m1", "tool": "", "action": ""}
		with data.aam.compiled as fixture
	not d.allow
	codes(d) == {"no_policy"}
	d.policy == ""
}

test_empty_request_denied if {
	d := authz.decision with input as req({}) with data.aam.compiled as fixture
	codes(d) == {"empty_request"}
}

test_model_and_tool_both_checked if {
	d := authz.decision with input as req({"model": "m2", "tool": "crm.accounts", "action": "export"})
		with data.aam.compiled as fixture
	codes(d) == {"model_not_allowed", "action_denied"}
}
