"""gRPC ``aam.v1.PolicyDecisionService``: translate protos <-> engine, nothing more."""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import struct_pb2

from aam.v1 import pdp_pb2, pdp_pb2_grpc
from pdp import routes
from pdp.config import Settings
from pdp.engine import Decision, Engine, Request
from pdp.errors import InvalidRequest, NotFound, ServiceError, Unavailable, Unimplemented
from pdp.identity import Identity
from pdp.identity import from_settings as identity_from_settings
from pdp.ledger import LedgerError, LedgerOff
from pdp.validate import validate

log = logging.getLogger("aam.service")
T = TypeVar("T")


def guarded(method: Callable[..., T]) -> Callable[..., T]:
    """No exception text ever reaches a caller: unexpected errors become INTERNAL."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> T:
        try:
            return method(self, request, context)
        except ServiceError as exc:
            code, message = exc.code, str(exc)
        except Exception:
            log.exception("internal error", extra={"fields": {"method": method.__name__}})
            code, message = grpc.StatusCode.INTERNAL, "internal error; see PDP logs"
        context.abort(code, message)
        raise AssertionError("unreachable")  # abort always raises

    return wrapper


def _struct(s: struct_pb2.Struct, field: str) -> dict[str, Any]:
    """Struct -> plain dict, as ``json_format.MessageToDict`` does it but at a fifth
    of its cost on the hot path (bench/, "profile"); non-finite numbers are refused."""
    return {k: _value(v, field) for k, v in s.fields.items()} if s.fields else {}


def _value(v: struct_pb2.Value, field: str) -> Any:
    kind = v.WhichOneof("kind")
    if kind == "string_value":
        return v.string_value
    if kind == "number_value":
        if not math.isfinite(v.number_value):
            raise InvalidRequest(field, "numbers must be finite")
        return v.number_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "struct_value":
        return _struct(v.struct_value, field)
    if kind == "list_value":
        return [_value(x, field) for x in v.list_value.values]
    return None  # null_value, or unset (which JSON mapping also reads as null)


def to_request(msg: pdp_pb2.AuthorizeRequest) -> Request:
    return Request(
        spiffe_id=msg.identity.spiffe_id,
        model=msg.model,
        tool=msg.tool,
        action=msg.action,
        params=_struct(msg.params, "params"),
        context=_struct(msg.context, "context"),
        request_id=msg.request_id,
        estimated_tokens=msg.estimated_tokens,
        estimated_cost_usd=msg.estimated_cost_usd,
        explain=msg.explain,
    )


def to_response(d: Decision, request_id: str, *, reveal: bool = False) -> pdp_pb2.AuthorizeResponse:
    """The decision as the caller may see it: the credential's value only when
    ``reveal`` (the caller is an authenticated trusted gateway)."""
    resp = pdp_pb2.AuthorizeResponse(
        decision=pdp_pb2.DECISION_ALLOW if d.allow else pdp_pb2.DECISION_DENY,
        reasons=[pdp_pb2.Reason(code=r.code, message=r.message) for r in d.reasons],
        policy=d.policy,
        decision_id=d.decision_id,
        bundle_revision=d.revision,
        request_id=request_id,
    )
    if d.allow and d.route:
        routes.fill(resp.route, d.route, explain=d.explanation is not None)
    if d.allow and d.credential is not None:
        resp.credential.header = d.credential.header
        if reveal:
            resp.credential.value = d.credential.value
        else:
            resp.credential.withheld = True
        resp.credential.expires_at.FromNanoseconds(int(d.credential.expires_at * 1e9))
        resp.credential.lease_accessor = d.credential.lease_accessor
    if not d.allow and d.retry_after_s is not None:
        resp.retry_after.FromNanoseconds(int(d.retry_after_s * 1e9))
    if d.explanation is not None:
        resp.explanation.update(d.explanation)
    return resp


class PolicyDecisionServicer(pdp_pb2_grpc.PolicyDecisionServiceServicer):
    def __init__(self, engine: Engine, settings: Settings, identity: Identity | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.identity = identity or identity_from_settings(settings)

    @guarded
    def Authorize(
        self, request: pdp_pb2.AuthorizeRequest, context: grpc.ServicerContext
    ) -> pdp_pb2.AuthorizeResponse:
        req = to_request(request)
        validate(req, request.params.ByteSize() + request.context.ByteSize(),
                 self.settings.max_request_bytes)
        caller = self.identity.check(context, req.spiffe_id, request.identity.jwt_svid)
        with self.engine.tracing.parent(context.invocation_metadata(), caller.gateway, "Authorize"):
            decision = self.engine.decide(req)
        return to_response(decision, request.request_id, reveal=caller.gateway)

    @guarded
    def RecordUsage(
        self, request: pdp_pb2.RecordUsageRequest, context: grpc.ServicerContext
    ) -> pdp_pb2.RecordUsageResponse:
        # The gateway saw what the call really cost; an agent reporting its own usage
        # would set its own price.
        self.identity.require_gateway(context, "report usage")
        if not request.decision_id:
            raise InvalidRequest("decision_id", "required")
        if len(request.decision_id) > 64:
            raise InvalidRequest("decision_id", "longer than 64 characters")
        if request.tokens < 0:
            raise InvalidRequest("tokens", "must not be negative")
        if not math.isfinite(request.cost_usd) or not 0 <= request.cost_usd <= 1e9:
            raise InvalidRequest("cost_usd", "must be a finite number between 0 and 1e9")
        try:
            done = self.engine.gate.settle(request.decision_id, request.tokens, request.cost_usd)
        except LedgerOff as exc:
            raise Unimplemented(str(exc)) from None
        except LedgerError:
            raise Unavailable("the ledger is unavailable; report the usage again later") from None
        if done.state in ("unknown", "released"):
            raise NotFound(f"no allowed decision {request.decision_id} holds a reservation")
        return pdp_pb2.RecordUsageResponse(applied=done.applied)
