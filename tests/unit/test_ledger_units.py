from __future__ import annotations

import json

import pytest

from compiler.bundle import DATA_PATH
from pdp.ledger import LedgerError, open_ledger, pricing
from pdp.ledger.gate import CompiledView, Gate, StateCache
from pdp.ledger.types import Admission, Ask, Limits, RateWindow, Window, usd_to_micro


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


def test_estimate_before_opa_prices_the_route() -> None:
    assert pricing.estimate("m", 0, 0, 1000) == (0, 1000)  # default tokens for a model call
    assert pricing.estimate("m", 10, 0.5, 1000) == (500_000, 10)  # the caller's cost
    assert pricing.estimate("", 0, 0, 1000) == (0, 0)  # a tool call
    assert pricing.estimate("", 0, 0.0001, 1000, floor_usd=0.001) == (1000, 0)  # its grant's price


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


def _admission(resets_s: float = 3600.0) -> Admission:
    return Admission(True, 0, Window("2026-11-26", 5, 10, resets_s), Window("2026-11", 5, 10, 10 * resets_s),
                     RateWindow(3, 300, 20.0), RateWindow(1, 100, 5.0))


def test_state_cache_adds_its_own_reservation_and_ages() -> None:
    now = [100.0]
    cache = StateCache(ttl_s=1.0, clock=lambda: now[0])
    routed = Ask("d1", "w", "r", 7, 50, Limits(), 60)
    cache.put(routed, _admission(), reserved=True)
    now[0] += 0.25
    got = cache.get("w", "r")
    assert got is not None
    assert (got.daily.reserved_micro, got.monthly.reserved_micro) == (17, 17)
    assert (got.workload_rate.requests, got.workload_rate.tokens) == (4, 350)
    assert (got.route_rate.requests, got.route_rate.tokens) == (2, 150)
    assert got.daily.resets_in_s == pytest.approx(3599.75)
    assert got.route_rate.retry_after_s == pytest.approx(4.75)
    assert cache.get("w", "") is None  # another key (a tool call of the same workload)
    cache.put(Ask("d2", "w", "", 7, 0, Limits(), 60), _admission(), reserved=False)
    assert cache.get("w", "").daily.reserved_micro == 10  # type: ignore[union-attr]
    now[0] += 1.0
    assert cache.get("w", "r") is None  # older than the TTL


def test_state_cache_forgets_a_view_past_its_budget_window() -> None:
    now = [0.0]
    cache = StateCache(ttl_s=60.0, clock=lambda: now[0])
    cache.put(Ask("d", "w", "", 1, 0, Limits(), 60), _admission(resets_s=2.0), reserved=True)
    now[0] = 1.0
    assert cache.get("w", "") is not None
    now[0] = 2.0  # the day rolled over: yesterday's spend says nothing about today
    assert cache.get("w", "") is None


def test_gate_without_state_ttl_keeps_no_cached_view() -> None:
    gate = _gate(True)
    m = gate.meter("d", "spiffe://prod/agent/none", "m", 0, 0)
    assert gate.cache is None
    assert gate.read_state(m) == (m, True)  # no policy: nothing to read, no ledger call
