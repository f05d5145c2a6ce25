"""opa-extauthz, the ext_authz baseline scripts/setup builds (bench/opa_extauthz), gives
the Check decisions AAM's policy means: the benchmark compares like with like."""

from __future__ import annotations

import copy
from pathlib import Path

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.protobuf import json_format
from google.rpc import code_pb2

from bench import scenarios
from bench.policies import write_policy_dir
from bench.targets import SDK, ExtAuthzStack, TargetError


def _check(stack: ExtAuthzStack, payload: dict) -> int:
    with grpc.insecure_channel(stack.grpc_addr) as ch:
        req = json_format.ParseDict(payload, external_auth_pb2.CheckRequest())
        return external_auth_pb2_grpc.AuthorizationStub(ch).Check(req, timeout=10).status.code


def _with_path(path: str, principal: str = scenarios.WORKLOAD) -> dict:
    payload = copy.deepcopy(scenarios.CHECK_CALL)
    payload["attributes"]["source"]["principal"] = principal
    http = payload["attributes"]["request"]["http"]
    http["path"] = http["headers"][":path"] = path
    return payload


def test_opa_extauthz_answers_checks_as_the_policy_says(tmp_path: Path) -> None:
    try:
        stack = ExtAuthzStack(SDK, write_policy_dir(tmp_path / "p", 10)).start()
    except TargetError as exc:
        pytest.fail(str(exc), pytrace=False)
    with stack:
        assert _check(stack, scenarios.CHECK_CALL) == code_pb2.OK  # the benchmark's Check
        # denied by spec.tools[0].deny, not granted, unknown tool, unknown workload, not a tool path
        for payload in (_with_path("/tools/salesforce.accounts/delete"),
                        _with_path("/tools/salesforce.accounts/merge"),
                        _with_path("/tools/github.repos/read"),
                        _with_path("/tools/salesforce.accounts/search", "spiffe://prod/agent/nobody"),
                        _with_path("/admin/salesforce.accounts/search")):
            assert _check(stack, payload) == code_pb2.PERMISSION_DENIED, payload
        # Every varied Check of the benchmark, rendered as ghz renders a call, as it expects.
        for n, v in enumerate(scenarios.by_name(scenarios.SDK_CHECK).variants):
            want = code_pb2.OK if v.expect_allow else code_pb2.PERMISSION_DENIED
            assert _check(stack, scenarios.render(v.payload, n, "it.")) == want, n
