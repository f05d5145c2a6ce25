"""deploy/crds/ against a real kube-apiserver (issue 18): the CRDs are accepted and
Established, every example document creates as a custom resource unchanged, and
documents the compiler rejects for schema reasons are rejected by the API server too.

One session-scoped API server (tests/conftest.py ``kube``); nothing skips when
kube-apiserver or kine is missing: the fixture fails with "run scripts/setup".
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from compiler import crd, schema
from compiler.source import discover, load_file, load_text
from tests.servers import Kube

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CRD_API = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
NAMESPACE = "default"
CRD_FILES = sorted(crd.CRD_DIR.glob("*.yaml"))
EXAMPLE_DOCS = [d.value for f in discover([EXAMPLES]) for d in load_file(f)[0]]


@dataclass
class Cluster:
    """The API server with deploy/crds/ applied: what each apply answered, and kind -> plural."""

    kube: Kube
    http: requests.Session
    applied: dict[str, requests.Response]
    plurals: dict[str, str]

    def collection(self, kind: str) -> str:
        return f"{self.kube.url}/apis/{crd.API_VERSION}/namespaces/{NAMESPACE}/{self.plurals[kind]}"

    def create(self, doc: dict[str, Any]) -> requests.Response:
        """POST with fieldValidation=Strict: unknown fields fail instead of being pruned."""
        return self.http.post(self.collection(doc["kind"]), params={"fieldValidation": "Strict"},
                              json=doc, timeout=10)


def _wait(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout_s:.0f} s")
        time.sleep(0.1)


def _established(http: requests.Session, url: str) -> bool:
    status = http.get(url, timeout=5).json().get("status", {})
    conds = {c["type"]: c["status"] for c in status.get("conditions") or []}
    return conds.get("Established") == "True" and conds.get("NamesAccepted") == "True"


@pytest.fixture(scope="module")
def cluster(kube: Kube) -> Cluster:
    """Apply every CRD once; record the answers so each test reports its own CRD's."""
    http = kube.session()
    ns = http.post(f"{kube.url}/api/v1/namespaces", json={"metadata": {"name": NAMESPACE}}, timeout=10)
    assert ns.status_code in (201, 409), ns.text
    applied: dict[str, requests.Response] = {}
    plurals: dict[str, str] = {}
    for path in CRD_FILES:
        body = yaml.safe_load(path.read_text())
        kind = body["spec"]["names"]["kind"]
        # Server-side apply: the session's API server is shared (the Helm chart's tests
        # apply the same CRDs), and applying twice is the same as once.
        url = f"{kube.url}{CRD_API}/{body['metadata']['name']}"
        resp = http.patch(url, params={"fieldManager": "aam-crd-test", "force": "true"},
                          data=json.dumps(body),
                          headers={"Content-Type": "application/apply-patch+yaml"}, timeout=10)
        applied[kind] = resp
        if resp.status_code in (200, 201):
            plurals[kind] = body["spec"]["names"]["plural"]
            _wait(lambda url=url: _established(http, url), 30, f"{kind} CRD Established")
    c = Cluster(kube, http, applied, plurals)
    for kind in plurals:  # discovery lags Established by a moment
        _wait(lambda kind=kind: http.get(c.collection(kind), timeout=5).status_code == 200, 30,
              f"{kind} served")
    return c


@pytest.mark.parametrize("kind", sorted(crd.KINDS))
def test_crd_is_accepted_and_established(cluster: Cluster, kind: str) -> None:
    resp = cluster.applied[kind]
    assert resp.status_code in (200, 201), f"{kind} CRD rejected: {resp.text}"
    assert kind in cluster.plurals


def _doc_id(doc: dict[str, Any]) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


@pytest.mark.parametrize("doc", EXAMPLE_DOCS, ids=_doc_id)
def test_example_creates_as_custom_resource(cluster: Cluster, doc: dict[str, Any]) -> None:
    if doc["kind"] not in cluster.plurals:
        pytest.fail(f"{doc['kind']} CRD was not established: {cluster.applied[doc['kind']].text}")
    url = f"{cluster.collection(doc['kind'])}/{doc['metadata']['name']}"
    cluster.http.delete(url, timeout=10)  # idempotent within a session
    resp = cluster.create(doc)
    assert resp.status_code == 201, resp.text
    stored = cluster.http.get(url, timeout=10).json()
    # Nothing pruned or coerced: the server keeps exactly what the compiler reads.
    assert stored["spec"] == doc["spec"]
    for key in ("labels", "annotations"):
        assert stored["metadata"].get(key, {}) == doc["metadata"].get(key, {})


def _example(kind: str) -> dict[str, Any]:
    return copy.deepcopy(next(d for d in EXAMPLE_DOCS if d["kind"] == kind))


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    *parents, last = path.split(".")
    node: Any = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return doc


# (kind, dotted path, bad value, what the API server's message must name)
BAD = [
    ("AgentPolicy", "spec.identity.bogus", "x", 'unknown field "spec.identity.bogus"'),
    ("AgentPolicy", "spec.credentials", {"expose_to_agent": True}, "spec.credentials.expose_to_agent"),
    ("AgentPolicy", "spec.rate", {"requests_per_minute": 0}, "spec.rate.requests_per_minute"),
    ("AgentPolicy", "spec.tools.0.actions", ["read", "read"], "spec.tools[0].actions[1]"),
    ("AgentPolicy", "spec.tools.0.constraints", [{"param": "region", "allowed_values": []}],
     "spec.tools[0].constraints[0].allowed_values"),
    ("ModelRoute", "spec.sort", "random", "spec.sort"),
    ("ModelRoute", "spec.targets", [], "spec.targets"),
    ("ModelRoute", "spec.targets.0.provider", "Not A Provider", "spec.targets[0].provider"),
    ("Tool", "spec.price_usd", "cheap", "spec.price_usd"),
    ("Tool", "spec.resource", "Bad Resource!", "spec.resource"),
    ("ToolCredential", "spec.engine", "ldap", "spec.engine"),
    ("ToolCredential", "spec.ttl", "5 minutes", "spec.ttl"),
    ("ToolCredential", "spec.ttl", 0, "spec.ttl"),
    ("ToolCredential", "spec.ttl", 1.5, "spec.ttl"),
    ("ToolCredential", "spec.inject.header", "X-Upper", "spec.inject.header"),
]


@pytest.mark.parametrize(("kind", "path", "value", "field"), BAD,
                         ids=[f"{k}:{p}={v!r}" for k, p, v, _ in BAD])
def test_schema_rejections_agree(cluster: Cluster, kind: str, path: str, value: Any, field: str) -> None:
    doc = _set(_example(kind), path, value)
    doc["metadata"]["name"] = "bad-doc"
    compiled = list(schema.validate(load_text(yaml.safe_dump(doc), "bad.yaml")[0][0]))
    assert compiled, f"the compiler accepts {path}={value!r}; this case tests nothing"
    resp = cluster.create(doc)
    assert resp.status_code in (400, 422), f"API server accepted {path}={value!r}: {resp.status_code}"
    assert field in resp.json()["message"], resp.json()["message"]
    if not field.startswith("unknown field"):
        assert resp.status_code == 422, resp.text


def test_name_breaking_the_pattern_is_rejected(cluster: Cluster) -> None:
    doc = _example("ModelRoute")
    doc["metadata"]["name"] = "Bad_Name"
    assert list(schema.validate(load_text(yaml.safe_dump(doc), "bad.yaml")[0][0]))
    resp = cluster.create(doc)
    assert resp.status_code == 422, resp.text
    assert "metadata.name" in resp.json()["message"]
