"""``aam authorize``: ask the PDP for one decision and print it readably."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, TextIO

import grpc
from google.protobuf import json_format

from aam.cli.grpcargs import add_tls_args
from aam.cli.grpcargs import channel as grpc_channel
from aam.v1 import pdp_pb2, pdp_pb2_grpc
from pdp.identity import GATEWAY_TOKEN_HEADER


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("authorize", help="ask the PDP for one decision",
                       description="Ask for one decision: a model call (--model) or a tool call "
                                   "(--tool and --action). Exit 0 ALLOW, 3 DENY, 1 error, 2 usage.")
    p.add_argument("--addr", default="127.0.0.1:50051", help="PDP gRPC address")
    p.add_argument("--workload", required=True, help="SPIFFE ID of the agent")
    p.add_argument("--model", default="", metavar="ALIAS", help="model alias to call, e.g. reasoning-high")
    p.add_argument("--tool", default="", metavar="RESOURCE",
                   help="tool resource to act on, e.g. salesforce.accounts (needs --action)")
    p.add_argument("--action", default="", help="action on --tool, e.g. read or export")
    p.add_argument("--params", default="{}", help="tool parameters as a JSON object")
    p.add_argument("--context", default="{}", help="runtime context as a JSON object")
    p.add_argument("--tokens", type=int, default=0, help="estimated tokens")
    p.add_argument("--request-id", default="", metavar="ID",
                   help="the caller's request id, recorded with the decision")
    p.add_argument("--explain", action="store_true", help="show which rules matched")
    p.add_argument("--json", action="store_true", help="print the response as JSON")
    p.add_argument("--timeout", type=float, default=5.0,
                   help="seconds to wait for the answer (default 5)")
    add_tls_args(p)
    p.add_argument("--jwt-svid-file", help="file holding the agent's JWT-SVID (gateways)")
    p.add_argument("--gateway-token-file",
                   help="on a plaintext port, ask as the gateway: send this file's token "
                        "(the PDP's gateway_token_file) as x-aam-gateway-token")
    p.set_defaults(func=run)


def _json_object(flag: str, text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{flag} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag} must be a JSON object")
    return value


def _check_target(args: argparse.Namespace) -> None:
    """What the PDP would refuse as INVALID_ARGUMENT is a usage error here (exit 2)."""
    if not args.model and not args.tool:
        raise ValueError("say what to decide: --model ALIAS, or --tool RESOURCE --action ACTION")
    if args.tool and not args.action:
        raise ValueError("--tool needs --action")
    if args.action and not args.tool:
        raise ValueError("--action needs --tool")


def build_request(args: argparse.Namespace) -> pdp_pb2.AuthorizeRequest:
    _check_target(args)
    req = pdp_pb2.AuthorizeRequest(
        identity=pdp_pb2.Identity(spiffe_id=args.workload),
        model=args.model, tool=args.tool, action=args.action,
        request_id=args.request_id, estimated_tokens=args.tokens, explain=args.explain,
    )
    if getattr(args, "jwt_svid_file", None):
        try:
            req.identity.jwt_svid = Path(args.jwt_svid_file).read_text().strip()
        except OSError as exc:
            raise ValueError(f"--jwt-svid-file: {exc.strerror}") from None
    req.params.update(_json_object("--params", args.params))
    req.context.update(_json_object("--context", args.context))
    return req


def render(resp: pdp_pb2.AuthorizeResponse) -> str:
    verdict = "ALLOW" if resp.decision == pdp_pb2.DECISION_ALLOW else "DENY"
    lines = [f"{verdict}  policy={resp.policy or '-'}  decision_id={resp.decision_id}",
             f"  revision  {resp.bundle_revision[:12] or '-'}"]
    for r in resp.reasons:
        lines.append(f"  reason    {r.code}: {r.message}")
    if resp.decision != pdp_pb2.DECISION_ALLOW and resp.HasField("retry_after"):
        lines.append(f"  retry     after {duration(resp.retry_after.ToTimedelta().total_seconds())}")
    if resp.HasField("route"):
        lines.extend(_route(resp.route))
    if resp.HasField("credential"):
        c = resp.credential
        why = ("not sent: this caller is not a trusted gateway" if c.withheld
               else "sent to this gateway, not printed")
        lines.append(f"  credential header {c.header}, expires {c.expires_at.ToJsonString()}"
                     + (f", lease {c.lease_accessor}" if c.lease_accessor else "") + f" (value {why})")
    if resp.HasField("explanation"):
        lines.extend(_explanation(json_format.MessageToDict(resp.explanation)))
    return "\n".join(lines)


def _target(t: pdp_pb2.RouteTarget) -> str:
    return (f"{t.provider}/{t.model} @ {t.region or 'any'}"
            f"  in ${t.input_price_per_mtok:g}/Mtok out ${t.output_price_per_mtok:g}/Mtok")


def _route(r: pdp_pb2.ModelRoute) -> list[str]:
    """The chain in the order to try, its limits, and (with --explain) what was left out."""
    lines = [f"  route     {r.alias} (fallbacks {'allowed' if r.allow_fallbacks else 'off'},"
             f" sort {r.sort or 'order'})"]
    for i, t in enumerate(r.targets, 1):
        lines.append(f"    {i}. {_target(t)}  est ${t.estimated_cost_usd:.6g}")
    for x in r.excluded:
        lines.append(f"    excluded {_target(x.target)}  [{x.reason}] {x.message}")
    if r.HasField("limits"):
        lim = r.limits
        parts = [f"reserve ${lim.reserve_usd:.6g}"]
        if lim.HasField("budget_left_usd"):
            parts.append(f"budget left ${lim.budget_left_usd:.6g}")
        if lim.requests_per_minute:
            parts.append(f"{lim.requests_per_minute} req/min")
        if lim.tokens_per_minute:
            parts.append(f"{lim.tokens_per_minute} tokens/min")
        lines.append("  limits    " + ", ".join(parts))
    return lines


def _explanation(doc: dict[str, Any]) -> list[str]:
    """The rules that matched, one per line: the Rego rule, where the policy writes
    it (file:line:col in the policy directory the PDP compiled, from the bundle's
    source map) and the policy source; then the input OPA decided on, indented."""
    matched = [m for m in doc.get("matched", ()) if isinstance(m, dict)]
    lines = ["  matched rules" if matched else "  matched rules  (none)"]
    width = max((len(str(m.get("rule", ""))) for m in matched), default=0)
    at_width = max((len(str(m.get("at") or "-")) for m in matched), default=0)
    for m in matched:
        at = str(m.get("at") or "-")
        lines.append(f"    {m.get('rule', '')!s:<{width}}  {at:<{at_width}}  {m.get('source', '')}")
    inp = doc.get("input")
    if isinstance(inp, dict):
        lines.append("  input")
        pretty = json.dumps(_whole(inp), sort_keys=True, indent=2, ensure_ascii=False)
        lines.extend("    " + line for line in pretty.splitlines())
    return lines


def _whole(value: Any) -> Any:
    """Numbers as they were sent: a protobuf Struct holds every number as a double,
    so ``5`` comes back ``5.0``; JSON gives both one meaning."""
    if isinstance(value, dict):
        return {k: _whole(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def duration(seconds: float) -> str:
    """A wait as people read it (4h12m, 30s, 2d3h), rounded up: never earlier than it is."""
    total = max(0, math.ceil(seconds))
    if total > 3_600:  # past an hour, to the minute; past a day, to the hour
        total = -(-total // 60) * 60
    if total > 86_400:
        total = -(-total // 3_600) * 3_600
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    units = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    first = next((i for i, (n, _) in enumerate(units) if n), 3)
    return "".join(f"{n}{u}" for i, (n, u) in enumerate(units[first:first + 2]) if n or i == 0)


def unreachable(args: argparse.Namespace, exc: grpc.RpcError) -> str | None:
    """A sentence for a PDP that never answered (refused, timed out, TLS failed); None
    for an answer the PDP gave (e.g. PERMISSION_DENIED), which is shown as it is."""
    code, details = exc.code(), exc.details() or ""
    addr = args.addr
    tls = bool(args.cert or args.ca)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return (f"aam: the PDP at {addr} did not answer within {args.timeout:g} s (timeout): is "
                "it overloaded, or is something else listening there? (--timeout waits longer)")
    if code != grpc.StatusCode.UNAVAILABLE:
        return None
    low = details.lower()
    if "connection refused" in low:
        return (f"aam: cannot reach the PDP at {addr} (connection refused): is `aam up` running?")
    if "handshake" in low or "ssl" in low or "tsi_" in low:
        return (f"aam: cannot reach the PDP at {addr} (TLS handshake failed): check that --ca "
                "holds the CA of the PDP's certificate and that the PDP serves TLS "
                "(`aam up` serves plaintext: drop --cert, --key and --ca)")
    if "socket closed" in low or "connection reset" in low:
        if tls:
            return (f"aam: cannot reach the PDP at {addr} (TLS handshake refused): the PDP "
                    "closed the connection; does its tls_client_ca trust --cert?")
        return (f"aam: cannot reach the PDP at {addr} (connection closed): does it serve "
                "mTLS (aam serve)? then pass --cert, --key and --ca")
    if "resolv" in low or "dns" in low:
        return f"aam: cannot reach the PDP at {addr} (address not found): check --addr"
    return f"aam: cannot reach the PDP at {addr} (unavailable: {details}): is `aam up` running?"


def _withheld(resp: pdp_pb2.AuthorizeResponse) -> pdp_pb2.AuthorizeResponse:
    """A terminal is no place for the gateway's secret: print everything but its value."""
    if not resp.HasField("credential"):
        return resp
    shown = pdp_pb2.AuthorizeResponse()
    shown.CopyFrom(resp)
    if shown.credential.value:
        shown.credential.value = "(not printed)"
    return shown


def _metadata(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    if not getattr(args, "gateway_token_file", None):
        return ()
    try:
        token = Path(args.gateway_token_file).read_text().strip()
    except OSError as exc:
        raise ValueError(f"--gateway-token-file: {exc.strerror}") from None
    return ((GATEWAY_TOKEN_HEADER, token),)


def run(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    try:
        req = build_request(args)
        metadata = _metadata(args)
        channel = grpc_channel(args)
    except ValueError as exc:
        print(f"aam authorize: error: {exc}", file=stderr)
        return 2
    with channel:
        stub = pdp_pb2_grpc.PolicyDecisionServiceStub(channel)
        try:
            resp = stub.Authorize(req, timeout=args.timeout, metadata=metadata)
        except grpc.RpcError as exc:
            print(unreachable(args, exc) or f"aam authorize: error: {exc.code().name}: "
                  f"{exc.details()}", file=stderr)
            return 1
    if args.json:
        print(json_format.MessageToJson(_withheld(resp), sort_keys=True), file=stdout)
    else:
        print(render(resp), file=stdout)
    return 0 if resp.decision == pdp_pb2.DECISION_ALLOW else 3
