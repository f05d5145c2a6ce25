"""The compiled data follows the shared contract other branches read (DESIGN: data.aam.compiled)."""

from __future__ import annotations

import json
from pathlib import Path

from compiler import compile_paths
from compiler.bundle import DATA_PATH

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def compiled() -> dict:
    return json.loads(compile_paths([EXAMPLES]).files[DATA_PATH])


def test_budget_rate_audit_and_binding() -> None:
    p = compiled()["policies"]["spiffe://prod/agent/support-triage"]
    assert p["binding"] == {"deployment": "support-triage-v3", "environment": "prod",
                            "owner": "support-platform@example.com", "team": "support"}
    assert p["budget"] == {"daily_usd": 20, "monthly_usd": 400, "per_request_usd": 0.5,
                           "timezone": "Europe/Berlin"}
    assert p["rate"] == {"requests_per_minute": 60, "tokens_per_minute": 200000}
    assert p["audit"] == {"record": ["action", "identity", "outcome", "params", "policy", "reasons"]}


def test_budget_timezone_defaults_to_utc_and_absent_sections_stay_absent() -> None:
    p = compiled()["policies"]["spiffe://prod/agent/finance-analyst"]
    assert p["budget"] == {"daily_usd": 75, "timezone": "UTC"}
    assert "rate" not in p
    assert "params" not in p["audit"]["record"]  # parameters are redacted unless recorded


def test_constraints_and_conditions() -> None:
    tool = compiled()["policies"]["spiffe://prod/agent/support-triage"]["tools"]["zendesk.tickets"]
    assert tool["constraints"][1] == {
        "rule": "spec.tools[0].constraints[1]", "param": "query", "path": ["query"],
        "pattern": "[^;]*", "regex": "^(?:[^;]*)$", "max_length": 200}
    assert tool["constraints"][2]["path"] == ["filter", "status"]
    assert tool["conditions"] == {
        "rule": "spec.tools[0].conditions",
        "time_window": {"start": 420, "end": 1200, "text": "07:00-20:00", "timezone": "Europe/Berlin",
                        "days": {"Friday": True, "Monday": True, "Thursday": True, "Tuesday": True,
                                 "Wednesday": True}},
        "environments": {"prod": True},
        "context": {"region": ["eu-west-1", "eu-central-1"]},
    }
