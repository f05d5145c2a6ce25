# Rate limits: requests and tokens per minute, per workload and per model route.
#
# input.state.rate counts the workload's allowed calls of the last 60 seconds
# across every PDP sharing the ledger; input.state.rate.route the same for the
# model route. retry_after_s says when the oldest of them leaves the window.
package aam.authz

workload_rate := object.get(policy, "rate", {})

default route_rate := {}

route_rate := compiled.routes[input.model].rate if model_requested

rate_exceeded contains ["workload", msg] if {
	limit := workload_rate.requests_per_minute
	input.state.rate.requests_last_minute >= limit
	msg := sprintf("workload %s made %d requests in the last minute (limit %d per minute)", [
		workload, input.state.rate.requests_last_minute, limit,
	])
}

rate_exceeded contains ["workload", msg] if {
	limit := workload_rate.tokens_per_minute
	input.state.rate.tokens_last_minute + input.estimate.tokens > limit
	msg := sprintf("workload %s used %d tokens in the last minute and asks for %d (limit %d per minute)", [
		workload, input.state.rate.tokens_last_minute, input.estimate.tokens, limit,
	])
}

rate_exceeded contains ["route", msg] if {
	limit := route_rate.requests_per_minute
	input.state.rate.route.requests_last_minute >= limit
	msg := sprintf("model route %q served %d requests in the last minute (limit %d per minute)", [
		input.model, input.state.rate.route.requests_last_minute, limit,
	])
}

rate_exceeded contains ["route", msg] if {
	limit := route_rate.tokens_per_minute
	input.state.rate.route.tokens_last_minute + input.estimate.tokens > limit
	msg := sprintf("model route %q used %d tokens in the last minute and this call asks for %d (limit %d per minute)", [
		input.model, input.state.rate.route.tokens_last_minute, input.estimate.tokens, limit,
	])
}

deny contains reason("rate_limited", msg) if {
	policy
	some [_, msg] in rate_exceeded
}

deny contains reason("ledger_unavailable", msg) if {
	policy
	count(workload_rate) + count(route_rate) > 0
	not input.state.rate
	msg := sprintf("policy %q or its model route sets a rate limit but no ledger state is available", [policy.name])
}

retry_after_candidates contains input.state.rate.retry_after_s if some ["workload", _] in rate_exceeded

retry_after_candidates contains input.state.rate.route.retry_after_s if some ["route", _] in rate_exceeded
