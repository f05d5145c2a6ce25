from __future__ import annotations

import json

import pytest

from compiler.bundle import DATA_PATH
from pdp.ledger import LedgerError, open_ledger
from pdp.ledger.gate import CompiledView, Gate
from pdp.ledger.types import usd_to_micro


@pytest.mark.parametrize(("usd", "micro"), [
    (0.01, 10_000), (74.2, 74_200_000), (1.0, 1_000_000), (0.0, 0), (1e-7, 1), (0.0000011, 2),
])
def test_usd_to_micro_rounds_up_without_float_noise(usd: float, micro: int) -> None:
    assert usd_to_micro(usd) == micro


def _gate(fallbacks: bool) -> Gate:
    view = CompiledView()
    data = {"policies": {}, "routes": {"m": {"alias": "m", "allow_fallbacks": fallbacks, "targets": [
        {"input_price_per_mtok": 1, "output_price_per_mtok": 2},
        {"input_price_per_mtok": 3, "output_price_per_mtok": 10},
    ]}}}
    view.update({DATA_PATH: json.dumps(data).encode()}, DATA_PATH)
    return Gate(ledger=None, view=view, reservation_ttl_s=60, default_tokens=1000)  # type: ignore[arg-type]


def test_estimate_takes_the_route_price_rego_quoted() -> None:
    assert _gate(True).estimate("m", 100_000, 0, quote_usd=0.2) == (200_000, 100_000)
    assert _gate(True).estimate("m", 0, 0, quote_usd=0.01) == (10_000, 1000)  # default tokens
    assert _gate(True).estimate("m", 10, 0.5) == (500_000, 10)  # no quote: the caller's cost
    assert _gate(True).estimate("m", 10, 0) == (0, 10)
    assert _gate(True).estimate("", 0, 0) == (0, 0)  # a tool call


def test_ledger_urls() -> None:
    assert open_ledger("") is None and open_ledger("off") is None
    with pytest.raises(LedgerError, match="unsupported ledger URL scheme 'redis'"):
        open_ledger("redis://x")


POLICY = """
apiVersion: access.envisionai.dev/v1
kind: AgentPolicy
metadata: {name: p}
spec:
  identity: {workload: spiffe://prod/agent/p}
  models: {allow: [m]}
  budget: {daily_usd: 5, monthly_usd: 50, per_request_usd: 0.5, timezone: TZ}
  rate: {requests_per_minute: 60, tokens_per_minute: 100000}
---
apiVersion: access.envisionai.dev/v1
kind: ModelRoute
metadata: {name: m}
spec:
  targets: [{provider: p, model: x}]
  rate: {requests_per_minute: 600}
"""


def test_budget_and_rate_limits_compile_into_the_data(tmp_path) -> None:
    from compiler import compile_paths

    (tmp_path / "p.yaml").write_text(POLICY.replace("TZ", "Europe/Berlin"))
    data = json.loads(compile_paths([tmp_path]).files[DATA_PATH])
    policy = data["policies"]["spiffe://prod/agent/p"]
    assert policy["budget"] == {"daily_usd": 5, "monthly_usd": 50, "per_request_usd": 0.5,
                                "timezone": "Europe/Berlin"}
    assert policy["rate"] == {"requests_per_minute": 60, "tokens_per_minute": 100000}
    assert data["routes"]["m"]["rate"] == {"requests_per_minute": 600}


def test_unknown_budget_time_zone_is_a_located_error(tmp_path) -> None:
    from compiler import CompileError, compile_paths

    (tmp_path / "p.yaml").write_text(POLICY.replace("TZ", "Mars/Olympus"))
    with pytest.raises(CompileError) as err:
        compile_paths([tmp_path])
    (diag,) = err.value.diagnostics
    assert "unknown time zone 'Mars/Olympus'" in str(diag)
    assert str(diag).startswith(f"{tmp_path / 'p.yaml'}:8:75: error:")
