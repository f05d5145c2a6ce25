"""Plain-text tables for the benchmark's results (what the command prints)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bench.loadgen import Load, Result
from bench.procstat import Usage


@dataclass(frozen=True)
class Row:
    scenario: str
    load: Load
    result: Result | None  # None when the run failed; ``error`` says why
    usage: dict[str, Usage]
    error: str = ""


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


def latency_table(rows: Sequence[Row]) -> str:
    headers = ["scenario", "offered", "p50 ms", "p90 ms", "p99 ms", "ok/s", "errors",
               "PDP cpu", "PDP MB", "OPA cpu", "OPA MB", "PDP ms/req", "OPA ms/req"]
    out = []
    for r in rows:
        if r.result is None:
            out.append([r.scenario, r.load.label, f"failed: {r.error[:60]}", *[""] * 10])
            continue
        res = r.result
        out.append([r.scenario, r.load.label, _ms(res.p50_ms), _ms(res.p90_ms), _ms(res.p99_ms),
                    f"{res.throughput:.0f}", str(res.errors),
                    *_usage(r.usage.get("pdp")), *_usage(r.usage.get("opa")),
                    _per_request(r.usage.get("pdp"), res), _per_request(r.usage.get("opa"), res)])
    return table(headers, out)


def _per_request(u: Usage | None, res: Result) -> str:
    """CPU milliseconds per answered request: less sensitive than latency to a busy machine
    ("-" for a process the request does not pass through)."""
    return f"{10 * u.cpu_pct / res.throughput:.2f}" if u and u.cpu_pct >= 1 and res.throughput else "-"


def ratio_table(pairs: Sequence[tuple[Row, Row]]) -> str:
    """AAM row vs its baseline row at the same offered load."""
    headers = ["scenario", "vs", "offered", "p50 x", "p99 x", "throughput x"]
    out = []
    for aam, base in pairs:
        if aam.result is None or base.result is None:
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


def scale_table(points: Sequence[ScalePoint]) -> str:
    headers = ["policies", "start s", "p50 ms", "p99 ms", "p99 / p99@smallest", "ok/s",
               "PDP MB", "OPA MB"]
    base = next((p.result.p99_ms for p in points if p.result), 0.0)
    out = []
    for p in points:
        if p.result is None:
            out.append([str(p.policies), f"{p.start_s:.1f}", f"failed: {p.error[:60]}", *[""] * 5])
            continue
        out.append([f"{p.policies:,}", f"{p.start_s:.1f}", _ms(p.result.p50_ms), _ms(p.result.p99_ms),
                    _ratio(p.result.p99_ms, base), f"{p.result.throughput:.0f}",
                    f"{p.pdp_rss_mb:.0f}", f"{p.opa_rss_mb:.0f}"])
    return table(headers, out)


def memory_per_thousand(points: Sequence[ScalePoint]) -> tuple[float, float] | None:
    """(PDP MB, OPA MB) per 1,000 policies, from the smallest and largest scale points."""
    ok = [p for p in points if p.result is not None]
    if len(ok) < 2:
        return None
    lo, hi = min(ok, key=lambda p: p.policies), max(ok, key=lambda p: p.policies)
    k = (hi.policies - lo.policies) / 1000
    return (hi.pdp_rss_mb - lo.pdp_rss_mb) / k, (hi.opa_rss_mb - lo.opa_rss_mb) / k
