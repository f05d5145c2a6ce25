"""Every varied request the benchmark sends (bench/scenarios.py) gets the decision it
expects from the real PDP and OPA on the bench's policy set: the load is honest and
still measures what the scenario says."""

from __future__ import annotations

from pathlib import Path

from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.protobuf import json_format
from google.rpc import code_pb2

from aam.v1 import pdp_pb2, pdp_pb2_grpc
from bench import scenarios
from bench.policies import write_policy_dir
from pdp.opa import OpaClient
from tests.integration.pdp import gateway_channel, running_stack


def test_every_bench_request_is_decided_as_its_scenario_expects(tmp_path: Path) -> None:
    with running_stack(write_policy_dir(tmp_path / "p10", 10)) as stack, gateway_channel(stack) as ch:
        pdp = pdp_pb2_grpc.PolicyDecisionServiceStub(ch)
        check = external_auth_pb2_grpc.AuthorizationStub(ch)
        opa = OpaClient(stack.opa_url, 10)
        wrong = []
        for name in ("aam: authorize model call", "aam: authorize tool call", "aam: ext_authz Check",
                     "opa: authorize model call", "opa: authorize tool call"):
            s = scenarios.by_name(name)
            for n, v in enumerate(s.variants):
                p = scenarios.render(v.payload, n, "it.")
                if s.target == "opa":
                    allow = bool(opa.query(s.call, p["input"])["allow"])
                elif s.call == scenarios.CHECK:
                    r = check.Check(json_format.ParseDict(p, external_auth_pb2.CheckRequest()), timeout=10)
                    allow = r.status.code == code_pb2.OK
                else:
                    a = pdp.Authorize(json_format.ParseDict(p, pdp_pb2.AuthorizeRequest()), timeout=10)
                    allow = a.decision == pdp_pb2.DECISION_ALLOW
                if allow != v.expect_allow:
                    wrong.append((name, n, scenarios.workload_of(v.payload)))
        assert wrong == []
