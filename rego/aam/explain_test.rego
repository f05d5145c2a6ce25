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

located_fixture := object.union(fixture, {"sources": {
	"policies": {"spiffe://prod/agent/a": {"file": "a.yaml", "at": {
		"spec.identity.workload": "6:15",
		"spec.models.allow": "8:5",
		"spec.tools[0]": "10:7",
		"spec.tools[0].actions": "11:7",
		"spec.tools[0].deny": "12:7",
	}}},
	"routes": {"m1": {"file": "routes.yaml", "at": {"metadata.name": "3:9", "spec.targets[0]": "5:7"}}},
}})

at(e) := {m.rule: m.at | some m in e.matched; m.at}

test_matched_rules_say_where_they_are_written if {
	e := authz.explanation with input as req({"model": "m1"}) with data.aam.compiled as located_fixture
	at(e) == {
		"identity.policy": "a.yaml:6:15", "models.allow": "a.yaml:8:5",
		"models.route": "routes.yaml:3:9", "route.target[1]": "routes.yaml:5:7",
	}
}

test_a_deny_is_located_at_the_rule_its_message_names if {
	e := authz.explanation with input as req({"tool": "crm.accounts", "action": "export"})
		with data.aam.compiled as located_fixture
	at(e) == {"identity.policy": "a.yaml:6:15", "tools.grant": "a.yaml:10:7", "deny.action_denied": "a.yaml:12:7"}
}

test_a_deny_without_a_named_rule_is_located_at_its_section_or_the_policy if {
	e := authz.explanation with input as req({"model": "m2"}) with data.aam.compiled as located_fixture
	at(e)["deny.model_not_allowed"] == "a.yaml:8:5"
	f := authz.explanation with input as req({"tool": "hr.salaries", "action": "read"})
		with data.aam.compiled as located_fixture
	at(f)["deny.tool_not_granted"] == "a.yaml:6:15"
}

test_no_source_map_no_at if {
	e := authz.explanation with input as req({"model": "m1"}) with data.aam.compiled as fixture
	at(e) == {}
}
