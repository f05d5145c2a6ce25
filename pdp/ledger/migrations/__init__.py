"""Versioned schema migrations: ``NNNN_name.sql`` per store, applied in order, once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load(store: str) -> list[Migration]:
    out = []
    for f in sorted((HERE / store).glob("[0-9][0-9][0-9][0-9]_*.sql")):
        out.append(Migration(int(f.name[:4]), f.stem, f.read_text()))
    versions = [m.version for m in out]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions for {store}: {versions}")
    return out
