# Tools: may the workload perform this action on this tool resource.
package aam.authz

grant := policy.tools[input.tool]

# What a tool call costs against the budget: the price the grant declares
# (compiled from the AgentPolicy or the Tool, with a default), or the
# caller's estimate when that is higher; never less than the declared price.
tool_cost_usd := max([estimate_cost, object.get(grant, "price_usd", 0)]) if {
	grant
	tool_action_requested
}

# No grant, or an MCP message that calls no tool (mcp.rego): no price.
tool_cost_usd := estimate_cost if not grant

tool_cost_usd := estimate_cost if {
	grant
	not tool_action_requested
}

deny contains reason("tool_not_granted", msg) if {
	tool_requested
	policy
	not grant
	msg := sprintf("tool %q is not granted by policy %q", [input.tool, policy.name])
}

deny contains reason("action_denied", msg) if {
	tool_action_requested
	rule := grant.deny[input.action]
	msg := sprintf(
		"action %q on %q is denied by policy %q (%s)",
		[input.action, input.tool, policy.name, rule],
	)
}

deny contains reason("action_not_granted", msg) if {
	tool_action_requested
	not grant.deny[input.action]
	not grant.actions[input.action]
	grant
	msg := sprintf(
		"action %q on %q is not granted by policy %q (%s.actions)",
		[input.action, input.tool, policy.name, grant.rule],
	)
}
