# Shadow policies: evaluated beside the enforced one, never deciding.
#
# An AgentPolicy with `rollout: {mode: shadow}` compiles into
# data.aam.compiled.shadow_policies (same shape as policies). On every
# decision for its workload the same deny rules run again with the shadow
# policy in place of the enforced one, in the same query (no second round
# trip), and the result rides along as decision.shadow. Nothing here feeds
# allow, reasons, route or retry_after: the enforced answer is what it would
# be without the shadow, and a workload whose only policy is a shadow one is
# denied no_policy (fail closed) while its shadow is still evaluated.
#
# The shadow sees the enforced decision's ledger state (input.state). Limits
# the enforced policy does not meter cannot be judged: with a ledger on, the
# shadow reports those as limit_not_metered rather than ledger_unavailable.
package aam.authz

shadow_policies := object.get(compiled, "shadow_policies", {})

default shadow := null

# `with policy as ...` replaces the rule's value whole. (`with data.aam.compiled.policies
# as ...` would not do: on bundle data OPA 1.x merges the replacement into the stored
# object, so a shadow would inherit every grant of the enforced policy it leaves out.)
shadow := {"policy": shadow_policy.name, "allow": count(reasons) == 0, "reasons": reasons} if {
	shadow_policy := shadow_policies[workload]
	found := deny with policy as shadow_policy
	reasons := sort([shadow_reason(r) | some r in found])
}

shadow_reason(r) := reason("limit_not_metered", msg) if {
	r.code == "ledger_unavailable"
	is_object(input.state)
	msg := sprintf(
		"shadow policy %q sets a budget or rate limit that the enforced policy does not meter, so it is not judged in shadow",
		[shadow_policies[workload].name],
	)
} else := r
