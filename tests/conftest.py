from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import servers, vaultsetup
from tests import spire as spire_


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


@pytest.fixture(scope="module")
def vault(postgres: servers.Postgres, openbao: servers.OpenBao,
          tmp_path_factory: pytest.TempPathFactory) -> vaultsetup.VaultSetup:
    """OpenBao configured as an operator would (AppRole, KV, database and token engines),
    with a fresh KV secret per test module."""
    return vaultsetup.setup(openbao, postgres, tmp_path_factory.mktemp("vault"))


@pytest.fixture(scope="session")
def kube() -> Iterator[servers.Kube]:
    """One kube-apiserver (on kine) for the session: starting one costs seconds."""
    with servers.run_kube_apiserver() as k:
        yield k


@pytest.fixture(scope="session")
def jaeger() -> Iterator[servers.Jaeger]:
    """One Jaeger for the session: every test reads back its own trace ids."""
    with servers.run_jaeger() as j:
        yield j


@pytest.fixture(scope="session")
def spire() -> Iterator[spire_.Spire]:
    """One SPIRE server and agent for the session; tests register their own entries (each
    its own gid or path, so tests never see each other's identities)."""
    with spire_.run_spire() as s:
        yield s
