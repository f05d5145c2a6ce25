"""Each real server fixture really talks: write something, read it back."""

from __future__ import annotations

import hvac
import psycopg
import requests

from tests.servers import Opa, OpenBao, Postgres


def test_opa_serves_a_policy_it_was_given(opa: Opa) -> None:
    rego = "package probe\n\nanswer := input.x * 2\n"
    r = requests.put(f"{opa.url}/v1/policies/probe", data=rego, timeout=5)
    assert r.status_code == 200, r.text
    r = requests.post(f"{opa.url}/v1/data/probe/answer", json={"input": {"x": 21}}, timeout=5)
    assert r.json() == {"result": 42}


def test_postgres_round_trip(postgres: Postgres) -> None:
    with psycopg.connect(postgres.dsn) as conn:
        conn.execute("CREATE TABLE probe (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO probe VALUES (1, 'written')")
        conn.commit()
    with psycopg.connect(postgres.dsn) as conn:
        row = conn.execute("SELECT v, current_setting('server_version_num') FROM probe").fetchone()
    assert row is not None and row[0] == "written"
    assert int(row[1]) >= 150000


def test_openbao_kv_round_trip(openbao: OpenBao) -> None:
    client = hvac.Client(url=openbao.addr, token=openbao.root_token)
    assert client.is_authenticated()
    assert client.sys.read_health_status(method="GET")["version"].startswith("2.")
    client.secrets.kv.v2.create_or_update_secret(path="probe", secret={"v": "written"})
    read = client.secrets.kv.v2.read_secret_version(path="probe", raise_on_deleted_version=True)
    assert read["data"]["data"] == {"v": "written"}
