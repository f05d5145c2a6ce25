"""``aam import litellm``: a LiteLLM proxy ``config.yaml`` -> ModelRoutes and AgentPolicy stubs.

A model group (deployments sharing a ``model_name``) becomes one ModelRoute;
each deployment's ``litellm_params`` becomes a target. Router fallbacks are
carried by copying the fallback group's targets after the group's own (AAM
routes do not refer to each other), per-deployment rpm/tpm are summed into the
route's rate, and budgets and rate limits become AgentPolicy stubs bound to a
placeholder workload. Everything else is reported by :class:`Coverage`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from compiler.importers import values
from compiler.importers.coverage import Coverage, dotted, mapping
from compiler.importers.litellm_hints import HINTS, drop_known
from compiler.importers.litellm_stubs import stubs
from compiler.importers.types import PolicyStub, Rate, Route, Target
from compiler.source import Path_

# Bare model names LiteLLM maps to one provider without doubt; anything else must say provider/model.
_INFER = (("gpt-", "openai"), ("chatgpt-", "openai"), ("o1", "openai"), ("o3", "openai"),
          ("o4-", "openai"), ("claude-", "anthropic"))
_REGION_KEYS = ("aws_region_name", "vertex_location", "region_name")


@dataclass(frozen=True)
class _Deployment:
    path: Path_  # ("model_list", i)
    group: str  # the model_name as written
    route: str  # the AAM name it becomes
    target: Target
    order: int | None
    rpm: tuple[int, Path_] | None
    tpm: tuple[int, Path_] | None
    price_paths: tuple[Path_, ...]


@dataclass(frozen=True)
class _Fallback:
    path: Path_  # the key of {group: [fallbacks]}
    group: str
    fallbacks: tuple[tuple[Path_, str], ...]


@dataclass
class _Settings:
    routing_strategy: tuple[str, Path_] | None = None
    fallbacks: tuple[_Fallback, ...] = ()
    window_fallbacks: tuple[_Fallback, ...] = ()


def convert(cov: Coverage, name: str | None) -> tuple[tuple[Route, ...], tuple[PolicyStub, ...]]:
    del name  # routes are named after model groups
    root = mapping(cov, cov.doc.value, (), "a LiteLLM config")
    if root is None:
        return (), ()
    settings = _Settings()
    for section in ("router_settings", "litellm_settings"):
        if section in root:
            body = mapping(cov, root[section], (section,), section)
            if body is not None:
                cov.mapped((section,))
                _read_settings(cov, body, (section,), settings)
    for key in ("general_settings", "environment_variables", "include"):
        if key in root:
            if key == "general_settings" and isinstance(root[key], dict):
                cov.mapped((key,))
                drop_known(cov, root[key], (key,), "a LiteLLM proxy server setting")
            else:
                cov.drop((key,), HINTS.get(key, "a LiteLLM proxy server setting"))
    deployments = _deployments(cov, root)
    routes = _routes(cov, deployments, settings)
    names = {d.group: d.route for d in deployments}
    policies = stubs(cov, root, names, tuple(sorted(r.name for r in routes)))
    return routes, policies


# --- settings ------------------------------------------------------------------

def _read_settings(cov: Coverage, body: dict[str, Any], path: Path_, settings: _Settings) -> None:
    for key, value in body.items():
        kpath = (*path, key)
        if key == "routing_strategy":
            if isinstance(value, str):
                cov.mapped(kpath)
                settings.routing_strategy = (value.strip(), kpath)
            else:
                cov.error(kpath, f"routing_strategy must be a string, got {values.shown(value)}")
        elif key in ("fallbacks", "context_window_fallbacks"):
            found = _fallback_list(cov, value, kpath)
            if key == "fallbacks":
                settings.fallbacks += found
            else:
                settings.window_fallbacks += found
    skip = {"routing_strategy", "fallbacks", "context_window_fallbacks", "max_budget", "budget_duration",
            "default_team_settings", "default_key_generate_params"}
    drop_known(cov, {k: v for k, v in body.items() if k not in skip}, path)


def _fallback_list(cov: Coverage, value: Any, path: Path_) -> tuple[_Fallback, ...]:
    """``[{group: [fallback, ...]}, ...]``, LiteLLM's shape for both kinds of fallbacks."""
    if not isinstance(value, list):
        cov.error(path, "must be a list of {model group: [fallback groups]} mappings")
        return ()
    cov.mapped(path)
    out: list[_Fallback] = []
    for j, item in enumerate(value):
        entry = mapping(cov, item, (*path, j), "a fallbacks entry")
        for group, fallbacks in (entry or {}).items():
            gpath = (*path, j, group)
            listed = values.strings(cov, fallbacks, gpath, "the fallback groups")
            if listed is not None:
                out.append(_Fallback(gpath, group, tuple(((*gpath, k), f) for k, f in enumerate(listed))))
    return tuple(out)


# --- deployments -----------------------------------------------------------------

def _deployments(cov: Coverage, root: dict[str, Any]) -> list[_Deployment]:
    if "model_list" not in root:
        return []
    entries = root["model_list"]
    if not isinstance(entries, list):
        cov.error(("model_list",), "model_list must be a list of deployments")
        return []
    cov.mapped(("model_list",))
    out: list[_Deployment] = []
    taken: dict[str, str] = {}  # AAM name -> model_name it came from
    for i, entry in enumerate(entries):
        path: Path_ = ("model_list", i)
        dep = _deployment(cov, entry, path, taken)
        if dep is not None:
            out.append(dep)
    return out


def _deployment(cov: Coverage, entry: Any, path: Path_, taken: dict[str, str]) -> _Deployment | None:
    body = mapping(cov, entry, path, "a model_list entry")
    if body is None:
        return None
    group = body.get("model_name")
    params = body.get("litellm_params")
    if not isinstance(group, str) or not group.strip():
        cov.error((*path, "model_name") if "model_name" in body else path,
                  "a deployment needs model_name, the model group it serves")
        return None
    if not isinstance(params, dict) or "model" not in params:
        cov.error((*path, "litellm_params") if "litellm_params" in body else path,
                  "a deployment needs litellm_params with model: provider/model")
        return None
    model = params["model"]
    if "*" in group or (isinstance(model, str) and "*" in model):
        cov.drop(path, "wildcard routing has no AAM equivalent: a ModelRoute names one alias and"
                       " its targets")
        return None
    route = _route_name(cov, group, (*path, "model_name"), taken)
    ppath: Path_ = (*path, "litellm_params")
    split = _provider_model(cov, params, ppath)
    cov.mapped((*path, "model_name"), ppath)  # read; an error above fails the whole import
    info = body.get("model_info")
    if info is not None and mapping(cov, info, (*path, "model_info"), "model_info") is None:
        info = None
    if info is not None:
        cov.mapped((*path, "model_info"))
    prices = {k: _price(cov, params, info or {}, path, k) for k in ("input", "output")}
    costs = ("input_cost_per_token", "output_cost_per_token")
    if not any(k in src for k in costs for src in (params, info or {})):
        cov.warn((*ppath, "model"), "no input_cost_per_token or output_cost_per_token: the target's"
                                    " price is 0, so budgets reserve nothing for it until"
                                    " input_price_per_mtok / output_price_per_mtok are set")
    window = None
    if info is not None and "max_input_tokens" in info:
        window = values.positive_int(cov, info["max_input_tokens"], (*path, "model_info", "max_input_tokens"),
                                     "max_input_tokens")
        cov.mapped((*path, "model_info", "max_input_tokens"))
    region = _region(cov, params, ppath)
    order = None
    if "order" in params:
        order = values.positive_int(cov, params["order"], (*ppath, "order"), "order")
        cov.mapped((*ppath, "order"))
    for key in ("max_budget", "budget_duration"):
        if key in params:
            cov.drop((*ppath, key), "a deployment budget: AAM budgets are per workload (AgentPolicy),"
                                    " not per deployment")
    rpm, tpm = _limit(cov, body, path, "rpm"), _limit(cov, body, path, "tpm")
    drop_known(cov, params, ppath)
    if info is not None:
        drop_known(cov, info, (*path, "model_info"))
    if route is None or split is None:
        return None
    target = Target(split[0], split[1], region, prices["input"][0] if prices["input"] else None,
                    prices["output"][0] if prices["output"] else None, window)
    return _Deployment(path, group, route, target, order, rpm, tpm,
                       tuple(p for v in prices.values() if v for p in v[1]))


def _route_name(cov: Coverage, group: str, path: Path_, taken: dict[str, str]) -> str | None:
    route = values.name(cov, group, path, "model_name")
    if route is None:
        return None
    if route not in taken and route != group:
        cov.warn(path, f"model group {values.shown(group)} becomes ModelRoute {route!r} (AAM names are"
                       " lower-case letters, digits, '.' and '-'): clients call it by that name")
    first = taken.setdefault(route, group)
    if first != group:
        cov.error(path, f"model group {values.shown(group)} and {values.shown(first)} both become"
                        f" ModelRoute {route!r}; rename one")
        return None
    return route


def _provider_model(cov: Coverage, params: dict[str, Any], ppath: Path_) -> tuple[str, str] | None:
    raw = params["model"]
    mpath = (*ppath, "model")
    if not isinstance(raw, str) or not raw.strip() or values.is_env_ref(raw):
        cov.error(mpath, f"litellm_params.model must be 'provider/model', got {values.shown(raw)}")
        return None
    raw = raw.strip()
    if "custom_llm_provider" in params:
        cpath = (*ppath, "custom_llm_provider")
        provider = values.provider(cov, params["custom_llm_provider"], cpath)
        cov.mapped(cpath)
        model = raw[len(provider) + 1:] if provider and raw.startswith(f"{provider}/") else raw
    elif "/" in raw:
        head, _, model = raw.partition("/")
        provider = values.provider(cov, head, mpath)
    else:
        provider, model = next((p for prefix, p in _INFER if raw.startswith(prefix)), None), raw
        if provider is None:
            cov.error(mpath, f"cannot tell the provider of model {values.shown(raw)}:"
                             " write it as provider/model")
            return None
        cov.warn(mpath, f"provider {provider!r} inferred from the model name; write"
                        f" {provider}/{raw} to say so")
    cov.mapped(mpath)
    if provider is None:
        return None
    if not model:
        cov.error(mpath, "litellm_params.model names no model after the provider")
        return None
    return provider, model


def _region(cov: Coverage, params: dict[str, Any], ppath: Path_) -> str | None:
    present = [k for k in _REGION_KEYS if k in params]
    if not present:
        return None
    cov.mapped((*ppath, present[0]))
    for other in present[1:]:
        cov.drop((*ppath, other), f"the target's region is taken from {present[0]}")
    return values.region(cov, params[present[0]], (*ppath, present[0]))


def _price(cov: Coverage, params: dict[str, Any], info: dict[str, Any], path: Path_,
           side: str) -> tuple[Decimal, tuple[Path_, ...]] | None:
    """Per-token cost -> per-Mtok price; litellm_params wins over model_info, as in LiteLLM."""
    key = f"{side}_cost_per_token"
    found = [(p, src[key]) for p, src in (((*path, "litellm_params", key), params),
                                          ((*path, "model_info", key), info)) if key in src]
    if not found:
        return None
    (first_path, first), rest = found[0], found[1:]
    amount = values.usd(cov, first, first_path, key)
    cov.mapped(first_path)
    for other_path, other in rest:
        if other == first:
            cov.mapped(other_path)
        else:
            cov.drop(other_path, f"litellm_params.{key} takes precedence")
    if amount is None:
        return None
    return values.per_mtok(amount), tuple(p for p, _ in found)


def _limit(cov: Coverage, body: dict[str, Any], path: Path_, key: str) -> tuple[int, Path_] | None:
    """rpm/tpm of a deployment: in litellm_params (proxy) or beside it (Router)."""
    spots = [(p, src[key]) for p, src in (((*path, "litellm_params", key), body["litellm_params"]),
                                          ((*path, key), body)) if key in src]
    if not spots:
        return None
    for other, _ in spots[1:]:
        cov.drop(other, f"litellm_params.{key} takes precedence")
    where, raw = spots[0]
    cov.mapped(where)
    amount = values.positive_int(cov, raw, where, key)
    return (amount, where) if amount is not None else None


# --- routes ------------------------------------------------------------------------

def _routes(cov: Coverage, deployments: list[_Deployment], settings: _Settings) -> tuple[Route, ...]:
    groups: dict[str, list[_Deployment]] = {}
    for d in deployments:
        groups.setdefault(d.route, []).append(d)
    strategy = _strategy(cov, settings)
    own: dict[str, tuple[Target, ...]] = {}
    routes: dict[str, Route] = {}
    for name, deps in groups.items():
        deps.sort(key=lambda d: (d.order is None, d.order or 0, d.path))
        if strategy == "shuffle" and len(deps) > 1 and len({d.order for d in deps}) < len(deps):
            cov.warn((*deps[0].path, "model_name"),
                     f"LiteLLM load-balances the {len(deps)} deployments of {deps[0].group!r};"
                     f" AAM tries them in order (litellm_params.order, then as written)")
        own[name] = _unique(cov, deps)
        routes[name] = Route(name, own[name], cov.where((*deps[0].path, "model_name")),
                             sort="price" if strategy == "price" else None,
                             rate=Rate(_total(cov, deps, "rpm"), _total(cov, deps, "tpm")))
    by_group = {d.group: d.route for d in deployments}
    for fallbacks, window in ((settings.fallbacks, False), (settings.window_fallbacks, True)):
        for fb in fallbacks:
            _inline(cov, fb, window, by_group, own, routes)
    if strategy == "price":
        for name, route in routes.items():
            if len(route.targets) > len(own[name]) or any(d.order for d in groups[name]):
                cov.warn(settings.routing_strategy[1] if settings.routing_strategy else (),
                         f"sort: price orders every target of ModelRoute {name!r} by price, including"
                         " copied fallbacks and over litellm_params.order")
    return tuple(routes[n] for n in sorted(routes))


def _strategy(cov: Coverage, settings: _Settings) -> str:
    """"price" (cost-based-routing), "shuffle" (LiteLLM's default), or "other" (reported once)."""
    if settings.routing_strategy is None:
        return "shuffle"
    value, path = settings.routing_strategy
    if value in ("cost-based-routing", "simple-shuffle"):
        return "price" if value == "cost-based-routing" else "shuffle"
    cov.drop(path, f"routing strategy {values.shown(value)} needs live load or latency, which AAM"
                   " does not have; targets are tried in the order written")
    return "other"


def _unique(cov: Coverage, deps: list[_Deployment]) -> tuple[Target, ...]:
    """One target per (provider, model, region): two Azure endpoints serving one
    deployment name are one target to AAM (the compiler rejects repeats)."""
    first: dict[tuple[str, str, str], _Deployment] = {}
    for d in deps:
        seen = first.setdefault(d.target.key, d)
        if seen is d:
            continue
        cov.warn((*d.path, "model_name"),
                 f"same target as {dotted(seen.path)} ({d.target.label()}): AAM lists it once")
        a, b = d.target, seen.target
        if (a.input_price_per_mtok, a.output_price_per_mtok) != (b.input_price_per_mtok,
                                                                 b.output_price_per_mtok):
            for path in d.price_paths:
                cov.drop(path, f"the target is listed once, with the prices of {dotted(seen.path)}")
        if a.context_window is not None and a.context_window != b.context_window:
            cov.drop((*d.path, "model_info", "max_input_tokens"),
                     f"the target is listed once, with the context window of {dotted(seen.path)}")
    return tuple(d.target for d in first.values())


def _total(cov: Coverage, deps: list[_Deployment], key: str) -> int | None:
    """The group's limit is the sum of its deployments', and exists only if each has one."""
    field = "requests_per_minute" if key == "rpm" else "tokens_per_minute"
    limits = [getattr(d, key) for d in deps]
    given = [lim for lim in limits if lim is not None]
    if not given:
        return None
    if len(given) < len(limits):
        for _, path in given:
            cov.drop(path, f"not every deployment of {deps[0].group!r} has {key}, so the group has no"
                           f" total for spec.rate.{field} (AAM limits a route, not each target)")
        return None
    total = sum(n for n, _ in given)
    if len(given) > 1:
        cov.warn(given[0][1], f"the {len(given)} deployments' {key} are summed into"
                              f" spec.rate.{field}: {total} (AAM limits the route, not each target)")
    return total


def _inline(cov: Coverage, fb: _Fallback, window: bool, by_group: dict[str, str],
            own: dict[str, tuple[Target, ...]], routes: dict[str, Route]) -> None:
    name = by_group.get(fb.group)
    if name is None:
        cov.drop(fb.path, f"model group {values.shown(fb.group)} is not in model_list")
        return
    cov.mapped(fb.path)
    route = routes[name]
    copied: list[str] = []
    for path, group in fb.fallbacks:
        other = by_group.get(group)
        if other is None or other == name:
            cov.drop(path, f"fallback group {values.shown(group)} is "
                           + ("the group itself" if other == name else "not in model_list"))
            continue
        cov.mapped(path)
        seen = {t.key for t in route.targets}
        route = replace(route, targets=route.targets + tuple(t for t in own[other] if t.key not in seen))
        copied.append(other)
    routes[name] = route
    if copied:
        what = "context-window fallbacks" if window else "fallbacks"
        extra = (" They are tried on any failure, not only a too-long prompt; AAM skips a target whose"
                 " context_window the estimate exceeds.") if window else ""
        cov.warn(fb.path, f"{what} carried as copies: ModelRoute {name!r} lists the targets of"
                          f" {_quoted(copied)} after its own (AAM routes do not refer to each other;"
                          f" their rate is not shared and later edits to them are not followed).{extra}")


def _quoted(names: Iterable[str]) -> str:
    return ", ".join(repr(n) for n in names)
