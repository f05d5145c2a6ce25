package aam.budget_test

import data.aam.authz

fixture := {
	"revision": "r1",
	"policies": {"spiffe://prod/agent/a": {
		"name": "a-policy",
		"models": {"m1": true},
		"tools": {},
		"budget": {"daily_usd": 75, "monthly_usd": 1000, "per_request_usd": 5, "timezone": "UTC"},
	}},
	"routes": {"m1": {"alias": "m1", "allow_fallbacks": true, "targets": [{"provider": "p", "model": "x"}]}},
}

# remaining is computed exactly by the PDP (integer micro-dollars); given here.
window(spent, reserved, limit, remaining, resets) := {
	"window": "w", "spent_usd": spent, "reserved_usd": reserved, "limit_usd": limit,
	"remaining_usd": remaining, "resets_in_s": resets,
}

state(daily, monthly) := {
	"budget": {"daily": daily, "monthly": monthly},
	"rate": {"requests_last_minute": 0, "tokens_last_minute": 0, "retry_after_s": 0,
		"route": {"requests_last_minute": 0, "tokens_last_minute": 0, "retry_after_s": 0}},
}

req(cost, st) := {
	"identity": {"spiffe_id": "spiffe://prod/agent/a"}, "model": "m1", "tool": "", "action": "",
	"estimate": {"tokens": 1000, "cost_usd": cost}, "state": st,
}

codes(d) := {r.code | some r in d.reasons}

test_within_budget_allowed if {
	d := authz.decision with input as req(0.5, state(window(10, 0, 75, 65, 100), window(10, 0, 1000, 990, 9000)))
		with data.aam.compiled as fixture
	d.allow
	d.retry_after_s == null
}

test_daily_budget_exhausted_explains_spend if {
	d := authz.decision with input as req(1.2, state(window(74, 0.2, 75, 0.8, 3600), window(74.2, 0, 1000, 925.8, 9000)))
		with data.aam.compiled as fixture
	not d.allow
	codes(d) == {"budget_exhausted"}
	startswith(d.reasons[0].message, "spent 74.00 and reserved 0.20 of 75.00 USD today; this call may cost up to 1.20 USD")
	d.retry_after_s == 3600
}

test_exact_remaining_is_allowed if {
	d := authz.decision with input as req(0.01, state(window(0.99, 0, 1, 0.01, 10), window(0.99, 0, 1000, 999.01, 10)))
		with data.aam.compiled as fixture
	d.allow
}

test_monthly_budget_exhausted if {
	d := authz.decision with input as req(1, state(window(0, 0, 75, 75, 10), window(999.5, 0, 1000, 0.5, 86400)))
		with data.aam.compiled as fixture
	codes(d) == {"budget_exhausted"}
	contains(d.reasons[0].message, "USD this month")
	d.retry_after_s == 86400
}

test_per_request_limit if {
	d := authz.decision with input as req(6, state(window(0, 0, 75, 75, 10), window(0, 0, 1000, 1000, 10)))
		with data.aam.compiled as fixture
	codes(d) == {"budget_exhausted"}
	count(d.reasons) == 1
	contains(d.reasons[0].message, "per-request cap")
}

test_budget_without_ledger_state_fails_closed if {
	d := authz.decision with input as object.remove(req(0.1, {}), ["state"])
		with data.aam.compiled as fixture
	not d.allow
	codes(d) == {"ledger_unavailable"}
}

test_hand_written_state_without_remaining if {
	st := {"budget": {"daily": {"spent_usd": 74, "reserved_usd": 0.5}, "monthly": {"spent_usd": 0, "reserved_usd": 0}}}
	d := authz.decision with input as req(1, st) with data.aam.compiled as fixture
	codes(d) == {"budget_exhausted"}
	startswith(d.reasons[0].message, "spent 74.00 and reserved 0.50 of 75.00 USD today")
}

# Tool calls are priced by their grant (price_usd, compiled with a default), and a
# caller's estimate can only raise that price: a spent budget denies a tool call
# whatever the caller claims it costs.
tool_fixture := object.union(fixture, {"policies": {"spiffe://prod/agent/a": {"tools": {
	"crm.accounts": {"rule": "spec.tools[0]", "actions": {"read": true}, "deny": {}, "price_usd": 0.001},
}}}})

tool_req(cost, st) := object.union(req(cost, st), {"model": "", "tool": "crm.accounts", "action": "read"})

test_spent_budget_denies_a_tool_call_with_a_zero_estimate if {
	d := authz.decision with input as tool_req(0, state(window(75, 0, 75, 0, 60), window(75, 0, 1000, 925, 9000)))
		with data.aam.compiled as tool_fixture
	codes(d) == {"budget_exhausted"}
	contains(d.reasons[0].message, "this call may cost up to 0.00 USD")
}

test_tool_call_within_budget_costs_its_declared_price if {
	inp := tool_req(0, state(window(1, 0, 75, 74, 60), window(1, 0, 1000, 999, 9000)))
	d := authz.decision with input as inp with data.aam.compiled as tool_fixture
	d.allow
	authz.call_cost_usd == 0.001 with input as inp with data.aam.compiled as tool_fixture
	dear := tool_req(2, state(window(1, 0, 75, 74, 60), window(1, 0, 1000, 999, 9000)))
	authz.call_cost_usd == 2 with input as dear with data.aam.compiled as tool_fixture
}

test_per_request_cap_uses_the_declared_tool_price if {
	pricey := object.union(tool_fixture, {"policies": {"spiffe://prod/agent/a": {"tools": {
		"crm.accounts": {"price_usd": 6},
	}}}})
	d := authz.decision with input as tool_req(0.01, state(window(0, 0, 75, 75, 60), window(0, 0, 1000, 1000, 9000)))
		with data.aam.compiled as pricey
	codes(d) == {"budget_exhausted"}
	contains(d.reasons[0].message, "per-request cap")
}
