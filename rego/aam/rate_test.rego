package aam.rate_test

import data.aam.authz

fixture := {
	"revision": "r1",
	"policies": {"spiffe://prod/agent/a": {
		"name": "a-policy",
		"models": {"m1": true, "m2": true},
		"tools": {"crm.accounts": {"rule": "spec.tools[0]", "actions": {"read": true}, "deny": {}}},
		"rate": {"requests_per_minute": 10, "tokens_per_minute": 5000},
	}},
	"routes": {
		"m1": {"alias": "m1", "allow_fallbacks": true, "targets": [{"provider": "p", "model": "x"}], "rate": {"requests_per_minute": 100, "tokens_per_minute": 100000}},
		"m2": {"alias": "m2", "allow_fallbacks": true, "targets": [{"provider": "p", "model": "x"}]},
	},
}

state(w_req, w_tok, r_req, r_tok) := {"rate": {
	"requests_last_minute": w_req, "tokens_last_minute": w_tok, "retry_after_s": 12.5,
	"route": {"requests_last_minute": r_req, "tokens_last_minute": r_tok, "retry_after_s": 30},
}}

req(model, tokens, st) := {
	"identity": {"spiffe_id": "spiffe://prod/agent/a"}, "model": model, "tool": "", "action": "",
	"estimate": {"tokens": tokens, "cost_usd": 0}, "state": st,
}

codes(d) := {r.code | some r in d.reasons}

test_under_limits_allowed if {
	d := authz.decision with input as req("m1", 100, state(9, 4900, 99, 0)) with data.aam.compiled as fixture
	d.allow
}

test_workload_rpm_limited_with_retry_after if {
	d := authz.decision with input as req("m2", 10, state(10, 0, 0, 0)) with data.aam.compiled as fixture
	codes(d) == {"rate_limited"}
	contains(d.reasons[0].message, "10 requests in the last minute (limit 10 per minute)")
	d.retry_after_s == 12.5
}

test_workload_tpm_limited if {
	d := authz.decision with input as req("m2", 200, state(1, 4900, 0, 0)) with data.aam.compiled as fixture
	codes(d) == {"rate_limited"}
}

test_route_rpm_limited_takes_longest_retry if {
	d := authz.decision with input as req("m1", 10, state(10, 0, 100, 0)) with data.aam.compiled as fixture
	codes(d) == {"rate_limited"}
	count(d.reasons) == 2
	d.retry_after_s == 30
}

test_route_tpm_limited if {
	d := authz.decision with input as req("m1", 10, state(0, 0, 0, 99995)) with data.aam.compiled as fixture
	codes(d) == {"rate_limited"}
	contains(d.reasons[0].message, "model route \"m1\"")
}

test_tool_call_counts_workload_rate if {
	d := authz.decision with input as {
		"identity": {"spiffe_id": "spiffe://prod/agent/a"}, "model": "", "tool": "crm.accounts",
		"action": "read", "estimate": {"tokens": 0, "cost_usd": 0}, "state": state(10, 0, 0, 0),
	}
		with data.aam.compiled as fixture
	codes(d) == {"rate_limited"}
}

test_rate_without_ledger_state_fails_closed if {
	d := authz.decision with input as object.remove(req("m2", 1, {}), ["state"]) with data.aam.compiled as fixture
	codes(d) == {"ledger_unavailable"}
}
