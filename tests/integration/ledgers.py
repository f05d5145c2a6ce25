"""Fresh ledgers for tests: a new PostgreSQL database or SQLite file per test."""

from __future__ import annotations

import itertools
from pathlib import Path

import psycopg

from pdp.ledger import Ledger, open_ledger
from pdp.ledger.keyring import Keyring
from tests.servers import Postgres

_ids = itertools.count(1)
# The audit keyring of the ledgers fresh_ledger opens (in memory: no file to leak).
KEYRING = Keyring.generate()


def fresh_database(pg: Postgres) -> str:
    """A new, empty database on the session cluster; returns its DSN."""
    name = f"aam_t{next(_ids)}"
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    return pg.dsn_for(name)


def fresh_ledger(kind: str, pg: Postgres | None, tmp_path: Path) -> tuple[Ledger, str]:
    if kind == "postgres":
        assert pg is not None
        url = fresh_database(pg)
    else:
        url = f"sqlite://{tmp_path / 'ledger.sqlite3'}"
    ledger = open_ledger(url, 4, 5.0, KEYRING)
    assert ledger is not None
    ledger.migrate()
    return ledger, url
