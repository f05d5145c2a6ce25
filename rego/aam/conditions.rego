# Tool conditions: when and where a granted tool may be used, compiled from
# spec.tools[i].conditions (time window, environments, context attributes).
package aam.authz

# The decision time. `input.now` (RFC 3339) lets policy test suites pin the
# clock; only the PDP assembles input, and it never sets it from a request.
now_ns := t if {
	t := time.parse_rfc3339_ns(input.now)
} else := time.now_ns()

conditions := grant.conditions

day_allowed(tw) if tw.days == null

day_allowed(tw) if tw.days[time.weekday([now_ns, tw.timezone])]

minute_of_day(tz) := (h * 60) + m if {
	[h, m, _] := time.clock([now_ns, tz])
}

# [start, end) in minutes of the day; end before start crosses midnight.
within(start, end, x) if {
	start < end
	x >= start
	x < end
}

within(start, end, x) if {
	start > end
	x >= start
}

within(start, end, x) if {
	start > end
	x < end
}

in_time_window(tw) if {
	day_allowed(tw)
	within(tw.start, tw.end, minute_of_day(tw.timezone))
}

deny contains reason("condition_not_met", msg) if {
	tool_requested
	tw := conditions.time_window
	not in_time_window(tw)
	msg := sprintf(
		"tool %q may be used only %s (%s) on the days allowed by policy %q (%s.time_window)",
		[input.tool, tw.text, tw.timezone, policy.name, conditions.rule],
	)
}

default request_environment := "(not stated)"

request_environment := runtime_attribute("environment")

deny contains reason("condition_not_met", msg) if {
	tool_requested
	allowed := conditions.environments
	not allowed[request_environment]
	msg := sprintf(
		"tool %q may be used only in environments %v, not %q (policy %q, %s.environments)",
		[input.tool, object.keys(allowed), request_environment, policy.name, conditions.rule],
	)
}

context_allows(attribute, allowed) if input.context[attribute] in allowed

deny contains reason("condition_not_met", msg) if {
	tool_requested
	some attribute, allowed in conditions.context
	not context_allows(attribute, allowed)
	msg := sprintf(
		"tool %q needs context %s in %v (policy %q, %s.context)",
		[input.tool, attribute, allowed, policy.name, conditions.rule],
	)
}

# Joint model/tool policy: a tool (e.g. one that reads PII) only while the
# conversation's model runs in a region matching conditions.model_region.
# The gateway reports the region of the route target it used in
# context.model_region; absent or outside the patterns is a deny.
deny contains reason("condition_not_met", msg) if {
	tool_requested
	patterns := conditions.model_region
	region := object.get(input.context, "model_region", "")
	not region_ok(patterns, region)
	msg := sprintf(
		"tool %q may be used only while the conversation's model runs in %v, not %q (policy %q, %s.model_region)",
		[input.tool, patterns, region, policy.name, conditions.rule],
	)
}
