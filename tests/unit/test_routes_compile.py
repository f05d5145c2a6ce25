"""ModelRoute options compile into the data routes.rego reads; route mistakes are located errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compiler import CompileError, compile_paths
from compiler.bundle import DATA_PATH

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

HEAD = """\
apiVersion: access.envisionai.dev/v1
kind: ModelRoute
metadata: {name: r}
spec:
"""


def compiled(*paths: Path) -> dict:
    return json.loads(compile_paths(list(paths)).files[DATA_PATH])


def route_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: str) -> list[str]:
    monkeypatch.chdir(tmp_path)
    Path("r.yaml").write_text(HEAD + spec)
    with pytest.raises(CompileError) as exc:
        compile_paths([Path("r.yaml")])
    return [str(d) for d in exc.value.diagnostics]


def test_every_route_option_compiles() -> None:
    data = compiled(EXAMPLES)
    eu = data["routes"]["reasoning-eu"]
    assert {k: eu[k] for k in ("alias", "allow_fallbacks", "sort", "data_collection", "regions",
                               "max_price", "providers", "rate")} == {
        "alias": "reasoning-eu", "allow_fallbacks": True, "sort": "price", "data_collection": "deny",
        "regions": ["eu-*"], "max_price": {"output_per_mtok": 20.0},
        "providers": {"ignore": {"openai": True}},
        "rate": {"requests_per_minute": 600, "tokens_per_minute": 2000000},
    }
    assert eu["targets"][2] == {
        "provider": "azure", "model": "gpt-5", "region": "eu-west-1", "input_price_per_mtok": 1.25,
        "output_price_per_mtok": 10.0, "context_window": 400000, "data_retention": True,
    }
    claims = data["policies"]["spiffe://prod/agent/claims-assistant"]
    assert claims["model_regions"] == ["eu-*"]
    assert claims["tools"]["crm.customers"]["conditions"]["model_region"] == ["eu-*"]


def test_defaults_stay_small() -> None:
    high = compiled(EXAMPLES)["routes"]["summarization"]
    assert set(high) == {"alias", "allow_fallbacks", "sort", "data_collection", "targets"}
    assert (high["sort"], high["data_collection"]) == ("order", "allow")
    assert high["targets"][0]["data_retention"] is False


def test_providers_that_name_no_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    got = route_errors(tmp_path, monkeypatch, """\
  providers: {only: [openai, mistral], ignore: [openai]}
  targets: [{provider: openai, model: gpt-5, region: us-east-1}]
""")
    assert got == [
        "r.yaml:5:30: error: provider 'mistral' is not a target of ModelRoute 'r' (targets: openai)",
        "r.yaml:5:49: error: provider 'openai' is both in providers.only and providers.ignore",
        "r.yaml:6:12: error: ModelRoute 'r' excludes every target by its own rules (provider)",
    ]


def test_route_that_excludes_every_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    got = route_errors(tmp_path, monkeypatch, """\
  regions: [eu-*]
  max_price: {input_per_mtok: 1}
  targets:
    - {provider: openai, model: gpt-5, region: us-east-1}
    - {provider: bedrock, model: claude, region: eu-central-1, input_price_per_mtok: 3}
    - {provider: bedrock, model: claude, region: eu-central-1}
""")
    assert got == [
        "r.yaml:10:7: error: target bedrock/claude @ eu-central-1 repeats spec.targets[1]",
    ]
    got = route_errors(tmp_path, monkeypatch, """\
  regions: [eu-*]
  max_price: {input_per_mtok: 1}
  targets:
    - {provider: openai, model: gpt-5, region: us-east-1}
    - {provider: bedrock, model: claude, region: eu-central-1, input_price_per_mtok: 3}
""")
    assert got == ["r.yaml:8:5: error: ModelRoute 'r' excludes every target by its own rules (price, region)"]


def test_bad_region_pattern_and_sort(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    got = route_errors(tmp_path, monkeypatch, """\
  regions: ["EU/*"]
  sort: latency
  targets: [{provider: openai, model: gpt-5}]
""")
    assert len(got) == 2
    assert any("EU/*" in g for g in got) and any("latency" in g for g in got)
