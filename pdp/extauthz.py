"""Envoy ext_authz v3 (``envoy.service.auth.v3.Authorization/Check``): protos <-> engine.

Envoy's request becomes an :class:`~pdp.httpmap.HttpRequest`, the mapping makes it
an engine request, and the decision goes back as an ``OkHttpResponse`` (credential
injected, the agent's own credentials stripped, decision id and model route as
headers and dynamic metadata) or a ``DeniedHttpResponse`` whose body the route's
client can read (pdp/replies.py: a JSON-RPC error on MCP routes, an OpenAI error on
model routes, else ``{decision_id, reasons}``). A models listing is answered here
too: a ``DeniedHttpResponse`` with status 200 (Envoy sends it to the client and
never asks the upstream; the gRPC status must stay non-OK for that). Types come
from ``xds-protos``, never hand copies.
"""

from __future__ import annotations

import json
import logging
from concurrent import futures
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2

from pdp import extproc, replies
from pdp import identity as identities
from pdp.compiled import Revisions
from pdp.config import ConfigError, Settings
from pdp.engine import Decision, Engine, Reason, Request
from pdp.errors import InvalidRequest
from pdp.httpmap import (
    HttpMapping,
    HttpRequest,
    MappingError,
    Surface,
    surface_of,
    to_request,
    workload_of,
)
from pdp.replies import INTERNAL, THROTTLED
from pdp.server import server_options
from pdp.service import guarded
from pdp.validate import MAX_REQUEST_ID, validate
from pdp.workloadapi import WorkloadApiSource

log = logging.getLogger("aam.extauthz")

SERVICE_NAME = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name
__all__ = ["INTERNAL", "THROTTLED", "AuthorizationServicer", "ExtAuthzServer", "register"]
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


class AuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):
    def __init__(self, engine: Engine, settings: Settings, mapping: HttpMapping | None = None,
                 identity: identities.Identity | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.mapping = mapping if mapping is not None else HttpMapping.load(settings.extauthz_mapping)
        self.identity = identity or identities.from_settings(settings)

    @guarded
    def Check(
        self, request: external_auth_pb2.CheckRequest, context: grpc.ServicerContext
    ) -> external_auth_pb2.CheckResponse:
        # Check names any workload and answers with its credential: only a trusted
        # gateway may ask (Envoy's SVID in trusted_gateways, or the gateway token on
        # a plaintext port).
        self.identity.require_gateway(context, "call Check")
        http = from_check_request(request)
        # The gateway's own trace context (its call's metadata) is the decision span's
        # parent; the HTTP request's headers are the agent's words: only a link.
        with self.engine.tracing.parent(context.invocation_metadata(), True, "Check",
                                        headers=http.headers):
            return self._check(http)

    def _check(self, http: HttpRequest) -> external_auth_pb2.CheckResponse:
        req: Request | None = None
        try:
            req = to_request(self.mapping, http)
            size = len(http.body) + sum(len(k) + len(v) for k, v in http.context_extensions.items())
            validate(req, size, self.settings.max_request_bytes)
        except (MappingError, InvalidRequest) as exc:
            # Denied before policy evaluation, but audited and counted like any decision.
            code = exc.code if isinstance(exc, MappingError) else "invalid_request"
            unmapped = req or Request(spiffe_id=self._workload(http), request_id=http.request_id,
                                      context={"http": {"method": http.method,
                                                        "path": http.path.split("?", 1)[0][:200]}})
            return to_check_response(self.mapping, self.engine.refuse(unmapped, Reason(code, str(exc))),
                                     req, surface_of(self.mapping, http))
        d = self.engine.decide(req)
        # The surface shapes a denial, and names an MCP message's id for the processor.
        surface = surface_of(self.mapping, http) if not d.allow or req.mcp is not None else None
        return to_check_response(self.mapping, d, req, surface)

    def _workload(self, http: HttpRequest) -> str:
        """The caller's workload for the audit row of an unmappable request, if known."""
        try:
            return workload_of(self.mapping, http)
        except MappingError:
            return ""


def from_check_request(msg: external_auth_pb2.CheckRequest) -> HttpRequest:
    attrs = msg.attributes
    h = attrs.request.http
    if h.headers:
        headers = {k.lower(): v for k, v in h.headers.items()}
    else:  # encode_raw_headers: the same headers as a HeaderMap of bytes
        headers = {}
        for hv in h.header_map.headers:
            value = hv.raw_value.decode("utf-8", "replace") if hv.raw_value else hv.value
            key = hv.key.lower()
            headers[key] = f"{headers[key]},{value}" if key in headers else value
    return HttpRequest(
        method=h.method.upper(),
        path=h.path or headers.get(":path", ""),
        headers=headers,
        body=h.raw_body or h.body.encode(),
        principal=attrs.source.principal,
        certificate=attrs.source.certificate,
        context_extensions=dict(attrs.context_extensions),
        request_id=h.id[:MAX_REQUEST_ID],
        partial_body=headers.get("x-envoy-auth-partial-body") == "true",
    )


def to_check_response(
    m: HttpMapping, d: Decision, req: Request | None, surface: Surface | None = None
) -> external_auth_pb2.CheckResponse:
    metadata = _metadata(d, req, surface)
    if d.allow and req is not None and req.listing:
        return _answer(replies.models_list(d, m.decision_header), metadata)
    if d.allow:
        return _allow(m, d, metadata)
    return _deny(m, d, metadata, surface or Surface())


def _allow(m: HttpMapping, d: Decision, metadata: struct_pb2.Struct) -> external_auth_pb2.CheckResponse:
    set_headers: dict[str, str] = {m.decision_header: d.decision_id}
    route = d.route or {}
    targets = [t for t in route.get("targets", ()) if isinstance(t, dict)]
    if route:
        p = m.route_header_prefix
        set_headers[p + "alias"] = str(route.get("alias", ""))
        if targets:
            first = targets[0]
            for key in ("provider", "model", "region"):
                set_headers[p + key] = str(first.get(key, ""))
        if m.fallback_chain_header and route.get("allow_fallbacks") and len(targets) > 1:
            set_headers[m.fallback_chain_header] = ",".join(
                f"{t.get('provider', '')}:{t.get('model', '')}" for t in targets)
    if d.credential is not None:
        set_headers[d.credential.header.lower()] = d.credential.value
    # The agent's credentials, and any header it sent that only the PDP may set.
    owned = {*m.strip_headers, m.decision_header, m.fallback_chain_header,
             *(m.route_header_prefix + k for k in ("alias", "provider", "model", "region"))}
    remove = sorted(h for h in owned if h and h not in set_headers)
    ok = external_auth_pb2.OkHttpResponse(
        headers=[_header(k, v) for k, v in set_headers.items()],
        headers_to_remove=remove,
        response_headers_to_add=[_header(m.decision_header, d.decision_id)],
    )
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code_pb2.OK), ok_response=ok, dynamic_metadata=metadata)


def _deny(m: HttpMapping, d: Decision, metadata: struct_pb2.Struct,
          surface: Surface) -> external_auth_pb2.CheckResponse:
    throttled = any(r.code in THROTTLED for r in d.reasons)
    return _answer(replies.denial(d, surface, m.decision_header), metadata,
                   code_pb2.RESOURCE_EXHAUSTED if throttled else code_pb2.PERMISSION_DENIED)


def _answer(reply: replies.Reply, metadata: struct_pb2.Struct,
            grpc_code: int = code_pb2.PERMISSION_DENIED) -> external_auth_pb2.CheckResponse:
    """Envoy answers the client with ``reply`` and never asks the upstream (the gRPC
    status is non-OK even when ``reply`` is a 200)."""
    denied = external_auth_pb2.DeniedHttpResponse(
        status=http_status_pb2.HttpStatus(code=reply.status),  # enum values are HTTP codes
        headers=[_header(k, v) for k, v in reply.headers.items()],
        body=reply.body.decode(),
    )
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=grpc_code), denied_response=denied, dynamic_metadata=metadata)


def _metadata(d: Decision, req: Request | None, surface: Surface | None = None) -> struct_pb2.Struct:
    """What Envoy's access log and later filters (the response processor) may see:
    never the credential."""
    md: dict[str, Any] = {
        "decision_id": d.decision_id, "allow": d.allow, "policy": d.policy,
        "revision": d.revision, "reasons": [r.code for r in d.reasons],
    }
    if req is not None:
        md.update(workload=req.spiffe_id, model=req.model, tool=req.tool, action=req.action)
        if req.mcp is not None:
            # The JSON-RPC id as JSON text: a Struct would turn 7 into 7.0.
            rpc_id = surface.rpc_id if surface is not None else None
            md["mcp"] = {**req.mcp, "id": json.dumps(rpc_id)}
    if d.allow and d.route:
        targets = [t for t in d.route.get("targets", ()) if isinstance(t, dict)]
        md["route"] = {
            "alias": str(d.route.get("alias", "")),
            "allow_fallbacks": bool(d.route.get("allow_fallbacks", False)),
            "targets": [{k: str(t.get(k, "")) for k in ("provider", "model", "region")}
                        for t in targets],
        }
    s = struct_pb2.Struct()
    s.update(md)
    return s


def _header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, value=value), append_action=_OVERWRITE)


def register(server: grpc.Server, engine: Engine, settings: Settings,
             identity: identities.Identity | None = None,
             revisions: Revisions | None = None) -> AuthorizationServicer:
    """Check on ``server``; with ``revisions`` (the published bundles' data) also the
    response processor (ext_proc) that filters MCP tools/list results."""
    servicer = AuthorizationServicer(engine, settings, identity=identity)
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(servicer, server)
    if revisions is not None:
        extproc.register(server, revisions, servicer.identity)
    return servicer


class ExtAuthzServer:
    """Check on its own listener (``extauthz_addr``), with the same TLS settings as grpc_addr
    (``reuse_port``: shared by the worker processes, as pdp/server.py's)."""

    def __init__(self, settings: Settings, engine: Engine,
                 identity: identities.Identity | None = None,
                 revisions: Revisions | None = None, reuse_port: bool = False,
                 workload: WorkloadApiSource | None = None) -> None:
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=settings.max_workers,
                                       thread_name_prefix="aam-extauthz"),
            options=server_options(settings, reuse_port))
        register(self.server, engine, settings, identity, revisions)
        if settings.plaintext:
            self.port = self.server.add_insecure_port(settings.extauthz_addr)
        else:
            self.port = self.server.add_secure_port(
                settings.extauthz_addr, identities.server_credentials(settings, workload))
        if self.port == 0:
            raise ConfigError(f"cannot listen on {settings.extauthz_addr} (address in use?)")

    def start(self) -> None:
        self.server.start()

    def stop(self, grace_s: float) -> None:
        self.server.stop(grace_s).wait()
