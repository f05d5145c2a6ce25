# Identity: the policy bound to the calling workload.
package aam.authz

deny contains reason("no_policy", sprintf("no policy grants workload %s", [workload])) if {
	not policy
}

# The runtime value of a binding attribute (environment, deployment, team,
# owner): what the verified identity says, else what the request context says.
runtime_attribute(name) := v if {
	v := input.identity[name]
} else := v if {
	v := input.context[name]
}

# A request whose runtime contradicts the policy's binding is denied. An
# attribute the request does not state contradicts nothing; a tool that needs
# the environment stated uses a `conditions.environments` rule.
deny contains reason("binding_mismatch", msg) if {
	some attribute, bound in policy.binding
	actual := runtime_attribute(attribute)
	actual != bound
	msg := sprintf(
		"request %s %q contradicts the %s %q that policy %q binds (spec.identity.%s)",
		[attribute, actual, attribute, bound, policy.name, attribute],
	)
}
