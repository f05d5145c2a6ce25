"""Configure a real OpenBao dev server (and PostgreSQL) the way an operator would for AAM.

Used by the broker tests and bench/broker.py. With the root token (the only
place it is used) this enables the engines, writes the secrets, creates the
SELECT-only and read-write database roles, a token role for child tokens,
and an AppRole whose policy covers only what the ToolCredentials need. The
PDP then logs in with that AppRole.
"""

from __future__ import annotations

import secrets
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import psycopg

from tests.servers import OpenBao, Postgres

DB_MOUNT = "aamdb"
KV_PATH = "aam/salesforce/accounts/read"
CONTACTS_PATH = "aam/salesforce/contacts/read"
TOKEN_ROLE = "aam-child"
CHILD_POLICY = "aam-salesforce-read"
PDP_POLICY = "aam-pdp"
TABLE = "crm_accounts"

PDP_HCL = textwrap.dedent(f"""\
    path "secret/data/aam/*" {{ capabilities = ["read"] }}
    path "{DB_MOUNT}/creds/*" {{ capabilities = ["read"] }}
    path "sys/leases/renew" {{ capabilities = ["update"] }}
    path "sys/leases/revoke" {{ capabilities = ["update"] }}
    path "auth/token/create/{TOKEN_ROLE}" {{ capabilities = ["update"] }}
    path "auth/token/revoke-accessor" {{ capabilities = ["update"] }}
""")
# What a child token for salesforce.* may do: read that resource's secrets, nothing else.
CHILD_HCL = 'path "secret/data/aam/salesforce/*" { capabilities = ["read"] }\n'


@dataclass
class VaultSetup:
    addr: str
    role_id: str
    secret_id_file: Path
    kv_secret: str  # the known secret value the leak test searches for
    root: hvac.Client

    def settings(self, **more: Any) -> dict[str, Any]:
        return {"broker": "vault", "vault_addr": self.addr, "vault_role_id": self.role_id,
                "vault_secret_id_file": str(self.secret_id_file), **more}


def _enable_secrets(root: hvac.Client, backend: str, path: str, **opts: Any) -> None:
    if f"{path}/" not in root.sys.list_mounted_secrets_engines()["data"]:
        root.sys.enable_secrets_engine(backend, path=path, **opts)


def _enable_auth(root: hvac.Client, method: str, path: str) -> None:
    if f"{path}/" not in root.sys.list_auth_methods()["data"]:
        root.sys.enable_auth_method(method, path=path)


def prepare_table(pg: Postgres) -> None:
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id int PRIMARY KEY, name text)")
        conn.execute(f"INSERT INTO {TABLE} VALUES (1, 'Acme'), (2, 'Globex') ON CONFLICT DO NOTHING")


def setup(bao: OpenBao, pg: Postgres, workdir: Path, *, db_ttl: str = "10m") -> VaultSetup:
    root = hvac.Client(url=bao.addr, token=bao.root_token)
    kv_secret = "sk-live-" + secrets.token_hex(16)
    root.secrets.kv.v2.create_or_update_secret(path=KV_PATH, secret={"api_token": kv_secret})
    root.secrets.kv.v2.create_or_update_secret(path=CONTACTS_PATH, secret={"api_token": kv_secret})
    root.secrets.kv.v2.create_or_update_secret(path="aam-other/private", secret={"x": "private"})

    prepare_table(pg)
    _enable_secrets(root, "database", DB_MOUNT)
    root.secrets.database.configure(
        name="crm", plugin_name="postgresql-database-plugin", mount_point=DB_MOUNT,
        connection_url=f"postgresql://{{{{username}}}}:{{{{password}}}}@{pg.host}:{pg.port}/{pg.dbname}"
                       "?sslmode=disable",
        username=pg.user, password=pg.password, allowed_roles=["crm-read", "crm-write"],
        verify_connection=True,
    )
    create = ("CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}'"
              " VALID UNTIL '{{expiration}}';")
    root.secrets.database.create_role(
        name="crm-read", db_name="crm", mount_point=DB_MOUNT, default_ttl=db_ttl, max_ttl="1h",
        creation_statements=[create, f'GRANT SELECT ON {TABLE} TO "{{{{name}}}}";'])
    root.secrets.database.create_role(
        name="crm-write", db_name="crm", mount_point=DB_MOUNT, default_ttl=db_ttl, max_ttl="1h",
        creation_statements=[create, f'GRANT SELECT, UPDATE ON {TABLE} TO "{{{{name}}}}";'])

    root.sys.create_or_update_policy(CHILD_POLICY, CHILD_HCL)
    root.sys.create_or_update_policy(PDP_POLICY, PDP_HCL)
    # Tokens made through this role are orphans, so they outlive the PDP's own login token,
    # and may carry only the child policy (which the PDP itself does not hold).
    root.write(f"auth/token/roles/{TOKEN_ROLE}", allowed_policies=[CHILD_POLICY], orphan=True,
               renewable=False, token_type="service")

    _enable_auth(root, "approle", "approle")
    root.auth.approle.create_or_update_approle(
        "aam-pdp", token_policies=[PDP_POLICY], token_ttl="1h", token_max_ttl="4h",
        token_no_default_policy=False)
    role_id = root.auth.approle.read_role_id("aam-pdp")["data"]["role_id"]
    secret_id = root.auth.approle.generate_secret_id("aam-pdp")["data"]["secret_id"]
    secret_id_file = workdir / "vault-secret-id"
    secret_id_file.write_text(secret_id)
    secret_id_file.chmod(0o600)
    return VaultSetup(bao.addr, role_id, secret_id_file, kv_secret, root)


def policies(workdir: Path, *, grant_crm: bool = True, db_ttl: str = "5m") -> Path:
    """A policy directory exercising every engine, plus an uncredentialed tool."""
    crm = ("    - resource: crm.accounts\n      actions: [read, update]\n"
           "    - resource: crm.reports\n      actions: [read]\n") if grant_crm else ""
    (workdir / "policies.yaml").write_text(f"""\
apiVersion: access.envisionai.dev/v1
kind: AgentPolicy
metadata: {{name: crm-agent}}
spec:
  identity: {{workload: spiffe://prod/agent/crm}}
  tools:
{crm}    - resource: salesforce.accounts
      actions: [read]
    - resource: salesforce.contacts
      actions: [read]
    - resource: salesforce.vault
      actions: [read]
    - resource: web.search
      actions: [query]
---
apiVersion: access.envisionai.dev/v1
kind: AgentPolicy
metadata: {{name: crm-agent-2}}
spec:
  identity: {{workload: spiffe://prod/agent/crm-2}}
  tools:
    - resource: crm.accounts
      actions: [read, update]
    - resource: crm.reports
      actions: [read]
    - resource: salesforce.accounts
      actions: [read]
""")
    (workdir / "credentials.yaml").write_text(f"""\
apiVersion: access.envisionai.dev/v1
kind: ToolCredential
metadata: {{name: crm-accounts}}
spec:
  resource: crm.accounts
  engine: database
  mount: {DB_MOUNT}
  ttl: {db_ttl}
  inject: {{header: x-db-credential}}
  scopes:
    read: {{actions: [read], role: crm-read}}
    write: {{actions: [update], role: crm-write}}
---
apiVersion: access.envisionai.dev/v1
kind: ToolCredential
metadata: {{name: crm-reports}}
spec:
  resource: crm.reports
  engine: database
  mount: {DB_MOUNT}
  inject: {{header: x-db-credential}}
  scopes:
    read: {{actions: [read], role: crm-missing}}
---
apiVersion: access.envisionai.dev/v1
kind: ToolCredential
metadata: {{name: salesforce-accounts}}
spec:
  resource: salesforce.accounts
  engine: kv
  ttl: 5m
  inject: {{header: authorization, scheme: Bearer}}
  scopes:
    read: {{actions: [read], path: {KV_PATH}, key: api_token}}
---
apiVersion: access.envisionai.dev/v1
kind: ToolCredential
metadata: {{name: salesforce-contacts}}
spec:
  resource: salesforce.contacts
  engine: kv
  ttl: 2m
  inject: {{header: x-vault-wrapped, delivery: wrapped}}
  scopes:
    read: {{actions: [read], path: {CONTACTS_PATH}}}
---
apiVersion: access.envisionai.dev/v1
kind: ToolCredential
metadata: {{name: salesforce-vault}}
spec:
  resource: salesforce.vault
  engine: token
  ttl: 2m
  inject: {{header: x-vault-token}}
  scopes:
    read: {{actions: [read], policies: [{CHILD_POLICY}], role: {TOKEN_ROLE}, num_uses: 2}}
""")
    return workdir
