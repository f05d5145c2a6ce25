"""Several PDP worker processes on one port (``workers``), against real OPA and PostgreSQL.

Which worker answers a call is the kernel's choice (SO_REUSEPORT spreads connections),
so the tests open a fresh connection per call (a local subchannel pool: grpc would
otherwise share one connection between channels) and read each worker's own metrics
endpoint to see which ones decided. Nothing here asserts a duration: waits only bound
how long a test may take to fail.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import shutil
import signal
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import grpc
import psycopg
import pytest

from aam.cli.main import run
from aam.v1 import pdp_pb2, pdp_pb2_grpc
from compiler import compile_paths
from pdp.config import ConfigError, Settings, resolve_workers, usable_cpus
from pdp.stack import Stack
from pdp.workermetrics import Families, scrape
from tests.integration.ledgers import fresh_database
from tests.integration.pdp import EXAMPLES, FINANCE, audit_key_file, request, running_stack
from tests.integration.test_ledger_concurrency import BUDGET, POLICIES
from tests.integration.test_reload import ASKS, POLICY, expected, variant
from tests.servers import Postgres, wait_until

WORKERS = 2
CLIENTS = 32
CALLS = 240


def channel(addr: str) -> grpc.Channel:
    """A channel with a connection of its own (so the kernel may pick another worker)."""
    return grpc.insecure_channel(addr, options=[("grpc.use_local_subchannel_pool", 1)])


def authorize(stack: Stack, req: pdp_pb2.AuthorizeRequest) -> pdp_pb2.AuthorizeResponse:
    with channel(stack.settings.grpc_addr) as ch:
        return pdp_pb2_grpc.PolicyDecisionServiceStub(ch).Authorize(req, timeout=30)


def decisions(fams: Families) -> float:
    fam = fams.get("aam_decisions")
    return sum(fam.samples.values()) if fam else 0.0


def per_worker(stack: Stack, fn: Callable[[Families], object]) -> dict[int, object]:
    """``fn`` of each serving worker's own metrics, by pid."""
    assert stack.workers is not None
    return {m.pid: fn(scrape(m.url)) for m in stack.workers.members() if m.url}


def active(fams: Families) -> str:
    fam = fams.get("aam_bundle_active_info")
    return next((dict(labels)["revision"] for _, labels in fam.samples), "") if fam else ""


def spread(stack: Stack, make: Callable[[], pdp_pb2.AuthorizeRequest],
           done: Callable[[dict[int, object]], bool], fn: Callable[[Families], object] = decisions
           ) -> list[pdp_pb2.AuthorizeResponse]:
    """Calls, each on a fresh connection, until ``done`` holds for the workers' metrics;
    every one must succeed."""
    answers: list[pdp_pb2.AuthorizeResponse] = []
    failed: list[Exception] = []

    def more() -> bool:
        for _ in range(4):
            try:
                answers.append(authorize(stack, make()))
            except grpc.RpcError as exc:
                failed.append(exc)
        seen = per_worker(stack, fn)
        return bool(failed) or (len(seen) == WORKERS and done(seen))

    wait_until(more, 120, "every worker's metrics as wanted")
    assert failed == []
    return answers


def every_worker_decided(seen: dict[int, object]) -> bool:
    return all(float(v) > 0 for v in seen.values())  # type: ignore[arg-type]


# --- (a) both workers answer; the parent's /metrics sums them -------------------------------

def test_two_workers_answer_and_the_parent_sums_their_metrics(postgres: Postgres) -> None:
    with running_stack(ledger_url=fresh_database(postgres), workers=WORKERS) as stack:
        assert stack.workers is not None and stack.engine is None  # no decision in the parent
        pids = stack.workers.pids()
        assert len(set(pids)) == WORKERS and os.getpid() not in pids
        answers = spread(stack, lambda: request(FINANCE, model="reasoning-high"),
                         every_worker_decided)
        assert {a.decision for a in answers} == {pdp_pb2.DECISION_ALLOW}
        own = per_worker(stack, decisions)
        assert set(own) == set(pids) and all(v > 0 for v in own.values())  # type: ignore[operator]

        parent = scrape(stack.http.url)  # type: ignore[union-attr]
        assert decisions(parent) == sum(own.values()) == len(answers)  # type: ignore[arg-type]
        count = parent["aam_decision_duration_seconds"].samples
        assert count[("aam_decision_duration_seconds_count", ())] == len(answers)
        assert parent["aam_workers"].samples[("aam_workers", ())] == WORKERS
        rss = parent["aam_worker_resident_memory_bytes"].samples
        assert sorted(dict(labels)["worker"] for _, labels in rss) == ["0", "1"]
        assert all(v > 0 for v in rss.values())
        assert active(parent) == stack.store.current.revision  # type: ignore[union-attr]


# --- (b) budgets stay exact across workers; one audit chain, anchored -----------------------

@pytest.mark.parametrize("state_ttl_ms", [1000, 0], ids=["optimistic", "checked"])
def test_budget_exact_across_workers(postgres: Postgres, tmp_path: Path, state_ttl_ms: int) -> None:
    """Both ways through the ledger (tests/integration/test_ledger_concurrency.py), with the
    calls spread over two worker processes."""
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.yaml").write_text(POLICIES)
    (policies / "routes.yaml").write_text((EXAMPLES / "model-routes.yaml").read_text())
    url = fresh_database(postgres)
    key, anchor = audit_key_file(tmp_path), tmp_path / "audit.anchor"
    tickets = itertools.count()
    results: list[pdp_pb2.AuthorizeResponse | Exception] = []
    lock = threading.Lock()
    with running_stack(policies, ledger_url=url, workers=WORKERS, audit_key_file=str(key),
                       audit_anchor_file=str(anchor), ledger_state_ttl_ms=state_ttl_ms) as stack:

        def client() -> None:
            with channel(stack.settings.grpc_addr) as ch:
                stub = pdp_pb2_grpc.PolicyDecisionServiceStub(ch)
                while next(tickets) < CALLS:
                    try:
                        out: pdp_pb2.AuthorizeResponse | Exception = stub.Authorize(request(
                            BUDGET, model="summarization", estimated_tokens=1000,
                            estimated_cost_usd=0.01), timeout=30)
                    except Exception as exc:
                        out = exc
                    with lock:
                        results.append(out)

        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        own = per_worker(stack, decisions)
        assert len(own) == WORKERS and all(v > 0 for v in own.values())  # type: ignore[operator]

    assert [r for r in results if isinstance(r, Exception)] == []
    outcome = Counter("allow" if r.decision == pdp_pb2.DECISION_ALLOW  # type: ignore[union-attr]
                      else ",".join(x.code for x in r.reasons) for r in results)  # type: ignore[union-attr]
    allowed = outcome["allow"]
    assert allowed * 10_000 <= 1_000_000  # 0.01 USD calls, a 1.00 USD daily budget
    assert outcome == {"allow": 100, "budget_exhausted": CALLS - 100}
    with psycopg.connect(url) as conn:
        spent, reserved = conn.execute(
            "SELECT spent_micro, reserved_micro FROM aam_budget_windows"
            " WHERE workload = %s AND window_key LIKE 'd:%%'", (BUDGET,)).fetchone()
        audited = conn.execute("SELECT outcome, count(*) FROM aam_audit WHERE workload = %s"
                               " GROUP BY outcome ORDER BY outcome", (BUDGET,)).fetchall()
        (last,) = conn.execute("SELECT max(seq) FROM aam_audit").fetchone()
    assert spent + reserved == allowed * 10_000
    assert audited == [("allow", allowed), ("deny", CALLS - allowed)]
    # Two writers, one chain: it verifies, and the parent's last anchor names its final row.
    assert json.loads(anchor.read_text())["seq"] == last
    out, err = io.StringIO(), io.StringIO()
    code = run(["audit", "verify", "--ledger-url", url, "--key-file", str(key),
                "--anchor", str(anchor)], out, err)
    assert code == 0, out.getvalue() + err.getvalue()


# --- (c) a reload while workers serve ------------------------------------------------------

def test_reload_fails_no_call_and_every_worker_moves_on(postgres: Postgres, tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(EXAMPLES, policies)
    revisions: dict[str, int] = {}
    for k in (0, 1):
        probe = tmp_path / f"v{k}"
        shutil.copytree(EXAMPLES, probe)
        (probe / POLICY).write_text(variant(k))
        revisions[compile_paths([probe]).revision] = k
    (policies / POLICY).write_text(variant(0))
    seen: list[tuple[int, pdp_pb2.AuthorizeResponse | Exception]] = []
    stop = threading.Event()
    with running_stack(policies, ledger_url=fresh_database(postgres), workers=WORKERS) as stack:

        def client(i: int) -> None:
            with channel(stack.settings.grpc_addr) as ch:
                stub = pdp_pb2_grpc.PolicyDecisionServiceStub(ch)
                while not stop.is_set():
                    try:
                        out: pdp_pb2.AuthorizeResponse | Exception = stub.Authorize(
                            request(FINANCE, **ASKS[i % 2]), timeout=30)
                    except Exception as exc:
                        out = exc
                    seen.append((i % 2, out))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        try:
            wait_until(lambda: len(seen) >= 40, 60, "calls before the reload")
            (policies / POLICY).write_text(variant(1))
            assert stack.reload()
            new = stack.store.current.revision  # type: ignore[union-attr]
            assert revisions[new] == 1
            # Each worker, on connections of its own, decides on the new revision.
            answers = spread(stack, lambda: request(FINANCE, **ASKS[0]),
                             lambda by: set(by.values()) == {new}, active)
            wait_until(lambda: sum(1 for _, r in seen[-16:] if not isinstance(r, Exception)
                                   and r.bundle_revision == new) == 16, 60,
                       "the clients on the new revision")
        finally:
            stop.set()
            for t in threads:
                t.join()

    assert [r for _, r in seen if isinstance(r, Exception)] == []
    for ask, r in [*seen, *((0, a) for a in answers)]:
        assert not isinstance(r, Exception)
        assert r.bundle_revision in revisions, [x.code for x in r.reasons]
        # Each answer is what its own revision decides: no decision mixed two.
        assert (r.decision == pdp_pb2.DECISION_ALLOW) == expected(revisions[r.bundle_revision])[ask]
    assert {revisions[r.bundle_revision] for _, r in seen} == {0, 1}  # type: ignore[union-attr]


# --- (d) a worker killed with SIGKILL is restarted; service continues ----------------------

def test_killed_worker_is_restarted(postgres: Postgres) -> None:
    with running_stack(ledger_url=fresh_database(postgres), workers=WORKERS) as stack:
        workers = stack.workers
        assert workers is not None
        before = workers.pids()
        made = len(spread(stack, lambda: request(FINANCE, model="reasoning-high"),
                          every_worker_decided))
        counted = decisions(scrape(stack.http.url))  # type: ignore[union-attr]
        assert counted == made
        victim = workers.procs[0]
        assert victim is not None and victim.pid == before[0]
        os.kill(victim.pid, signal.SIGKILL)
        # Reaped: every thread has exited, so its listening socket is closed (connections
        # still queued on it when it closes are reset; a client retries those).
        wait_until(lambda: not victim.alive, 60, "the killed worker gone")
        # The survivor takes every new connection meanwhile.
        for _ in range(8):
            resp = authorize(stack, request(FINANCE, model="reasoning-high"))
            assert resp.decision == pdp_pb2.DECISION_ALLOW
        made += 8
        wait_until(lambda: len(per_worker(stack, decisions)) == WORKERS
                   and workers.pids()[0] != before[0], 120, "the worker restarted")
        after = workers.pids()
        assert after[1] == before[1] and after[0] not in before
        made += len(spread(stack, lambda: request(FINANCE, model="reasoning-high"),
                           lambda by: by.get(after[0], 0) > 0))  # type: ignore[arg-type,operator]
        parent = scrape(stack.http.url)  # type: ignore[union-attr]
        assert parent["aam_workers"].samples[("aam_workers", ())] == WORKERS
        assert parent["aam_worker_restarts"].samples[("aam_worker_restarts_total", ())] == 1
        # The dead worker's counts (as last scraped) stay in the sum: it never goes back.
        assert decisions(parent) == made


# --- (e) settings ---------------------------------------------------------------------------

def test_workers_setting_resolution_and_the_sqlite_rule(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    sqlite = f"sqlite://{tmp_path}/ledger.sqlite3"
    for bad in (dict(workers=2, ledger_url=sqlite), dict(workers=-1)):
        with pytest.raises(ConfigError, match="workers"):
            Settings.load(env={}, **bad)
    with pytest.raises(ConfigError, match="PostgreSQL"):
        Settings.load(env={"AAM_WORKERS": "3", "AAM_LEDGER_URL": sqlite})
    cpus = usable_cpus()
    assert 1 <= cpus <= (os.cpu_count() or 1)
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")  # a container limited to 1.5 CPUs: 2 workers at most
    assert usable_cpus(quota) == min(cpus, 2)
    quota.write_text("max 100000\n")
    assert usable_cpus(quota) == cpus
    assert resolve_workers(Settings.load(env={}, ledger_url=sqlite)) == 1
    assert resolve_workers(Settings.load(env={}, ledger_url=sqlite, workers=1)) == 1
    assert resolve_workers(Settings.load(env={}, ledger_url="postgresql://h/db")) == cpus
    assert resolve_workers(Settings.load(env={}, ledger_url="off")) == cpus
    assert resolve_workers(Settings.load(env={"AAM_WORKERS": "3"}, ledger_url="off")) == 3
    # The CLI says so in one line, no traceback.
    monkeypatch.setenv("AAM_LEDGER_URL", sqlite)
    out, err = io.StringIO(), io.StringIO()
    assert run(["serve", "--policies", str(EXAMPLES), "--workers", "2"], out, err) == 2
    assert "aam serve: error: setting workers: 2 needs a PostgreSQL ledger" in err.getvalue()
    assert "Traceback" not in err.getvalue()


def test_a_worker_that_cannot_start_stops_everything(tmp_path: Path) -> None:
    """Fail closed: the error names the worker and the cause; nothing is left running."""
    stacks: list[Stack] = []
    real_init = Stack.__init__

    def keep(self: Stack, settings: Settings) -> None:
        real_init(self, settings)
        stacks.append(self)

    missing = tmp_path / "no-such-token"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Stack, "__init__", keep)
        with pytest.raises(ConfigError, match=r"PDP worker .*gateway_token_file"), running_stack(
                ledger_url="off", workers=WORKERS, gateway_token_file=str(missing)):
            pass
    (stack,) = stacks
    assert stack.workers is not None and stack.opa is None and stack.http is None
    assert all(p is None or not p.alive for p in stack.workers.procs)
