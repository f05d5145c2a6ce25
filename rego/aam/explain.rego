# Explanation: which rules matched, for `aam authorize --explain`.
#
# Queried instead of `decision` when a caller sets explain: it carries the
# same decision plus one entry per rule that fired, naming the Rego rule and
# the policy source it came from (an AgentPolicy field path or a
# ModelRoute), so a reader can see why without reading Rego. Not on the hot
# path.
package aam.authz

match(rule, source) := {"rule": rule, "source": source}

matched contains match("identity.policy", sprintf("AgentPolicy %s spec.identity.workload", [policy.name])) if {
	policy
}

matched contains match("models.allow", sprintf("AgentPolicy %s spec.models.allow", [policy.name])) if {
	model_requested
	policy.models[input.model]
}

matched contains match("models.route", sprintf("ModelRoute %s", [input.model])) if {
	route != null
}

matched contains match(sprintf("route.target[%d]", [n + 1]), sprintf("%s/%s @ %s (ModelRoute %s)", [t.provider, t.model, object.get(t, "region", ""), input.model])) if {
	some n, t in route.targets
}

matched contains match(sprintf("route.excluded.%s", [t.reason]), sprintf("%s/%s @ %s: %s (ModelRoute %s)", [t.provider, t.model, object.get(t, "region", ""), t.message, input.model])) if {
	some t in route.excluded
}

matched contains match("tools.grant", sprintf("AgentPolicy %s %s", [policy.name, grant.rule])) if {
	tool_requested
	grant
}

matched contains match("tools.actions", sprintf("AgentPolicy %s %s.actions", [policy.name, grant.rule])) if {
	tool_requested
	grant.actions[input.action]
}

matched contains match("mcp.session", sprintf("AgentPolicy %s %s (MCP %s %s: lifecycle or discovery)", [policy.name, grant.rule, input.mcp.message, input.mcp.method])) if {
	mcp_session
	grant
}

matched contains match("models.list", sprintf("AgentPolicy %s spec.models.allow", [policy.name])) if {
	count(listed_models) > 0
}

matched contains match(sprintf("deny.%s", [r.code]), r.message) if {
	some r in deny
}

explanation := {
	"decision": decision,
	"matched": sort([m | some m in matched]),
}
