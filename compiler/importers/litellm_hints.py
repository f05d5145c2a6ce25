"""Why a LiteLLM setting is not carried over: one sentence per setting AAM has no place for.

Keys without a sentence here are still reported, generically, by the final
sweep of :class:`~compiler.importers.coverage.Coverage`.
"""

from __future__ import annotations

from typing import Any

from compiler.importers.coverage import Coverage
from compiler.source import Path_

_GATEWAY = "retries, timeouts and cooldowns stay with the gateway, which walks the returned chain"
_ENDPOINT = "endpoints and API versions stay in the gateway's configuration"
_CREDENTIAL = ("a credential is never copied: AAM holds no shared provider or proxy keys"
               " (the gateway or broker injects them)")
HINTS = {
    **dict.fromkeys(("num_retries", "max_retries", "timeout", "stream_timeout", "request_timeout",
                     "retry_policy", "allowed_fails", "allowed_fails_policy", "cooldown_time"), _GATEWAY),
    **dict.fromkeys(("api_base", "base_url", "api_version", "organization"), _ENDPOINT),
    **dict.fromkeys(("redis_host", "redis_port", "redis_url", "cache", "cache_params"),
                    "the router's own state store"),
    "weight": "AAM does not split traffic by weight; targets are tried in the order written",
    "content_policy_fallbacks": "it needs the provider's refusal, which is known only after the call",
    "default_fallbacks": "list fallback groups per model group under fallbacks",
    "model_group_alias": "write a ModelRoute named after the alias",
    "provider_budget_config": "AAM budgets are per workload (AgentPolicy), not per provider",
    "enable_pre_call_checks": "AAM checks each target's context_window against the estimated tokens"
                              " whenever the target declares one",
    "upperbound_key_generate_params": "a ceiling on generated keys is not a grant",
    "max_end_user_budget": "end users are not workloads; budgets are per workload",
    "max_parallel_requests": "AAM limits requests per minute, not concurrent requests",
    "global_max_parallel_requests": "AAM limits requests per minute, not concurrent requests",
    "max_tokens": "AAM's context_window is read from model_info.max_input_tokens",
    "max_output_tokens": "AAM's context_window is read from model_info.max_input_tokens",
    "include": "included files are not read; import each one separately",
    "environment_variables": "environment values are never copied",
}
_SECRET_NAMES = {"api_key", "master_key", "database_url", "vertex_credentials", "aws_access_key_id",
                 "aws_secret_access_key", "aws_session_token", "azure_ad_token", "client_secret"}
def hint(key: str) -> str | None:
    if key in _SECRET_NAMES or key.endswith(("_key", "_secret", "_password", "_token")) \
            or "credential" in key:
        return _CREDENTIAL
    if "cost" in key:
        return "AAM prices a target per input and per output token only"
    return HINTS.get(key)


def drop_known(cov: Coverage, section: dict[str, Any], path: Path_, default: str | None = None) -> None:
    """Report the keys of ``section`` not yet accounted for that have a hint (or all,
    given a default); the rest are left to the final sweep."""
    for key in section:
        why = hint(key) or default
        if why and not cov.accounted((*path, key)):
            cov.drop((*path, key), why)
