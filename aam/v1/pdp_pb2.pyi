import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_UNSPECIFIED: _ClassVar[Decision]
    DECISION_ALLOW: _ClassVar[Decision]
    DECISION_DENY: _ClassVar[Decision]
DECISION_UNSPECIFIED: Decision
DECISION_ALLOW: Decision
DECISION_DENY: Decision

class Identity(_message.Message):
    __slots__ = ("spiffe_id", "jwt_svid")
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    JWT_SVID_FIELD_NUMBER: _ClassVar[int]
    spiffe_id: str
    jwt_svid: str
    def __init__(self, spiffe_id: _Optional[str] = ..., jwt_svid: _Optional[str] = ...) -> None: ...

class AuthorizeRequest(_message.Message):
    __slots__ = ("identity", "model", "tool", "action", "params", "context", "request_id", "estimated_tokens", "estimated_cost_usd", "explain")
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_COST_USD_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    identity: Identity
    model: str
    tool: str
    action: str
    params: _struct_pb2.Struct
    context: _struct_pb2.Struct
    request_id: str
    estimated_tokens: int
    estimated_cost_usd: float
    explain: bool
    def __init__(self, identity: _Optional[_Union[Identity, _Mapping]] = ..., model: _Optional[str] = ..., tool: _Optional[str] = ..., action: _Optional[str] = ..., params: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., context: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., request_id: _Optional[str] = ..., estimated_tokens: _Optional[int] = ..., estimated_cost_usd: _Optional[float] = ..., explain: _Optional[bool] = ...) -> None: ...

class Reason(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class RouteTarget(_message.Message):
    __slots__ = ("provider", "model", "region", "input_price_per_mtok", "output_price_per_mtok", "context_window", "data_retention", "estimated_cost_usd")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    INPUT_PRICE_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PRICE_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_WINDOW_FIELD_NUMBER: _ClassVar[int]
    DATA_RETENTION_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_COST_USD_FIELD_NUMBER: _ClassVar[int]
    provider: str
    model: str
    region: str
    input_price_per_mtok: float
    output_price_per_mtok: float
    context_window: int
    data_retention: bool
    estimated_cost_usd: float
    def __init__(self, provider: _Optional[str] = ..., model: _Optional[str] = ..., region: _Optional[str] = ..., input_price_per_mtok: _Optional[float] = ..., output_price_per_mtok: _Optional[float] = ..., context_window: _Optional[int] = ..., data_retention: _Optional[bool] = ..., estimated_cost_usd: _Optional[float] = ...) -> None: ...

class RouteLimits(_message.Message):
    __slots__ = ("requests_per_minute", "tokens_per_minute", "reserve_usd", "budget_left_usd")
    REQUESTS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    RESERVE_USD_FIELD_NUMBER: _ClassVar[int]
    BUDGET_LEFT_USD_FIELD_NUMBER: _ClassVar[int]
    requests_per_minute: int
    tokens_per_minute: int
    reserve_usd: float
    budget_left_usd: float
    def __init__(self, requests_per_minute: _Optional[int] = ..., tokens_per_minute: _Optional[int] = ..., reserve_usd: _Optional[float] = ..., budget_left_usd: _Optional[float] = ...) -> None: ...

class ExcludedTarget(_message.Message):
    __slots__ = ("target", "reason", "message")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    target: RouteTarget
    reason: str
    message: str
    def __init__(self, target: _Optional[_Union[RouteTarget, _Mapping]] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ModelRoute(_message.Message):
    __slots__ = ("alias", "targets", "allow_fallbacks", "sort", "limits", "excluded")
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_FALLBACKS_FIELD_NUMBER: _ClassVar[int]
    SORT_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_FIELD_NUMBER: _ClassVar[int]
    alias: str
    targets: _containers.RepeatedCompositeFieldContainer[RouteTarget]
    allow_fallbacks: bool
    sort: str
    limits: RouteLimits
    excluded: _containers.RepeatedCompositeFieldContainer[ExcludedTarget]
    def __init__(self, alias: _Optional[str] = ..., targets: _Optional[_Iterable[_Union[RouteTarget, _Mapping]]] = ..., allow_fallbacks: _Optional[bool] = ..., sort: _Optional[str] = ..., limits: _Optional[_Union[RouteLimits, _Mapping]] = ..., excluded: _Optional[_Iterable[_Union[ExcludedTarget, _Mapping]]] = ...) -> None: ...

class CredentialGrant(_message.Message):
    __slots__ = ("header", "value", "expires_at", "lease_accessor", "withheld")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    LEASE_ACCESSOR_FIELD_NUMBER: _ClassVar[int]
    WITHHELD_FIELD_NUMBER: _ClassVar[int]
    header: str
    value: str
    expires_at: _timestamp_pb2.Timestamp
    lease_accessor: str
    withheld: bool
    def __init__(self, header: _Optional[str] = ..., value: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., lease_accessor: _Optional[str] = ..., withheld: _Optional[bool] = ...) -> None: ...

class AuthorizeResponse(_message.Message):
    __slots__ = ("decision", "reasons", "policy", "decision_id", "bundle_revision", "route", "credential", "request_id", "explanation", "retry_after")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_REVISION_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    reasons: _containers.RepeatedCompositeFieldContainer[Reason]
    policy: str
    decision_id: str
    bundle_revision: str
    route: ModelRoute
    credential: CredentialGrant
    request_id: str
    explanation: _struct_pb2.Struct
    retry_after: _duration_pb2.Duration
    def __init__(self, decision: _Optional[_Union[Decision, str]] = ..., reasons: _Optional[_Iterable[_Union[Reason, _Mapping]]] = ..., policy: _Optional[str] = ..., decision_id: _Optional[str] = ..., bundle_revision: _Optional[str] = ..., route: _Optional[_Union[ModelRoute, _Mapping]] = ..., credential: _Optional[_Union[CredentialGrant, _Mapping]] = ..., request_id: _Optional[str] = ..., explanation: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., retry_after: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class RecordUsageRequest(_message.Message):
    __slots__ = ("decision_id", "tokens", "cost_usd")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    tokens: int
    cost_usd: float
    def __init__(self, decision_id: _Optional[str] = ..., tokens: _Optional[int] = ..., cost_usd: _Optional[float] = ...) -> None: ...

class RecordUsageResponse(_message.Message):
    __slots__ = ("applied",)
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    applied: bool
    def __init__(self, applied: _Optional[bool] = ...) -> None: ...
