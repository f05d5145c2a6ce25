# Model routes: which targets of a ModelRoute the gateway may try, in order,
# and why the others were left out.
#
# A target is excluded (first reason wins, in this order) when:
#   provider        - not in providers.only, or in providers.ignore
#   region          - data residency demanded by the route (spec.regions), the
#                     workload's policy (spec.models.regions) or the runtime
#                     context (context.data_residency) is not met; a target
#                     without a region never meets a residency demand
#   data_collection - the route says data_collection: deny and the provider
#                     retains prompts
#   price           - dearer than the route's max_price
#   context_window  - the estimated tokens do not fit
#   budget          - its estimated cost exceeds the per-request cap or what
#                     is left of the policy's daily/monthly budget (the
#                     ledger's input.state.budget, before this call)
# The rest are ordered as written, or cheapest first with sort: price; with
# allow_fallbacks: false only the first remains. None left: no_eligible_route.
# reserve_usd prices the call at the dearest target left in the chain: the
# one figure the ledger reserves and budget.rego compares (call_cost_usd).
# The PDP asks for it before reserving (no state: the budget windows do not
# narrow the chain yet), so when the budget is not binding the reservation is
# exactly this chain's price; when it is, the ledger refuses, the chain
# narrows to what fits, and the PDP reserves reserve_usd of that chain.
package aam.authz

route_def := compiled.routes[input.model] if {
	model_requested
	policy.models[input.model]
}

default estimate_tokens := 0

estimate_tokens := input.estimate.tokens if is_number(input.estimate.tokens)

default estimate_cost := 0

estimate_cost := input.estimate.cost_usd if is_number(input.estimate.cost_usd)

price(t, side) := object.get(t, sprintf("%s_price_per_mtok", [side]), 0)

# The cost of one call on target t: the estimated tokens at the target's
# dearer price (a completion may be all output), or the caller's whole-call
# estimate when that is higher. A caller's estimate can raise a price, never
# lower it: an agent does not set its own price.
target_cost(t) := max([estimate_cost, (estimate_tokens * max([price(t, "input"), price(t, "output")])) / 1000000])

region_ok(patterns, region) if {
	region != ""
	some p in patterns
	glob.match(p, [], region)
}

# Data residency demands: [who demands it, patterns]. Each only narrows.
residency contains ["ModelRoute spec.regions", route_def.regions] if route_def.regions

residency contains [sprintf("AgentPolicy %s spec.models.regions", [policy.name]), policy.model_regions] if {
	route_def
	policy.model_regions
}

residency contains ["context.data_residency", [input.context.data_residency]] if {
	route_def
	is_string(input.context.data_residency)
}

residency contains ["context.data_residency", input.context.data_residency] if {
	route_def
	is_array(input.context.data_residency)
}

# Malformed demand (not a string or list): nothing matches, fail closed.
residency contains ["context.data_residency", []] if {
	route_def
	d := input.context.data_residency
	not is_string(d)
	not is_array(d)
}

# What the budget lets one call cost: [limit name, USD].
budget_caps contains ["the per-request cap (spec.budget.per_request_usd)", cap] if {
	cap := policy.budget.per_request_usd
}

budget_caps contains [sprintf("the %s budget left", [w]), remaining(b, limit)] if {
	route_def
	some w, field in budget_fields
	limit := policy.budget[field]
	b := input.state.budget[w]
}

# [target index, priority, code, message]
exclusion contains [i, 0, "provider", msg] if {
	some i, t in route_def.targets
	only := route_def.providers.only
	not only[t.provider]
	msg := sprintf("provider %s is not in providers.only %v", [t.provider, object.keys(only)])
}

exclusion contains [i, 0, "provider", msg] if {
	some i, t in route_def.targets
	route_def.providers.ignore[t.provider]
	msg := sprintf("provider %s is in providers.ignore", [t.provider])
}

exclusion contains [i, 1, "region", msg] if {
	some i, t in route_def.targets
	some [source, patterns] in residency
	not region_ok(patterns, t.region)
	msg := sprintf("region %q is outside %v demanded by %s", [t.region, patterns, source])
}

exclusion contains [i, 2, "data_collection", msg] if {
	route_def.data_collection == "deny"
	some i, t in route_def.targets
	object.get(t, "data_retention", false) == true
	msg := sprintf("provider %s retains prompts and the route says data_collection: deny", [t.provider])
}

exclusion contains [i, 3, "price", msg] if {
	some i, t in route_def.targets
	some [side, field] in [["input", "input_per_mtok"], ["output", "output_per_mtok"]]
	cap := route_def.max_price[field]
	p := price(t, side)
	p > cap
	msg := sprintf("%s price $%v/Mtok is above max_price.%s $%v", [side, p, field, cap])
}

exclusion contains [i, 4, "context_window", msg] if {
	some i, t in route_def.targets
	estimate_tokens > t.context_window
	msg := sprintf("%d estimated tokens exceed its context window of %d", [estimate_tokens, t.context_window])
}

exclusion contains [i, 5, "budget", msg] if {
	some i, t in route_def.targets
	some [limit, usd_left] in budget_caps
	cost := target_cost(t)
	cost > usd_left
	msg := sprintf("estimated cost $%v exceeds %s ($%v)", [cost, limit, usd_left])
}

excluded_index contains i if some [i, _, _, _] in exclusion

# The first reason per excluded target, in target order.
excluded_targets := [object.union(t, {"reason": code, "message": msg}) |
	some i, t in route_def.targets
	excluded_index[i]
	[_, code, msg] := min({[p, c, m] | some [j, p, c, m] in exclusion; j == i})
]

eligible_index := [i | some i, _ in route_def.targets; not excluded_index[i]]

default route_sort := "order"

route_sort := route_def.sort

ordered_index := eligible_index if route_sort != "price"

ordered_index := [k[2] | some k in sort([[price(t, "input"), price(t, "output"), i] |
	some i in eligible_index
	t := route_def.targets[i]
])] if route_sort == "price"

# Absent in hand-written data means no fallbacks: the narrower answer.
fallbacks := object.get(route_def, "allow_fallbacks", false)

chain_index := ordered_index if fallbacks == true

chain_index := array.slice(ordered_index, 0, 1) if fallbacks != true

chain := [object.union(t, {"estimated_cost_usd": target_cost(t)}) |
	some i in chain_index
	t := route_def.targets[i]
]

default reserve_usd := 0

reserve_usd := max([t.estimated_cost_usd | some t in chain]) if count(chain) > 0

default budget_left := null

budget_left := min([usd | some [_, usd] in budget_caps]) if count(budget_caps) > 0

planned_route := {
	"alias": input.model,
	"allow_fallbacks": fallbacks == true,
	"sort": route_sort,
	"targets": chain,
	"excluded": excluded_targets,
	"limits": {
		"rate": object.get(route_def, "rate", {}),
		"reserve_usd": reserve_usd,
		"budget_left_usd": budget_left,
	},
}

# Targets that only the budget left out: the route could serve the call
# were there money left, so the deny is budget_exhausted, not a routing one.
priced_out contains i if {
	some [i, 5, _, _] in exclusion
	not ruled_out[i]
}

ruled_out contains i if {
	some [i, p, _, _] in exclusion
	p < 5
}

exclusion_summary := concat("; ", [sprintf("%s/%s@%s: %s", [t.provider, t.model, object.get(t, "region", ""), t.message]) |
	some t in excluded_targets
])

deny contains reason("no_eligible_route", msg) if {
	route_def
	count(chain) == 0
	count(priced_out) == 0
	msg := sprintf("no target of model route %q is eligible (%s)", [input.model, exclusion_summary])
}

# Said once: when a budget window (budget.rego, with its retry_after) or the
# caller's own estimate over the per-request cap (request_budget.rego) is
# what priced the targets out, that rule's reason says it.
budget_said_elsewhere if count(budget_exceeded) > 0

budget_said_elsewhere if estimate_cost > policy.budget.per_request_usd

deny contains reason("budget_exhausted", msg) if {
	route_def
	count(chain) == 0
	count(priced_out) > 0
	not budget_said_elsewhere
	msg := sprintf("no target of model route %q fits the budget (%s)", [input.model, exclusion_summary])
}

# What one call costs for the budget rules (budget.rego, the ledger's
# reservation): the routed chain's reservation price; with nothing left, the
# cheapest target the budget priced out; for a tool call its declared price
# (tools.rego); for anything else the caller's estimate.
call_cost_usd := reserve_usd if {
	route_def
	count(chain) > 0
} else := min([target_cost(route_def.targets[i]) | some i in priced_out]) if {
	count(priced_out) > 0
} else := tool_cost_usd if {
	tool_requested
} else := estimate_cost
