package aam.shadow_test

import data.aam.authz

enforced := {
	"name": "a-enforced",
	"models": {"m1": true},
	"tools": {"crm.accounts": {
		"rule": "spec.tools[0]",
		"actions": {"read": true, "export": true},
		"deny": {},
	}},
}

shadowed := {
	"name": "a-shadow",
	"models": {"m1": true},
	"tools": {"crm.accounts": {
		"rule": "spec.tools[0]",
		"actions": {"read": true},
		"deny": {"export": "spec.tools[0].deny"},
	}},
	"budget": {"daily_usd": 10, "timezone": "UTC"},
}

routes := {"m1": {"alias": "m1", "allow_fallbacks": true, "targets": [{"provider": "p", "model": "x"}]}}

fixture := {
	"revision": "r1",
	"policies": {"spiffe://prod/agent/a": enforced, "spiffe://prod/agent/c": enforced},
	"shadow_policies": {"spiffe://prod/agent/a": shadowed, "spiffe://prod/agent/b": shadowed},
	"routes": routes,
}

window(spent, limit, remaining) := {
	"window": "w", "spent_usd": spent, "reserved_usd": 0, "limit_usd": limit,
	"remaining_usd": remaining, "resets_in_s": 60,
}

metered(daily_spent) := {
	"budget": {"daily": window(daily_spent, null, null), "monthly": window(daily_spent, null, null)},
	"rate": {
		"requests_last_minute": 0, "tokens_last_minute": 0, "retry_after_s": 0,
		"route": {"requests_last_minute": 0, "tokens_last_minute": 0, "retry_after_s": 0},
	},
}

req(who, extra) := object.union(
	{"identity": {"spiffe_id": who}, "model": "", "tool": "", "action": "", "state": metered(0)},
	extra,
)

a := "spiffe://prod/agent/a"

codes(rs) := {r.code | some r in rs}

test_shadow_deny_changes_no_enforced_answer if {
	d := authz.decision with input as req(a, {"tool": "crm.accounts", "action": "export"})
		with data.aam.compiled as fixture
	d.allow
	d.reasons == []
	d.policy == "a-enforced"
	d.retry_after_s == null
	d.shadow.policy == "a-shadow"
	d.shadow.allow == false
	codes(d.shadow.reasons) == {"action_denied"}
	contains(d.shadow.reasons[0].message, "a-shadow")
}

test_shadow_agreeing_allow if {
	d := authz.decision with input as req(a, {"tool": "crm.accounts", "action": "read"})
		with data.aam.compiled as fixture
	d.allow
	d.shadow == {"policy": "a-shadow", "allow": true, "reasons": []}
}

test_enforced_route_kept_beside_shadow if {
	d := authz.decision with input as req(a, {"model": "m1"}) with data.aam.compiled as fixture
	d.allow
	d.route.alias == "m1"
	d.shadow.allow
}

test_no_shadow_policy_is_null if {
	d := authz.decision with input as req("spiffe://prod/agent/c", {"tool": "crm.accounts", "action": "export"})
		with data.aam.compiled as fixture
	d.allow
	d.shadow == null
}

test_bundle_without_shadow_document_is_null if {
	d := authz.decision with input as req(a, {"tool": "crm.accounts", "action": "export"})
		with data.aam.compiled as object.remove(fixture, ["shadow_policies"])
	d.allow
	d.shadow == null
}

# Only a shadow policy: the enforced answer fails closed, the shadow is still evaluated.
test_only_shadow_policy_fails_closed if {
	d := authz.decision with input as req("spiffe://prod/agent/b", {"tool": "crm.accounts", "action": "read"})
		with data.aam.compiled as fixture
	not d.allow
	codes(d.reasons) == {"no_policy"}
	d.policy == ""
	d.shadow.policy == "a-shadow"
	d.shadow.allow
}

# The shadow's budget is judged on the enforced decision's metered state.
test_shadow_budget_judged_on_metered_state if {
	d := authz.decision with input as req(a, {"tool": "crm.accounts", "action": "read", "state": metered(9.9995), "estimate": {"tokens": 0, "cost_usd": 0.001}})
		with data.aam.compiled as fixture
	d.allow
	codes(d.shadow.reasons) == {"budget_exhausted"}
	d.retry_after_s == null
}

# Ledger on, but the enforced policy meters nothing: the shadow's limit is not judged.
test_shadow_limit_not_metered if {
	r := object.union(object.remove(req(a, {"tool": "crm.accounts", "action": "read"}), ["state"]), {"state": {}})
	d := authz.decision with input as r
		with data.aam.compiled as fixture
	d.allow
	codes(d.shadow.reasons) == {"limit_not_metered"}
}

# No ledger at all: the shadow's budget fails closed like an enforced one would.
test_shadow_limit_without_ledger if {
	d := authz.decision with input as object.remove(req(a, {"tool": "crm.accounts", "action": "read"}), ["state"])
		with data.aam.compiled as fixture
	d.allow
	codes(d.shadow.reasons) == {"ledger_unavailable"}
}

test_explanation_carries_shadow if {
	e := authz.explanation with input as req(a, {"tool": "crm.accounts", "action": "export"})
		with data.aam.compiled as fixture
	e.decision.allow
	not e.decision.shadow.allow
}

# The enforced policy meters a 75 USD day; the shadow's own 10 USD limit is judged on
# the same spend, not on the remaining_usd the PDP worked out against 75.
test_shadow_budget_judged_against_its_own_limit if {
	enforced_budget := object.union(enforced, {"budget": {"daily_usd": 75, "timezone": "UTC"}})
	data_doc := object.union(fixture, {"policies": {a: enforced_budget}})
	state := object.union(metered(0), {"budget": {"daily": window(20, 75, 55), "monthly": window(20, null, null)}})
	d := authz.decision with input as req(a, {"tool": "crm.accounts", "action": "read", "state": state, "estimate": {"tokens": 0, "cost_usd": 0.01}})
		with data.aam.compiled as data_doc
	d.allow
	d.shadow.allow == false
	codes(d.shadow.reasons) == {"budget_exhausted"}
}
