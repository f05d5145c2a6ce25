package aam.explain_test

import data.aam.authz
import data.aam.authz_test.fixture
import data.aam.authz_test.req

rules(e) := {m.rule | some m in e.matched}

test_model_allow_explained if {
	e := authz.explanation with input as req({"model": "m1"}) with data.aam.compiled as fixture
	e.decision.allow
	rules(e) == {"identity.policy", "models.allow", "models.route", "route.target[1]"}
}

test_tool_read_explained_with_grant_source if {
	e := authz.explanation with input as req({"tool": "crm.accounts", "action": "read"}) with data.aam.compiled as fixture
	rules(e) == {"identity.policy", "tools.grant", "tools.actions"}
	{"rule": "tools.actions", "source": "AgentPolicy a-policy spec.tools[0].actions"} in e.matched
}

test_deny_explained_with_deny_rule if {
	e := authz.explanation with input as req({"tool": "crm.accounts", "action": "export"}) with data.aam.compiled as fixture
	not e.decision.allow
	rules(e) == {"identity.policy", "tools.grant", "deny.action_denied"}
}

test_no_policy_explained if {
	e := authz.explanation with input as {"identity": {"spiffe_id": "spiffe://prod/agent/zz"}, "model": "m1", "tool": "", "action": ""}
		with data.aam.compiled as fixture
	rules(e) == {"deny.no_policy"}
}
