"""ToolCredential: schema, semantic checks with located errors, compiled form."""

from __future__ import annotations

from pathlib import Path

import pytest

from compiler import CompileError, load
from compiler.codegen import generate

POLICY = """\
apiVersion: access.envisionai.dev/v1
kind: AgentPolicy
metadata: {name: p}
spec:
  identity: {workload: spiffe://prod/agent/a}
  tools:
    - resource: crm.accounts
      actions: [read, update]
      deny: [delete]
---
"""


def cred(spec: str) -> str:
    return ("apiVersion: access.envisionai.dev/v1\nkind: ToolCredential\nmetadata: {name: c}\nspec:\n"
            + spec)


GOOD = cred("""\
  resource: crm.accounts
  engine: database
  ttl: 2m
  inject: {header: x-db, scheme: Basic}
  scopes:
    read: {actions: [read], role: crm-read}
    write: {actions: [update], role: crm-write}
""")


def errors(tmp_path: Path, text: str) -> list[str]:
    (tmp_path / "p.yaml").write_text(POLICY + text)
    with pytest.raises(CompileError) as exc:
        load([tmp_path])
    return [f"{d.line}:{d.col}: {d.message}" for d in exc.value.diagnostics]


def test_compiles_into_credentials_by_resource(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(POLICY + GOOD)
    out = generate(load([tmp_path]))["credentials"]["crm.accounts"]
    assert out == {
        "name": "c", "resource": "crm.accounts", "engine": "database", "mount": "database",
        "ttl_s": 120, "inject": {"header": "x-db", "scheme": "Basic", "delivery": "value"},
        "scopes": {"read": {"actions": {"read": True}, "role": "crm-read"},
                   "write": {"actions": {"update": True}, "role": "crm-write"}},
        "actions": {"read": "read", "update": "write"},
    }


@pytest.mark.parametrize(("spec", "expected"), [
    (GOOD.replace("[update], role", "[read], role"), "21:23: action 'read' is already in scope 'read'"),
    (GOOD.replace("role: crm-read", "path: a/b"), "20:5: scope 'read': engine 'database' needs 'role'"),
    (GOOD.replace("scheme: Basic", "delivery: wrapped"),
     "18:36: delivery 'wrapped' is only for engine 'kv'"),
    (GOOD.replace("ttl: 2m", "ttl: 25h"), "17:8: ttl 90000s is longer than 86400s"),
    (GOOD.replace("engine: database", "engine: kv"), "20:5: scope 'read': engine 'kv' needs 'path'"),
    (GOOD.replace("header: x-db", "header: X_Db"), "18:20: spec.inject.header"),
    (GOOD + "---\n" + GOOD.replace("name: c}", "name: d}"),
     "27:13: tool resource 'crm.accounts' already has a ToolCredential ('c')"),
], ids=["action-in-two-scopes", "engine-field",
        "wrapped-needs-kv", "ttl-too-long", "kv-needs-path", "bad-header", "two-for-one-resource"])
def test_nonsense_is_a_located_error(tmp_path: Path, spec: str, expected: str) -> None:
    found = errors(tmp_path, spec)
    assert any(e.startswith(expected) for e in found), found


@pytest.mark.parametrize("spec", [
    GOOD.replace("actions: [read], role", "actions: [delete], role"),  # denied by the policy
    GOOD.replace("resource: crm.accounts", "resource: crm.nothing"),  # granted by no policy
], ids=["action-not-granted", "resource-not-granted"])
def test_revoking_a_grant_never_breaks_the_compile(tmp_path: Path, spec: str) -> None:
    """A ToolCredential naming ungranted actions is harmless (OPA denies them first), and
    an error here would keep the old, wider bundle active when a grant is withdrawn."""
    (tmp_path / "p.yaml").write_text(POLICY + spec)
    assert len(load([tmp_path]).credentials) == 1
