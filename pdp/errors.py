"""Service errors and their one mapping to gRPC status codes."""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    """An error a caller may see: a status code and a message without secrets.

    ``reason`` is the stable machine-readable code the audit trail records for a
    refusal (e.g. ``not_self``); it is set where the error is raised, never
    derived from the message."""

    code = grpc.StatusCode.INTERNAL
    default_reason = "internal"

    def __init__(self, message: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or self.default_reason


class InvalidRequest(ServiceError):
    """A request field is malformed; ``field`` names it for the caller."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "invalid_request"

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "permission_denied"


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "unauthenticated"


class Unimplemented(ServiceError):
    code = grpc.StatusCode.UNIMPLEMENTED


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE
