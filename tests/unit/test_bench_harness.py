"""The benchmark harness imports and formats its tables (no timing is asserted)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from aam.v1 import pdp_pb2
from bench import loadgen, profile, report, run, scenarios
from bench.loadgen import Load, Result
from bench.policies import write_policy_dir
from bench.procstat import Usage
from bench.protoset import write_protoset


def test_latency_and_ratio_tables_align_and_show_failures() -> None:
    res = Result(p50_ms=1.234, p90_ms=2.0, p99_ms=4.5, throughput=499.6, count=5000, errors=0)
    base = Result(p50_ms=0.5, p90_ms=1.0, p99_ms=1.5, throughput=500.0, count=5000, errors=0)
    aam = report.Row("aam: authorize model call", Load(500, 10), res,
                     {"pdp": Usage(55.0, 61.2), "opa": Usage(40.0, 70.0)})
    opa = report.Row("opa: authorize model call", Load(500, 10), base, {"opa": Usage(30.0, 70.0)})
    failed = report.Row("aam: authorize tool call", Load(0, 10, 16), None, {}, "ghz exited 1")
    text = report.latency_table([aam, opa, failed])
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["scenario", "offered"]
    assert len({len(line) for line in lines[:2]}) == 1  # the rule spans the header
    assert "1.23" in lines[2] and "4.50" in lines[2] and "55%" in lines[2]
    assert "failed: ghz exited 1" in lines[4]
    ratios = report.ratio_table([(aam, opa)]).splitlines()[2]
    assert ratios.split()[-3:] == ["2.47", "3.00", "1.00"]


def test_scale_table_and_memory_per_thousand_policies() -> None:
    r = Result(1.0, 1.5, 2.0, 500.0, 100, 0)
    points = [report.ScalePoint(10, r, 60.0, 50.0, 3.0),
              report.ScalePoint(10_010, Result(1.0, 1.5, 2.6, 500.0, 100, 0), 160.0, 250.0, 20.0)]
    assert "1.30" in report.scale_table(points).splitlines()[3]
    assert report.memory_per_thousand(points) == (10.0, 20.0)


def test_generators_parse_their_json_reports() -> None:
    g = loadgen.parse_ghz({"count": 1000, "total": 2e9, "statusCodeDistribution": {"OK": 990},
                           "latencyDistribution": [{"percentage": 50, "latency": 1_500_000},
                                                   {"percentage": 99, "latency": 9_000_000}]}, 2)
    assert (g.p50_ms, g.p99_ms, g.throughput, g.errors) == (1.5, 9.0, 495.0, 10)
    v = loadgen.parse_vegeta({"requests": 100, "throughput": 99.5, "status_codes": {"200": 100},
                              "latencies": {"50th": 800_000, "90th": 1_000_000, "99th": 2_000_000}})
    assert (v.p50_ms, v.p99_ms, v.errors) == (0.8, 2.0, 0)


def test_profile_summary_counts_inclusive_and_self_time() -> None:
    collapsed = ("run (threading.py:1);decide (pdp/engine.py:90);dumps (json/__init__.py:2) 3\n"
                 "run (threading.py:1);decide (pdp/engine.py:90) 1\n")
    p = profile.summarize(collapsed)
    assert p.samples == 4
    assert dict(p.inclusive)["decide (pdp/engine.py)"] == 1.0
    assert dict(p.self_)["dumps (json/__init__.py)"] == 0.75
    assert "samples" in profile.format_profile(p)


def test_scenarios_pair_with_baselines_built_from_the_pdp_input(tmp_path: Path) -> None:
    names = {s.name for s in scenarios.SCENARIOS}
    for s in scenarios.SCENARIOS:
        assert all(b in names for b in s.baselines)
    opa = scenarios.by_name("opa: authorize tool call")
    assert opa.payload["input"]["tool"] == "salesforce.accounts"
    assert opa.payload["input"]["params"]["limit"] == 50
    fds = descriptor_pb2.FileDescriptorSet.FromString(
        write_protoset([pdp_pb2.DESCRIPTOR], tmp_path / "x.protoset").read_bytes())
    assert [f.name for f in fds.file][-1] == pdp_pb2.DESCRIPTOR.name
    assert run.plan(run_args(quick=True)).scales == (10, 1000)
    d = write_policy_dir(tmp_path / "p", 5)
    assert (d / "bench-generated.yaml").read_text().count("kind: AgentPolicy") == 4


def run_args(quick: bool) -> argparse.Namespace:
    return argparse.Namespace(quick=quick, rate=500, concurrency=16, only="")


def test_extauthz_bench_request_maps_to_the_granted_tool_call() -> None:
    """The Check the benchmark sends is what AAM's mapping reads as the tool call."""
    from envoy.service.auth.v3 import external_auth_pb2
    from google.protobuf import json_format

    from pdp.extauthz import from_check_request
    from pdp.httpmap import HttpMapping, to_request

    check = scenarios.by_name("aam: ext_authz Check")
    assert check.call == scenarios.CHECK
    assert check.baselines == (scenarios.PLUGIN_CHECK, scenarios.SDK_CHECK)
    assert all(scenarios.by_name(b).payload == check.payload for b in check.baselines)
    msg = json_format.ParseDict(check.payload, external_auth_pb2.CheckRequest())
    req = to_request(HttpMapping(), from_check_request(msg))
    assert (req.spiffe_id, req.tool, req.action) == (scenarios.WORKLOAD, "salesforce.accounts", "search")
    assert req.params["limit"] == 50


def test_targets_name_existing_scenarios() -> None:
    aam, bases = scenarios.CHECK_TARGET
    for name in [*scenarios.AUTHORIZE_TARGETS.values(), aam, *bases]:
        assert scenarios.by_name(name).name == name


def _row(name: str, load: Load, p99: float, throughput: float = 500.0, errors: int = 0) -> report.Row:
    return report.Row(name, load, Result(p99 / 4, p99 / 2, p99, throughput, 1000, errors), {})


AUTHZ = {"model": "aam: m", "tool": "aam: t", "credentialed": "aam: c"}
FIXED, SAT = Load(500, 5), Load(0, 4, 16)
CHECK = ("aam: check", ("plugin", "sdk"))


def test_targets_say_met_short_and_not_measured_with_the_figures() -> None:
    rows = [_row("aam: m", FIXED, 3.2), _row("aam: t", FIXED, 4.9), _row("aam: c", FIXED, 12.34),
            _row("aam: m", SAT, 40, 1600), _row("aam: t", SAT, 40, 1700),
            _row("aam: check", FIXED, 6.0), _row("plugin", FIXED, 2.0), _row("sdk", FIXED, 4.0)]
    points = [report.ScalePoint(10, Result(1, 1, 2.0, 200, 100, 0), 60, 50, 3),
              report.ScalePoint(1000, Result(1, 1, 2.2, 200, 100, 0), 70, 60, 5),
              report.ScalePoint(10_000, Result(1, 1, 2.5, 200, 100, 0), 160, 250, 20)]
    lines = report.targets(rows, points, 500, AUTHZ, CHECK, "postgres").splitlines()
    assert lines[0] == ("Authorize with ledger (postgres) and audit on, p99 <= 5 ms at 500/s: "
                        "model 3.20 ms, tool 4.90 ms, credentialed 12.34 ms -> short")
    assert lines[1] == ("Authorize saturation >= 1,500 decisions/s: model 1,600/s, tool 1,700/s, "
                        "credentialed - -> met (credentialed not measured)")
    assert lines[2].endswith("AAM 6.00 ms; plugin 2.00 ms = x 3.00; sdk 4.00 ms = x 1.50 -> short")
    assert lines[3].endswith("2.50 ms / 2.00 ms = x 1.25 -> met")


def test_targets_explain_what_was_not_measured() -> None:
    at400 = Load(400, 5)
    missing = report.Row("plugin", at400, None, {}, "no opa-envoy-plugin binary", skipped=True)
    rows = [_row("aam: m", at400, 4.0, errors=3), _row("aam: check", at400, 6.0), missing]
    points = [report.ScalePoint(10, Result(1, 1, 2.0, 200, 100, 0), 60, 50, 3),
              report.ScalePoint(1000, None, 0, 0, 5, "ghz exited 1")]
    lines = report.targets(rows, points, 400, AUTHZ, CHECK, "sqlite").splitlines()
    assert "p99 <= 5 ms at 400/s (the target is at 500/s):" in lines[0]
    assert lines[0].endswith("model 4.00 ms (3 errors), tool -, credentialed - -> short")
    assert lines[1].endswith("model -, tool -, credentialed - -> not measured")
    assert lines[2].endswith(
        "AAM 6.00 ms; plugin not run: no opa-envoy-plugin binary; sdk not run: no row -> not measured")
    assert lines[3].endswith("scales run 10, 1,000 (failed); only the full run loads 10,000 -> not measured")
    assert report.targets([], [], 500, AUTHZ, ("a", ("b",)), "x").splitlines()[3].endswith(
        "scale not run (--no-scale) -> not measured")
    table = report.latency_table([missing]).splitlines()
    assert table[2].split()[-2:] == ["not", "run"]
    assert table[-1] == "plugin: not run: no opa-envoy-plugin binary"
    assert report.ratio_table([(rows[1], missing)]).splitlines()[2].split()[-3:] == ["-", "-", "-"]
    # The plugin missing, its stand-in decides, and the line says so.
    check = report.targets([*rows, _row("sdk", at400, 4.0)], points, 400, AUTHZ, CHECK, "sqlite")
    assert check.splitlines()[2].endswith(
        "plugin not run: no opa-envoy-plugin binary; sdk 4.00 ms = x 1.50 -> met (against sdk)")


def test_ceiling_says_what_a_free_pdp_could_reach(monkeypatch: pytest.MonkeyPatch) -> None:
    """OPA 150% + PostgreSQL 60% + load generator 40% of a core at 500/s is 5 ms of CPU per
    decision besides the PDP's: 2 CPUs cannot pass 400/s whatever the PDP costs."""
    monkeypatch.setattr(report.os, "cpu_count", lambda: 2)
    usage = {"pdp": Usage(90, 100), "opa": Usage(150, 80), "pg": Usage(60, 0), "loadgen": Usage(40, 0)}
    rows = [report.Row("aam: m", SAT, Result(10, 20, 40, 500, 2000, 0), usage)]
    line = report.targets(rows, [], 500, AUTHZ, CHECK, "postgres").splitlines()[4]
    assert line.endswith("model 400/s (5.00 ms), tool -, credentialed -")


def test_idle_rows_give_the_latency_floor_line_and_an_extra_load() -> None:
    idle = Load(20, 5)
    rows = [_row("aam: m", idle, 9.5), _row("aam: t", idle, 4.0), _row("aam: m", FIXED, 40)]
    lines = report.targets(rows, [], 500, AUTHZ, CHECK, "postgres", idle_rate=20).splitlines()
    assert lines[5] == ("Authorize p50 / p99 with the stack nearly idle (20/s), the floor under the 5 ms "
                        "target: model 2.38 / 9.50 ms, tool 1.00 / 4.00 ms, credentialed - -> short")
    assert len(report.targets(rows, [], 500, AUTHZ, CHECK, "postgres").splitlines()) == 5
    p = run.plan(run_args(quick=True))
    assert [load.label for load in run.loads(p)] == ["20/s", "500/s", "max c=16"]
    assert [load.label for load in run.loads(replace(p, idle_rate=0))] == ["500/s", "max c=16"]
