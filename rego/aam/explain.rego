# Explanation: which rules matched, for `aam authorize --explain`.
#
# Queried instead of `decision` when a caller sets explain: it carries the
# same decision plus one entry per rule that fired, naming the Rego rule and
# the policy source it came from (an AgentPolicy field path or a
# ModelRoute), so a reader can see why without reading Rego. Each entry also
# carries `at`, the file:line:col where that rule is written, from the
# compiler's source map (data.aam.compiled.sources; absent in hand-written
# data, and then so is `at`). Not on the hot path.
package aam.authz

match(rule, source) := {"rule": rule, "source": source}

# A matched rule and where it is written; without a known place, no `at`.
match_at(rule, source, at) := {"rule": rule, "source": source, "at": at} if at != ""

else := match(rule, source)

located(src, key) := sprintf("%s:%s", [src.file, src.at[key]])

# Where a rule of the caller's policy is written ("" when unknown).
policy_at(key) := at if {
	at := located(compiled.sources.policies[workload], key)
} else := ""

route_at(alias, key) := at if {
	at := located(compiled.sources.routes[alias], key)
} else := ""

# A route target as decided (re-ordered, priced) back to the one written.
target_at(alias, t) := route_at(alias, sprintf("spec.targets[%d]", [written[0]])) if {
	written := [i |
		some i, d in compiled.routes[alias].targets
		d.provider == t.provider
		d.model == t.model
		object.get(d, "region", "") == object.get(t, "region", "")
	]
	count(written) > 0
} else := route_at(alias, "metadata.name")

# The rule a deny is about: the first rule its message names that is in the
# source map (spec.tools[0].deny), else the part of the policy its code is
# about, else the policy itself (its workload).
deny_section := {
	"model_not_allowed": "spec.models.allow",
	"budget_exhausted": "spec.budget",
	"ledger_unavailable": "spec.budget",
	"rate_limited": "spec.rate",
}

deny_at(r) := at if {
	named := [a |
		some m in regex.find_n(`spec\.[A-Za-z0-9_.\[\]-]*[A-Za-z0-9_\]]`, r.message, -1)
		a := policy_at(m)
		a != ""
	]
	count(named) > 0
	at := named[0]
} else := at if {
	r.code == "no_eligible_route"
	at := route_at(input.model, "metadata.name")
	at != ""
} else := at if {
	at := policy_at(deny_section[r.code])
	at != ""
} else := policy_at("spec.identity.workload")

matched contains match_at("identity.policy", sprintf("AgentPolicy %s spec.identity.workload", [policy.name]), policy_at("spec.identity.workload")) if {
	policy
}

matched contains match_at("models.allow", sprintf("AgentPolicy %s spec.models.allow", [policy.name]), policy_at("spec.models.allow")) if {
	model_requested
	policy.models[input.model]
}

matched contains match_at("models.route", sprintf("ModelRoute %s", [input.model]), route_at(input.model, "metadata.name")) if {
	route != null
}

matched contains match_at(sprintf("route.target[%d]", [n + 1]), sprintf("%s/%s @ %s (ModelRoute %s)", [t.provider, t.model, object.get(t, "region", ""), input.model]), target_at(input.model, t)) if {
	some n, t in route.targets
}

matched contains match_at(sprintf("route.excluded.%s", [t.reason]), sprintf("%s/%s @ %s: %s (ModelRoute %s)", [t.provider, t.model, object.get(t, "region", ""), t.message, input.model]), target_at(input.model, t)) if {
	some t in route.excluded
}

matched contains match_at("tools.grant", sprintf("AgentPolicy %s %s", [policy.name, grant.rule]), policy_at(grant.rule)) if {
	tool_requested
	grant
}

matched contains match_at("tools.actions", sprintf("AgentPolicy %s %s.actions", [policy.name, grant.rule]), policy_at(sprintf("%s.actions", [grant.rule]))) if {
	tool_requested
	grant.actions[input.action]
}

matched contains match_at("mcp.session", sprintf("AgentPolicy %s %s (MCP %s %s: lifecycle or discovery)", [policy.name, grant.rule, input.mcp.message, input.mcp.method]), policy_at(grant.rule)) if {
	mcp_session
	grant
}

matched contains match_at("models.list", sprintf("AgentPolicy %s spec.models.allow", [policy.name]), policy_at("spec.models.allow")) if {
	count(listed_models) > 0
}

matched contains match_at(sprintf("deny.%s", [r.code]), r.message, deny_at(r)) if {
	some r in deny
}

explanation := {
	"decision": decision,
	# by rule name (objects alone would sort by `at` first, as text)
	"matched": [k[2] | some k in sort([[m.rule, m.source, m] | some m in matched])],
}
