# Per-request cost cap (spec.budget.per_request_usd), checked against what
# the request costs: the caller's estimate, or for a tool call its declared
# price when that is higher (a model call's targets are priced against the
# cap in routes.rego). Day and month windows need the ledger's state and
# live with the ledger's rules.
package aam.authz

request_cost_usd := tool_cost_usd if tool_requested

request_cost_usd := estimate_cost if not tool_requested

deny contains reason("budget_exhausted", msg) if {
	cap := policy.budget.per_request_usd
	cost := request_cost_usd
	cost > cap
	msg := sprintf(
		"estimated cost $%v exceeds the per-request cap $%v of policy %q (spec.budget.per_request_usd)",
		[cost, cap, policy.name],
	)
}
