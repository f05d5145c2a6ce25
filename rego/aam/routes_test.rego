package aam.routes_test

import data.aam.authz

wl := "spiffe://prod/agent/r"

targets := [
	{"provider": "anthropic", "model": "claude", "region": "us-east-1", "input_price_per_mtok": 3, "output_price_per_mtok": 15, "context_window": 200000, "data_retention": false},
	{"provider": "openai", "model": "gpt", "region": "us-east-1", "input_price_per_mtok": 1.25, "output_price_per_mtok": 10, "context_window": 100000, "data_retention": true},
	{"provider": "bedrock", "model": "claude-eu", "region": "eu-central-1", "input_price_per_mtok": 3.3, "output_price_per_mtok": 16.5, "context_window": 200000, "data_retention": false},
]

route(extra) := object.union({"alias": "m", "allow_fallbacks": true, "sort": "order", "data_collection": "allow", "targets": targets}, extra)

data_with(r, pol) := {
	"revision": "r",
	"policies": {wl: object.union(
		{"name": "p", "models": {"m": true}, "tools": {
			"crm.pii": {"rule": "spec.tools[0]", "actions": {"read": true}, "deny": {}, "conditions": {"rule": "spec.tools[0].conditions", "model_region": ["eu-*"]}},
		}},
		pol,
	)},
	"routes": {"m": r},
}

# A ledger budget window with this much left of a $10 limit.
win(left) := {"spent_usd": 10 - left, "reserved_usd": 0, "remaining_usd": left, "resets_in_s": 60}

ask(extra) := object.union({"identity": {"spiffe_id": wl}, "model": "m", "tool": "", "action": "", "context": {}, "estimate": {"tokens": 0, "cost_usd": 0}}, extra)

decide(r, pol, extra) := d if {
	d := authz.decision with input as ask(extra) with data.aam.compiled as data_with(r, pol)
}

providers(d) := [t.provider | some t in d.route.targets]

excluded(d) := {[t.provider, t.reason] | some t in d.route.excluded}

test_order_as_written if {
	d := decide(route({}), {}, {})
	d.allow
	providers(d) == ["anthropic", "openai", "bedrock"]
	d.route.excluded == []
}

test_sort_by_price if {
	d := decide(route({"sort": "price"}), {}, {})
	providers(d) == ["openai", "anthropic", "bedrock"]
}

test_fallbacks_disabled_first_eligible_only if {
	d := decide(route({"allow_fallbacks": false, "providers": {"ignore": {"anthropic": true}}}), {}, {})
	d.allow
	providers(d) == ["openai"]
	d.route.allow_fallbacks == false
}

test_providers_only if {
	d := decide(route({"providers": {"only": {"bedrock": true}}}), {}, {})
	providers(d) == ["bedrock"]
	excluded(d) == {["anthropic", "provider"], ["openai", "provider"]}
}

test_route_regions if {
	d := decide(route({"regions": ["eu-*"]}), {}, {})
	providers(d) == ["bedrock"]
	excluded(d) == {["anthropic", "region"], ["openai", "region"]}
}

test_policy_regions if {
	d := decide(route({}), {"model_regions": ["us-*"]}, {})
	providers(d) == ["anthropic", "openai"]
	some t in d.route.excluded
	contains(t.message, "AgentPolicy p spec.models.regions")
}

test_context_residency_string_and_list if {
	providers(decide(route({}), {}, {"context": {"data_residency": "eu-*"}})) == ["bedrock"]
	providers(decide(route({}), {}, {"context": {"data_residency": ["eu-*", "us-east-1"]}})) == ["anthropic", "openai", "bedrock"]
}

test_malformed_residency_fails_closed if {
	d := decide(route({}), {}, {"context": {"data_residency": 7}})
	not d.allow
	{r.code | some r in d.reasons} == {"no_eligible_route"}
}

test_region_pinning_leaving_no_target_denies if {
	d := decide(route({"regions": ["eu-*"]}), {"model_regions": ["us-*"]}, {})
	not d.allow
	{r.code | some r in d.reasons} == {"no_eligible_route"}
	contains(d.reasons[0].message, "bedrock/claude-eu@eu-central-1: region")
}

test_target_without_region_never_meets_residency if {
	r := route({"targets": [{"provider": "x", "model": "y", "region": ""}], "regions": ["*"]})
	not decide(r, {}, {}).allow
}

test_max_price if {
	d := decide(route({"max_price": {"output_per_mtok": 15}}), {}, {})
	providers(d) == ["anthropic", "openai"]
	excluded(d) == {["bedrock", "price"]}
	d2 := decide(route({"max_price": {"input_per_mtok": 2}}), {}, {})
	providers(d2) == ["openai"]
}

test_data_collection_deny if {
	d := decide(route({"data_collection": "deny"}), {}, {})
	providers(d) == ["anthropic", "bedrock"]
	excluded(d) == {["openai", "data_collection"]}
}

test_context_window if {
	d := decide(route({}), {}, {"estimate": {"tokens": 150000, "cost_usd": 0}})
	providers(d) == ["anthropic", "bedrock"]
	excluded(d) == {["openai", "context_window"]}
}

test_first_reason_wins if {
	d := decide(route({"regions": ["eu-*"], "providers": {"ignore": {"openai": true}}}), {}, {})
	excluded(d) == {["anthropic", "region"], ["openai", "provider"]}
}

# 10,000 tokens: anthropic $0.15, openai $0.10, bedrock $0.165.
test_budget_skips_targets_and_prices_reservation if {
	state := {"budget": {"daily": win(0.16), "monthly": win(5)}}
	d := decide(route({}), {"budget": {"daily_usd": 10}}, {"estimate": {"tokens": 10000, "cost_usd": 0}, "state": state})
	d.allow
	providers(d) == ["anthropic", "openai"]
	excluded(d) == {["bedrock", "budget"]}
	d.route.limits.reserve_usd == 0.15
	d.route.limits.budget_left_usd == 0.16
}

test_per_request_cap_skips_targets if {
	d := decide(route({}), {"budget": {"per_request_usd": 0.12}}, {"estimate": {"tokens": 10000, "cost_usd": 0}})
	providers(d) == ["openai"]
	d.route.limits.reserve_usd == 0.1
}

test_budget_leaving_no_target_denies if {
	state := {"budget": {"daily": {"spent_usd": 9.99, "reserved_usd": 0, "remaining_usd": 0.01, "resets_in_s": 60}}}
	d := decide(route({}), {"budget": {"daily_usd": 10}}, {"estimate": {"tokens": 10000, "cost_usd": 0}, "state": state})
	not d.allow
	{r.code | some r in d.reasons} == {"budget_exhausted"}
	count(d.reasons) == 1
	startswith(d.reasons[0].message, "spent 9.99 and reserved 0.00 of 10.00 USD today; this call may cost up to 0.10 USD")
	d.retry_after_s == 60
}

test_per_request_cap_leaving_no_target_names_the_route if {
	d := decide(route({}), {"budget": {"per_request_usd": 0.01}}, {"estimate": {"tokens": 10000, "cost_usd": 0}})
	{r.code | some r in d.reasons} == {"budget_exhausted"}
	contains(d.reasons[0].message, "fits the budget")
}

test_budget_and_rules_together_leaving_no_target_is_a_routing_deny if {
	state := {"budget": {"daily": win(0.01)}}
	d := decide(route({"regions": ["eu-*"]}), {"model_regions": ["us-*"], "budget": {"daily_usd": 10}}, {"estimate": {"tokens": 10000, "cost_usd": 0}, "state": state})
	{r.code | some r in d.reasons} == {"no_eligible_route"}
}

test_caller_cost_without_tokens_prices_every_target if {
	d := decide(route({}), {}, {"estimate": {"tokens": 0, "cost_usd": 0.02}})
	d.route.limits.reserve_usd == 0.02
}

test_route_rate_is_returned if {
	d := decide(route({"rate": {"requests_per_minute": 5}}), {}, {})
	d.route.limits.rate == {"requests_per_minute": 5}
}

test_missing_fallback_flag_means_first_only if {
	d := decide(object.remove(route({}), ["allow_fallbacks"]), {}, {})
	providers(d) == ["anthropic"]
}

test_pii_tool_needs_eu_model if {
	ok := decide(route({}), {}, {"model": "", "tool": "crm.pii", "action": "read", "context": {"model_region": "eu-central-1"}})
	ok.allow
	us := decide(route({}), {}, {"model": "", "tool": "crm.pii", "action": "read", "context": {"model_region": "us-east-1"}})
	{r.code | some r in us.reasons} == {"condition_not_met"}
	contains(us.reasons[0].message, "model_region")
	none := decide(route({}), {}, {"model": "", "tool": "crm.pii", "action": "read"})
	not none.allow
}

test_explanation_names_order_and_exclusions if {
	e := authz.explanation with input as ask({}) with data.aam.compiled as data_with(route({"regions": ["us-*"]}), {})
	{"rule": "route.target[1]", "source": "anthropic/claude @ us-east-1 (ModelRoute m)"} in e.matched
	{"rule": "route.target[2]", "source": "openai/gpt @ us-east-1 (ModelRoute m)"} in e.matched
	some m in e.matched
	m.rule == "route.excluded.region"
	startswith(m.source, "bedrock/claude-eu @ eu-central-1: region \"eu-central-1\" is outside")
}

test_call_cost_follows_the_chain if {
	pol := data_with(route({}), {"budget": {"daily_usd": 10}})
	inp := ask({"estimate": {"tokens": 10000, "cost_usd": 0}, "state": {"budget": {"daily": win(0.16)}}})
	authz.call_cost_usd == 0.15 with input as inp with data.aam.compiled as pol
	low := ask({"estimate": {"tokens": 10000, "cost_usd": 0}, "state": {"budget": {"daily": win(0.01)}}})
	authz.call_cost_usd == 0.1 with input as low with data.aam.compiled as pol
	tool := ask({"model": "", "tool": "crm.pii", "action": "read", "estimate": {"tokens": 0, "cost_usd": 0.5}})
	authz.call_cost_usd == 0.5 with input as tool with data.aam.compiled as pol
}

# A caller's estimate can raise the price, never lower it: an agent does not set
# its own price (10,000 tokens on the dearest target cost more than 1e-12 USD).
test_caller_cost_raises_token_pricing if {
	d := decide(route({}), {}, {"estimate": {"tokens": 10, "cost_usd": 0.02}})
	d.route.limits.reserve_usd == 0.02
}

test_caller_cost_never_lowers_token_pricing if {
	cheap := decide(route({}), {}, {"estimate": {"tokens": 10000, "cost_usd": 1e-12}})
	honest := decide(route({}), {}, {"estimate": {"tokens": 10000}})
	cheap.route.limits.reserve_usd == honest.route.limits.reserve_usd
	honest.route.limits.reserve_usd > 0.001
}
