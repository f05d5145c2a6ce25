"""The gRPC listener: PolicyDecisionService, health and reflection."""

from __future__ import annotations

from concurrent import futures

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from aam.v1 import pdp_pb2, pdp_pb2_grpc
from pdp import identity
from pdp.config import ConfigError, Settings
from pdp.health import OK, Components
from pdp.service import PolicyDecisionServicer
from pdp.workloadapi import WorkloadApiSource

SERVICE_NAME = pdp_pb2.DESCRIPTOR.services_by_name["PolicyDecisionService"].full_name
MAX_MESSAGE_BYTES = 1024 * 1024


class DecodeGuard(grpc.ServerInterceptor):
    """Undecodable requests (garbage, nesting past protobuf's depth limit) are the
    caller's fault: INVALID_ARGUMENT, not grpc's default INTERNAL."""

    def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        handler = continuation(details)
        if handler is None or handler.unary_unary is None or handler.request_deserializer is None:
            return handler
        decode, behaviour = handler.request_deserializer, handler.unary_unary

        def unary(raw: bytes, context: grpc.ServicerContext):  # type: ignore[no-untyped-def]
            try:
                request = decode(raw)
            except DecodeError:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              "request: cannot be decoded (malformed, or nested too deeply)")
            return behaviour(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary, response_serializer=handler.response_serializer)


# How long calls on a connection asked to reconnect (max_connection_age_s) may still run.
CONNECTION_AGE_GRACE_MS = 30_000


def server_options(settings: Settings, reuse_port: bool) -> list[tuple[str, int]]:
    """gRPC server options both listeners take: the shared port, and a bounded connection
    age so that clients reconnect with their current SVID."""
    options = [("grpc.so_reuseport", int(reuse_port))]
    if settings.max_connection_age_s > 0:
        options += [("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)),
                    ("grpc.max_connection_age_grace_ms", CONNECTION_AGE_GRACE_MS)]
    return options


class GrpcServer:
    """``reuse_port``: one of several worker processes on the same address (pdp/workers.py);
    otherwise the port must be free, so a second PDP on it fails instead of sharing it.

    With ``components`` health follows readiness (pdp/health.py): "" and the decision
    service are NOT_SERVING until the engine has an active bundle and while OPA is down
    (a degraded PDP still decides: SERVING), and each component is a health service of
    its own name, SERVING only while it is ``ok`` (degraded or down: NOT_SERVING).
    Without, SERVING from start. ``workload``: the process's Workload API source, whose
    SVID and bundle each new handshake takes (spiffe_endpoint_socket)."""

    def __init__(self, settings: Settings, servicer: PolicyDecisionServicer,
                 reuse_port: bool = False, components: Components | None = None,
                 workload: WorkloadApiSource | None = None) -> None:
        self.settings = settings
        self.components = components
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix="aam-rpc"),
            interceptors=[DecodeGuard()],
            options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                     *server_options(settings, reuse_port)],
        )
        pdp_pb2_grpc.add_PolicyDecisionServiceServicer_to_server(servicer, self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        if settings.plaintext:
            self.port = self.server.add_insecure_port(settings.grpc_addr)
        else:
            self.port = self.server.add_secure_port(
                settings.grpc_addr, identity.server_credentials(settings, workload))
        if self.port == 0:
            raise ConfigError(f"cannot listen on {settings.grpc_addr} (address in use?)")

    def start(self) -> None:
        self.server.start()
        if self.components is None:
            for name in ("", SERVICE_NAME):
                self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        else:
            self.components.listen(self._reflect)

    def _reflect(self, components: Components) -> None:
        """Readiness to gRPC health (ignored by grpc once shutdown has begun)."""
        serving, not_serving = (health_pb2.HealthCheckResponse.SERVING,
                                health_pb2.HealthCheckResponse.NOT_SERVING)
        overall = serving if components.ready() else not_serving
        for name in ("", SERVICE_NAME):
            self.health.set(name, overall)
        for name, state in components.snapshot().items():
            self.health.set(name, serving if state.state == OK else not_serving)

    def stop(self, grace_s: float) -> None:
        """Stop taking calls, let in-flight calls finish within the grace period."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace_s).wait()
