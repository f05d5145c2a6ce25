"""LiteLLM budgets and rate limits -> AgentPolicy stubs bound to a placeholder workload.

LiteLLM keeps budgets on the proxy, teams and keys; AAM keeps them per
workload. Each place a config sets one becomes a stub the platform team binds
to a real workload (``spec.identity.workload``), with every route allowed
unless the source narrowed the models.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from compiler.importers import values
from compiler.importers.coverage import Coverage, mapping
from compiler.importers.litellm_hints import drop_known
from compiler.importers.types import PolicyStub, Rate
from compiler.source import Path_

_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d|mo)\s*$")
_ALL_MODELS = {"*", "all-proxy-models"}


@dataclass(frozen=True)
class _Limits:
    daily: Decimal | None = None
    monthly: Decimal | None = None
    rate: Rate = field(default_factory=Rate)

    def __bool__(self) -> bool:
        return self.daily is not None or self.monthly is not None or bool(self.rate)


def stubs(cov: Coverage, root: dict[str, Any], names: dict[str, str],
          routes: tuple[str, ...]) -> tuple[PolicyStub, ...]:
    settings = root.get("litellm_settings")
    if not isinstance(settings, dict):
        return ()
    base: Path_ = ("litellm_settings",)
    out: dict[str, PolicyStub] = {}

    def add(stub: PolicyStub, path: Path_, what: str) -> None:
        if stub.name in out:
            cov.error(path, f"AgentPolicy stub {stub.name!r} already comes from {out[stub.name].source}")
            return
        out[stub.name] = stub
        cov.warn(path, f"{what} becomes AgentPolicy stub {stub.name!r} bound to placeholder workload"
                       f" {stub.workload}: set spec.identity.workload to the agent's SPIFFE ID")

    limits = _limits(cov, settings, base, rate_keys=False)
    if limits:
        add(PolicyStub("litellm-proxy", cov.where((*base, "max_budget")), routes, None, limits.daily,
                       limits.monthly), (*base, "max_budget"),
            "the proxy-wide budget (AAM budgets are per workload: it caps one workload, not the proxy)")
    teams = settings.get("default_team_settings")
    if teams is not None:
        tpath = (*base, "default_team_settings")
        if not isinstance(teams, list):
            cov.error(tpath, "default_team_settings must be a list of teams")
            teams = []
        cov.mapped(tpath)
        for j, team in enumerate(teams):
            stub = _team(cov, team, (*tpath, j), names, routes)
            if stub is not None:
                add(stub, (*tpath, j), f"team {stub.team!r}")
    keys = settings.get("default_key_generate_params")
    if keys is not None:
        kpath = (*base, "default_key_generate_params")
        body = mapping(cov, keys, kpath, "default_key_generate_params")
        if body is not None:
            cov.mapped(kpath)
            limits = _limits(cov, body, kpath, rate_keys=True)
            models = _models(cov, body, kpath, names, routes)
            drop_known(cov, body, kpath)
            if limits:
                add(PolicyStub("key-defaults", cov.where(kpath), models, None, limits.daily,
                               limits.monthly, limits.rate), kpath, "the default limits of generated keys")
            else:
                cov.drop(kpath, "no budget or rate limit to carry")
    return tuple(out[n] for n in sorted(out))


def _team(cov: Coverage, team: Any, path: Path_, names: dict[str, str],
          routes: tuple[str, ...]) -> PolicyStub | None:
    body = mapping(cov, team, path, "a default_team_settings entry")
    if body is None:
        return None
    team_id = body.get("team_id")
    if not isinstance(team_id, str) or not team_id.strip():
        cov.error(path, "a team needs team_id")
        return None
    stub_name = values.name(cov, f"team-{team_id}", (*path, "team_id"), "team_id")
    cov.mapped((*path, "team_id"))
    limits = _limits(cov, body, path, rate_keys=True)
    models = _models(cov, body, path, names, routes)
    drop_known(cov, body, path)
    if stub_name is None:
        return None
    return PolicyStub(stub_name, cov.where(path), models, team_id.strip(), limits.daily, limits.monthly,
                      limits.rate)


def _limits(cov: Coverage, body: dict[str, Any], path: Path_, *, rate_keys: bool) -> _Limits:
    daily = monthly = None
    if "max_budget" in body:
        bpath = (*path, "max_budget")
        amount = values.usd(cov, body["max_budget"], bpath, "max_budget")
        which = _window(cov, body["budget_duration"], (*path, "budget_duration")) \
            if "budget_duration" in body else None
        if "budget_duration" not in body:
            cov.drop(bpath, "a budget that never resets has no AAM equivalent (daily_usd, monthly_usd)")
        elif amount is not None and which is None:
            cov.drop(bpath, "its budget_duration has no AAM window")
        elif amount is not None:
            cov.mapped(bpath)
            daily, monthly = (amount, None) if which == "daily" else (None, amount)
    elif "budget_duration" in body:
        cov.drop((*path, "budget_duration"), "no max_budget to reset")
    rate = Rate()
    if rate_keys:
        found = {}
        for key in ("rpm_limit", "tpm_limit"):
            if key in body:
                found[key] = values.positive_int(cov, body[key], (*path, key), key)
                cov.mapped((*path, key))
        rate = Rate(found.get("rpm_limit"), found.get("tpm_limit"))
    return _Limits(daily, monthly, rate)


def _window(cov: Coverage, value: Any, path: Path_) -> str | None:
    """LiteLLM's budget_duration -> "daily" or "monthly" (AAM's calendar windows)."""
    m = _DURATION.match(value) if isinstance(value, str) else None
    if m is None:
        cov.error(path, "budget_duration must look like 30s, 30m, 30h, 30d or 1mo,"
                        f" got {values.shown(value)}")
        return None
    n, unit = int(m.group(1)), m.group(2)
    seconds = n * {"s": 1, "m": 60, "h": 3600, "d": 86400, "mo": 0}[unit]
    if seconds == 86400:
        cov.mapped(path)
        return "daily"
    if (n, unit) == (1, "mo") or (unit == "d" and n in (30, 31)):
        cov.mapped(path)
        if unit == "d":
            cov.warn(path, f"{n} rolling days become the calendar month (budget.monthly_usd)")
        return "monthly"
    cov.drop(path, "AAM budgets reset per calendar day (daily_usd) or month (monthly_usd)")
    return None


def _models(cov: Coverage, body: dict[str, Any], path: Path_, names: dict[str, str],
            routes: tuple[str, ...]) -> tuple[str, ...]:
    """A team's or key's ``models``: model groups -> ModelRoute names; none or all: every route."""
    if "models" not in body:
        return routes
    mpath = (*path, "models")
    listed = values.strings(cov, body["models"], mpath, "models")
    cov.mapped(mpath)
    if not listed or any(m in _ALL_MODELS for m in listed):
        return routes
    out: list[str] = []
    for k, group in enumerate(listed):
        if group in names:
            out.append(names[group])
        else:
            cov.drop((*mpath, k), f"model group {values.shown(group)} is not in model_list")
    return tuple(sorted(set(out)))


