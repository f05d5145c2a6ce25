"""The benchmark harness imports and formats its tables (no timing is asserted)."""

from __future__ import annotations

import argparse
import base64
import json
from dataclasses import replace
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from aam.v1 import pdp_pb2
from bench import loadgen, profile, report, run, scenarios
from bench.loadgen import Load, Result
from bench.policies import EXAMPLE_POLICIES, write_policy_dir
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
    assert opa.payload["input"]["params"]["account_id"] == "00100000-0"  # call 0's
    fds = descriptor_pb2.FileDescriptorSet.FromString(
        write_protoset([pdp_pb2.DESCRIPTOR], tmp_path / "x.protoset").read_bytes())
    assert [f.name for f in fds.file][-1] == pdp_pb2.DESCRIPTOR.name
    assert run.plan(run_args(quick=True)).scales == (10, 1000)
    d = write_policy_dir(tmp_path / "p", 5)
    assert (d / "bench-generated.yaml").read_text().count("kind: AgentPolicy") == 5 - EXAMPLE_POLICIES == 2


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
    assert all(scenarios.by_name(b).variants == check.variants for b in check.baselines)
    msg = json_format.ParseDict(check.payload, external_auth_pb2.CheckRequest())
    req = to_request(HttpMapping(), from_check_request(msg))
    assert (req.spiffe_id, req.tool, req.action) == (scenarios.WORKLOAD, "salesforce.accounts", "search")
    assert req.params["limit"] == 1
    # Every varied Check is the tool call its own workload's certificate and path say.
    tools = {v.payload["identity"]["spiffe_id"]: v.payload["tool"]
             for v in scenarios.by_name("aam: authorize tool call").variants}
    for n, v in enumerate(check.variants):
        msg = json_format.ParseDict(scenarios.render(v.payload, n, "t."), external_auth_pb2.CheckRequest())
        req = to_request(HttpMapping(), from_check_request(msg))
        assert req.tool == tools[req.spiffe_id] and req.action in ("read", "search")
        assert f"t.{n}" in json.dumps(req.params)


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


# --- varied load (issue 23, point 5) ---------------------------------------------------------

def test_every_scenario_varies_workloads_and_params_and_uses_only_the_seq_template() -> None:
    for s in scenarios.SCENARIOS:
        assert len(s.variants) == scenarios.VARIANTS, s.name
        assert scenarios.templates(s.payloads) == {loadgen.SEQ}, s.name
        workloads = {scenarios.workload_of(p) for p in s.payloads}
        assert len(workloads) >= (2 if "credentialed" in s.name else 8), (s.name, workloads)
        assert all(v.expect_allow for v in s.variants)  # the measured mixes are granted calls
        # Rendered like ghz renders them, no two calls of a run are the same request.
        calls = [json.dumps(scenarios.render(s.variants[n % len(s.variants)].payload, n, "r1."),
                            sort_keys=True) for n in range(3 * len(s.variants))]
        assert len(set(calls)) == len(calls), s.name


def test_requests_parse_as_their_protos_and_opa_twins_are_the_pdp_input() -> None:
    from envoy.service.auth.v3 import external_auth_pb2
    from google.protobuf import json_format

    for s in scenarios.SCENARIOS:
        for n, v in enumerate(s.variants):
            p = scenarios.render(v.payload, n)
            if s.target == "opa":
                continue
            msg = external_auth_pb2.CheckRequest() if s.call == scenarios.CHECK else None
            json_format.ParseDict(p, msg or pdp_pb2.AuthorizeRequest())
    for name in ("authorize model call", "authorize tool call", "authorize credentialed tool call"):
        aam, opa = scenarios.by_name(f"aam: {name}"), scenarios.by_name(f"opa: {name}")
        for n in (0, 1, 7, 239):
            want = scenarios.opa_input(scenarios.render(aam.variants[n].payload, n, "x."))
            assert scenarios.render(opa.variants[n].payload, n, "x.") == {"input": want}
        bodies = scenarios.opa_bodies(opa, 2 * len(opa.variants), "r.")
        assert len({json.dumps(b, sort_keys=True) for b in bodies}) == len(bodies)
        assert bodies[len(opa.variants)]["input"]["identity"] == bodies[0]["input"]["identity"]


def test_generated_agents_requests_stay_inside_their_constraints() -> None:
    """The generated policies constrain limit and query: the varied values must pass them
    (with a long run tag in the query), so that every request is still an allow."""
    import re

    from bench.policies import AGENT_QUERY_MAX, BenchAgent

    for s in (scenarios.by_name("aam: authorize tool call"), scenarios.by_name("aam: ext_authz Check")):
        for n, v in enumerate(s.variants):
            p = scenarios.render(v.payload, 10**12 + n, "abcdef.123456.")
            if "attributes" in p:
                http = p["attributes"]["request"]["http"]
                workload, params = p["attributes"]["source"]["principal"], json.loads(http["body"])
            else:
                workload, params = p["identity"]["spiffe_id"], p["params"]
            if not workload.startswith("spiffe://bench/"):
                continue
            agent = BenchAgent(int(workload.rsplit("-", 1)[1]))
            assert 1 <= params["limit"] <= agent.max_limit
            assert re.fullmatch("[^;]*", params["query"]) and len(params["query"]) <= AGENT_QUERY_MAX


def test_generated_policies_compile_with_their_tools(tmp_path: Path) -> None:
    from compiler import compile_paths
    from compiler.bundle import DATA_PATH

    text = compile_paths([write_policy_dir(tmp_path / "p", 10)]).files[DATA_PATH].decode()
    for a in scenarios.AGENTS:
        assert a.workload in text and a.resource in text


def test_load_generators_get_every_request_tagged_per_run(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    seen: list[list[str]] = []
    data: list[object] = []

    def fake_run(argv: list[str], timeout_s: float, stdin: bytes | None = None) -> bytes:
        seen.append(argv)
        if Path(argv[0]).name == "ghz":
            data.append(json.loads(Path(argv[argv.index("-D") + 1]).read_text()))
            return json.dumps({"count": 2, "total": 1e9, "statusCodeDistribution": {"OK": 2}}).encode()
        if argv[1] == "attack":
            targets = Path(next(a for a in argv if a.startswith("-targets=")).split("=", 1)[1])
            data.append([json.loads(line) for line in targets.read_text().splitlines()])
            return b"results"
        return json.dumps({"requests": 2, "throughput": 2.0, "status_codes": {"200": 2}}).encode()

    monkeypatch.setattr(loadgen, "_run", fake_run)
    monkeypatch.setattr(loadgen, "tool", lambda name: f"/bin/{name}")
    payloads = [{"request_id": f"a-{loadgen.SEQ}"}, {"request_id": "fixed"}]
    loadgen.ghz("127.0.0.1:1", "x.Y/Z", payloads, Load(0, 1), tmp_path / "p")
    loadgen.ghz("127.0.0.1:1", "x.Y/Z", payloads, Load(10, 1), tmp_path / "p")
    first, second = data[0], data[1]
    assert isinstance(first, list) and isinstance(second, list)
    tag1 = first[0]["request_id"].removeprefix("a-").removesuffix(loadgen.SEQ)
    tag2 = second[0]["request_id"].removeprefix("a-").removesuffix(loadgen.SEQ)
    assert tag1 and tag2 and tag1 != tag2 and first[1] == {"request_id": "fixed"}
    loadgen.vegeta("http://localhost/v1/data/x", [{"input": {"a": 1}}, {"input": {"a": 2}}], Load(5, 1),
                   unix_socket="/run/opa.sock")
    assert "-unix-socket=/run/opa.sock" in seen[-2]
    targets = data[-1]
    assert isinstance(targets, list)
    assert [json.loads(base64.b64decode(t["body"])) for t in targets] == [{"input": {"a": 1}},
                                                                          {"input": {"a": 2}}]
    assert {t["url"] for t in targets} == {"http://localhost/v1/data/x"}


def test_check_sample_covers_every_workload() -> None:
    for s in scenarios.SCENARIOS:
        picked = run.sample(s)
        assert len(picked) == run.CHECK_SAMPLE and len(set(picked)) == len(picked)
        assert {scenarios.workload_of(s.variants[i].payload) for i in picked} == \
            {scenarios.workload_of(p) for p in s.payloads}


def test_decisions_table_says_whether_the_pdp_decided_as_expected() -> None:
    ok = report.Row("aam: t", FIXED, Result(1, 1, 2, 500, 2500, 0), {}, decisions={"allow": 2500})
    bad = report.Row("aam: t", SAT, Result(1, 1, 2, 500, 1000, 0), {},
                     decisions={"allow": 990, "deny": 10, "deny:budget_exceeded": 10})
    lines = report.decisions_table([ok, bad], lambda name: 1.0).splitlines()
    assert lines[2].split()[-4:] == ["100%", "allow", "as", "expected"]
    assert "10 (budget_exceeded 10)" in lines[3] and lines[3].endswith("UNEXPECTED")


def test_issue_23_targets_compare_with_opa_extauthz() -> None:
    idle = Load(20, 5)
    rows = [_row("aam: t", SAT, 40, 300), _row("aam: check", SAT, 40, 250), _row("sdk", SAT, 10, 700),
            _row("aam: check", idle, 8.0), _row("sdk", idle, 4.0),
            _row("aam: check", FIXED, 30.0), _row("sdk", FIXED, 20.0)]
    points = [report.ScalePoint(10, Result(1, 1, 2.0, 200, 100, 0), 60, 50, 3),
              report.ScalePoint(10_000, Result(1, 1, 2.5, 200, 100, 0), 160, 250, 20)]
    lines = report.targets_23(rows, points, 500, 20, "aam: t", "aam: check", "sdk").splitlines()
    assert lines[0] == ("saturation >= 0.5x opa-extauthz's Check: opa-extauthz 700/s, "
                        "AAM Check 250/s = x 0.36, AAM tool call 300/s = x 0.43 -> short")
    assert lines[1].endswith("AAM 2.00 / 8.00 ms, opa-extauthz 1.00 / 4.00 ms = x 2.00 / x 2.00 -> short")
    assert lines[2].endswith("AAM 7.50 / 30.00 ms, opa-extauthz 5.00 / 20.00 ms = x 1.50 / x 1.50 -> met")
    assert lines[3].endswith("2.50 ms / 2.00 ms = x 1.25 -> short")  # 1.2x here, 1.3x for issue 9
    assert lines[4] == "PDP RSS per worker at 10,000 policies (1 worker): 160 MB (OPA 250 MB)"
    none = report.targets_23([], [], 500, 0, "aam: t", "aam: check", "sdk").splitlines()
    assert none[0].endswith("-> not measured") and none[1].endswith("-> not measured")
