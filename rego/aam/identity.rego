# Identity: the policy bound to the calling workload.
package aam.authz

deny contains reason("no_policy", sprintf("no policy grants workload %s", [workload])) if {
	not policy
}
