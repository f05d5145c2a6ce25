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

# Model discovery (GET /v1/models, input.list == "models"): the aliases the
# workload's policy allows, answered with the decision; denied when there are
# none.
models_list_requested if input.list == "models"

deny contains reason("model_not_allowed", msg) if {
	models_list_requested
	policy
	count(object.get(policy, "models", {})) == 0
	msg := sprintf("policy %q allows no models (spec.models.allow)", [policy.name])
}

default listed_models := []

listed_models := sort(object.keys(policy.models)) if {
	models_list_requested
	allow
}
