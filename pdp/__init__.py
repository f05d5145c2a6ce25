"""The policy decision point: gRPC service, OPA client, bundle server."""
