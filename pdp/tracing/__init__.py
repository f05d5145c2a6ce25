"""OpenTelemetry traces of decisions (issue 19)."""
