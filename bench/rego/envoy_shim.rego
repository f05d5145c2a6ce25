# The policy opa-envoy-plugin serves in the ext_authz baseline: the same
# decision library AAM's bundle carries (data.aam.authz), fed from Envoy's
# CheckRequest the way AAM's default mapping reads it
# (/tools/{resource}/{action}, JSON body = params, source.principal = workload),
# with the state of a fresh ledger. What AAM does beyond this (certificate
# cross-check, ledger reservation, durable audit, broker) is the difference
# being measured.
package aambench.envoy

import data.aam.authz

default allow := false

request := {
	"identity": {"spiffe_id": input.attributes.source.principal},
	"model": "",
	"tool": input.parsed_path[1],
	"action": input.parsed_path[2],
	"params": input.parsed_body,
	"context": {},
	"estimate": {"tokens": 0, "cost_usd": 0},
	"state": data.aambench.fresh_ledger,
}

allow if {
	input.parsed_path[0] == "tools"
	authz.decision.allow with input as request
}
