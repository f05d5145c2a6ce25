from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import servers


@pytest.fixture(scope="session")
def opa() -> Iterator[servers.Opa]:
    with servers.run_opa() as o:
        yield o


@pytest.fixture(scope="session")
def postgres() -> Iterator[servers.Postgres]:
    with servers.run_postgres() as pg:
        yield pg


@pytest.fixture(scope="session")
def openbao() -> Iterator[servers.OpenBao]:
    with servers.run_openbao() as bao:
        yield bao
