# Tool constraints: rules on the request's parameters, compiled from
# spec.tools[i].constraints. Every violated rule adds its own reason.
package aam.authz

# Anything but an object (absent, null, a list) counts as no parameters, so
# `required` rules still deny.
params := p if {
	p := input.params
	is_object(p)
} else := {}

# Stands for an absent parameter (object.get needs a default value).
missing := {"aam.missing": true}

param_value(c) := object.get(params, c.path, missing)

constraint_message(c, what) := sprintf(
	"parameter %q %s (policy %q, %s)",
	[c.param, what, policy.name, c.rule],
)

as_list(v) := v if is_array(v)

as_list(v) := [v] if not is_array(v)

at_least(v, bound) if {
	is_number(v)
	v >= bound
}

at_most(v, bound) if {
	is_number(v)
	v <= bound
}

# A pattern RE2 refuses makes regex.match fail, so `not` treats it as a
# mismatch: a broken rule denies, it never allows.
full_match(re, v) if {
	is_string(v)
	regex.match(re, v)
}

short_enough(v, n) if {
	is_string(v)
	count(v) <= n
}

short_enough(v, n) if {
	is_array(v)
	count(v) <= n
}

constraint_violation contains constraint_message(c, "is required") if {
	some c in grant.constraints
	c.required
	param_value(c) == missing
}

constraint_violation contains constraint_message(c, "must not be present") if {
	some c in grant.constraints
	c.forbidden
	param_value(c) != missing
}

constraint_violation contains constraint_message(c, sprintf("must be a number >= %v, got %v", [c.min, v])) if {
	some c in grant.constraints
	v := param_value(c)
	v != missing
	not at_least(v, c.min)
}

constraint_violation contains constraint_message(c, sprintf("must be a number <= %v, got %v", [c.max, v])) if {
	some c in grant.constraints
	v := param_value(c)
	v != missing
	not at_most(v, c.max)
}

constraint_violation contains constraint_message(c, sprintf("value %v is not one of %v", [e, c.allowed_values])) if {
	some c in grant.constraints
	v := param_value(c)
	v != missing
	some e in as_list(v)
	not e in c.allowed_values
}

constraint_violation contains constraint_message(c, sprintf("value %v is forbidden", [e])) if {
	some c in grant.constraints
	v := param_value(c)
	v != missing
	some e in as_list(v)
	e in c.forbidden_values
}

constraint_violation contains constraint_message(c, sprintf("must be a string matching %q", [c.pattern])) if {
	some c in grant.constraints
	v := param_value(c)
	v != missing
	not full_match(c.regex, v)
}

constraint_violation contains constraint_message(c, sprintf("must be a string or list of at most %v", [c.max_length])) if {
	some c in grant.constraints
	v := param_value(c)
	v != missing
	not short_enough(v, c.max_length)
}

deny contains reason("constraint_violated", msg) if {
	tool_action_requested
	some msg in constraint_violation
}
