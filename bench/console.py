"""Console page times on a ledger of 1,000,000 audit rows (PostgreSQL, fsync on).

Fills a throw-away PostgreSQL cluster (or --ledger-url) with N realistic audit rows in
one COPY: 60 workloads over the last 30 days, a fifth of them denials with reason codes,
tool calls with lease accessors, model calls with costs, a few shadow disagreements,
every row keyed and chained exactly as the PDP writes them (pdp/ledger/chain.py), so
the audit view really verifies them. Then serves the console on loopback over the
compiled policies of those workloads and loads every view N times over HTTP.

Printed: the fill time, the first full chain walk (once per console start, in the
background), and each view's median and p95 page time. Never asserted.

    .venv/bin/python bench/console.py [--rows 1000000] [--loads 20] [--ledger-url DSN]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compiler import compile_paths  # noqa: E402
from compiler.bundle import DATA_PATH  # noqa: E402
from pdp.compiled import Revisions  # noqa: E402
from pdp.config import Settings  # noqa: E402
from pdp.console.build import console_server  # noqa: E402
from pdp.console.history import RevisionLog  # noqa: E402
from pdp.ledger import open_ledger  # noqa: E402
from pdp.ledger.chain import canonical, keyed_hash  # noqa: E402
from pdp.ledger.keyring import ensure_file  # noqa: E402
from pdp.ledger.types import GENESIS  # noqa: E402
from tests.servers import run_postgres  # noqa: E402

WORKLOADS = 60
REASONS = ("action_denied", "action_not_granted", "budget_exhausted", "rate_limited",
           "model_not_allowed")
ROUTES = (ROOT / "examples" / "model-routes.yaml").read_text()


def policies(directory: Path) -> list[str]:
    ids = [f"spiffe://prod/agent/bench-{i:02d}" for i in range(WORKLOADS)]
    docs = [f"""apiVersion: access.envisionai.dev/v1
kind: AgentPolicy
metadata: {{name: bench-{i:02d}}}
spec:
  identity: {{workload: "{w}"}}
  models: {{allow: [reasoning-high]}}
  budget: {{daily_usd: 75, monthly_usd: 1500}}
  rate: {{requests_per_minute: 600}}
  tools:
    - resource: salesforce.accounts
      actions: [read, search]
      deny: [export]
""" for i, w in enumerate(ids)]
    (directory / "policies.yaml").write_text("---\n".join(docs))
    (directory / "model-routes.yaml").write_text(ROUTES)
    return ids


def fill(dsn: str, rows: int, workloads: list[str], key_file: Path) -> None:
    key = ensure_file(key_file).current()
    rnd = random.Random(21)
    start = datetime.now(UTC) - timedelta(days=30)
    step = timedelta(days=30) / rows
    prev = GENESIS
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur, cur.copy(
            "COPY aam_audit (seq, ts, decision_id, workload, outcome, body, prev_hash, hash, key_id)"
            " FROM STDIN") as copy:
        for seq in range(1, rows + 1):
            ts = (start + seq * step).isoformat(timespec="microseconds")
            did = uuid.UUID(int=rnd.getrandbits(128)).hex
            w = workloads[rnd.randrange(len(workloads))]
            deny = rnd.random() < 0.2
            body: dict = {"ts": ts, "decision_id": did, "workload": w,
                          "outcome": "deny" if deny else "allow", "revision": "bench",
                          "identity": {"spiffe_id": w}, "policy": "bench-" + w[-2:]}
            if rnd.random() < 0.5:
                body["action"] = {"model": "reasoning-high"}
                body["cost"] = {"estimate_usd": 0.0614, "estimate_tokens": 4096}
            else:
                body["action"] = {"tool": "salesforce.accounts",
                                  "action": "export" if deny else "read"}
                if not deny:
                    body["lease_accessor"] = f"kv:secret/aam/salesforce/{seq % 997}@v1"
            if deny:
                code = rnd.choice(REASONS)
                body["reasons"] = [{"code": code, "message": f"{code}: denied by the bench policy"}]
            if rnd.random() < 0.0005:
                body["shadow"] = {"policy": "bench-next", "outcome": "allow" if deny else "deny",
                                  "reasons": [] if deny else [{"code": "action_not_granted",
                                                               "message": "shadow"}]}
            text = canonical(body)
            h = keyed_hash(key, prev, seq, text)
            copy.write_row((seq, ts, did, w, body["outcome"], text, prev, h, key.id))
            prev = h
    with psycopg.connect(dsn, autocommit=True) as conn:
        # What autovacuum does to a live ledger (an insert-only table: the console migration
        # has it vacuum after 1% new rows): the visibility map lets the denials view read
        # its index only.
        conn.execute("VACUUM (ANALYZE) aam_audit")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--loads", type=int, default=20, help="loads of each view")
    ap.add_argument("--ledger-url", help="an empty PostgreSQL database (default: a throw-away "
                                         "cluster, fsync on)")
    args = ap.parse_args()
    with contextlib.ExitStack() as es:
        tmp = Path(es.enter_context(tempfile.TemporaryDirectory(prefix="aam-bench-console-")))
        dsn = args.ledger_url or es.enter_context(run_postgres(fsync=True)).dsn
        ledger = open_ledger(dsn, 4, 10.0)
        assert ledger is not None
        es.callback(ledger.close)
        ledger.migrate()
        (tmp / "policies").mkdir()
        workloads = policies(tmp / "policies")
        t0 = time.perf_counter()
        fill(dsn, args.rows, workloads, tmp / "audit.key")
        print(f"filled {args.rows:,} keyed, chained audit rows in {time.perf_counter() - t0:.1f} s "
              f"(one COPY, then VACUUM ANALYZE; PostgreSQL, fsync {'on' if not args.ledger_url else '?'})",
              flush=True)
        bundle = compile_paths([tmp / "policies"])
        revisions, history = Revisions(), RevisionLog()
        revisions.update(bundle.files, DATA_PATH)
        history.published(bundle.revision, WORKLOADS)
        settings = Settings.load(env={}, ledger_url=dsn, audit_key_file=str(tmp / "audit.key"),
                                 console_addr="127.0.0.1:0")
        console = console_server(settings, ledger, revisions, history)
        console.start()
        es.callback(console.stop)
        url = console.url.rstrip("/")
        t0 = time.perf_counter()
        assert console.sources.chain is not None
        while not console.sources.chain.state.done:
            time.sleep(0.05)
        walk = console.sources.chain.state
        print(f"first full chain walk: {walk.rows:,} rows re-hashed in {time.perf_counter() - t0:.1f} s"
              f" ({len(walk.problems)} problem(s)); later audit page loads check only new rows",
              flush=True)
        w = workloads[7]
        views = [
            ("decisions (newest 100)", "/"),
            ("decisions, workload filter", f"/?workload={w}"),
            ("decisions, outcome+reason filter", "/?outcome=deny&reason=budget_exhausted"),
            ("decisions, tool filter", "/?tool=salesforce.accounts"),
            ("decisions, last hour", "/?since=1h"),
            ("decisions, no match", "/?model=no-such-alias"),
            ("decisions, no match, since 30d", "/?model=no-such-alias&since=30d"),
            ("workload page", f"/workload?id={w}"),
            ("workload spend chart (svg)", f"/chart/spend.svg?id={w}"),
            ("denials, last 24 h", "/denials"),
            ("denials chart, last 24 h (svg)", "/chart/denials.svg"),
            ("denials, last 7 days", "/denials?since=7d"),
            ("audit chain (incremental)", "/audit"),
            ("bundle revisions", "/revisions"),
            ("shadow (newest 5,000)", "/shadow"),
        ]
        print(f"\n{'view':36} {'median ms':>10} {'p95 ms':>10}  ({args.loads} loads each, "
              f"{args.rows:,} audit rows)")
        with requests.Session() as http:
            for name, path in views:
                times, failed = [], Counter[int]()
                for _ in range(args.loads):
                    t = time.perf_counter()
                    r = http.get(url + path, timeout=120)
                    times.append((time.perf_counter() - t) * 1000)
                    if r.status_code != 200:  # e.g. 503: the ledger's statement timeout
                        failed[r.status_code] += 1
                times.sort()
                p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
                note = "  " + ", ".join(f"{n} x HTTP {c}" for c, n in sorted(failed.items())) \
                    if failed else ""
                print(f"{name:36} {statistics.median(times):10.1f} {p95:10.1f}{note}", flush=True)
        print(json.dumps({"rows": args.rows, "loads": args.loads}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
