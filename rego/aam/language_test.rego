package aam.language_test

import data.aam.authz

fixture := {
	"revision": "r2",
	"policies": {"spiffe://prod/agent/b": {
		"name": "b-policy",
		"binding": {"environment": "prod", "team": "finance"},
		"budget": {"per_request_usd": 0.5, "timezone": "UTC"},
		"models": {"m1": true},
		"tools": {
			"crm.accounts": {
				"rule": "spec.tools[0]",
				"actions": {"search": true},
				"deny": {},
				"constraints": [
					{"rule": "spec.tools[0].constraints[0]", "param": "limit", "path": ["limit"], "min": 1, "max": 100},
					{"rule": "spec.tools[0].constraints[1]", "param": "filter.region", "path": ["filter", "region"], "allowed_values": ["eu", "us"]},
					{"rule": "spec.tools[0].constraints[2]", "param": "fields", "path": ["fields"], "forbidden_values": ["ssn"], "max_length": 3},
					{"rule": "spec.tools[0].constraints[3]", "param": "query", "path": ["query"], "required": true, "pattern": "[a-z ]+", "regex": "^(?:[a-z ]+)$"},
					{"rule": "spec.tools[0].constraints[4]", "param": "raw_sql", "path": ["raw_sql"], "forbidden": true},
				],
			},
			"hr.reports": {
				"rule": "spec.tools[1]",
				"actions": {"read": true},
				"deny": {},
				"conditions": {
					"rule": "spec.tools[1].conditions",
					"time_window": {"start": 480, "end": 1080, "text": "08:00-18:00", "timezone": "Europe/Berlin", "days": {"Monday": true, "Tuesday": true}},
					"environments": {"prod": true},
					"context": {"region": ["eu-west-1"]},
				},
			},
			"ops.pager": {
				"rule": "spec.tools[2]",
				"actions": {"page": true},
				"deny": {},
				"conditions": {
					"rule": "spec.tools[2].conditions",
					"time_window": {"start": 1320, "end": 360, "text": "22:00-06:00", "timezone": "UTC", "days": null},
				},
			},
		},
	}},
	"routes": {"m1": {"alias": "m1", "allow_fallbacks": true, "targets": [{"provider": "p", "model": "x", "region": "eu-west-1"}]}},
}

base := {"identity": {"spiffe_id": "spiffe://prod/agent/b"}, "model": "", "tool": "", "action": ""}

search(params) := object.union(base, {"tool": "crm.accounts", "action": "search", "params": params})

good := {"limit": 10, "filter": {"region": "eu"}, "fields": ["name"], "query": "acme corp"}

decide(inp) := d if {
	d := authz.decision with input as inp with data.aam.compiled as fixture
}

codes(d) := {r.code | some r in d.reasons}

messages(d) := concat("\n", [r.message | some r in d.reasons])

test_constraints_pass if {
	d := decide(search(good))
	d.allow
}

test_min_and_max if {
	codes(decide(search(object.union(good, {"limit": 0})))) == {"constraint_violated"}
	codes(decide(search(object.union(good, {"limit": 101})))) == {"constraint_violated"}
	d := decide(search(object.union(good, {"limit": "ten"})))
	contains(messages(d), "must be a number >= 1")
	contains(messages(d), "spec.tools[0].constraints[0]")
}

test_nested_allowed_values if {
	d := decide(search(object.union(good, {"filter": {"region": "apac"}})))
	codes(d) == {"constraint_violated"}
	contains(messages(d), "\"filter.region\"")
}

test_forbidden_values_in_list if {
	d := decide(search(object.union(good, {"fields": ["name", "ssn"]})))
	contains(messages(d), "value ssn is forbidden")
}

test_max_length if {
	d := decide(search(object.union(good, {"fields": ["a", "b", "c", "d"]})))
	contains(messages(d), "at most 3")
	d2 := decide(search(object.union(good, {"fields": 7})))
	contains(messages(d2), "at most 3")
}

test_required_and_pattern if {
	d := decide(search(object.remove(good, ["query"])))
	contains(messages(d), "\"query\" is required")
	d2 := decide(search(object.union(good, {"query": "DROP TABLE"})))
	contains(messages(d2), "must be a string matching")
}

test_forbidden_key if {
	d := decide(search(object.union(good, {"raw_sql": "select 1"})))
	contains(messages(d), "\"raw_sql\" must not be present")
}

test_no_params_at_all if {
	d := decide(object.union(base, {"tool": "crm.accounts", "action": "search"}))
	codes(d) == {"constraint_violated"}
	d2 := decide(object.union(base, {"tool": "crm.accounts", "action": "search", "params": null}))
	contains(messages(d2), "\"query\" is required")
}

# 2026-11-23 is a Monday; 09:00 UTC is 10:00 in Berlin.
hr(extra) := object.union(
	object.union(base, {"tool": "hr.reports", "action": "read", "context": {"region": "eu-west-1", "environment": "prod"}}),
	extra,
)

test_conditions_met if {
	decide(hr({"now": "2026-11-23T09:00:00Z"})).allow
}

test_outside_hours if {
	d := decide(hr({"now": "2026-11-23T18:30:00Z"}))
	codes(d) == {"condition_not_met"}
	contains(messages(d), "08:00-18:00 (Europe/Berlin)")
}

test_wrong_day if {
	codes(decide(hr({"now": "2026-11-25T09:00:00Z"}))) == {"condition_not_met"}
}

test_window_across_midnight if {
	page := object.union(base, {"tool": "ops.pager", "action": "page"})
	decide(object.union(page, {"now": "2026-11-25T23:00:00Z"})).allow
	decide(object.union(page, {"now": "2026-11-25T05:59:00Z"})).allow
	codes(decide(object.union(page, {"now": "2026-11-25T12:00:00Z"}))) == {"condition_not_met"}
}

test_real_clock_is_used_without_now if {
	d := decide(object.union(base, {"tool": "ops.pager", "action": "page"}))
	is_boolean(d.allow)
}

test_environment_must_be_stated if {
	inp := object.union(base, {"tool": "hr.reports", "action": "read", "now": "2026-11-23T09:00:00Z", "context": {"region": "eu-west-1"}})
	d := decide(inp)
	codes(d) == {"condition_not_met"}
	contains(messages(d), "(not stated)")
}

test_context_attribute if {
	d := decide(hr({"now": "2026-11-23T09:00:00Z", "context": {"region": "us-east-1", "environment": "prod"}}))
	codes(d) == {"condition_not_met"}
	contains(messages(d), "context region")
}

test_binding_mismatch_from_context if {
	d := decide(hr({"now": "2026-11-23T09:00:00Z", "context": {"region": "eu-west-1", "environment": "staging"}}))
	"binding_mismatch" in codes(d)
	contains(messages(d), "request environment \"staging\" contradicts the environment \"prod\"")
}

test_binding_mismatch_from_identity if {
	inp := object.union(base, {"identity": {"spiffe_id": "spiffe://prod/agent/b", "team": "marketing"}, "model": "m1"})
	codes(decide(inp)) == {"binding_mismatch"}
}

test_binding_matches if {
	inp := object.union(base, {"model": "m1", "context": {"environment": "prod", "team": "finance"}})
	decide(inp).allow
}

test_per_request_cap if {
	over := object.union(base, {"model": "m1", "estimate": {"tokens": 1000, "cost_usd": 0.75}})
	d := decide(over)
	codes(d) == {"budget_exhausted"}
	contains(messages(d), "per-request cap $0.5")
	under := object.union(base, {"model": "m1", "estimate": {"tokens": 10, "cost_usd": 0.25}})
	decide(under).allow
}
