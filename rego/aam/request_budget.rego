# Per-request cost cap (spec.budget.per_request_usd), checked against the
# PDP's estimate. Day and month windows need the ledger's state and live
# with the ledger's rules.
package aam.authz

deny contains reason("budget_exhausted", msg) if {
	cap := policy.budget.per_request_usd
	cost := input.estimate.cost_usd
	cost > cap
	msg := sprintf(
		"estimated cost $%v exceeds the per-request cap $%v of policy %q (spec.budget.per_request_usd)",
		[cost, cap, policy.name],
	)
}
