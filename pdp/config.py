"""Typed settings for the PDP, from one place: defaults < TOML file < env < flags.

Environment variables are ``AAM_`` plus the upper-cased field name, e.g.
``AAM_OPA_TIMEOUT_MS=100``. Nothing else in the code base reads the
environment for configuration.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
# Where scripts/setup puts built tools (OPA, ...): outside the repo, shared by clones.
DEFAULT_TOOLS_DIR = Path(
    os.environ.get("AAM_TOOLS_DIR")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aam" / "tools"
)


# Where aam up keeps its state: the embedded ledger and the development secrets
# (gateway token, audit key, audit anchor), each a 0600 file (pdp/secretfile.py).
DEFAULT_STATE_DIR = Path(
    os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "aam"
# Before ledgers were per project, aam up kept one here (still read when nothing newer is).
DEFAULT_SQLITE_LEDGER = DEFAULT_STATE_DIR / "ledger.sqlite3"
# The ledger URL of the latest aam up, for the reading commands (aam audit, replay, shadow).
LAST_UP_LEDGER = DEFAULT_STATE_DIR / "last-up-ledger"


def up_project_dir(policies: Path) -> Path:
    """aam up's state for one policy directory: its own embedded ledger, so two clones or
    two policy sets never share spend, rates or an audit chain."""
    resolved = policies.resolve()
    slug = re.sub(r"[^a-z0-9]+", "-", resolved.name.lower()).strip("-") or "policies"
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    return DEFAULT_STATE_DIR / "projects" / f"{slug}-{digest}"


class ConfigError(ValueError):
    """A setting is missing, malformed or unsafe; the message names it.

    ``setting`` and ``reason``, when set, let :meth:`Settings.load` say where the bad value
    came from (``FILE: setting KEY: reason``, ``AAM_KEY: reason``) instead of only its name.
    """

    def __init__(self, message: str, setting: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.setting = setting
        self.reason = reason if reason is not None else message


def setting_error(name: str, reason: str) -> ConfigError:
    """A ConfigError about one setting: ``setting NAME: reason``."""
    return ConfigError(f"setting {name}: {reason}", setting=name, reason=reason)


@dataclass(frozen=True)
class Settings:
    # gRPC listener, "host:port".
    grpc_addr: str = "127.0.0.1:50051"
    # Serve gRPC without TLS. Only ever on explicit request (aam up on loopback).
    plaintext: bool = False
    # Policy directory compiled into the bundle the PDP serves.
    policies: str = str(REPO_ROOT / "examples")
    # A whole candidate policy set evaluated in shadow beside the enforced one: its
    # AgentPolicies never decide, their disagreements are audited and counted
    # (docs/ledger-and-audit.md, "Shadow rollout"). "" for none.
    shadow_policies: str = ""
    # Recompile and republish the bundle when a policy file changes.
    watch: bool = False
    # Where the policy set comes from: "directory" (policies above) or "kubernetes": the
    # AgentPolicy, ModelRoute, Tool and ToolCredential custom resources of the API server
    # (pdp/kubesource.py), watched (always, whatever watch says), each resource's compile
    # outcome written to its status.
    policy_source: str = "directory"
    # policy_source = kubernetes: the API server's URL; the default is the in-cluster name.
    kube_api_url: str = "https://kubernetes.default.svc"
    # Bearer token file (re-read on every request: kubelet rotates projected tokens) and
    # the CA bundle the API server's certificate must chain to; both default to the pod's
    # service-account mount.
    kube_token_file: str = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    kube_ca_file: str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    # Namespace whose resources make the policy set; "" for all namespaces (needs a
    # ClusterRole rather than a Role).
    kube_namespace: str = ""
    # Label selector (the API server's syntax, e.g. "team=finance") the resources must
    # match; "" for all.
    kube_label_selector: str = ""
    # URL of an OPA the PDP does not manage; empty means start one as a child.
    # "http://host:port", or "unix:///abs/path.sock" for an OPA on a Unix socket.
    opa_url: str = ""
    # OPA binary for a managed OPA; empty means the tools dir, then PATH.
    opa_binary: str = ""
    # Address of the managed OPA, "host:port" (port 0 picks a free one), or a Unix
    # socket: "unix:///abs/dir/opa.sock" (dir is created 0700 if missing, and must be
    # this user's and closed to group and others; the socket is 0600), or "unix://"
    # for a socket in a fresh private directory. TCP keep-alive stays the default:
    # on this 2-core machine the socket's gain is small (bench/RESULTS.md, issue 23).
    opa_addr: str = "127.0.0.1:0"
    # Per-decision deadline for the OPA query, after which the PDP denies.
    opa_timeout_ms: int = 500
    # Go's GC target (GOGC) for the managed OPA. OPA allocates ~80 KB per decision;
    # 400 collects a quarter as often as Go's default 100, for about a fifth less OPA
    # CPU per decision (bench/RESULTS.md) at the cost of a larger heap between GCs.
    opa_gogc: int = 400
    # --- Signing of the bundle served to OPA (OPA refuses unsigned or altered ones) ---
    # File (mode 0600) with the key that signs every published bundle: a PEM private
    # key (RS256, ES256) or the HMAC secret (HS256). Empty: a managed OPA gets an
    # ephemeral key pair made at start; an external OPA (opa_url) requires a key,
    # whose public half its config names (deploy/opa/config.yaml).
    bundle_signing_key: str = ""
    bundle_signing_alg: str = "ES256"
    # Key id in the signature and OPA's config (keys.<id>, bundles.aam.signing.keyid).
    bundle_signing_key_id: str = "aam"
    # HTTP listener serving bundles to OPA (and /metrics), "host:port".
    http_addr: str = "127.0.0.1:0"
    # gRPC worker threads (per worker process).
    max_workers: int = 16
    # PDP worker processes serving grpc_addr (and extauthz_addr) together, each its own
    # interpreter (one GIL) with its own engine, ledger connections and broker; the
    # parent keeps compile, bundles, OPA and audit anchors. 0: auto (resolve_workers:
    # one per CPU, but 1 with a SQLite ledger); 1: one process, no children. More than
    # 1 needs a PostgreSQL ledger or none.
    workers: int = 0
    # Largest serialized params + context accepted in one request.
    max_request_bytes: int = 64 * 1024
    # Envoy ext_authz (envoy.service.auth.v3.Authorization): "" serves it on
    # grpc_addr beside Authorize; "host:port" gives it a listener of its own.
    extauthz_addr: str = ""
    # TOML file mapping HTTP requests to decisions (docs/envoy.md);
    # "" uses the built-in defaults.
    extauthz_mapping: str = ""
    # Seconds in-flight calls get to finish on shutdown.
    shutdown_grace_s: float = 5.0
    log_level: str = "info"
    # --- mTLS on the gRPC port (ignored when plaintext = true) ---
    # PEM files: the PDP's own X.509-SVID (chain) and key, and the X.509 trust
    # bundle (CA certificates) that client SVIDs must chain to.
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    # Trust domains whose SVIDs may call; empty means the PDP's own trust
    # domain (from tls_cert's URI SAN).
    trust_domains: tuple[str, ...] = ()
    # SPIFFE IDs of gateways that may ask on behalf of other workloads. Any
    # other caller may only ask about itself. Only gateways receive credential
    # values, may call Check and may report usage (RecordUsage).
    trusted_gateways: tuple[str, ...] = ()
    # Plaintext mode only: a file (mode 0600, at least 32 characters) holding the
    # token a gateway sends as gRPC metadata x-aam-gateway-token. Its holder is a
    # trusted gateway; without it a plaintext port has no gateway, so it answers
    # no credential value and refuses Check and RecordUsage. aam up writes one.
    gateway_token_file: str = ""
    # When a gateway asks on behalf of an agent, the agent's JWT-SVID must be
    # forwarded (Identity.jwt_svid) and is verified against jwt_bundle.
    require_jwt_svid: bool = False
    # JWKS file (SPIFFE JWT trust bundle) and the audience JWT-SVIDs must name.
    jwt_bundle: str = ""
    jwt_audience: str = "aam-pdp"
    # Credential broker backend: "none" (credentialed actions are denied
    # credential_unavailable) or "vault" (Vault / OpenBao at vault_addr).
    broker: str = "none"
    vault_addr: str = ""
    # AppRole login: role id, and a file holding the secret id (never the value itself).
    vault_role_id: str = ""
    vault_secret_id_file: str = ""
    vault_approle_mount: str = "approle"
    # Alternative to AppRole: a file with a (non-root) token, e.g. kept fresh by a Vault agent.
    vault_token_file: str = ""
    vault_timeout_ms: int = 2000
    # CA bundle to verify an https vault_addr; empty uses the system's.
    vault_ca_file: str = ""
    # Reuse a cached credential while it has at least this long left (capped at half its TTL).
    credential_min_remaining_s: float = 30.0
    # Cache credentials per (workload, resource, scope); off issues one per decision.
    credential_cache: bool = True
    # Ledger (budgets, rate windows, audit): "postgresql://...", a libpq "host=..."
    # string, "sqlite:///path" (the embedded default of aam up) or "" / "off".
    ledger_url: str = ""
    # Apply pending ledger migrations on start (otherwise run `aam migrate`).
    ledger_migrate: bool = False
    # PostgreSQL connections per PDP process.
    ledger_pool_size: int = 8
    # How long a decision waits for a ledger connection before denying.
    ledger_timeout_ms: int = 2000
    # Seconds after which a reservation never settled by RecordUsage is released.
    reservation_ttl_s: float = 900.0
    # How long this PDP's last view of a workload's spend and rates may stand in for a
    # ledger read: OPA decides on it, and the ledger re-checks every limit atomically
    # when it reserves for the allow (in the same batch as the audit row). A limit deny
    # is always confirmed on fresh state. 0: read the ledger's state before every decision.
    ledger_state_ttl_ms: int = 1000
    # Token estimate for a model call that does not send one (prices the reservation).
    default_estimated_tokens: int = 4096
    # --- Keyed audit chain (docs/ledger-and-audit.md, "Keyed chain and anchors") ---
    # Keyring file (JSON, mode 0600) with the HMAC keys that key every audit row;
    # required whenever ledger_url is set: the PDP refuses to start without it.
    # `aam audit key init FILE` creates one, `aam audit key rotate FILE` adds a new
    # current key (a running PDP picks it up within a second). aam up: audit.key in
    # its state directory.
    audit_key_file: str = ""
    # File this PDP writes signed checkpoints of the chain head to (one file per
    # replica), so `aam audit verify --anchor` sees rows cut from the end of the
    # chain. Empty: no anchor (such a cut goes unseen). aam up: audit.anchor.
    audit_anchor_file: str = ""
    # Seconds between anchor writes (only when the head moved; also on shutdown).
    audit_anchor_interval_s: float = 1.0

    @classmethod
    def load(
        cls,
        file: Path | None = None,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> Settings:
        """defaults < ``file`` (TOML) < ``env`` (``AAM_*``) < ``overrides`` (flags; None is
        unset). An error names where the bad value came from: ``FILE: setting KEY: reason``,
        ``AAM_KEY: reason`` or ``setting KEY: reason`` for a flag."""
        values: dict[str, Any] = {}
        # Where each value came from, for the error message: the file, or its AAM_ variable.
        origin: dict[str, str] = {}
        known = {f.name: f for f in fields(cls)}
        if file is not None:
            try:
                from_file = tomllib.loads(file.read_text())
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"{file}: {exc}") from None
            unknown = sorted(set(from_file) - set(known))
            if unknown:
                raise ConfigError("; ".join(f"{file}: setting {k}: {_unknown(k, known)}"
                                            for k in unknown))
            values.update(from_file)
            origin.update(dict.fromkeys(from_file, str(file)))
        env = os.environ if env is None else env
        for name in known:
            key = f"AAM_{name.upper()}"
            if key in env:
                values[name] = env[key]
                origin[name] = key
        given = {k: v for k, v in overrides.items() if v is not None}
        unknown = sorted(set(given) - set(known))
        if unknown:  # a caller's mistake, not a user's: flags map to known settings
            raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
        values.update(given)
        for k in given:
            origin.pop(k, None)
        try:
            settings = replace(cls(), **{k: _coerce(known[k].type, k, v) for k, v in values.items()})
            settings.validate()
        except ConfigError as exc:
            raise _located(exc, origin) from None
        return settings

    def validate(self) -> None:
        for name in ("grpc_addr", "opa_addr", "http_addr"):
            if name == "opa_addr" and self.opa_addr.startswith(UNIX_SCHEME):
                unix_socket_path(self.opa_addr, name, allow_auto=True)
            else:
                split_addr(getattr(self, name), name)
        if self.opa_url.startswith(UNIX_SCHEME):
            unix_socket_path(self.opa_url, "opa_url")
        elif self.opa_url and not self.opa_url.startswith("http://"):
            raise ConfigError(f"opa_url must be http://host:port or unix:///path, got {self.opa_url!r}")
        if self.extauthz_addr:
            split_addr(self.extauthz_addr, "extauthz_addr")
        if self.opa_timeout_ms <= 0:
            raise ConfigError("opa_timeout_ms must be positive")
        if self.opa_gogc <= 0:
            raise ConfigError("opa_gogc must be positive (Go's default is 100)")
        if self.max_workers <= 0:
            raise ConfigError("max_workers must be positive")
        if self.workers < 0:
            raise ConfigError("workers must not be negative (0: one per CPU)")
        if self.workers > 1 and sqlite_ledger(self.ledger_url):
            raise ConfigError(f"workers = {self.workers} needs a PostgreSQL ledger (or none): the "
                              "SQLite ledger admits one writer at a time, so its PDP runs as one "
                              "process (workers = 1, or 0 for auto)")
        self._validate_bundle_signing()
        self._validate_policy_source()
        if self.require_jwt_svid and not self.jwt_bundle:
            raise ConfigError("require_jwt_svid needs jwt_bundle (a JWKS file)")
        self._validate_identity()
        if self.ledger_state_ttl_ms < 0:
            raise ConfigError("ledger_state_ttl_ms must not be negative")
        if self.ledger_pool_size <= 0 or self.ledger_timeout_ms <= 0 or self.reservation_ttl_s <= 0:
            raise ConfigError("ledger_pool_size, ledger_timeout_ms and reservation_ttl_s must be positive")
        if self.audit_anchor_interval_s <= 0:
            raise ConfigError("audit_anchor_interval_s must be positive")
        self._validate_broker()

    def _validate_identity(self) -> None:
        """trust_domains and trusted_gateways by the compiler's SPIFFE parser, as written:
        a typo otherwise shows only at run time, as a caller that is never trusted."""
        from compiler import spiffe  # here: config stays cheap to import

        for name, check, what in (("trust_domains", spiffe.parse_trust_domain, "a trust domain"),
                                  ("trusted_gateways", spiffe.parse, "a SPIFFE ID")):
            for value in getattr(self, name):
                if value != value.strip():
                    raise setting_error(name, f"{value!r} has surrounding whitespace")
                try:
                    parsed = check(value)
                except spiffe.InvalidSpiffeID as exc:
                    raise setting_error(name, f"{value!r} is not {what}: {exc}") from None
                if name == "trusted_gateways" and not parsed.path:
                    raise setting_error(name, f"{value!r} is not a SPIFFE ID of a workload: it "
                                              "names a trust domain (add the gateway's path)")

    def _validate_bundle_signing(self) -> None:
        from compiler.sign import ALGORITHMS  # here: config stays cheap to import

        if self.bundle_signing_alg not in ALGORITHMS:
            raise ConfigError(f"bundle_signing_alg must be one of {', '.join(ALGORITHMS)}, "
                              f"got {self.bundle_signing_alg!r}")
        if not self.bundle_signing_key_id.strip():
            raise ConfigError("bundle_signing_key_id must not be empty")
        if self.opa_url and not self.bundle_signing_key:
            raise ConfigError("opa_url needs bundle_signing_key: an OPA the PDP does not manage "
                              "verifies bundles only with a key its own config names "
                              "(deploy/opa/config.yaml)")

    def _validate_policy_source(self) -> None:
        if self.policy_source not in ("directory", "kubernetes"):
            raise ConfigError(f"policy_source must be directory or kubernetes, got {self.policy_source!r}")
        if self.policy_source != "kubernetes":
            return
        if not self.kube_api_url.startswith("https://"):
            raise ConfigError(f"kube_api_url must be https://..., got {self.kube_api_url!r}")
        if not self.kube_token_file or not self.kube_ca_file:
            raise ConfigError("policy_source = kubernetes needs kube_token_file and kube_ca_file")

    def _validate_broker(self) -> None:
        if self.broker != "vault":
            return
        if not self.vault_addr.startswith(("http://", "https://")):
            raise ConfigError("broker = vault needs vault_addr (http:// or https://)")
        if bool(self.vault_role_id) == bool(self.vault_token_file):
            raise ConfigError("broker = vault needs either vault_role_id (AppRole) or vault_token_file")
        if self.vault_role_id and not self.vault_secret_id_file:
            raise ConfigError("vault_role_id needs vault_secret_id_file")
        if self.vault_timeout_ms <= 0:
            raise ConfigError("vault_timeout_ms must be positive")

    def opa_path(self) -> str:
        """The OPA binary to run, or a ConfigError saying how to get one."""
        candidates = [self.opa_binary] if self.opa_binary else [
            str(DEFAULT_TOOLS_DIR / "bin" / "opa"), shutil.which("opa") or ""]
        for c in candidates:
            if c and os.access(c, os.X_OK):
                return c
        raise ConfigError(
            "OPA binary not found (looked in "
            f"{', '.join(c for c in candidates if c) or 'PATH'}); run scripts/setup"
        )


def sqlite_ledger(ledger_url: str) -> bool:
    """Whether ``ledger_url`` names the embedded SQLite store (pdp/ledger open_ledger)."""
    return ledger_url.lower().startswith("sqlite:")


def resolve_workers(settings: Settings) -> int:
    """How many PDP processes serve: ``workers``, or for 0 (auto) one per CPU, since one
    PDP process is bound to about one core by its GIL. With a SQLite ledger auto is 1:
    SQLite serialises every write on one file lock, so more processes only queue on it,
    and ``validate`` refuses more than 1 there."""
    if settings.workers > 0:
        return settings.workers
    if sqlite_ledger(settings.ledger_url):
        return 1
    return usable_cpus()


def usable_cpus(cgroup: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """``os.cpu_count()``, but no more than this process may run on (its CPU affinity) or
    use (a cgroup v2 CPU quota, as a container's CPU limit sets, rounded up): a pod limited
    to 2 CPUs on a 64-core node gets 2 workers, not 64."""
    cpus = os.cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        cpus = min(cpus, len(os.sched_getaffinity(0)) or cpus)
    try:
        quota, period = cgroup.read_text().split()[:2]
        if quota != "max" and int(period) > 0:
            cpus = min(cpus, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def settings_dict(settings: Settings) -> dict[str, Any]:
    """Every setting, JSON-ready: what a worker process is given (pdp/workers.py)."""
    return {f.name: list(v) if isinstance(v := getattr(settings, f.name), tuple) else v
            for f in fields(settings)}


def settings_from_dict(values: Mapping[str, Any]) -> Settings:
    """The inverse of :func:`settings_dict` (already validated by the parent)."""
    return Settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


# Settings whose values are secrets by name; *_file and *_key settings are paths to secrets,
# not secrets, and print as they are.
SECRET_SUFFIXES = ("_token", "_secret", "_password")
MASK = "***"
# scheme://user:PASSWORD@host: the password of a URL's user info, up to the last '@', so
# one with an unescaped '/' or '@' is masked whole (at worst more than the password).
_URL_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/?#@:]*:)(.*)(@)", re.S)
# password=..., sslpassword=...: libpq's keyword form, or a URL's query parameter.
_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&']+)", re.I)


def masked(name: str, value: Any) -> Any:
    """``value`` as it may be shown (aam serve --print-config): a secret-named setting
    entirely masked, a password inside a connection string or URL replaced by ***."""
    if name.endswith(SECRET_SUFFIXES):
        return MASK if value else value
    if isinstance(value, str):
        value = _URL_PASSWORD.sub(lambda m: m[1] + MASK + m[3], value)
        return _KEYWORD_PASSWORD.sub(lambda m: m[1] + MASK, value)
    return value


def settings_toml(settings: Settings) -> str:
    """Every effective setting as a TOML ``--config`` file would write it, secrets masked:
    what ``--print-config`` shows, loadable again when nothing was masked."""
    return "".join(f"{f.name} = {_toml(masked(f.name, getattr(settings, f.name)))}\n"
                   for f in fields(settings))


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    # A JSON string is a TOML basic string (the same escapes), non-ASCII kept as it is.
    return json.dumps(str(value), ensure_ascii=False)


UNIX_SCHEME = "unix://"
# sockaddr_un.sun_path is 108 bytes on Linux, the terminating NUL included.
MAX_UNIX_PATH = 107


def unix_socket_path(addr: str, name: str = "address", allow_auto: bool = False) -> str:
    """The socket path of a ``unix:///abs/path`` address ("" for ``unix://`` when
    ``allow_auto``: a socket in a fresh private directory)."""
    path = addr[len(UNIX_SCHEME):]
    if not path and allow_auto:
        return ""
    if not path.startswith("/") or len(path.encode()) > MAX_UNIX_PATH or path.endswith("/") \
            or ":" in path or "\0" in path:
        raise ConfigError(f"{name} must be unix:///absolute/path (at most {MAX_UNIX_PATH} bytes, "
                          f"no ':')" + (" or unix://" if allow_auto else "") + f", got {addr!r}")
    return path


def split_addr(addr: str, name: str = "address") -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{name} must be host:port, got {addr!r}")
    return host.strip("[]"), int(port)


_KINDS = {"bool": "a boolean (true or false)", "int": "an integer", "float": "a number",
          "str": "a string"}


def _coerce(typ: Any, name: str, value: Any) -> Any:
    typ = typ if isinstance(typ, str) else typ.__name__
    if typ.startswith("tuple"):
        return _coerce_list(name, value)
    try:
        if typ == "bool":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if typ == "int":
            return int(value)
        if typ == "float":
            return float(value)
        if isinstance(value, (list, dict)):  # str() would turn a TOML array into text
            raise TypeError(value)
        return str(value)
    except (TypeError, ValueError):
        raise setting_error(name, f"must be {_KINDS.get(typ, typ)}, got {value!r}") from None


def _coerce_list(name: str, value: Any) -> tuple[str, ...]:
    """A TOML array of strings, taken as written; or the environment's comma-separated
    string, whose separator may have spaces around it (``"a, b"``). Nothing else is
    stripped: whitespace at either end of the value, or inside a TOML string, stays and
    fails validation, rather than being trimmed silently."""
    if isinstance(value, str):
        if value == "":
            return ()
        items = re.split(r"[ \t]*,[ \t]*", value)
        if "" in items:
            raise setting_error(name, f"{value!r} has an empty entry (a stray comma)")
        return tuple(items)
    if not isinstance(value, (list, tuple)) or not all(isinstance(i, str) for i in value):
        raise setting_error(name, f"must be a list of strings, got {value!r}")
    return tuple(value)


def _unknown(key: str, known: Mapping[str, Any]) -> str:
    """Why a key is refused, with the setting it was likely meant to be."""
    import difflib

    close = difflib.get_close_matches(key, known, n=1)
    return "unknown setting" + (f" (did you mean {close[0]}?)" if close else "")


def _located(exc: ConfigError, origin: Mapping[str, str]) -> ConfigError:
    """``exc`` with the place its setting's value came from: ``FILE: setting KEY: reason``
    or ``AAM_KEY: reason``. A check whose message starts with the setting's name ("opa_gogc
    must be positive") keeps it whole after the place (``AAM_OPA_GOGC: opa_gogc must be
    positive``); one of another shape (naming several settings) is left as it is."""
    if exc.setting is None:
        first = re.match(r"(\w+) (?!=)", str(exc))
        if first is None or first.group(1) not in origin:
            return exc
        return ConfigError(f"{origin[first.group(1)]}: {exc}", setting=first.group(1),
                           reason=str(exc))
    name, reason = exc.setting, exc.reason
    where = origin.get(name)
    if where is None:  # a default or a flag: the message already names the setting
        return exc
    env = where == f"AAM_{name.upper()}"
    return ConfigError(f"{where}: {reason}" if env else f"{where}: setting {name}: {reason}",
                       setting=name, reason=reason)
