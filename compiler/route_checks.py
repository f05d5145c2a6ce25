"""ModelRoute checks the schema cannot express: restrictions that name no
target, and restrictions that leave no target for any request.

A route whose own rules exclude every target would deny every call with
``no_eligible_route``; that is an authoring error, reported at compile time.
"""

from __future__ import annotations

from collections.abc import Iterator
from fnmatch import fnmatchcase

from compiler.errors import Diagnostic, did_you_mean
from compiler.model import ModelRoute, PolicySet, RouteTarget
from compiler.unique import repeats


def region_matches(patterns: tuple[str, ...], region: str) -> bool:
    """The Rego rule's meaning: ``*`` matches any run of characters; no region never matches."""
    return bool(region) and any(fnmatchcase(region, p) for p in patterns)


def provider_names(ps: PolicySet) -> Iterator[Diagnostic]:
    for r in ps.routes:
        if r.doc.is_damaged(("spec", "targets")):
            continue  # a target a schema error cut out may be the one named
        providers = {t.provider for t in r.targets}
        for key, names in (("only", r.only), ("ignore", r.ignore)):
            for i, name in enumerate(names):
                if name not in providers:
                    yield r.doc.error(("spec", "providers", key, i),
                                      f"provider {name!r} is not a target of ModelRoute {r.name!r}"
                                      f" (targets: {', '.join(sorted(providers))})"
                                      f"{did_you_mean(name, providers)}")
                elif key == "ignore" and name in r.only:
                    yield r.doc.error(("spec", "providers", key, i),
                                      f"provider {name!r} is both in providers.only and providers.ignore")


def duplicate_targets(ps: PolicySet) -> Iterator[Diagnostic]:
    for r in ps.routes:
        for (i, t), (first, _) in repeats(enumerate(r.targets),
                                          lambda it: (it[1].provider, it[1].model, it[1].region)):
            yield r.doc.error(("spec", "targets", i),
                              f"target {t.provider}/{t.model} @ {t.region or 'any region'}"
                              f" repeats {r.doc.written(('spec', 'targets', first))}")


def static_exclusion(r: ModelRoute, t: RouteTarget) -> str | None:
    """Why the route's own rules exclude ``t`` whatever the request; None if they don't."""
    if r.only and t.provider not in r.only:
        return "provider"
    if t.provider in r.ignore:
        return "provider"
    if r.regions and not region_matches(r.regions, t.region):
        return "region"
    cap_in, cap_out = r.max_price.get("input_per_mtok"), r.max_price.get("output_per_mtok")
    if (cap_in is not None and t.input_price_per_mtok > cap_in) or (
            cap_out is not None and t.output_price_per_mtok > cap_out):
        return "price"
    if r.data_collection == "deny" and t.data_retention:
        return "data_collection"
    return None


def routes_with_no_target(ps: PolicySet) -> Iterator[Diagnostic]:
    for r in ps.routes:
        if r.doc.is_damaged(("spec",)):
            continue  # what a schema error cut out may be what keeps a target eligible
        why = [static_exclusion(r, t) for t in r.targets]
        if all(why):
            yield r.doc.error(("spec", "targets"),
                              f"ModelRoute {r.name!r} excludes every target by its own rules"
                              f" ({', '.join(sorted(set(filter(None, why))))})")


CHECKS = (provider_names, duplicate_targets, routes_with_no_target)
