"""Plain-text tables for the benchmark's results (what the command prints)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bench.loadgen import Load, Result
from bench.procstat import Usage


@dataclass(frozen=True)
class Row:
    scenario: str
    load: Load
    result: Result | None  # None when the run failed; ``error`` says why
    usage: dict[str, Usage]
    error: str = ""
    skipped: bool = False  # not run on purpose (e.g. no baseline binary); ``error`` says why
    # The PDP's decision counters over the run (targets.decisions): "allow", "deny",
    # "deny:<reason>"; empty for systems that count nothing we read.
    decisions: dict[str, float] = field(default_factory=dict)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-align the first column, right-align the rest; a rule under the header."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=False)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _ms(v: float) -> str:
    return f"{v:.2f}"


def _usage(u: Usage | None) -> list[str]:
    return [f"{u.cpu_pct:.0f}%", f"{u.rss_mb:.0f}"] if u else ["-", "-"]


def parts(mb: tuple[float, ...]) -> str:
    """Peak RSS of the PDP's processes: the parent's, then each worker's ("60+75+74")."""
    return "+".join(f"{m:.0f}" for m in mb)


def latency_table(rows: Sequence[Row]) -> str:
    headers = ["scenario", "offered", "p50 ms", "p90 ms", "p99 ms", "ok/s", "errors",
               "PDP cpu", "PDP MB", "PDP MB each", "OPA cpu", "OPA MB", "PDP ms/req", "OPA ms/req",
               "PG ms/req", "load ms/req", "all ms/req"]
    out = []
    for r in rows:
        if r.result is None:
            what = "not run" if r.skipped else f"failed: {r.error[:60]}"
            out.append([r.scenario, r.load.label, what, *[""] * 14])
            continue
        res = r.result
        out.append([r.scenario, r.load.label, _ms(res.p50_ms), _ms(res.p90_ms), _ms(res.p99_ms),
                    f"{res.throughput:.0f}", str(res.errors),
                    *_usage(r.usage.get("pdp")), _parts(r.usage.get("pdp")),
                    *_usage(r.usage.get("opa")),
                    *(_per_request(r.usage.get(k), res) for k in ("pdp", "opa", "pg", "loadgen")),
                    _per_request(Usage(sum(u.cpu_pct for u in r.usage.values()), 0), res)])
    notes = dict.fromkeys(f"{r.scenario}: not run: {r.error}" for r in rows if r.skipped)
    return "\n".join([table(headers, out), CPU_NOTE, *notes])


def _parts(u: Usage | None) -> str:
    return parts(u.parts_mb) if u and u.parts_mb else "-"


# Why "all ms/req" matters on this machine: it bounds what the co-located stack can reach.
CPU_NOTE = ("PDP: with worker processes, the parent and its workers together (PDP MB each: parent+"
            "worker 0+...).\n"
            "ms/req: CPU milliseconds per answered request of the PDP, OPA, PostgreSQL (postmaster"
            " and backends) and the load generator (ghz/vegeta);\nall ms/req is their sum: with"
            " everything on 2 cores, 2000 / (all ms/req) decisions/s is the ceiling of that row's setup.")


def _per_request(u: Usage | None, res: Result) -> str:
    """CPU milliseconds per answered request: less sensitive than latency to a busy machine
    ("-" for a process the request does not pass through)."""
    return f"{10 * u.cpu_pct / res.throughput:.2f}" if u and u.cpu_pct >= 1 and res.throughput else "-"


def decisions_table(rows: Sequence[Row], expected_allow: Callable[[str], float]) -> str:
    """What the PDP decided during each load run (its own counters), against the share of
    allows the scenario's requests should get (``expected_allow(scenario)``, 0..1)."""
    headers = ["scenario", "offered", "answered", "PDP allow", "PDP deny", "expected", "verdict"]
    out = []
    for r in rows:
        if not r.decisions or r.result is None:
            continue
        d = r.decisions
        allow, deny = int(d.get("allow", 0)), int(d.get("deny", 0))
        want = expected_allow(r.scenario)
        reasons = ", ".join(f"{k.split(':', 1)[1]} {int(v)}" for k, v in sorted(d.items())
                            if k.startswith("deny:"))
        got = allow / (allow + deny) if allow + deny else 0.0
        # A mix is met within 2 points (a run ends mid-cycle through the requests).
        ok = deny == 0 if want == 1 else allow == 0 if want == 0 else abs(got - want) <= 0.02
        verdict = "as expected" if allow + deny and ok else "UNEXPECTED"
        out.append([r.scenario, r.load.label, str(r.result.count - r.result.errors), str(allow),
                    f"{deny}" + (f" ({reasons})" if reasons else ""),
                    f"{want:.0%} allow", verdict])
    return table(headers, out)


def ratio_table(pairs: Sequence[tuple[Row, Row]]) -> str:
    """AAM row vs its baseline row at the same offered load."""
    headers = ["scenario", "vs", "offered", "p50 x", "p99 x", "throughput x"]
    out = []
    for aam, base in pairs:
        if aam.result is None or base.result is None:
            out.append([aam.scenario, base.scenario, aam.load.label, "-", "-", "-"])
            continue
        a, b = aam.result, base.result
        out.append([aam.scenario, base.scenario, aam.load.label, _ratio(a.p50_ms, b.p50_ms),
                    _ratio(a.p99_ms, b.p99_ms), _ratio(a.throughput, b.throughput)])
    return table(headers, out)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


@dataclass(frozen=True)
class ScalePoint:
    policies: int
    result: Result | None
    pdp_rss_mb: float
    opa_rss_mb: float
    start_s: float
    error: str = ""
    pdp_parts_mb: tuple[float, ...] = ()  # with worker processes: parent, then each worker


def scale_table(points: Sequence[ScalePoint]) -> str:
    headers = ["policies", "start s", "p50 ms", "p99 ms", "p99 / p99@smallest", "ok/s",
               "PDP MB", "PDP MB each", "OPA MB"]
    base = next((p.result.p99_ms for p in points if p.result), 0.0)
    out = []
    for p in points:
        if p.result is None:
            out.append([str(p.policies), f"{p.start_s:.1f}", f"failed: {p.error[:60]}", *[""] * 6])
            continue
        out.append([f"{p.policies:,}", f"{p.start_s:.1f}", _ms(p.result.p50_ms), _ms(p.result.p99_ms),
                    _ratio(p.result.p99_ms, base), f"{p.result.throughput:.0f}",
                    f"{p.pdp_rss_mb:.0f}", parts(p.pdp_parts_mb) if p.pdp_parts_mb else "-",
                    f"{p.opa_rss_mb:.0f}"])
    return table(headers, out)


def memory_per_thousand(points: Sequence[ScalePoint]) -> tuple[float, float] | None:
    """(PDP MB, OPA MB) per 1,000 policies, from the smallest and largest scale points."""
    ok = [p for p in points if p.result is not None]
    if len(ok) < 2:
        return None
    lo, hi = min(ok, key=lambda p: p.policies), max(ok, key=lambda p: p.policies)
    k = (hi.policies - lo.policies) / 1000
    return (hi.pdp_rss_mb - lo.pdp_rss_mb) / k, (hi.opa_rss_mb - lo.opa_rss_mb) / k


# The targets (issue 9), measured on this run's rows.
P99_MS_AT_RATE = 5.0
SATURATION_PER_S = 1500.0
CHECK_P99_X = 2.0
SCALE_P99_X = 1.3
SCALE_FROM, SCALE_TO = 10, 10_000


def targets(rows: Sequence[Row], points: Sequence[ScalePoint], rate: int,
            authorize: dict[str, str], check: tuple[str, Sequence[str]], ledger: str,
            idle_rate: int = 0) -> str:
    """One line per target: what it asks, the figures of this run, met / short / not measured.
    ``authorize`` maps a short label to an Authorize scenario; ``check`` is (AAM, baselines),
    the baselines in the order the target prefers them."""
    fixed = {r.scenario: r for r in rows if r.load.rate == rate}
    sat = {r.scenario: r for r in rows if r.load.rate == 0}
    at = f"{rate:,}/s" + ("" if rate == 500 else " (the target is at 500/s)")
    lines = [
        _line(f"Authorize with ledger ({ledger}) and audit on, p99 <= {P99_MS_AT_RATE:g} ms at {at}",
              {k: fixed.get(n) for k, n in authorize.items()},
              lambda r: f"{r.p99_ms:.2f} ms", lambda r: r.p99_ms <= P99_MS_AT_RATE and not r.errors),
        _line(f"Authorize saturation >= {SATURATION_PER_S:,.0f} decisions/s",
              {k: sat.get(n) for k, n in authorize.items()},
              lambda r: f"{r.throughput:,.0f}/s", lambda r: r.throughput >= SATURATION_PER_S),
        _check_line(fixed.get(check[0]), [(b, fixed.get(b)) for b in check[1]], at),
        _scale_line(points),
        _ceiling_line({k: sat.get(n) for k, n in authorize.items()}),
    ]
    idle = {r.scenario: r for r in rows if idle_rate and r.load.rate == idle_rate}
    if idle:  # what one decision takes with no queue: no rate can do better
        lines.append(_line(f"Authorize p50 / p99 with the stack nearly idle ({idle_rate}/s), the floor "
                           f"under the {P99_MS_AT_RATE:g} ms target",
                           {k: idle.get(n) for k, n in authorize.items()},
                           lambda r: f"{r.p50_ms:.2f} / {r.p99_ms:.2f} ms",
                           lambda r: r.p99_ms <= P99_MS_AT_RATE and not r.errors))
    return "\n".join(lines)


def _ceiling_line(rows: dict[str, Row | None]) -> str:
    """What the saturation target could reach were the PDP free: the CPU each decision
    costs OPA, the ledger and the load generator, measured in the same rows, over the
    machine's CPUs. A ceiling under the target says no PDP work can meet it here."""
    cpus = os.cpu_count() or 1
    figures = []
    for label, row in rows.items():
        others = sum(u.cpu_pct for k, u in row.usage.items() if k != "pdp") if row else 0.0
        if row is None or row.result is None or not row.result.throughput or not others:
            figures.append(f"{label} -")
            continue
        ms = 10 * others / row.result.throughput
        figures.append(f"{label} {1000 * cpus / ms:,.0f}/s ({ms:.2f} ms)")
    return (f"Saturation ceiling with a PDP that cost nothing ({cpus} CPUs over the OPA, ledger and "
            f"load-generator CPU ms per decision of the rows above): {', '.join(figures)}")


def _line(what: str, rows: dict[str, Row | None], fmt: Callable[[Result], str],
          ok: Callable[[Result], bool]) -> str:
    figures, verdicts = [], []
    for label, row in rows.items():
        if row is None or row.result is None:
            figures.append(f"{label} -")
            continue
        errors = f" ({row.result.errors} errors)" if row.result.errors else ""
        figures.append(f"{label} {fmt(row.result)}{errors}")
        verdicts.append(ok(row.result))
    missing = [label for label, row in rows.items() if row is None or row.result is None]
    return f"{what}: {', '.join(figures)} -> {_verdict(verdicts, missing)}"


def _verdict(ok: Sequence[bool], missing: Sequence[str]) -> str:
    if not ok:
        return "not measured"
    if not all(ok):
        return "short"
    return "met" + (f" ({', '.join(missing)} not measured)" if missing else "")


def _check_line(aam: Row | None, bases: Sequence[tuple[str, Row | None]], at: str) -> str:
    """Judged against the first baseline that ran (opa-envoy-plugin, else its stand-in);
    every baseline's figure is printed so that the two can be compared."""
    what = f"ext_authz Check p99 within {CHECK_P99_X:g}x of opa-envoy-plugin at {at}"
    if aam is None or aam.result is None:
        return f"{what}: AAM not measured -> not measured"
    figures, ratios = [f"AAM {aam.result.p99_ms:.2f} ms"], []
    for i, (name, base) in enumerate(bases):
        label = name.split(":")[0]
        if base is None or base.result is None:
            why = base.error.split(": ")[0][:100] if base is not None else "no row"
            figures.append(f"{label} not run: {why}")
            continue
        x = aam.result.p99_ms / base.result.p99_ms
        figures.append(f"{label} {base.result.p99_ms:.2f} ms = x {x:.2f}")
        ratios.append((i, label, x))
    if not ratios:
        return f"{what}: {'; '.join(figures)} -> not measured"
    i, label, x = ratios[0]
    against = f" (against {label})" if i else ""
    return f"{what}: {'; '.join(figures)} -> {'met' if x <= CHECK_P99_X else 'short'}{against}"


def _scale_line(points: Sequence[ScalePoint], within: float = SCALE_P99_X) -> str:
    what = f"p99 at {SCALE_TO:,} policies within {within:g}x of {SCALE_FROM:,}"
    by = {p.policies: p.result for p in points}
    lo, hi = by.get(SCALE_FROM), by.get(SCALE_TO)
    if not points:
        return f"{what}: scale not run (--no-scale) -> not measured"
    if lo is None or hi is None:
        ran = ", ".join(f"{p.policies:,}" + ("" if p.result else " (failed)") for p in points)
        hint = "" if SCALE_TO in by else f"; only the full run loads {SCALE_TO:,}"
        return f"{what}: scales run {ran}{hint} -> not measured"
    x = hi.p99_ms / lo.p99_ms
    return (f"{what}: {hi.p99_ms:.2f} ms / {lo.p99_ms:.2f} ms = x {x:.2f}"
            f" -> {'met' if x <= within else 'short'}")


# Issue 23's targets: AAM against opa-extauthz (a Go ext_authz server on OPA's SDK), same run.
VS_GO_SATURATION_X = 0.5
VS_GO_LATENCY_X = 1.5
SCALE23_P99_X = 1.2


def targets_23(rows: Sequence[Row], points: Sequence[ScalePoint], rate: int, idle_rate: int,
               tool: str, check: str, go: str) -> str:
    """One line per target of issue 23: ``tool`` and ``check`` are AAM's scenarios, ``go``
    the opa-extauthz Check they are measured against."""
    sat = {r.scenario: r.result for r in rows if r.load.rate == 0 and r.result is not None}
    lines = [_vs_go_saturation(sat.get(go), {"Check": sat.get(check), "tool call": sat.get(tool)})]
    for load in (idle_rate, rate):
        at = {r.scenario: r.result for r in rows if load and r.load.rate == load and r.result is not None}
        lines.append(_vs_go_latency(f"{load}/s" if load else "idle (not run)", at.get(check), at.get(go)))
    lines.append(_scale_line(points, SCALE23_P99_X))
    by = {p.policies: p for p in points}
    big = by.get(SCALE_TO)
    lines.append(_rss_per_worker(big))
    return "\n".join(lines)


def _rss_per_worker(big: ScalePoint | None) -> str:
    """The PDP's RSS at the largest scale: one process, or each worker and the parent."""
    what = f"PDP RSS per worker at {SCALE_TO:,} policies"
    if big is None or big.result is None:
        return f"{what}: not measured (only the full run loads 10,000)"
    if not big.pdp_parts_mb:
        return f"{what} (1 worker): {big.pdp_rss_mb:.0f} MB (OPA {big.opa_rss_mb:.0f} MB)"
    parent, *workers = big.pdp_parts_mb
    return (f"{what} ({len(workers)} workers): {', '.join(f'{w:.0f}' for w in workers)} MB "
            f"(parent {parent:.0f} MB, all {big.pdp_rss_mb:.0f} MB; OPA {big.opa_rss_mb:.0f} MB)")


def _vs_go_saturation(go: Result | None, aam: dict[str, Result | None]) -> str:
    what = f"saturation >= {VS_GO_SATURATION_X:g}x opa-extauthz's Check"
    if go is None or not go.throughput:
        return f"{what}: opa-extauthz not measured -> not measured"
    figures, ok = [f"opa-extauthz {go.throughput:,.0f}/s"], []
    for label, r in aam.items():
        if r is None:
            figures.append(f"AAM {label} -")
            continue
        x = r.throughput / go.throughput
        figures.append(f"AAM {label} {r.throughput:,.0f}/s = x {x:.2f}")
        ok.append(x >= VS_GO_SATURATION_X)
    return f"{what}: {', '.join(figures)} -> {_verdict(ok, [])}"


def _vs_go_latency(at: str, aam: Result | None, go: Result | None) -> str:
    what = f"Check p50 / p99 at {at} <= {VS_GO_LATENCY_X:g}x opa-extauthz's"
    if aam is None or go is None:
        return f"{what}: -> not measured"
    x50, x99 = aam.p50_ms / go.p50_ms, aam.p99_ms / go.p99_ms
    return (f"{what}: AAM {aam.p50_ms:.2f} / {aam.p99_ms:.2f} ms, opa-extauthz {go.p50_ms:.2f} / "
            f"{go.p99_ms:.2f} ms = x {x50:.2f} / x {x99:.2f}"
            f" -> {'met' if max(x50, x99) <= VS_GO_LATENCY_X else 'short'}")
