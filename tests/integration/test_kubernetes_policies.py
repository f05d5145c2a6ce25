"""Policies from custom resources (issue 18 point 2) against a real kube-apiserver.

The PDP runs with policy_source = kubernetes and the token of a ServiceAccount bound only
to the Role the Helm chart renders (get/list/watch on the four kinds, get/patch/update on
their status), so every test also shows that Role is enough. The tests edit resources with
the admin token and watch decisions and status change:

- the examples as custom resources decide, each resource Accepted/Ready with the revision;
- editing an AgentPolicy changes decisions within the reload debounce;
- a broken resource gets Accepted=False with the located error, the previous bundle decides;
- deleting a resource withdraws its grants;
- the service account can do nothing beyond reading the kinds and writing their status.
"""

from __future__ import annotations

import copy
import json
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from aam.v1 import pdp_pb2
from compiler import crd
from compiler.source import discover, load_file
from pdp.stack import Stack
from tests.integration.pdp import EXAMPLES, request, running_stack, stub
from tests.servers import Kube

CRD_API = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
CHART_RBAC = (Path(__file__).resolve().parents[2] / "deploy" / "helm" / "agent-access-manager"
              / "templates" / "rbac.yaml")
EXAMPLE_DOCS = [d.value for f in discover([EXAMPLES]) for d in load_file(f)[0]]
PLURALS = {k: crd._plural(k) for k in crd.KINDS}
SA = "aam-pdp"


def _wait(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (got := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout_s:.0f} s")
        time.sleep(0.1)
    return got


def chart_role_rules() -> list[dict[str, Any]]:
    """The Role's rules as the chart renders them (its template has no value in them)."""
    text = CHART_RBAC.read_text()
    role = text.split("---")[0]
    body = "\n".join(line for line in role.splitlines() if "{{" not in line)
    return yaml.safe_load(body)["rules"]


@dataclass
class Namespace:
    """A fresh namespace with the CRDs, the PDP's ServiceAccount, Role and RoleBinding."""

    kube: Kube
    admin: requests.Session
    name: str
    token_file: Path

    def url(self, kind: str, name: str = "") -> str:
        base = f"{self.kube.url}/apis/{crd.API_VERSION}/namespaces/{self.name}/{PLURALS[kind]}"
        return f"{base}/{name}" if name else base

    def create(self, doc: dict[str, Any]) -> None:
        resp = self.admin.post(self.url(doc["kind"]), params={"fieldValidation": "Strict"},
                               json=doc, timeout=10)
        assert resp.status_code == 201, resp.text

    def get(self, kind: str, name: str) -> dict[str, Any]:
        resp = self.admin.get(self.url(kind, name), timeout=10)
        assert resp.status_code == 200, resp.text
        return resp.json()

    def patch_spec(self, kind: str, name: str, spec: dict[str, Any]) -> None:
        resp = self.admin.patch(self.url(kind, name), data=json.dumps({"spec": spec}),
                                headers={"Content-Type": "application/merge-patch+json"}, timeout=10)
        assert resp.status_code == 200, resp.text

    def delete(self, kind: str, name: str) -> None:
        resp = self.admin.delete(self.url(kind, name), timeout=10)
        assert resp.status_code == 200, resp.text

    def conditions(self, kind: str, name: str) -> dict[str, dict[str, Any]]:
        status = self.get(kind, name).get("status") or {}
        return {c["type"]: c for c in status.get("conditions") or []}


def _apply_crds(kube: Kube, http: requests.Session) -> None:
    for path in sorted(crd.CRD_DIR.glob("*.yaml")):
        body = yaml.safe_load(path.read_text())
        url = f"{kube.url}{CRD_API}/{body['metadata']['name']}"
        resp = http.patch(url, params={"fieldManager": "aam-crd-test", "force": "true"},
                          data=json.dumps(body),
                          headers={"Content-Type": "application/apply-patch+yaml"}, timeout=10)
        assert resp.status_code in (200, 201), resp.text

        def established(url: str = url) -> bool:
            st = http.get(url, timeout=5).json().get("status", {})
            conds = {c["type"]: c["status"] for c in st.get("conditions") or []}
            return conds.get("Established") == "True"
        _wait(established, 30, f"{path.name} Established")


@pytest.fixture
def ns(kube: Kube, tmp_path: Path) -> Iterator[Namespace]:
    http = kube.session()
    _apply_crds(kube, http)
    name = f"aam-{secrets.token_hex(4)}"
    api = f"{kube.url}/api/v1/namespaces"
    assert http.post(api, json={"metadata": {"name": name}}, timeout=10).status_code == 201
    rbac = f"{kube.url}/apis/rbac.authorization.k8s.io/v1/namespaces/{name}"
    for url, body in [
        (f"{api}/{name}/serviceaccounts", {"metadata": {"name": SA}}),
        (f"{rbac}/roles", {"metadata": {"name": SA}, "rules": chart_role_rules()}),
        (f"{rbac}/rolebindings", {
            "metadata": {"name": SA},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": SA},
            "subjects": [{"kind": "ServiceAccount", "name": SA, "namespace": name}]}),
    ]:
        resp = http.post(url, json=body, timeout=10)
        assert resp.status_code == 201, resp.text
    resp = http.post(f"{api}/{name}/serviceaccounts/{SA}/token",
                     json={"spec": {"expirationSeconds": 3600}}, timeout=10)
    assert resp.status_code == 201, resp.text
    token_file = tmp_path / "sa.token"
    token_file.write_text(resp.json()["status"]["token"])
    token_file.chmod(0o600)
    n = Namespace(kube, http, name, token_file)
    for kind in PLURALS:  # discovery lags Established by a moment
        _wait(lambda kind=kind: http.get(n.url(kind), timeout=5).status_code == 200, 30, f"{kind} served")
    try:
        yield n
    finally:
        http.delete(f"{api}/{name}", timeout=10)


@pytest.fixture
def examples(ns: Namespace) -> Namespace:
    for doc in EXAMPLE_DOCS:
        ns.create(copy.deepcopy(doc))
    return ns


def kube_stack(ns: Namespace) -> Any:
    return running_stack(EXAMPLES, policy_source="kubernetes", kube_api_url=ns.kube.url,
                         kube_token_file=str(ns.token_file), kube_ca_file=ns.kube.ca_file,
                         kube_namespace=ns.name)


def allowed(stack: Stack, model: str) -> tuple[bool, str]:
    channel, pdp = stub(stack)
    with channel:
        r = pdp.Authorize(request(model=model), timeout=10)
    return r.decision == pdp_pb2.DECISION_ALLOW, r.bundle_revision


def _policy() -> dict[str, Any]:
    return copy.deepcopy(next(d for d in EXAMPLE_DOCS if d["kind"] == "AgentPolicy"
                              and d["metadata"]["name"] == "finance-analyst-readonly"))


def test_examples_as_custom_resources_decide_and_report_status(examples: Namespace) -> None:
    with kube_stack(examples) as stack:
        ok, revision = allowed(stack, "summarization")
        assert ok
        assert revision == stack.store.current.revision
        for doc in EXAMPLE_DOCS:
            kind, name = doc["kind"], doc["metadata"]["name"]
            conds = _wait(lambda kind=kind, name=name: (
                c if (c := examples.conditions(kind, name)).get("Ready", {}).get("status") == "True"
                else None), 10, f"{kind}/{name} Ready")
            assert conds["Accepted"]["status"] == "True", conds
            status = examples.get(kind, name)["status"]
            assert status["bundleRevision"] == revision
            assert status["observedGeneration"] == examples.get(kind, name)["metadata"]["generation"]


def test_editing_a_policy_changes_decisions(examples: Namespace) -> None:
    with kube_stack(examples) as stack:
        assert allowed(stack, "summarization")[0]
        spec = _policy()["spec"]
        spec["models"]["allow"] = ["reasoning-high"]
        examples.patch_spec("AgentPolicy", "finance-analyst-readonly", spec)
        _wait(lambda: not allowed(stack, "summarization")[0], 10, "summarization denied")
        assert allowed(stack, "reasoning-high")[0]
        generation = examples.get("AgentPolicy", "finance-analyst-readonly")["metadata"]["generation"]
        _wait(lambda: examples.get("AgentPolicy", "finance-analyst-readonly").get("status", {})
              .get("observedGeneration") == generation, 10, "status of the new generation")


def test_a_broken_resource_is_reported_and_the_previous_bundle_decides(examples: Namespace) -> None:
    with kube_stack(examples) as stack:
        before = stack.store.current.revision
        spec = _policy()["spec"]
        spec["models"]["allow"] = ["reasoning-high", "no-such-route"]  # schema-valid, unknown
        examples.patch_spec("AgentPolicy", "finance-analyst-readonly", spec)
        conds = _wait(lambda: (c if (c := examples.conditions("AgentPolicy", "finance-analyst-readonly"))
                               .get("Accepted", {}).get("status") == "False" else None),
                      10, "Accepted=False")
        message = conds["Accepted"]["message"]
        assert conds["Accepted"]["reason"] == "CompileError"
        assert message.startswith(f"{examples.name}/agentpolicies/finance-analyst-readonly.yaml:"), message
        assert "no-such-route" in message and "is not defined by any ModelRoute" in message
        line, col = message.split(":")[1:3]
        assert line.isdigit() and col.isdigit(), message
        assert conds["Ready"]["status"] == "False"  # this generation is not served ...
        status = examples.get("AgentPolicy", "finance-analyst-readonly")["status"]
        assert status["bundleRevision"] == before  # ... the previous one is
        # Another resource of the same rejected set compiles: Accepted, still the old bundle.
        assert examples.conditions("Tool", "salesforce-accounts")["Accepted"]["status"] == "True"
        ok, revision = allowed(stack, "summarization")  # the previous bundle keeps deciding
        assert ok and revision == before
        assert stack.store.current.revision == before


def test_deleting_a_resource_withdraws_its_grants(examples: Namespace) -> None:
    with kube_stack(examples) as stack:
        assert allowed(stack, "summarization")[0]
        examples.delete("AgentPolicy", "finance-analyst-readonly")
        _wait(lambda: not allowed(stack, "summarization")[0], 10, "grants withdrawn")
        assert not allowed(stack, "reasoning-high")[0]


def _can(ns: Namespace, verb: str, resource: str, group: str = "", subresource: str = "") -> bool:
    """SelfSubjectAccessReview with the PDP's own token."""
    http = requests.Session()
    http.trust_env = False
    http.verify = ns.kube.ca_file
    http.headers["Authorization"] = f"Bearer {ns.token_file.read_text()}"
    attrs = {"namespace": ns.name, "verb": verb, "resource": resource, "group": group,
             "subresource": subresource}
    resp = http.post(f"{ns.kube.url}/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                     json={"spec": {"resourceAttributes": attrs}}, timeout=10)
    assert resp.status_code == 201, resp.text
    return bool(resp.json()["status"]["allowed"])


def test_the_service_account_only_reads_the_kinds_and_writes_their_status(examples: Namespace) -> None:
    with kube_stack(examples) as stack:  # the source works on this token alone
        assert allowed(stack, "summarization")[0]
    group = crd.GROUP
    for plural in PLURALS.values():
        for verb in ("get", "list", "watch"):
            assert _can(examples, verb, plural, group), (verb, plural)
        for verb in ("get", "patch", "update"):
            assert _can(examples, verb, plural, group, "status"), (verb, plural, "status")
        for verb in ("create", "update", "patch", "delete", "deletecollection"):
            assert not _can(examples, verb, plural, group), (verb, plural)
    assert not _can(examples, "create", "pods")
    assert not _can(examples, "get", "secrets")
    assert not _can(examples, "list", "secrets")
    assert not _can(examples, "list", "configmaps")
    assert not _can(examples, "create", "rolebindings", "rbac.authorization.k8s.io")
    # And directly: the same token cannot change a resource's spec, read a Secret or make a pod.
    http = requests.Session()
    http.trust_env = False
    http.verify = examples.kube.ca_file
    http.headers["Authorization"] = f"Bearer {examples.token_file.read_text()}"
    spec = _policy()["spec"]
    resp = http.patch(examples.url("AgentPolicy", "finance-analyst-readonly"),
                      data=json.dumps({"spec": spec}),
                      headers={"Content-Type": "application/merge-patch+json"}, timeout=10)
    assert resp.status_code == 403, resp.text
    api = f"{examples.kube.url}/api/v1/namespaces/{examples.name}"
    assert http.get(f"{api}/secrets", timeout=10).status_code == 403
    pod = {"metadata": {"name": "x"}, "spec": {"containers": [{"name": "x", "image": "x"}]}}
    assert http.post(f"{api}/pods", json=pod, timeout=10).status_code == 403
    # Nor anything in another namespace, nor cluster-wide.
    other = f"{examples.kube.url}/apis/{crd.API_VERSION}/agentpolicies"
    assert http.get(other, timeout=10).status_code == 403


def test_a_label_selector_chooses_the_policy_set(examples: Namespace) -> None:
    """kube_label_selector: only labelled resources are compiled; the rest decide nothing."""
    labelled = {"metadata": {"labels": {"aam.set": "blue"}}}
    for doc in EXAMPLE_DOCS:
        if not (doc["kind"] == "AgentPolicy" and doc["metadata"]["name"] == "finance-analyst-readonly"):
            resp = examples.admin.patch(examples.url(doc["kind"], doc["metadata"]["name"]),
                                        data=json.dumps(labelled),
                                        headers={"Content-Type": "application/merge-patch+json"},
                                        timeout=10)
            assert resp.status_code == 200, resp.text
    with running_stack(EXAMPLES, policy_source="kubernetes", kube_api_url=examples.kube.url,
                       kube_token_file=str(examples.token_file), kube_ca_file=examples.kube.ca_file,
                       kube_namespace=examples.name, kube_label_selector="aam.set=blue") as stack:
        ok, _ = allowed(stack, "summarization")
        assert not ok  # finance-analyst-readonly carries no label: not in the set
        examples.admin.patch(examples.url("AgentPolicy", "finance-analyst-readonly"),
                             data=json.dumps(labelled),
                             headers={"Content-Type": "application/merge-patch+json"}, timeout=10)
        _wait(lambda: allowed(stack, "summarization")[0], 10, "the labelled policy decides")
