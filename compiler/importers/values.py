"""Reading source values into AAM's shapes: names, providers, regions, numbers.

Each reader returns the AAM value, or None after a located error, so an
importer reports every bad value in one run. Messages show a string only
from fields that hold names (model groups, models, providers, regions);
number fields show numbers or a type, and an ``os.environ/...`` reference is
never shown.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from compiler.importers.coverage import Coverage, type_name
from compiler.source import Path_

NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$")  # agentpolicy.json $defs/name
PROVIDER = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")  # modelroute.json $defs/provider
REGION = re.compile(r"^[a-z0-9-]+$")  # modelroute.json target region
MAX_USD = Decimal(1_000_000_000)  # agentpolicy.json $defs/usd maximum
MILLION = Decimal(1_000_000)


def is_env_ref(value: Any) -> bool:
    """LiteLLM's ``os.environ/NAME``: resolved at the proxy's start, never by us."""
    return isinstance(value, str) and value.strip().startswith("os.environ/")


def shown(value: Any, *, text: bool = True) -> str:
    """A value fit for a message: short, never an environment reference, and a
    string only where ``text`` says the field holds a name (a number field
    with a string in it might hold a misplaced key)."""
    if is_env_ref(value):
        return "an os.environ/ reference"
    if isinstance(value, str) and text:
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value)
    return type_name(value)


def to_name(raw: str) -> str:
    """The nearest AAM name: lower case, other characters to '-', at most 63 long."""
    s = re.sub(r"[^a-z0-9.-]+", "-", raw.strip().lower())
    s = re.sub(r"-{2,}", "-", s).strip("-.")
    return s[:63].rstrip("-.")


def name(cov: Coverage, value: Any, path: Path_, what: str) -> str | None:
    if not isinstance(value, str) or not value.strip():
        cov.error(path, f"{what} must be a non-empty string, got {shown(value)}")
        return None
    out = to_name(value)
    if not NAME.match(out):
        cov.error(path, f"{what} {shown(value)} has no letter or digit to make an AAM name from")
        return None
    return out


def provider(cov: Coverage, value: Any, path: Path_) -> str | None:
    if not isinstance(value, str) or is_env_ref(value):
        cov.error(path, f"provider must be a string, got {shown(value)}")
        return None
    out = value.strip().lower().replace(" ", "-")
    if not PROVIDER.match(out):
        cov.error(path, f"provider {shown(value)} is not a valid AAM provider name"
                        " (lower-case letters, digits, '_', '.', '-')")
        return None
    return out


def region(cov: Coverage, value: Any, path: Path_) -> str | None:
    """A region, or None after a warning: a bad region narrows nothing, so it is not an error."""
    if is_env_ref(value):
        cov.drop(path, "the region is an os.environ/ reference, which only the proxy resolves")
        return None
    out = value.strip().lower() if isinstance(value, str) else None
    if not out or not REGION.match(out):
        cov.drop(path, f"region {shown(value)} is not a valid AAM region (lower-case letters,"
                       " digits, '-')")
        return None
    return out


def positive_int(cov: Coverage, value: Any, path: Path_, what: str) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value) \
            or value < 1:
        cov.error(path, f"{what} must be a positive whole number, got {shown(value, text=False)}")
        return None
    return int(value)


def usd(cov: Coverage, value: Any, path: Path_, what: str) -> Decimal | None:
    """A non-negative amount; numeric strings too (OpenRouter writes prices as strings)."""
    amount: Decimal | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        amount = Decimal(str(value))
    elif isinstance(value, str) and not is_env_ref(value):
        try:
            amount = Decimal(value.strip())
        except InvalidOperation:
            amount = None
    if amount is None or not amount.is_finite() or amount < 0 or amount > MAX_USD:
        cov.error(path, f"{what} must be a number of US dollars from 0 to {MAX_USD},"
                        f" got {shown(value, text=False)}")
        return None
    return amount


def per_mtok(per_token: Decimal) -> Decimal:
    """USD per token -> USD per million tokens, exactly (no float rounding: 3e-06 -> 3)."""
    return (per_token * MILLION).normalize()


def strings(cov: Coverage, value: Any, path: Path_, what: str) -> list[str] | None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        cov.error(path, f"{what} must be a list of strings")
        return None
    return value
