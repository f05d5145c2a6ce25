"""``aam import openrouter``: OpenRouter provider routing preferences -> one ModelRoute.

The input is the routing part of an OpenRouter request body (or a preset):
``model`` and ``models`` (model fallbacks, in order) and the ``provider``
object. OpenRouter picks upstream providers itself; AAM needs them named, so
the targets pair each model with each provider in ``provider.order`` (then
``provider.only``), and with neither, name provider ``openrouter`` so that
OpenRouter keeps choosing. Prices are not in the preferences, so targets have
none: the warnings say what that leaves ineffective.
"""

from __future__ import annotations

from typing import Any

from compiler.importers import values
from compiler.importers.coverage import Coverage, mapping
from compiler.importers.types import PolicyStub, Route, Target
from compiler.source import Path_

OPENROUTER = "openrouter"  # the provider of a target when OpenRouter picks the upstream
_REQUEST = {"messages", "prompt", "input", "temperature", "top_p", "top_k", "max_tokens", "stream",
            "tools", "tool_choice", "response_format", "seed", "stop", "user", "frequency_penalty",
            "presence_penalty", "repetition_penalty", "logit_bias", "min_p", "top_a", "reasoning",
            "plugins", "transforms", "usage", "prediction", "parallel_tool_calls", "verbosity"}
_PROVIDER_HINTS = {
    "require_parameters": "AAM does not know which parameters each provider supports",
    "quantizations": "AAM targets carry no quantization",
    "zdr": "zero data retention is stricter than data_collection: deny; set data_retention on the targets",
    "enforce_distillable_text": "AAM targets carry no distillation terms",
    "preferred_min_throughput": "AAM has no live throughput or latency metrics",
    "preferred_max_latency": "AAM has no live throughput or latency metrics",
}


def convert(cov: Coverage, name: str | None) -> tuple[tuple[Route, ...], tuple[PolicyStub, ...]]:
    root = mapping(cov, cov.doc.value, (), "OpenRouter preferences")
    if root is None:
        return (), ()
    for key in root:
        if key in _REQUEST:
            cov.drop((key,), "a request parameter, not a routing preference")
    if "route" in root:
        if root["route"] == "fallback":
            cov.mapped(("route",))  # the legacy spelling of what models already says
        else:
            cov.drop(("route",), "only route: fallback (what models says) has an AAM meaning")
    models = _models(cov, root)
    prefs: dict[str, Any] = {}
    if "provider" in root:
        prefs = mapping(cov, root["provider"], ("provider",), "provider") or {}
        cov.mapped(("provider",))
    if not models:
        return (), ()
    route_name = name or _default_name(cov, *models[0])
    route = _route(cov, prefs, models, route_name) if route_name else None
    return ((route,) if route and not cov.failed else ()), ()


def _default_name(cov: Coverage, model: str, path: Path_) -> str | None:
    """The route is named after its first model: anthropic/claude-sonnet-4.5:nitro -> claude-sonnet-4.5."""
    out = values.to_name(model.split("/")[-1].split(":")[0])
    if not values.NAME.match(out):
        cov.error(path, f"cannot name the route after model {values.shown(model)}: pass --name")
        return None
    return out


def _models(cov: Coverage, root: dict[str, Any]) -> list[tuple[str, Path_]]:
    """``model`` then ``models``, each model once, in the order OpenRouter tries them."""
    found: list[tuple[Any, Path_]] = []
    if "model" in root:
        found.append((root["model"], ("model",)))
        cov.mapped(("model",))
    if "models" in root:
        if isinstance(root["models"], list):
            found += [(m, ("models", i)) for i, m in enumerate(root["models"])]
            cov.mapped(("models",))
        else:
            cov.error(("models",), "models must be a list of model ids")
    out: list[tuple[str, Path_]] = []
    for model, path in found:
        if not isinstance(model, str) or not model.strip() or values.is_env_ref(model) or len(model) > 200:
            cov.error(path, f"a model must be an OpenRouter model id (at most 200 characters),"
                            f" got {values.shown(model)}")
        elif model.strip() in (m for m, _ in out):
            cov.warn(path, f"model {model.strip()!r} is already listed; it is tried once")
        else:
            out.append((model.strip(), path))
    if not found and not cov.failed:
        cov.error((), "no model: give model or models (OpenRouter model ids)")
    return out


def _slugs(cov: Coverage, prefs: dict[str, Any], key: str) -> list[tuple[str, Path_]]:
    """Provider slugs of order/only/ignore as AAM provider names, each once."""
    if key not in prefs:
        return []
    path: Path_ = ("provider", key)
    listed = values.strings(cov, prefs[key], path, f"provider.{key}")
    cov.mapped(path)
    out: list[tuple[str, Path_]] = []
    for i, raw in enumerate(listed or ()):
        slug, _, variant = raw.strip().partition("/")
        provider = values.provider(cov, slug, (*path, i))
        if provider is None:
            continue
        if variant:
            cov.warn((*path, i), f"endpoint variant {variant!r} is not carried: the target names"
                                 f" provider {provider!r}")
        if provider in (p for p, _ in out):
            cov.warn((*path, i), f"provider {provider!r} is already listed in provider.{key}")
        else:
            out.append((provider, (*path, i)))
    return out


def _route(cov: Coverage, prefs: dict[str, Any], models: list[tuple[str, Path_]], name: str) -> Route | None:
    order, only, ignore = (_slugs(cov, prefs, k) for k in ("order", "only", "ignore"))
    allow = prefs.get("allow_fallbacks", True)
    if not isinstance(allow, bool):
        cov.error(("provider", "allow_fallbacks"), f"allow_fallbacks must be true or false, got"
                                                   f" {values.shown(allow, text=False)}")
        allow = True
    only_names, ignore_names = [p for p, _ in only], [p for p, _ in ignore]
    providers = _providers(cov, order, only, allow)
    carried_only = _carried_only(cov, only, providers, ignore_names)
    carried_ignore = _carried_ignore(cov, ignore, providers)
    survivors = [p for p in providers if (not carried_only or p in carried_only) and p not in carried_ignore]
    if not survivors or (only_names and not carried_only):
        cov.error(("provider",), "these preferences leave no provider to route to")
        return None
    targets = tuple(Target(p, m) for m, _ in models for p in providers)
    first = models[0][1]
    cov.warn(first, "OpenRouter preferences carry no prices, so the targets cost 0: budgets reserve"
                    " nothing for these calls, and max_price and sort: price change nothing, until"
                    " input_price_per_mtok / output_price_per_mtok are set on the targets")
    if len(models) > 1 and len(providers) > 1:
        cov.warn(("models",), f"the {len(targets)} targets pair every model with every provider;"
                              " remove the pairs OpenRouter does not serve")
    for key in prefs:
        if key in _PROVIDER_HINTS:
            cov.drop(("provider", key), _PROVIDER_HINTS[key])
    if "allow_fallbacks" in prefs:
        cov.mapped(("provider", "allow_fallbacks"))
        if allow is False and len(targets) > 1:
            cov.warn(("provider", "allow_fallbacks"),
                     f"AAM returns only the first eligible of the {len(targets)} targets; OpenRouter"
                     " would still try the rest of order and models")
    return Route(name, targets, cov.where(first),
                 allow_fallbacks=allow if "allow_fallbacks" in prefs else None,
                 sort=_sort(cov, prefs), only=tuple(carried_only), ignore=tuple(carried_ignore),
                 data_collection=_data_collection(cov, prefs),
                 **_max_price(cov, prefs))


def _providers(cov: Coverage, order: list[tuple[str, Path_]], only: list[tuple[str, Path_]],
               allow: bool) -> list[str]:
    """The providers targets name: order first, then the rest of only (reachable as fallbacks)."""
    if order:
        names = [p for p, _ in order]
        if allow:
            names += [p for p, _ in only if p not in names]
            if not only:
                cov.warn(("provider", "order"), "OpenRouter falls back to providers outside order"
                                                " (allow_fallbacks is true); AAM routes only to the"
                                                " targets listed")
        else:
            for p, path in only:
                if p not in names:
                    cov.drop(path, f"provider {p!r} is not in order and allow_fallbacks is false,"
                                   " so OpenRouter never uses it")
        return names
    if only:
        if len(only) > 1:
            cov.warn(("provider", "only"), "without order OpenRouter balances load across these;"
                                           " AAM tries them in the order written")
        return [p for p, _ in only]
    cov.warn(("provider",), f"no provider order or only: the targets name provider {OPENROUTER!r},"
                            " which picks the upstream provider itself")
    return [OPENROUTER]


def _carried_only(cov: Coverage, only: list[tuple[str, Path_]], providers: list[str],
                  ignore: list[str]) -> list[str]:
    out = []
    for p, path in only:
        if p in ignore:
            cov.drop(path, f"provider {p!r} is also in ignore, which wins")
        elif p in providers:
            out.append(p)
    return out


def _carried_ignore(cov: Coverage, ignore: list[tuple[str, Path_]], providers: list[str]) -> list[str]:
    out = []
    for p, path in ignore:
        if p in providers:
            out.append(p)
        elif providers == [OPENROUTER]:
            cov.drop(path, f"the targets name provider {OPENROUTER!r}, which picks the upstream itself:"
                           " list providers in order or only to carry ignore")
        else:
            cov.drop(path, f"provider {p!r} is not a target, so there is nothing to exclude (AAM routes"
                           " only to the providers in order and only)")
    return out


def _sort(cov: Coverage, prefs: dict[str, Any]) -> str | None:
    if "sort" not in prefs:
        return None
    path: Path_ = ("provider", "sort")
    value = prefs["sort"]
    if isinstance(value, dict) and "by" in value:  # the object form: {"by": ..., "partition": ...}
        cov.mapped(path)
        path, value = (*path, "by"), value["by"]
    if value not in ("price", "throughput", "latency"):
        cov.error(path, f"sort must be price, throughput or latency, got {values.shown(value)}")
        return None
    if value != "price":
        cov.drop(path, f"sort by {value} needs live metrics, which AAM does not have; targets are"
                       " tried in the order written")
        return None
    cov.mapped(path)
    return "price"


def _data_collection(cov: Coverage, prefs: dict[str, Any]) -> str | None:
    if "data_collection" not in prefs:
        return None
    path: Path_ = ("provider", "data_collection")
    value = prefs["data_collection"]
    if value not in ("allow", "deny"):
        cov.error(path, f"data_collection must be allow or deny, got {values.shown(value)}")
        return None
    cov.mapped(path)
    if value == "deny":
        cov.warn(path, "the preferences do not say which providers retain prompts: set"
                       " data_retention: true on those targets, or deny excludes none")
    return value


def _max_price(cov: Coverage, prefs: dict[str, Any]) -> dict[str, Any]:
    """OpenRouter's max_price is USD per million tokens, as AAM's: no unit conversion."""
    if "max_price" not in prefs:
        return {}
    path: Path_ = ("provider", "max_price")
    body = mapping(cov, prefs["max_price"], path, "max_price")
    if body is None:
        return {}
    cov.mapped(path)
    out: dict[str, Any] = {}
    for key, value in body.items():
        field = {"prompt": "max_input_per_mtok", "completion": "max_output_per_mtok"}.get(key)
        if field is None:
            cov.drop((*path, key), "AAM caps only the prompt and completion price per million tokens")
            continue
        amount = values.usd(cov, value, (*path, key), f"max_price.{key}")
        cov.mapped((*path, key))
        if amount is not None:
            out[field] = amount
    return out
