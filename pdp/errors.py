"""Service errors and their one mapping to gRPC status codes."""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    """An error a caller may see: a status code and a message without secrets."""

    code = grpc.StatusCode.INTERNAL


class InvalidRequest(ServiceError):
    """A request field is malformed; ``field`` names it for the caller."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED


class Unimplemented(ServiceError):
    code = grpc.StatusCode.UNIMPLEMENTED


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE
