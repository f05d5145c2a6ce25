"""`aam import litellm`: each LiteLLM setting's mapping, with the exact warning for what is lost."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from compiler.importers import run
from compiler.importers.types import PolicyStub, Rate, Route, Target
from tests.unit.importing import LITELLM, imported, messages, unaccounted


@pytest.fixture(autouse=True)
def _cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def routes(tmp_path: Path, text: str) -> dict[str, Route]:
    result = imported(tmp_path, "litellm", text)
    assert not result.errors, messages(result)
    return {r.name: r for r in result.routes}


def warnings(tmp_path: Path, text: str) -> list[str]:
    return [str(d) for d in imported(tmp_path, "litellm", text).warnings]


def test_fixture_groups_become_routes_with_targets_prices_regions_and_rates() -> None:
    result = run("litellm", LITELLM)
    assert result.errors == ()
    got = {r.name: r for r in result.routes}
    assert sorted(got) == ["claude-sonnet", "gpt-4o", "gpt-mini"]
    bedrock = Target("bedrock", "anthropic.claude-3-5-sonnet-20240620-v1:0", "eu-central-1",
                     Decimal(3), Decimal(15), 200000)
    assert got["gpt-4o"].targets == (
        Target("azure", "gpt-4o-eu", "eu", Decimal("2.5"), Decimal(10), 128000),
        Target("azure", "gpt-4o-ca", "ca", Decimal("2.5"), Decimal(10)),
        bedrock,  # router_settings.fallbacks, copied after the group's own
    )
    assert got["gpt-4o"].rate == Rate(90, 150000)
    assert got["claude-sonnet"].targets == (bedrock,)
    assert got["gpt-mini"].targets == (Target("openai", "gpt-4o-mini"),
                                       Target("vertex_ai", "gemini-1.5-flash", "europe-west4"), bedrock)
    assert got["gpt-mini"].rate == Rate()  # one deployment had rpm, the other none
    assert {p.name: p for p in result.policies} == {
        "litellm-proxy": PolicyStub("litellm-proxy", f"{LITELLM}:68:3",
                                    ("claude-sonnet", "gpt-4o", "gpt-mini"), monthly_usd=Decimal(100)),
        "team-research": PolicyStub("team-research", f"{LITELLM}:71:7", ("claude-sonnet", "gpt-4o"),
                                    team="research", daily_usd=Decimal(10), rate=Rate(100, 200000)),
    }


def test_every_fixture_key_is_mapped_or_named_in_a_warning() -> None:
    assert unaccounted("litellm", LITELLM, run("litellm", LITELLM)) == []


def test_an_unknown_setting_is_still_reported(tmp_path: Path) -> None:
    got = warnings(tmp_path, """\
model_list:
  - model_name: m
    litellm_params: {model: openai/gpt-4o, input_cost_per_token: 0.0000025, brand_new: 1}
litellm_settings: {brand_new_setting: true}
""")
    assert got == [
        "c.yaml:3:77: warning: model_list[0].litellm_params.brand_new: not carried: no AAM equivalent"
        " for this LiteLLM setting",
        "c.yaml:4:20: warning: litellm_settings.brand_new_setting: not carried: no AAM equivalent for"
        " this LiteLLM setting",
    ]


def test_per_token_costs_become_exact_prices_per_million_tokens(tmp_path: Path) -> None:
    got = routes(tmp_path, """\
model_list:
  - model_name: m
    litellm_params: {model: openai/gpt-4o-mini, input_cost_per_token: 0.00000015,
                     output_cost_per_token: 6.0e-7}
    model_info: {output_cost_per_token: 0.000001, max_input_tokens: 128000}
""")
    assert got["m"].targets == (Target("openai", "gpt-4o-mini", None, Decimal("0.15"), Decimal("0.6"),
                                       128000),)
    assert warnings(tmp_path, (Path(tmp_path) / "c.yaml").read_text()) == [
        "c.yaml:5:18: warning: model_list[0].model_info.output_cost_per_token: not carried:"
        " litellm_params.output_cost_per_token takes precedence"]


def test_deployment_order_decides_target_order_and_ties_are_reported(tmp_path: Path) -> None:
    text = """\
model_list:
  - {model_name: m, litellm_params: {model: azure/b, order: 2, input_cost_per_token: 0}}
  - {model_name: m, litellm_params: {model: azure/a, order: 1, input_cost_per_token: 0}}
  - {model_name: n, litellm_params: {model: azure/c, input_cost_per_token: 0}}
  - {model_name: n, litellm_params: {model: openai/d, input_cost_per_token: 0}}
"""
    got = routes(tmp_path, text)
    assert [t.model for t in got["m"].targets] == ["a", "b"]
    assert [t.model for t in got["n"].targets] == ["c", "d"]
    assert warnings(tmp_path, text) == [
        "c.yaml:4:6: warning: model_list[2].model_name: LiteLLM load-balances the 2 deployments of 'n';"
        " AAM tries them in order (litellm_params.order, then as written)"]


def test_rpm_and_tpm_are_summed_only_when_every_deployment_has_them(tmp_path: Path) -> None:
    text = """\
model_list:
  - model_name: m
    litellm_params: {model: azure/a, rpm: 10, tpm: 1000, input_cost_per_token: 0, order: 1}
  - model_name: m
    litellm_params: {model: azure/b, rpm: 20, input_cost_per_token: 0, order: 2}
    tpm: 5
"""
    assert routes(tmp_path, text)["m"].rate == Rate(30, 1005)
    assert warnings(tmp_path, text) == [
        "c.yaml:3:38: warning: model_list[0].litellm_params.rpm: the 2 deployments' rpm are summed into"
        " spec.rate.requests_per_minute: 30 (AAM limits the route, not each target)",
        "c.yaml:3:47: warning: model_list[0].litellm_params.tpm: the 2 deployments' tpm are summed into"
        " spec.rate.tokens_per_minute: 1005 (AAM limits the route, not each target)",
    ]
    text = text.replace("    tpm: 5\n", "")
    assert routes(tmp_path, text)["m"].rate == Rate(30, None)
    assert warnings(tmp_path, text)[-1] == (
        "c.yaml:3:47: warning: model_list[0].litellm_params.tpm: not carried: not every deployment of"
        " 'm' has tpm, so the group has no total for spec.rate.tokens_per_minute (AAM limits a route,"
        " not each target)")


def test_fallbacks_are_copied_after_the_groups_own_targets(tmp_path: Path) -> None:
    text = """\
model_list:
  - {model_name: a, litellm_params: {model: openai/a, input_cost_per_token: 0}}
  - {model_name: b, litellm_params: {model: anthropic/b, input_cost_per_token: 0}}
  - {model_name: c, litellm_params: {model: openai/a, input_cost_per_token: 0}}
router_settings:
  fallbacks: [{a: [b, c, missing, a]}, {nope: [a]}]
"""
    got = routes(tmp_path, text)
    assert [(t.provider, t.model) for t in got["a"].targets] == [("openai", "a"), ("anthropic", "b")]
    assert got["b"].targets == (Target("anthropic", "b", None, Decimal(0)),)
    assert warnings(tmp_path, text) == [
        "c.yaml:6:16: warning: router_settings.fallbacks[0].a: fallbacks carried as copies: ModelRoute"
        " 'a' lists the targets of 'b', 'c' after its own (AAM routes do not refer to each other; their"
        " rate is not shared and later edits to them are not followed).",
        "c.yaml:6:26: warning: router_settings.fallbacks[0].a[2]: not carried: fallback group 'missing'"
        " is not in model_list",
        "c.yaml:6:35: warning: router_settings.fallbacks[0].a[3]: not carried: fallback group 'a' is the"
        " group itself",
        "c.yaml:6:41: warning: router_settings.fallbacks[1].nope: not carried: model group 'nope' is not"
        " in model_list",
    ]


def test_cost_based_routing_sorts_by_price_other_strategies_are_reported(tmp_path: Path) -> None:
    text = """\
model_list:
  - {model_name: m, litellm_params: {model: openai/a, input_cost_per_token: 0}}
router_settings: {routing_strategy: cost-based-routing}
"""
    assert routes(tmp_path, text)["m"].sort == "price"
    text = text.replace("cost-based-routing", "latency-based-routing")
    assert routes(tmp_path, text)["m"].sort is None
    assert warnings(tmp_path, text) == [
        "c.yaml:3:19: warning: router_settings.routing_strategy: not carried: routing strategy"
        " 'latency-based-routing' needs live load or latency, which AAM does not have; targets are"
        " tried in the order written"]


def test_deployments_of_one_target_are_listed_once(tmp_path: Path) -> None:
    text = """\
model_list:
  - {model_name: m, litellm_params: {model: azure/gpt-4o, api_base: "https://a", rpm: 5,
                                     input_cost_per_token: 0, order: 1}}
  - {model_name: m, litellm_params: {model: azure/gpt-4o, api_base: "https://b", rpm: 5,
                                     input_cost_per_token: 0, order: 2}}
"""
    got = routes(tmp_path, text)["m"]
    assert got.targets == (Target("azure", "gpt-4o", None, Decimal(0)),) and got.rate == Rate(10)
    assert ("c.yaml:4:6: warning: model_list[1].model_name: same target as model_list[0]"
            " (azure/gpt-4o @ any region): AAM lists it once") in warnings(tmp_path, text)


def test_providers_come_from_the_model_prefix_or_custom_llm_provider(tmp_path: Path) -> None:
    text = """\
model_list:
  - {model_name: a, litellm_params: {model: gpt-4, input_cost_per_token: 0}}
  - {model_name: b, litellm_params: {model: my-llama, custom_llm_provider: hosted_vllm,
                                     input_cost_per_token: 0}}
  - {model_name: c, litellm_params: {model: openai/facebook/opt-125m, input_cost_per_token: 0}}
  - {model_name: d, litellm_params: {model: aws_region_name, region_name: "EU-West-1",
                                     aws_region_name: "os.environ/AWS_REGION", custom_llm_provider: x,
                                     input_cost_per_token: 0}}
"""
    got = routes(tmp_path, text)
    assert [(r.targets[0].provider, r.targets[0].model, r.targets[0].region) for r in got.values()] == [
        ("openai", "gpt-4", None), ("hosted_vllm", "my-llama", None), ("openai", "facebook/opt-125m", None),
        ("x", "aws_region_name", None)]
    assert warnings(tmp_path, text) == [
        "c.yaml:2:38: warning: model_list[0].litellm_params.model: provider 'openai' inferred from the"
        " model name; write openai/gpt-4 to say so",
        "c.yaml:6:62: warning: model_list[3].litellm_params.region_name: not carried: the target's region"
        " is taken from aws_region_name",
        "c.yaml:7:38: warning: model_list[3].litellm_params.aws_region_name: not carried: the region is"
        " an os.environ/ reference, which only the proxy resolves",
    ]
    unknown = imported(tmp_path, "litellm",
                       "model_list:\n  - {model_name: a, litellm_params: {model: mystery}}\n")
    assert [str(d) for d in unknown.errors] == [
        "c.yaml:2:38: error: model_list[0].litellm_params.model: cannot tell the provider of model"
        " 'mystery': write it as provider/model"]


def test_budgets_and_limits_become_agentpolicy_stubs(tmp_path: Path) -> None:
    text = """\
model_list:
  - {model_name: GPT-4o, litellm_params: {model: openai/gpt-4o, input_cost_per_token: 0}}
  - {model_name: mini, litellm_params: {model: openai/gpt-4o-mini, input_cost_per_token: 0}}
litellm_settings:
  max_budget: 50
  budget_duration: 24h
  default_team_settings:
    - {team_id: Data Science, max_budget: 200, budget_duration: 1mo, models: [GPT-4o, gone]}
    - {team_id: ops, max_budget: 9, budget_duration: 7d, tpm_limit: 1000}
    - {team_id: forever, max_budget: 9}
  default_key_generate_params: {rpm_limit: 10, models: [all-proxy-models], duration: 30d}
"""
    result = imported(tmp_path, "litellm", text)
    assert not result.errors, messages(result)
    assert {p.name: (p.team, p.models, p.daily_usd, p.monthly_usd, p.rate) for p in result.policies} == {
        "litellm-proxy": (None, ("gpt-4o", "mini"), Decimal(50), None, Rate()),
        "team-data-science": ("Data Science", ("gpt-4o",), None, Decimal(200), Rate()),
        "team-ops": ("ops", ("gpt-4o", "mini"), None, None, Rate(None, 1000)),
        "team-forever": ("forever", ("gpt-4o", "mini"), None, None, Rate()),
        "key-defaults": (None, ("gpt-4o", "mini"), None, None, Rate(10)),
    }
    got = [m for m in messages(result) if "becomes ModelRoute" not in m]
    assert got == [
        "c.yaml:5:3: warning: litellm_settings.max_budget: the proxy-wide budget (AAM budgets are per"
        " workload: it caps one workload, not the proxy) becomes AgentPolicy stub 'litellm-proxy' bound"
        " to placeholder workload spiffe://example.org/replace-me/litellm-proxy: set"
        " spec.identity.workload to the agent's SPIFFE ID",
        "c.yaml:8:7: warning: litellm_settings.default_team_settings[0]: team 'Data Science' becomes"
        " AgentPolicy stub 'team-data-science' bound to placeholder workload"
        " spiffe://example.org/replace-me/team-data-science: set spec.identity.workload to the agent's"
        " SPIFFE ID",
        "c.yaml:8:87: warning: litellm_settings.default_team_settings[0].models[1]: not carried: model"
        " group 'gone' is not in model_list",
        "c.yaml:9:7: warning: litellm_settings.default_team_settings[1]: team 'ops' becomes AgentPolicy"
        " stub 'team-ops' bound to placeholder workload spiffe://example.org/replace-me/team-ops: set"
        " spec.identity.workload to the agent's SPIFFE ID",
        "c.yaml:9:22: warning: litellm_settings.default_team_settings[1].max_budget: not carried: its"
        " budget_duration has no AAM window",
        "c.yaml:9:37: warning: litellm_settings.default_team_settings[1].budget_duration: not carried:"
        " AAM budgets reset per calendar day (daily_usd) or month (monthly_usd)",
        "c.yaml:10:7: warning: litellm_settings.default_team_settings[2]: team 'forever' becomes"
        " AgentPolicy stub 'team-forever' bound to placeholder workload"
        " spiffe://example.org/replace-me/team-forever: set spec.identity.workload to the agent's SPIFFE ID",
        "c.yaml:10:26: warning: litellm_settings.default_team_settings[2].max_budget: not carried: a"
        " budget that never resets has no AAM equivalent (daily_usd, monthly_usd)",
        "c.yaml:11:3: warning: litellm_settings.default_key_generate_params: the default limits of"
        " generated keys becomes AgentPolicy stub 'key-defaults' bound to placeholder workload"
        " spiffe://example.org/replace-me/key-defaults: set spec.identity.workload to the agent's SPIFFE ID",
        "c.yaml:11:76: warning: litellm_settings.default_key_generate_params.duration: not carried: no AAM"
        " equivalent for this LiteLLM setting",
    ]


def test_names_become_aam_names_and_collisions_are_errors(tmp_path: Path) -> None:
    text = """\
model_list:
  - {model_name: "Claude 3.5/Sonnet", litellm_params: {model: anthropic/c, input_cost_per_token: 0}}
  - {model_name: claude-3.5-sonnet, litellm_params: {model: anthropic/c, input_cost_per_token: 0}}
  - {model_name: "openai/*", litellm_params: {model: "openai/*"}}
"""
    assert messages(imported(tmp_path, "litellm", text)) == [
        "c.yaml:2:6: warning: model_list[0].model_name: model group 'Claude 3.5/Sonnet' becomes"
        " ModelRoute 'claude-3.5-sonnet' (AAM names are lower-case letters, digits, '.' and '-'):"
        " clients call it by that name",
        "c.yaml:3:6: error: model_list[1].model_name: model group 'claude-3.5-sonnet' and"
        " 'Claude 3.5/Sonnet' both become ModelRoute 'claude-3.5-sonnet'; rename one",
        "c.yaml:4:5: warning: model_list[2]: not carried: wildcard routing has no AAM equivalent: a"
        " ModelRoute names one alias and its targets",
    ]


def test_malformed_configs_get_located_errors_and_no_documents(tmp_path: Path) -> None:
    text = """\
model_list:
  - model_name: a
    litellm_params: {model: openai/a, rpm: -3, tpm: "lots", input_cost_per_token: "os.environ/COST"}
  - litellm_params: {model: openai/gpt-4o}
  - {model_name: b}
  - just-a-string
router_settings:
  fallbacks: {"a": ["b"]}
  routing_strategy: [x]
litellm_settings:
  max_budget: 5
  budget_duration: weekly
"""
    result = imported(tmp_path, "litellm", text)
    assert result.routes == () and result.policies == ()
    assert [str(d) for d in result.errors] == [
        "c.yaml:3:39: error: model_list[0].litellm_params.rpm: rpm must be a positive whole number, got -3",
        "c.yaml:3:48: error: model_list[0].litellm_params.tpm: tpm must be a positive whole number,"
        " got a string",
        "c.yaml:3:61: error: model_list[0].litellm_params.input_cost_per_token: input_cost_per_token must"
        " be a number of US dollars from 0 to 1000000000, got an os.environ/ reference",
        "c.yaml:4:5: error: model_list[1]: a deployment needs model_name, the model group it serves",
        "c.yaml:5:5: error: model_list[2]: a deployment needs litellm_params with model: provider/model",
        "c.yaml:6:5: error: model_list[3]: a model_list entry must be a mapping, got a string",
        "c.yaml:8:3: error: router_settings.fallbacks: must be a list of {model group: [fallback groups]}"
        " mappings",
        "c.yaml:9:3: error: router_settings.routing_strategy: routing_strategy must be a string, got a list",
        "c.yaml:12:3: error: litellm_settings.budget_duration: budget_duration must look like 30s, 30m,"
        " 30h, 30d or 1mo, got 'weekly'",
    ]


@pytest.mark.parametrize(("text", "error"), [
    ("model_list: [\n", "c.yaml:2:1: error: a value is missing here (is a '[' or '{' left unclosed,"
                        " or is there a stray ','?)"),
    ("- a\n- b\n", "c.yaml:1:1: error: document: a LiteLLM config must be a mapping, got a list"),
    ("a: 1\n---\nb: 2\n", "c.yaml:3:1: error: expected one YAML document, found 2"),
    ("general_settings: {master_key: sk-1}\n",
     "c.yaml:1:1: error: nothing to import: no model routes, budgets or rate limits in this LiteLLM file"),
])
def test_unreadable_configs_are_located_errors(tmp_path: Path, text: str, error: str) -> None:
    assert [str(d) for d in imported(tmp_path, "litellm", text).errors] == [error]


def test_cost_based_routing_with_copied_fallbacks_says_price_reorders_them(tmp_path: Path) -> None:
    text = """\
model_list:
  - {model_name: a, litellm_params: {model: openai/a, input_cost_per_token: 0.00001}}
  - {model_name: b, litellm_params: {model: openai/b, input_cost_per_token: 0.000001}}
router_settings: {routing_strategy: cost-based-routing, fallbacks: [{a: [b]}]}
"""
    assert routes(tmp_path, text)["a"].sort == "price"
    assert ("c.yaml:4:19: warning: router_settings.routing_strategy: sort: price orders every target of"
            " ModelRoute 'a' by price, including copied fallbacks and over litellm_params.order"
            ) in warnings(tmp_path, text)
