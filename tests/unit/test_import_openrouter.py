"""`aam import openrouter`: provider routing preferences -> one ModelRoute, and what is lost."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from compiler.importers import run
from compiler.importers.types import Route, Target
from tests.unit.importing import OPENROUTER, OPENROUTER_MODELS, imported, messages, unaccounted

PRICELESS = ("OpenRouter preferences carry no prices, so the targets cost 0: budgets reserve nothing for"
             " these calls, and max_price and sort: price change nothing, until input_price_per_mtok /"
             " output_price_per_mtok are set on the targets")


@pytest.fixture(autouse=True)
def _cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def route(tmp_path: Path, prefs: dict, name: str | None = None) -> tuple[Route, list[str]]:
    result = imported(tmp_path, "openrouter", json.dumps(prefs), name)
    assert not result.errors, messages(result)
    (only,) = result.routes
    return only, [m for m in messages(result) if PRICELESS not in m]


def test_fixture_becomes_one_route() -> None:
    result = run("openrouter", OPENROUTER)
    assert result.errors == () and result.policies == ()
    (r,) = result.routes
    llama, mixtral = "meta-llama/llama-3.1-70b-instruct", "mistralai/mixtral-8x7b-instruct"
    assert r.name == "llama-3.1-70b-instruct"
    assert r.targets == (Target("together", llama), Target("deepinfra", llama),
                         Target("together", mixtral), Target("deepinfra", mixtral))
    assert (r.allow_fallbacks, r.sort, r.data_collection) == (False, "price", "deny")
    # OpenRouter's max_price is USD per million tokens already, numbers or strings.
    assert (r.max_input_per_mtok, r.max_output_per_mtok) == (Decimal(1), Decimal(2))
    assert (r.only, r.ignore) == ((), ())  # "azure" is not a target: nothing to exclude


@pytest.mark.parametrize("fixture", [OPENROUTER, OPENROUTER_MODELS])
def test_every_fixture_key_is_mapped_or_named_in_a_warning(fixture: Path) -> None:
    assert unaccounted("openrouter", fixture, run("openrouter", fixture)) == []


def test_fixture_warnings_say_what_each_lost_setting_was() -> None:
    got = [str(d).split(": warning: ", 1)[1] for d in run("openrouter", OPENROUTER).diagnostics]
    assert got == [
        f"model: {PRICELESS}",
        "models: the 4 targets pair every model with every provider; remove the pairs OpenRouter does"
        " not serve",
        "provider.order[1]: endpoint variant 'turbo' is not carried: the target names provider 'deepinfra'",
        "provider.allow_fallbacks: AAM returns only the first eligible of the 4 targets; OpenRouter would"
        " still try the rest of order and models",
        "provider.ignore[0]: not carried: provider 'azure' is not a target, so there is nothing to exclude"
        " (AAM routes only to the providers in order and only)",
        "provider.data_collection: the preferences do not say which providers retain prompts: set"
        " data_retention: true on those targets, or deny excludes none",
        "provider.require_parameters: not carried: AAM does not know which parameters each provider"
        " supports",
        "provider.quantizations: not carried: AAM targets carry no quantization",
        "provider.max_price.request: not carried: AAM caps only the prompt and completion price per"
        " million tokens",
        "temperature: not carried: a request parameter, not a routing preference",
    ]


def test_without_order_or_only_openrouter_is_the_provider(tmp_path: Path) -> None:
    r, got = route(tmp_path, {"models": ["openai/gpt-5", "anthropic/claude-sonnet-4.5"],
                              "provider": {"ignore": ["azure"], "sort": {"by": "latency"}}}, "frontier")
    assert r.name == "frontier"
    assert r.targets == (Target("openrouter", "openai/gpt-5"),
                         Target("openrouter", "anthropic/claude-sonnet-4.5"))
    assert (r.sort, r.ignore) == (None, ())
    assert got == [
        "p.json:1:61: warning: provider: no provider order or only: the targets name provider"
        " 'openrouter', which picks the upstream provider itself",
        "p.json:1:85: warning: provider.ignore[0]: not carried: the targets name provider 'openrouter',"
        " which picks the upstream itself: list providers in order or only to carry ignore",
        "p.json:1:104: warning: provider.sort.by: not carried: sort by latency needs live metrics, which"
        " AAM does not have; targets are tried in the order written",
    ]


def test_order_then_only_and_ignore_wins_over_only(tmp_path: Path) -> None:
    r, got = route(tmp_path, {"model": "openai/gpt-5",
                              "provider": {"order": ["OpenAI", "azure"],
                                           "only": ["openai", "azure", "Bedrock"], "ignore": ["azure"]}})
    assert [t.provider for t in r.targets] == ["openai", "azure", "bedrock"]
    assert (r.only, r.ignore, r.allow_fallbacks) == (("openai", "bedrock"), ("azure",), None)
    assert got == ["p.json:1:89: warning: provider.only[1]: not carried: provider 'azure' is also in"
                   " ignore, which wins"]


def test_only_outside_order_is_unreachable_without_fallbacks(tmp_path: Path) -> None:
    r, got = route(tmp_path, {"model": "a/b", "provider": {"order": ["x"], "only": ["x", "y"],
                                                           "allow_fallbacks": False}})
    assert (r.targets, r.only, r.allow_fallbacks) == ((Target("x", "a/b"),), ("x",), False)
    assert got == ["p.json:1:61: warning: provider.only[1]: not carried: provider 'y' is not in order and"
                   " allow_fallbacks is false, so OpenRouter never uses it"]


def test_order_with_fallbacks_allowed_is_reported(tmp_path: Path) -> None:
    _, got = route(tmp_path, {"model": "a/b", "provider": {"order": ["x", "y"]}})
    assert got == ["p.json:1:31: warning: provider.order: OpenRouter falls back to providers outside order"
                   " (allow_fallbacks is true); AAM routes only to the targets listed"]


@pytest.mark.parametrize(("text", "errors"), [
    ('{"provider": {"order": ["x"]}}', ["p.json:1:1: error: document: no model: give model or models"
                                        " (OpenRouter model ids)"]),
    ('{"model": "a/b", "provider": {"order": "x", "allow_fallbacks": "no", "data_collection": "never",'
     ' "sort": "fastest", "max_price": {"prompt": "cheap", "completion": -1}}}',
     ["p.json:1:31: error: provider.order: provider.order must be a list of strings",
      "p.json:1:45: error: provider.allow_fallbacks: allow_fallbacks must be true or false, got a string",
      "p.json:1:70: error: provider.data_collection: data_collection must be allow or deny, got 'never'",
      "p.json:1:98: error: provider.sort: sort must be price, throughput or latency, got 'fastest'",
      "p.json:1:131: error: provider.max_price.prompt: max_price.prompt must be a number of US dollars"
      " from 0 to 1000000000, got a string",
      "p.json:1:150: error: provider.max_price.completion: max_price.completion must be a number of US"
      " dollars from 0 to 1000000000, got -1"]),
    ('{"model": "a/b", "provider": {"only": ["x"], "ignore": ["x"]}}',
     ["p.json:1:18: error: provider: these preferences leave no provider to route to"]),
    ('{"models": ["a/b", 7, "os.environ/SECRET"]}',
     ["p.json:1:20: error: models[1]: a model must be an OpenRouter model id (at most 200 characters),"
      " got 7",
      "p.json:1:23: error: models[2]: a model must be an OpenRouter model id (at most 200 characters),"
      " got an os.environ/ reference"]),
    ('{"model": "a/b",\n "provider": {"Order": ["x"] ', ["p.json:2:30: error: invalid JSON: Expecting"
                                                         " ',' delimiter"]),
    ('[1, 2]', ["p.json:1:1: error: document: OpenRouter preferences must be a mapping, got a list"]),
])
def test_malformed_preferences_are_located_errors(tmp_path: Path, text: str, errors: list[str]) -> None:
    result = imported(tmp_path, "openrouter", text)
    assert result.routes == ()
    assert [str(d) for d in result.errors] == errors


def test_a_model_id_with_no_name_needs_name(tmp_path: Path) -> None:
    result = imported(tmp_path, "openrouter", '{"model": "vendor/:free"}')
    assert [str(d) for d in result.errors] == [
        "p.json:1:2: error: model: cannot name the route after model 'vendor/:free': pass --name"]
    assert imported(tmp_path, "openrouter", '{"model": "vendor/:free"}', "free").routes[0].name == "free"
