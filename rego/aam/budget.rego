# Budgets: deny a call the workload's remaining budget cannot cover.
#
# The PDP's ledger reserves the estimated cost atomically before OPA is asked
# and puts the state before that reservation in input.state.budget (amounts
# in USD, whole micro-dollars); this file decides and explains. A policy with
# a budget but no ledger state (ledger off or down) is denied: budgets fail
# closed. The per-request cap is request_budget.rego's. A routed model call
# costs its chain's reservation price (call_cost_usd, routes.rego).
package aam.authz

budget_fields := {"daily": "daily_usd", "monthly": "monthly_usd"}

budget_period := {"daily": "today", "monthly": "this month"}

# Dollars and cents; sprintf's %f would print integers oddly.
usd(x) := sprintf("%d.%02d", [floor(c / 100), c % 100]) if c := round(x * 100)

# The PDP computes remaining_usd exactly (integer micro-dollars) against the
# limit it metered (limit_usd; a state written by hand, in aam test suites, may
# leave either out). It is null for a window metered without a limit, and a
# shadow policy's own limit may differ from the metered one: then it is worked
# out here.
remaining(b, limit) := r if {
	object.get(b, "limit_usd", limit) == limit
	r := b.remaining_usd
	is_number(r)
} else := (limit - b.spent_usd) - b.reserved_usd

budget_exceeded contains w if {
	some w, field in budget_fields
	limit := policy.budget[field]
	b := input.state.budget[w]
	call_cost_usd > remaining(b, limit)
}

deny contains reason("budget_exhausted", msg) if {
	some w in budget_exceeded
	b := input.state.budget[w]

	# Spent (settled) and reserved (allowed calls not yet settled) are told apart: a
	# reader seeing only "spent" cannot tell where the rest of the budget went.
	msg := sprintf("spent %s and reserved %s of %s USD %s; this call may cost up to %s USD", [
		usd(b.spent_usd), usd(b.reserved_usd), usd(policy.budget[budget_fields[w]]), budget_period[w],
		usd(call_cost_usd),
	])
}

deny contains reason("ledger_unavailable", msg) if {
	some field in budget_fields
	policy.budget[field]
	not input.state.budget
	msg := sprintf("policy %q sets a budget but no ledger state is available", [policy.name])
}

retry_after_candidates contains input.state.budget[w].resets_in_s if some w in budget_exceeded
