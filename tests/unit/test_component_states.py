"""Component states beyond the engine (issue 19), without servers: reasons scrubbed of
secrets, the detail (revision) of a state, the ledger seen through its calls and its
ping, the broker's watch, the workers' states merged worst-first, ``aam status --json``."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from aam.cli.main import run
from pdp.broker import Broker
from pdp.broker.none import NoBackend
from pdp.broker.vault import VaultBackend
from pdp.health import BROKER, DEGRADED, ENGINE, LEDGER, OK, Components, safe_reason
from pdp.ledger import LedgerError, LedgerUnavailable, open_ledger
from pdp.ledger.watched import WatchedLedger
from pdp.opa import free_port
from pdp.workers import WorkerProcess, Workers


@pytest.mark.parametrize("text", [
    "connect to postgresql://aam:s3cr3t-pw@db:5432/aam failed",
    "host=db port=5432 user=aam password=s3cr3t-pw dbname=aam",
    "vault said Bearer s3cr3t-pw",
    "token: s3cr3t-pw",
    "got hvs.s3cr3t-pwAAAAAAAAAAAAAAAAAAAAAA back",
])
def test_a_reason_never_keeps_a_secret(text: str) -> None:
    assert "s3cr3t-pw" not in safe_reason(text)
    c = Components()
    c.set(LEDGER, DEGRADED, text)
    assert "s3cr3t-pw" not in json.dumps(c.document())


def test_a_reason_is_one_bounded_line() -> None:
    assert safe_reason("a\nb\tc") == "a b c"
    assert len(safe_reason("x" * 1000)) == 200


def test_detail_is_kept_replaced_or_cleared_and_since_follows_the_state() -> None:
    c = Components()
    heard: list[object] = []
    c.listen(lambda comps: heard.append(comps.document()))
    c.set(ENGINE, OK, detail={"revision": "r1"})
    since = c.snapshot()[ENGINE].since
    c.set(ENGINE, OK)  # no detail given: kept, no change heard
    assert c.snapshot()[ENGINE].detail == {"revision": "r1"} and len(heard) == 2
    c.set(ENGINE, OK, detail={"revision": "r2"})  # a new revision: heard, same since
    assert c.snapshot()[ENGINE].detail == {"revision": "r2"} and len(heard) == 3
    assert c.snapshot()[ENGINE].since == since
    assert c.document()["components"][ENGINE]["detail"] == {"revision": "r2"}  # type: ignore[index]
    c.set(ENGINE, "down", "OPA unreachable", detail={})
    assert c.snapshot()[ENGINE].detail == {} and c.snapshot()[ENGINE].since >= since


class _Flaky:
    keyring = None
    head = None

    def __init__(self) -> None:
        self.fail: LedgerError | None = None

    def _maybe(self) -> None:
        if self.fail is not None:
            raise self.fail

    def peek(self, ask: Any) -> str:
        self._maybe()
        return "peeked"

    def finish(self, entry: Any, release: bool) -> int:
        self._maybe()
        return 1

    def ping(self) -> None:
        self._maybe()


def test_the_watched_ledger_reports_each_call_and_its_ping() -> None:
    heard: list[tuple[bool, str]] = []
    store = _Flaky()
    watched = WatchedLedger(store, lambda ok, reason: heard.append((ok, reason)))
    assert watched.peek(None) == "peeked"
    store.fail = LedgerUnavailable("ledger read state: database unavailable")
    with pytest.raises(LedgerUnavailable):
        watched.finish(None, False)
    watched.ping()  # reported, not raised
    store.fail = LedgerError("ledger audit: UniqueViolation")
    watched.ping()
    store.fail = None
    watched.ping()
    assert heard == [(True, ""), (False, "ledger unreachable: read state: database unavailable"),
                     (False, "ledger unreachable: read state: database unavailable"),
                     (False, "ledger error: audit: UniqueViolation"), (True, "")]
    watched.head = "h"  # the store's own attribute, through the wrapper
    assert store.head == "h" and watched.keyring is None


def test_a_sqlite_ledger_answers_its_ping(tmp_path: Path) -> None:
    ledger = open_ledger(f"sqlite://{tmp_path / 'l.sqlite3'}")
    assert ledger is not None
    heard: list[tuple[bool, str]] = []
    WatchedLedger(ledger, lambda ok, reason: heard.append((ok, reason))).ping()
    ledger.close()
    assert heard == [(True, "")]


def test_broker_none_reports_nothing_and_vault_reports_an_unreachable_login() -> None:
    none = Broker(NoBackend())
    assert not none.reports_health
    heard: list[tuple[bool, str]] = []
    none.watch(lambda ok, reason: heard.append((ok, reason)))
    assert heard == []
    backend = VaultBackend(f"http://127.0.0.1:{free_port()}", token_file="/nonexistent",
                           timeout_s=0.5)
    vault = Broker(backend)
    assert vault.reports_health
    vault.start()  # logs a warning, raises nothing
    vault.watch(lambda ok, reason: heard.append((ok, reason)))  # the start's outcome, now
    assert heard == [(False, "vault login failed: FileNotFoundError")]
    vault.check()
    assert heard[-1][0] is False
    vault.close()


class _Proc:
    def __init__(self, index: int, components: dict[str, tuple[str, str]]) -> None:
        self.index, self.components = index, components


def test_the_parent_shows_the_worst_worker_and_names_it() -> None:
    c = Components()
    workers = Workers(3, components=c)
    ok = {LEDGER: (OK, ""), BROKER: (OK, "")}
    workers.procs = [_Proc(0, dict(ok)), _Proc(1, dict(ok)), _Proc(2, dict(ok))]  # type: ignore[list-item]
    workers._on_components()
    assert {n: s.state for n, s in c.snapshot().items()} == {LEDGER: OK, BROKER: OK}
    workers.procs[1].components[LEDGER] = (DEGRADED, "ledger unreachable: ping: x")  # type: ignore[union-attr]
    workers.procs[2].components[LEDGER] = (DEGRADED, "ledger unreachable: ping: y")  # type: ignore[union-attr]
    workers._on_components()
    state = c.snapshot()[LEDGER]
    assert state.state == DEGRADED
    assert state.reason == "worker 1: ledger unreachable: ping: x (+1 more worker)"
    assert c.snapshot()[BROKER].state == OK
    for p in workers.procs:
        p.components[LEDGER] = (OK, "")  # type: ignore[union-attr]
    workers._on_components()
    assert c.snapshot()[LEDGER].state == OK and c.snapshot()[LEDGER].reason == ""


def test_a_worker_message_keeps_only_its_ledger_and_broker() -> None:
    heard: list[int] = []
    proc = WorkerProcess.__new__(WorkerProcess)
    proc.components, proc.on_components, proc.on_head = {}, lambda: heard.append(1), print
    proc._changed = threading.Condition()
    proc.learned, proc.ready, proc.error = 0, False, None
    proc._handle({"components": {LEDGER: {"state": DEGRADED, "reason": "r"},
                                 ENGINE: {"state": OK}, BROKER: {"state": "bogus"}}})
    assert proc.components == {LEDGER: (DEGRADED, "r")} and heard == [1]


def test_status_json_says_not_ready_when_unreachable() -> None:
    out, err = io.StringIO(), io.StringIO()
    code = run(["status", "--addr", f"127.0.0.1:{free_port()}", "--http",
                f"http://127.0.0.1:{free_port()}", "--timeout", "1", "--json"], out, err)
    doc = json.loads(out.getvalue())
    assert code == 1 and doc["ready"] is False
    assert "unreachable" in doc["grpc_error"] and "unreachable" in doc["readyz_error"]
