"""``aam up`` (local stack, embedded defaults) and ``aam serve`` (configured PDP)."""

from __future__ import annotations

import argparse
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import hvac
import requests

from compiler import CompileError, compile_paths, load
from pdp import devgateway, devvault, logs
from pdp.config import (
    DEFAULT_STATE_DIR,
    LAST_UP_LEDGER,
    ConfigError,
    Settings,
    settings_toml,
    split_addr,
    up_project_dir,
)
from pdp.consolesettings import loopback_host
from pdp.ledger import LedgerError
from pdp.ledger.keyring import ensure_file
from pdp.ledger.startup import up_anchor_file, up_key_file
from pdp.secretfile import ensure_secret, write_secret
from pdp.stack import Stack

PRINT_CONFIG_HELP = ("print the effective settings (defaults < file < AAM_* env < flags) as TOML, "
                     "passwords and *_token/*_secret/*_password values masked, and exit without "
                     "starting anything")
WORKERS_HELP = ("PDP worker processes sharing the gRPC port (the workers setting; default 0: one "
                "per CPU, 1 with a SQLite ledger, which allows no more)")


def register(sub: argparse._SubParsersAction) -> None:
    up = sub.add_parser("up", help="run the local stack (OPA + PDP) on loopback")
    up.add_argument("--policies", type=Path, help="policy directory (default: examples/)")
    up.add_argument("--shadow-policies", type=Path, metavar="DIR",
                    help="a candidate policy set evaluated in shadow beside --policies")
    up.add_argument("--grpc-addr", default="127.0.0.1:50051", help="default 127.0.0.1:50051")
    up.add_argument("--watch", action=argparse.BooleanOptionalAction, default=True,
                    help="republish the bundle when a policy file changes (default on)")
    up.add_argument("--ledger-url",
                    help="ledger store (default: an embedded SQLite ledger of this policy "
                         "directory's own, under ~/.local/state/aam/projects/; "
                         "postgresql://... or off)")
    up.add_argument("--gateway-token-file", type=Path, default=DEFAULT_STATE_DIR / "gateway.token",
                    help="the token a gateway sends (metadata x-aam-gateway-token) to receive "
                         "credential values, call Check and report usage; created (mode 0600) "
                         f"when missing (default {DEFAULT_STATE_DIR / 'gateway.token'})")
    up.add_argument("--vault", action=argparse.BooleanOptionalAction, default=True,
                    help="start an OpenBao dev server for the credential broker when the bao "
                         "binary is available (default on)")
    up.add_argument("--console-addr", default="127.0.0.1:0", metavar="HOST:PORT",
                    help="the read-only web console, on loopback (default 127.0.0.1:0: a free "
                         "port, printed); '' for none. Another address is refused: aam up has "
                         "no operator token (use aam serve with console_token_file)")
    up.add_argument("--mapping", type=Path,
                    help="TOML file mapping HTTP requests to decisions (the extauthz_mapping setting)")
    up.add_argument("--envoy", action="store_true",
                    help="also start a real Envoy (mTLS, ext_authz to this PDP) in front of a demo "
                         "upstream, and print the URLs and the sample agent's SVID for the mcp and "
                         "openai SDKs")
    up.add_argument("--envoy-port", type=int, default=0, help="Envoy's port (default: a free one)")
    up.add_argument("--upstream", default="",
                    help="with --envoy: send allowed requests to IP:PORT instead of the demo upstream")
    up.add_argument("--workers", type=int, help=WORKERS_HELP)
    up.add_argument("--agent", default="",
                    help="with --envoy: the SPIFFE ID of the sample agent SVID (default: the "
                         "finance-analyst example, else the first policy's workload)")
    up.add_argument("--print-config", action="store_true", help=PRINT_CONFIG_HELP)
    up.set_defaults(func=run_up)

    sv = sub.add_parser("serve", help="run the PDP from a settings file and AAM_* env")
    sv.add_argument("--config", type=Path, help="TOML settings file")
    sv.add_argument("--policies", type=Path, help="policy directory (the policies setting)")
    sv.add_argument("--shadow-policies", type=Path, metavar="DIR",
                    help="a candidate policy set evaluated in shadow (the shadow_policies setting)")
    sv.add_argument("--grpc-addr", help="gRPC listener host:port (the grpc_addr setting)")
    sv.add_argument("--opa-url", help="use this OPA instead of starting one")
    sv.add_argument("--watch", action=argparse.BooleanOptionalAction, default=None,
                    help="republish the bundle when a policy file changes (the watch setting)")
    sv.add_argument("--workers", type=int, help=WORKERS_HELP)
    sv.add_argument("--print-config", action="store_true", help=PRINT_CONFIG_HELP)
    sv.set_defaults(func=run_serve)


# The sample agent aam up --envoy issues an SVID for, when the policies have it.
DEMO_AGENT = "spiffe://prod/agent/finance-analyst"


def _is_loopback(addr: str) -> bool:
    host, _ = split_addr(addr, "--grpc-addr")
    return loopback_host(host)


def run_up(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    try:
        if not _is_loopback(args.grpc_addr):
            raise ConfigError("aam up serves plaintext gRPC and binds loopback only; "
                              "use aam serve with TLS for other addresses")
        if not args.print_config:  # which writes nothing
            ensure_secret(args.gateway_token_file)  # plaintext authenticates no one else
        ledger_url = args.ledger_url or up_ledger_url(args.policies)
        base = dict(grpc_addr=args.grpc_addr, plaintext=True, watch=args.watch,
                    policies=str(args.policies) if args.policies else None,
                    shadow_policies=str(args.shadow_policies) if args.shadow_policies else None,
                    ledger_url=ledger_url, ledger_migrate=True,
                    gateway_token_file=str(args.gateway_token_file),
                    extauthz_mapping=str(args.mapping) if args.mapping else None,
                    workers=args.workers, console_addr=args.console_addr)
        base.update(_audit_files(ledger_url, create=not args.print_config))
        settings = Settings.load(env={}, **base)
        if args.print_config:
            return _print_config(settings, stdout, "aam up's own values and flags; no settings "
                                 "file or AAM_* env. The OpenBao dev server, not started here, "
                                 "would add broker = vault and its vault_* settings")
        # 0600: a PostgreSQL URL may hold a password.
        write_secret(LAST_UP_LEDGER, ledger_url.encode(), overwrite=True)
    except ConfigError as exc:  # the settings given: a usage error
        print(f"aam up: error: {exc}", file=stderr)
        return 2
    except OSError as exc:  # the machine's: the state directory cannot be written
        print(f"aam up: error: {exc}", file=stderr)
        return 1
    dev = None
    bao = devvault.find_bao() if args.vault else None
    if bao:
        try:
            dev = devvault.start(bao, compile_paths([Path(settings.policies)]))
        except CompileError as exc:
            for d in exc.diagnostics:
                print(d, file=stderr)
            return 1
        except (RuntimeError, OSError, hvac.exceptions.VaultError, requests.RequestException) as exc:
            print(f"aam up: error: cannot start the OpenBao dev server: {exc}", file=stderr)
            return 1
        settings = Settings.load(env={}, **base, **dev.settings())
        print(f"vault      {dev.addr} (OpenBao dev server, {dev.seeded} demo secret(s) seeded)",
              file=stdout)
    try:
        return _serve(settings, stdout, stderr, banner=True,
                      companion=_gateway(args) if args.envoy else None)
    finally:
        if dev is not None:
            dev.stop()


def run_serve(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    try:
        settings = Settings.load(
            args.config, grpc_addr=args.grpc_addr, opa_url=args.opa_url, watch=args.watch,
            policies=str(args.policies) if args.policies else None, workers=args.workers,
            shadow_policies=str(args.shadow_policies) if args.shadow_policies else None,
        )
    except ConfigError as exc:
        print(f"aam serve: error: {exc}", file=stderr)
        return 2
    if args.print_config:
        return _print_config(settings, stdout, "defaults < --config file < AAM_* env < flags")
    return _serve(settings, stdout, stderr, banner=False)


def _print_config(settings: Settings, stdout: TextIO, source: str) -> int:
    """--print-config: what would run, as a settings file, before anything starts; a
    password in a ledger URL or a token never reaches a terminal or a bug report."""
    print(f"# effective settings ({source}); secrets masked as ***", file=stdout)
    stdout.write(settings_toml(settings))
    return 0


# Starts what runs beside the stack (aam up --envoy); returns its banner and stop function.
Companion = Callable[[Stack, TextIO], tuple[str, Callable[[], None]]]


def _serve(settings: Settings, stdout: TextIO, stderr: TextIO, banner: bool,
           companion: Companion | None = None) -> int:
    logs.configure(settings.log_level, stderr)
    stack = Stack(settings)
    stop_companion: Callable[[], None] | None = None
    companion_banner = ""
    try:
        stack.start()
        if companion is not None:
            try:
                companion_banner, stop_companion = companion(stack, stdout)
            except (ConfigError, RuntimeError, OSError):
                raise
            except Exception as exc:  # a demo component's own error: one line, not a traceback
                raise RuntimeError(f"{type(exc).__name__}: {exc}") from None
    except CompileError as exc:
        for d in exc.diagnostics:
            print(d, file=stderr)
        stack.stop()
        return 1
    except (ConfigError, RuntimeError, OSError, LedgerError) as exc:
        print(f"aam: error: {exc}", file=stderr)
        stack.stop()
        return 1
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stack.request_stop())
    revision = stack.store.current.revision if stack.store.current else "?"
    print(f"policies   {settings.policies} (bundle revision {revision[:12]}"
          f"{', watching for changes' if settings.watch else ''})", file=stdout)
    signing = f" ({stack.signer.describe()})" if stack.signer else ""
    print(f"bundles    {stack.bundle_url}{signing}", file=stdout)
    print(f"opa        {stack.opa_url}{' (managed)' if stack.opa else ''}", file=stdout)
    print(f"broker     {settings.broker}" + (f" ({settings.vault_addr})" if settings.broker == "vault"
          else " (no Vault: actions that need a credential are denied credential_unavailable)"),
          file=stdout)
    print(f"ledger     {_ledger_label(settings.ledger_url)}", file=stdout)
    if settings.ledger_url not in ("", "off"):
        print(f"audit      keyed by {settings.audit_key_file}; anchors to "
              f"{settings.audit_anchor_file or '(none: a cut tail goes unseen)'}", file=stdout)
    settings = stack.settings  # with workers: the ports they share, made concrete
    print(f"grpc       {settings.grpc_addr} aam.v1.PolicyDecisionService"
          f"{' (plaintext, loopback)' if settings.plaintext else ' (mTLS)'}", file=stdout)
    workers = stack.workers
    print("workers    " + (f"{workers.count} processes on these ports (SO_REUSEPORT), pids "
                           f"{' '.join(map(str, workers.pids()))}" if workers else
                           "1 (this process)"), file=stdout)
    if settings.plaintext:
        print("gateways   " + (f"send metadata x-aam-gateway-token: the contents of "
                               f"{settings.gateway_token_file}" if settings.gateway_token_file else
                               "none (no gateway_token_file): no credential values, Check or "
                               "RecordUsage"), file=stdout)
    extauthz_addr = (f"{split_addr(settings.extauthz_addr)[0]}:{stack.extauthz.port}"
                     if stack.extauthz else settings.extauthz_addr or settings.grpc_addr)
    print(f"ext_authz  {extauthz_addr} envoy.service.auth.v3.Authorization (Envoy)", file=stdout)
    if stack.console:
        auth = ("operator token" if stack.console.token else
                "client certificate" if stack.console.tls else "no login: loopback only")
        print(f"console    {stack.console.url} (read-only; {auth})", file=stdout)
    if companion_banner:
        print(companion_banner, file=stdout)
    if banner:
        tries = example_calls(Path(settings.policies), settings.grpc_addr)
        print("\ntry, from another shell:\n" + "".join(f"  {t}\n" for t in tries)
              + ("" if tries else "  (no AgentPolicy in the policies yet: add one, it is "
                                  "picked up while this runs)\n")
              + "Ctrl-C stops everything.", file=stdout)
    stdout.flush()
    try:
        stack.wait()
    finally:
        print("stopping...", file=stdout)
        if stop_companion is not None:
            stop_companion()
        stack.stop()
    return 0


def _gateway(args: argparse.Namespace) -> Companion:
    """aam up --envoy: Envoy (and the demo upstream) once the PDP answers."""

    def start(stack: Stack, stdout: TextIO) -> tuple[str, Callable[[], None]]:
        s = stack.settings
        ps = load([Path(s.policies)])
        agent = args.agent or next((p.workload for p in ps.policies if p.workload == DEMO_AGENT),
                                   ps.policies[0].workload if ps.policies else DEMO_AGENT)
        gw = devgateway.start(DEFAULT_STATE_DIR / "dev-gateway", pdp_port=split_addr(s.grpc_addr)[1],
                              gateway_token=Path(s.gateway_token_file).read_text().strip(),
                              agent_id=agent, tools=ps.tools, upstream=args.upstream,
                              port=args.envoy_port, out=stdout)
        mcp = [f"{gw.url}/mcp/{t.resource}" for t in ps.tools]
        return (f"envoy      {gw.url} (mTLS: present the agent SVID below; CA {gw.agent.ca})\n"
              f"  agent    {gw.agent.spiffe_id}: cert {gw.agent.cert}, key {gw.agent.key}\n"
              f"  openai   base_url={gw.url}/v1\n"
              + "".join(f"  mcp      {u}\n" for u in mcp)
              + (f"  upstream {gw.upstream.url} (demo: an MCP server per Tool and a model endpoint; "
                 "it reports here what reached it)" if gw.upstream else f"  upstream {args.upstream}"),
                gw.stop)

    return start


def up_ledger_url(policies: Path | None) -> str:
    """aam up's default ledger: an embedded SQLite file of this policy directory's own."""
    directory = up_project_dir(policies or Path(Settings().policies))
    return f"sqlite://{directory / 'ledger.sqlite3'}"


def example_calls(policies: Path, addr: str) -> list[str]:
    """Calls that show what the served policies decide: a model the first policy allows,
    and a tool action it denies (else one it grants). None when there is no policy (or
    the directory does not compile: the stack has said why)."""
    try:
        ps = load([policies])
    except CompileError:
        return []
    enforced = [p for p in ps.policies if not p.shadow]
    if not enforced:
        return []
    p = next((p for p in enforced if p.models and p.tools), enforced[0])
    head = f"aam authorize --addr {addr} --workload {p.workload}"
    out = [f"{head} --model {sorted(p.models)[0]}"] if p.models else []
    grant = next(iter(p.tools), None)
    if grant is not None:
        action = sorted(grant.deny)[0] if grant.deny else sorted(grant.actions)[0]
        out.append(f"{head} --tool {grant.resource} --action {action}")
    return out


def _audit_files(ledger_url: str, create: bool = True) -> dict[str, str]:
    """aam up's audit keyring (created when missing, unless not ``create``) and its anchor
    for this ledger."""
    if ledger_url in ("", "off"):
        return {}
    if create:
        ensure_file(up_key_file())
    return {"audit_key_file": str(up_key_file()), "audit_anchor_file": str(up_anchor_file(ledger_url))}


def _ledger_label(url: str) -> str:
    """Where the ledger is, without credentials."""
    if url in ("", "off"):
        return "off (budgets and rate limits deny with ledger_unavailable; no audit)"
    if url.startswith("sqlite:"):
        return f"{url} (embedded)"
    return "PostgreSQL"
