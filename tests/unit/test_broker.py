"""Broker cache, renewal and revocation logic with a fake backend and a fake clock."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from compiler import load
from compiler.codegen import generate
from pdp.broker import Backend, Broker, NoBackend, build
from pdp.broker.base import CredentialSpec, CredentialUnavailable, Lease, Scope
from pdp.config import ConfigError, Settings
from pdp.engine import Decision, Request
from tests.integration.pdp import EXAMPLES

W = "spiffe://prod/agent/a"


class FakeBackend:
    name = "fake"

    def __init__(self, clock: list[float], ttl: int = 100, renewable: bool = False) -> None:
        self.clock, self.ttl, self.renewable = clock, ttl, renewable
        self.ids = itertools.count(1)
        self.issued: list[Lease] = []
        self.revoked: list[str] = []
        self.renewed: list[str] = []
        self.down = False

    def issue(self, spec: CredentialSpec, scope: Scope, workload: str) -> Lease:
        if self.down:
            raise CredentialUnavailable("vault is unavailable for x")
        n = next(self.ids)
        lease = Lease(secret=f"secret-{n}", accessor=f"acc-{n}", expires_at=self.clock[0] + self.ttl,
                      renewable=self.renewable, revoke="lease")
        self.issued.append(lease)
        return lease

    def renew(self, lease: Lease, ttl_s: int) -> Lease:
        self.renewed.append(lease.accessor)
        return Lease(lease.secret, lease.accessor, self.clock[0] + ttl_s, True, "lease")

    def revoke(self, lease: Lease) -> None:
        self.revoked.append(lease.accessor)

    def start(self) -> None: ...

    def close(self) -> None: ...


def data(*, engine: str = "database", delivery: str = "value", actions: tuple[str, ...] = ("read",),
         policy: str = "p", num_uses: int = 0, ttl: int = 100) -> dict[str, Any]:
    scope: dict[str, Any] = {"actions": {"read": True}, "role": "r"}
    if engine == "token":
        scope.update(policies=["x"], num_uses=num_uses)
    return {
        "policies": {W: {"name": policy, "tools": {"db.t": {"actions": dict.fromkeys(actions, True)}}}}
        if policy else {},
        "credentials": {"db.t": {
            "name": "c", "resource": "db.t", "engine": engine, "mount": "m", "ttl_s": ttl,
            "inject": {"header": "x-cred", "scheme": "Basic", "delivery": delivery},
            "scopes": {"read": scope}, "actions": {"read": "read"}}},
    }


def allow(policy: str = "p") -> Decision:
    return Decision(allow=True, reasons=(), policy=policy, decision_id="d", revision="r")


def req(action: str = "read", tool: str = "db.t") -> Request:
    return Request(spiffe_id=W, tool=tool, action=action)


@pytest.fixture
def clock() -> list[float]:
    return [1000.0]


def make(clock: list[float], **kw: Any) -> tuple[Broker, FakeBackend]:
    backend = FakeBackend(clock, **{k: kw.pop(k) for k in ("ttl", "renewable") if k in kw})
    broker = Broker(backend, min_remaining_s=30, clock=lambda: clock[0], **kw)
    return broker, backend


def test_backends_satisfy_the_protocol() -> None:
    assert isinstance(NoBackend(), Backend)
    assert isinstance(FakeBackend([0.0]), Backend)


def test_credential_goes_on_the_decision_for_the_gateway(clock: list[float]) -> None:
    broker, _ = make(clock)
    broker.on_bundle(data())
    d = broker.attach(req(), allow())
    assert d.allow and d.credential is not None
    assert d.credential.header == "x-cred"
    assert d.credential.value == "Basic c2VjcmV0LTE="  # base64("secret-1")
    assert d.credential.lease_accessor == "acc-1"
    assert "secret" not in repr(d)


def test_reused_until_near_expiry_then_reissued(clock: list[float]) -> None:
    broker, backend = make(clock)
    broker.on_bundle(data())
    first = broker.attach(req(), allow()).credential
    clock[0] += 69  # 31 s left: still reused
    assert broker.attach(req(), allow()).credential == first
    clock[0] += 2  # 29 s left: reissued
    assert broker.attach(req(), allow()).credential.lease_accessor == "acc-2"  # type: ignore[union-attr]
    assert len(backend.issued) == 2
    assert broker.stats["reused"] == 1


def test_renewable_lease_is_renewed_not_reissued(clock: list[float]) -> None:
    broker, backend = make(clock, renewable=True)
    broker.on_bundle(data())
    broker.attach(req(), allow())
    clock[0] += 90
    cred = broker.attach(req(), allow()).credential
    assert cred is not None and cred.lease_accessor == "acc-1"
    assert backend.renewed == ["acc-1"] and len(backend.issued) == 1


def test_cache_off_issues_every_time(clock: list[float]) -> None:
    broker, backend = make(clock, cache=False)
    broker.on_bundle(data())
    for _ in range(3):
        broker.attach(req(), allow())
    assert len(backend.issued) == 3


@pytest.mark.parametrize("kw", [{"delivery": "wrapped", "engine": "kv"},
                                {"engine": "token", "num_uses": 1}], ids=["wrapped", "counted-token"])
def test_single_use_credentials_are_never_cached(clock: list[float], kw: dict[str, Any]) -> None:
    broker, backend = make(clock)
    broker.on_bundle(data(**kw))
    a = broker.attach(req(), allow()).credential
    b = broker.attach(req(), allow()).credential
    assert a is not None and b is not None and a.value != b.value
    assert broker.cached() == {} and len(backend.issued) == 2


@pytest.mark.parametrize("change", [
    {"policy": ""},                # the workload's policy is gone
    {"policy": "renamed"},         # another policy now governs the workload
    {"actions": ("write",)},       # the grant no longer covers the scope
    {"ttl": 50},                   # the ToolCredential itself changed
])
def test_new_bundle_revokes_leases_it_no_longer_justifies(clock: list[float], change: dict) -> None:
    broker, backend = make(clock)
    broker.on_bundle(data())
    broker.attach(req(), allow())
    broker.on_bundle(data())  # same bundle: nothing revoked
    assert backend.revoked == []
    broker.on_bundle(data(**change))
    assert backend.revoked == ["acc-1"]
    assert broker.cached() == {}


def test_backend_failure_turns_the_allow_into_credential_unavailable(clock: list[float]) -> None:
    broker, backend = make(clock)
    broker.on_bundle(data())
    backend.down = True
    d = broker.attach(req(), allow())
    assert not d.allow and d.credential is None
    assert [r.code for r in d.reasons] == ["credential_unavailable"]


def test_actions_and_tools_without_a_scope_pass_untouched(clock: list[float]) -> None:
    broker, backend = make(clock)
    broker.on_bundle(data(actions=("read", "list")))
    assert broker.attach(req("list"), allow()) == allow()
    assert broker.attach(req(tool="other.tool"), allow()) == allow()
    assert backend.issued == []


def test_no_issue_when_the_current_bundle_does_not_justify_it(clock: list[float]) -> None:
    broker, backend = make(clock)
    broker.on_bundle(data(actions=("write",)))
    d = broker.attach(req(), allow())  # OPA still on the old bundle allowed it
    assert not d.allow and backend.issued == []


def test_none_backend_denies_credentialed_actions_of_the_examples() -> None:
    broker = build(Settings.load(env={}))
    broker.on_bundle(generate(load([EXAMPLES])))
    d = broker.attach(Request(spiffe_id="spiffe://prod/agent/finance-analyst",
                              tool="salesforce.accounts", action="read"),
                      allow("finance-analyst-readonly"))
    assert not d.allow and d.reasons[0].code == "credential_unavailable"
    assert "no credential broker is configured" in d.reasons[0].message
    search = Request(spiffe_id="spiffe://prod/agent/finance-analyst", tool="salesforce.accounts",
                     action="search")  # in no scope: no credential needed
    assert broker.attach(search, allow("finance-analyst-readonly")).allow


@pytest.mark.parametrize(("settings", "message"), [
    ({"broker": "vault"}, "vault_addr"),
    ({"broker": "vault", "vault_addr": "http://v:8200"}, "vault_role_id"),
    ({"broker": "vault", "vault_addr": "http://v:8200", "vault_role_id": "r"}, "vault_secret_id_file"),
    ({"broker": "vault", "vault_addr": "http://v:8200", "vault_role_id": "r",
      "vault_token_file": "/t"}, "either"),
])
def test_vault_settings_are_validated(settings: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.load(env={}, **settings)


def test_unknown_broker_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown broker"):
        build(Settings.load(env={}, broker="hsm"))


def test_failed_revocation_is_retried_once_vault_answers(clock: list[float]) -> None:
    broker, backend = make(clock)
    broker.on_bundle(data())
    broker.attach(req(), allow())
    real_revoke = backend.revoke

    def down(lease: Lease) -> None:
        raise CredentialUnavailable("vault is unavailable for lease revocation")

    backend.revoke = down  # type: ignore[method-assign]
    broker.on_bundle(data(actions=("write",)))
    assert backend.revoked == [] and broker.stats["revoked"] == 0
    backend.revoke = real_revoke  # type: ignore[method-assign]
    broker.on_bundle(data(actions=("write",)))  # the next bundle retries it
    assert backend.revoked == ["acc-1"]
    broker.on_bundle(data())
    assert backend.revoked == ["acc-1"]  # once only
