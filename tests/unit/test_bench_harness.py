"""The benchmark harness imports and formats its tables (no timing is asserted)."""

from __future__ import annotations

import argparse
from pathlib import Path

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
        assert not s.baseline or s.baseline in names
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
    """The Check the ext_authz benchmark sends is what AAM's mapping reads as the tool call."""
    from envoy.service.auth.v3 import external_auth_pb2
    from google.protobuf import json_format

    from bench import extauthz
    from pdp.extauthz import from_check_request
    from pdp.httpmap import HttpMapping, to_request
    from tests.certs import CA

    payload = extauthz.check_json(CA("prod").svid(extauthz.WORKLOAD).cert_pem)
    msg = json_format.ParseDict(payload, external_auth_pb2.CheckRequest())
    req = to_request(HttpMapping(), from_check_request(msg))
    assert (req.spiffe_id, req.tool, req.action) == (extauthz.WORKLOAD, "salesforce.accounts", "search")
    assert req.params["limit"] == 50
