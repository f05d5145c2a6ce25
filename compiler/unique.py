"""The one shape of every "X must be unique" check, in a module of its own so
that every kind's checks can use it (model.py imports the kinds' modules)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def repeats(items: Iterable[T], key: Callable[[T], Hashable]) -> Iterator[tuple[T, T]]:
    """Each item whose key an earlier item already had, with that first item."""
    first: dict[Hashable, T] = {}
    for item in items:
        k = key(item)
        if k in first:
            yield item, first[k]
        else:
            first[k] = item
