"""How an HTTP request seen by Envoy becomes a decision request, in one place.

Envoy's ext_authz tells us the method, path, headers, body and the peer; this
module turns them into an engine :class:`~pdp.engine.Request` (who, which model
or tool, which action, which params) and says which headers the gateway sets
and strips. It knows nothing of protobuf: :mod:`pdp.extauthz` translates the
wire messages. The defaults are documented in docs/envoy.md and
can be replaced by a TOML file named by the ``extauthz_mapping`` setting.

Anything the mapping cannot read with certainty is a :class:`MappingError`,
which the gateway turns into a deny: unknown routes, unreadable bodies, a
workload identity that is missing or ambiguous.

Routes, first match wins:

- ``POST`` to a ``model_paths`` entry: a model call (body ``model``, ``max_tokens``).
- ``GET models_path`` (``/v1/models``): a models listing, answered by the PDP.
- ``tool_routes``: ``/tools/{resource}/{action}`` (params = the JSON body) and
  ``/mcp/{resource}`` (``mcp = true``): every message on an MCP route is read from
  its JSON-RPC body by :mod:`pdp.mcp` (tools/call -> action = the tool, params =
  its arguments; other messages -> ``input.mcp``, judged by rego/aam/mcp.rego);
  an MCP route may not match on headers, which the client controls.

:func:`surface_of` says how a denial is shaped for the client: a JSON-RPC error
on MCP routes, an OpenAI error object on model routes, else AAM's own body.
"""

from __future__ import annotations

import functools
import json
import math
import re
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from cryptography import x509

from pdp import mcp
from pdp.config import ConfigError
from pdp.engine import Request


class MappingError(Exception):
    """The request cannot be mapped; ``code`` is the reason code the agent sees."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


def _template(path: str) -> re.Pattern[str]:
    if not path.startswith("/"):
        raise ConfigError(f"tool route path must start with '/': {path!r}")
    out, pos = [], 0
    for m in re.finditer(r"\{(resource|action)\}", path):
        out.append(re.escape(path[pos:m.start()]))
        out.append(f"(?P<{m.group(1)}>[^/]+)")
        pos = m.end()
    out.append(re.escape(path[pos:]))
    try:
        return re.compile("".join(out))
    except re.error as exc:
        raise ConfigError(f"tool route path {path!r}: {exc}") from None


@dataclass(frozen=True)
class ToolRoute:
    """A route rule: method + path template (+ required headers) -> tool resource/action.

    ``path`` is a template whose ``{resource}`` and ``{action}`` segments are
    taken from the request path (a segment matches no ``/``); ``resource`` and
    ``action`` give fixed values instead. With ``mcp = true`` the route carries an
    MCP server over streamable HTTP (POST, GET, DELETE): each message is read from
    its JSON-RPC body (:mod:`pdp.mcp`), a ``tools/call`` giving the action
    (``params.name``) and params (``params.arguments``); such a route may not match
    on ``headers``, since a client that chooses its headers would choose its rule.
    Otherwise the params are the JSON object body.
    """

    path: str
    method: str = "POST"
    resource: str = ""
    action: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    mcp: bool = False
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", _template(self.path))
        object.__setattr__(self, "headers", {k.lower(): v for k, v in self.headers.items()})
        names = set(self.pattern.groupindex)
        if not (self.resource or "resource" in names):
            raise ConfigError(f"tool route {self.path!r}: needs {{resource}} in path or resource =")
        if not (self.mcp or self.action or "action" in names):
            raise ConfigError(f"tool route {self.path!r}: needs {{action}} in path, action = or mcp")
        if self.mcp and (self.headers or self.action or "action" in names):
            raise ConfigError(f"tool route {self.path!r}: an mcp route takes the action from the "
                              "JSON-RPC body only (no headers, action or {action})")

    def match(self, method: str, path: str, headers: Mapping[str, str]) -> dict[str, str] | None:
        if self.method and method != self.method:
            return None
        m = self.pattern.fullmatch(path)
        if m is None or any(headers.get(k) != v for k, v in self.headers.items()):
            return None
        found = {k: urllib.parse.unquote(v) for k, v in m.groupdict().items()}
        return None if any("/" in v for v in found.values()) else found


@dataclass(frozen=True)
class HttpMapping:
    # POST to these paths is a model call: JSON body "model", "max_tokens".
    model_paths: tuple[str, ...] = ("/v1/chat/completions",)
    # First matching rule wins.
    tool_routes: tuple[ToolRoute, ...] = (
        ToolRoute("/tools/{resource}/{action}"),
        ToolRoute("/mcp/{resource}", method="", mcp=True),
    )
    # GET here lists the model aliases the workload may call (answered by the PDP,
    # OpenAI list shape); "" = not mapped.
    models_path: str = "/v1/models"
    # Denials under these path prefixes (and on model_paths) are OpenAI error objects.
    openai_prefixes: tuple[str, ...] = ("/v1/",)
    # Take the workload from x-forwarded-client-cert (only behind a trusted proxy
    # that sanitizes it); otherwise only the TLS peer Envoy saw counts.
    trust_xfcc: bool = False
    # Refuse a source.principal that Envoy did not send the certificate for.
    require_peer_certificate: bool = True
    # The agent's own credentials, never forwarded upstream.
    strip_headers: tuple[str, ...] = ("authorization", "proxy-authorization", "x-api-key")
    decision_header: str = "x-aam-decision-id"
    # Model route headers: <prefix>alias, <prefix>provider, <prefix>model, <prefix>region.
    route_header_prefix: str = "x-aam-route-"
    # Envoy AI Gateway's fallback chain, "provider:model,provider:model"; "" = not sent.
    fallback_chain_header: str = "x-ai-eg-fallback-chain"
    # Bytes of prompt per estimated token, for the cost estimate of a model call.
    prompt_bytes_per_token: int = 4

    @classmethod
    def load(cls, path: str) -> HttpMapping:
        """Defaults, or a TOML file (keys as the fields, [[tool_routes]] tables)."""
        if not path:
            return cls()
        try:
            raw = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"extauthz_mapping {path}: {exc}") from None
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"extauthz_mapping {path}: unknown key(s): {', '.join(unknown)}")
        values: dict[str, Any] = {}
        for k, v in raw.items():
            if k == "tool_routes":
                try:
                    values[k] = tuple(ToolRoute(**r) for r in v)
                except TypeError as exc:
                    raise ConfigError(f"extauthz_mapping {path}: tool_routes: {exc}") from None
            elif isinstance(v, list):
                values[k] = tuple(str(x).lower() if k == "strip_headers" else str(x) for x in v)
            else:
                values[k] = v
        return cls(**values)


@dataclass(frozen=True)
class HttpRequest:
    """What Envoy tells us about one request; headers have lower-case names."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    principal: str = ""
    certificate: str = ""  # URL-encoded PEM, as Envoy sends it
    context_extensions: Mapping[str, str] = field(default_factory=dict)
    request_id: str = ""
    partial_body: bool = False

    @functools.cached_property
    def _mcp(self) -> mcp.Message | str:
        """The MCP message of the body, or why it cannot be read. Read once: Check maps
        the request with it, then names its JSON-RPC id for the reply (surface_of)."""
        if self.partial_body:
            return "request body was truncated before authorization"
        try:
            body = mcp.loads(self.body) if self.method == "POST" and self.body else None
            return mcp.read(self.method, body, self.headers)
        except mcp.Unreadable as exc:
            return str(exc)


def to_request(m: HttpMapping, http: HttpRequest) -> Request:
    workload = workload_of(m, http)
    path = http.path.split("?", 1)[0]
    context = dict(http.context_extensions)
    if http.method == "GET" and m.models_path and path == m.models_path:
        return Request(spiffe_id=workload, listing="models", context=context,
                       request_id=http.request_id)
    if http.method == "POST" and path in m.model_paths:
        body = _json_body(http)
        model = body.get("model") if isinstance(body, dict) else None
        if not isinstance(model, str) or not model:
            raise MappingError("invalid_request", "model call without a \"model\" string in the body")
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens", 0))
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
            raise MappingError("invalid_request", "\"max_tokens\" must be a non-negative integer")
        prompt = math.ceil(len(http.body) / max(1, m.prompt_bytes_per_token))
        return Request(spiffe_id=workload, model=model, context=context,
                       request_id=http.request_id, estimated_tokens=max_tokens + prompt)
    for route in m.tool_routes:
        found = route.match(http.method, path, http.headers)
        if found is None:
            continue
        resource = route.resource or found.get("resource", "")
        if route.mcp:
            msg = read_mcp(http)
            return Request(spiffe_id=workload, tool=resource, action=msg.name,
                           params=msg.arguments, context=context, request_id=http.request_id,
                           mcp=msg.as_input())
        return Request(spiffe_id=workload, tool=resource,
                       action=route.action or found.get("action", ""), params=_params(http),
                       context=context, request_id=http.request_id)
    raise MappingError("route_not_mapped",
                       f"{http.method} {path[:200]} is neither a model call nor a mapped tool route")


# --- identity ----------------------------------------------------------------

def workload_of(m: HttpMapping, http: HttpRequest) -> str:
    """The caller's SPIFFE ID, from the TLS peer Envoy verified (or a trusted XFCC)."""
    if http.principal:
        if http.certificate:
            uris = uri_sans(urllib.parse.unquote(http.certificate))
            if len(uris) != 1:
                raise MappingError("unauthenticated",
                                   f"peer certificate must carry exactly one URI SAN, has {len(uris)}")
            if uris[0] != http.principal:
                raise MappingError("unauthenticated", "peer certificate does not match the principal")
        elif m.require_peer_certificate:
            raise MappingError("unauthenticated", "no peer certificate to check the principal against")
        return http.principal
    if m.trust_xfcc and "x-forwarded-client-cert" in http.headers:
        return _xfcc_uri(http.headers["x-forwarded-client-cert"])
    raise MappingError("unauthenticated", "no workload identity (mTLS client certificate required)")


@functools.lru_cache(maxsize=1024)
def uri_sans(pem: str) -> tuple[str, ...]:
    """URI SANs of a PEM certificate; cached, since a workload presents the same one each call."""
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        raise MappingError("unauthenticated", "peer certificate is not a valid PEM certificate") from None
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    return tuple(ext.value.get_values_for_type(x509.UniformResourceIdentifier))


def _xfcc_uri(value: str) -> str:
    """The one URI of a single-element XFCC header; anything else is ambiguous."""
    elements = _split_quoted(value, ",")
    if len(elements) != 1:
        raise MappingError("unauthenticated", "x-forwarded-client-cert must name exactly one client")
    uris = []
    for pair in _split_quoted(elements[0], ";"):
        key, sep, val = pair.partition("=")
        if sep and key.strip().lower() == "uri":
            uris.append(val.strip().strip('"'))
    if len(uris) != 1 or not uris[0]:
        raise MappingError("unauthenticated", "x-forwarded-client-cert must carry exactly one URI")
    return uris[0]


def _split_quoted(s: str, sep: str) -> list[str]:
    out, cur, quoted = [], [], False
    for ch in s:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return [p for p in (x.strip() for x in out) if p]


# --- bodies ------------------------------------------------------------------

def _json_body(http: HttpRequest) -> Any:
    if http.partial_body:
        raise MappingError("invalid_request", "request body was truncated before authorization")
    if not http.body:
        return None
    try:
        return json.loads(http.body)
    except (ValueError, RecursionError):
        raise MappingError("invalid_request", "request body is not valid JSON") from None


def _params(http: HttpRequest) -> dict[str, Any]:
    body = _json_body(http)
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise MappingError("invalid_request", "tool call body must be a JSON object")
    return body


def read_mcp(http: HttpRequest) -> mcp.Message:
    """The one MCP message of a request on an MCP route, from its body."""
    msg = http._mcp
    if isinstance(msg, str):
        raise MappingError("invalid_request", msg)
    return msg


# --- how a denial is shown ---------------------------------------------------------

@dataclass(frozen=True)
class Surface:
    """The client a denial goes to: ``mcp`` (a JSON-RPC error echoing ``rpc_id``),
    ``openai`` (an OpenAI error object) or ``plain`` (AAM's own body)."""

    kind: str = "plain"
    rpc_id: Any = None


def surface_of(m: HttpMapping, http: HttpRequest) -> Surface:
    """Decided by the route alone, so a request that cannot be mapped is shaped too."""
    path = http.path.split("?", 1)[0]
    if (http.method == "POST" and path in m.model_paths) or (m.models_path and path == m.models_path):
        return Surface("openai")
    for route in m.tool_routes:
        if route.match(http.method, path, http.headers) is None:
            continue
        if route.mcp:
            return Surface("mcp", _mcp_id(http))
        break
    if any(path.startswith(p) for p in m.openai_prefixes):
        return Surface("openai")
    return Surface()


def _mcp_id(http: HttpRequest) -> Any:
    """The id a JSON-RPC reply echoes: the read message's (no second parse on the hot
    path), else a best-effort peek into a body that was refused."""
    if http.method != "POST":
        return None
    msg = http._mcp
    if isinstance(msg, mcp.Message):
        return msg.rpc_id
    found, rpc_id = mcp.peek_id(http.body)
    return rpc_id if found else None
