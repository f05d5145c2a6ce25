# Models: may the workload call this model alias, and by which route.
package aam.authz

deny contains reason("model_not_allowed", msg) if {
	model_requested
	policy
	not policy.models[input.model]
	msg := sprintf("model %q is not in models.allow of policy %q", [input.model, policy.name])
}

default route := null

# The targets to try and the limits that apply (routes.rego).
route := planned_route if route_def
