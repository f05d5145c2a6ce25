"""The Helm chart (deploy/helm/agent-access-manager): lint, render, validate, apply.

- ``helm lint --strict`` passes for every value set below;
- ``helm template`` of each renders, and every object validates offline against the
  Kubernetes 1.37 schemas (kubernetes-validate, strict: unknown fields fail), CRDs included;
- the rendered pdp.toml is accepted by the PDP's own settings loader (pdp.config);
- safety properties: non-root, read-only root filesystem, no privilege escalation, no
  capabilities, seccomp; secrets only by secretKeyRef or Secret volumes, never a Secret object
  or a secret value in a ConfigMap; a PodDisruptionBudget when replicas > 1; the NetworkPolicy;
- the chart's crds/ are deploy/crds (one source of truth);
- the rendered objects that need no kubelet are applied to a real kube-apiserver and stored.

helm is what scripts/setup builds (pinned); a missing helm or kubernetes-validate fails
here, never skips.
"""

from __future__ import annotations

import os
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pdp.config import DEFAULT_TOOLS_DIR, Settings
from tests import servers

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "agent-access-manager"
CRDS = ROOT / "deploy" / "crds"
HELM_VERSION = "v3.22"
K8S_VERSION = "1.37.0"
NAMESPACE = "aam-helm"

EXAMPLE_POLICIES = {p.name: p.read_text() for p in sorted((ROOT / "examples").glob("*.yaml"))}

VALUE_SETS: dict[str, dict[str, Any]] = {
    # The chart's defaults plus the one thing it cannot default: policies.
    "defaults": {"policies": {"files": EXAMPLE_POLICIES}},
    # Production shape: PostgreSQL, Vault AppRole, mTLS, 3 replicas of 2 workers, ext_authz on
    # its own port, and the experimental custom-resource RBAC rendered.
    "production": {
        "replicaCount": 3,
        "workers": 2,
        "image": {"repository": "registry.example/aam-pdp", "tag": "0.1.0"},
        "extAuthz": {"port": 9191},
        "tls": {"enabled": True, "secretName": "aam-svid"},
        "ledger": {"enabled": True, "secretName": "aam-ledger"},
        "audit": {"keySecretName": "aam-audit-key"},
        "vault": {"enabled": True, "addr": "https://vault.internal:8200",
                  "secretName": "aam-vault-approle", "caConfigMap": "vault-ca"},
        "bundleSigning": {"secretName": "aam-bundle-signing"},
        "config": {"trusted_gateways": ["spiffe://prod/gateway/envoy"],
                   "trust_domains": ["prod"], "opa_timeout_ms": 250},
        "policies": {"files": EXAMPLE_POLICIES, "customResourcesRBAC": True},
    },
    # Policies from a ConfigMap managed outside the chart, a plaintext PDP with a gateway
    # token, and the PDP's own (managed) OPA instead of the sidecar.
    "policies-configmap": {
        "replicaCount": 2,
        "gatewayToken": {"secretName": "aam-gateway-token"},
        "opa": {"mode": "managed"},
        "policies": {"source": "existingConfigMap", "existingConfigMap": "team-policies"},
    },
    # Policies from the custom resources of the release's namespace, on the chart's Role.
    "policies-customresources": {"policies": {"source": "customResources"}},
    # Policies from any volume (a git-sync emptyDir, a PVC): the directory inside it.
    "policies-volume": {
        "policies": {"source": "volume", "volume": {"emptyDir": {}}, "path": "repo/policies"},
    },
}
# Fake values of the Secrets a value set names: the PDP reads them from the environment.
SECRET_ENV = {"production": {"AAM_LEDGER_URL": "host=postgres dbname=aam user=aam_pdp",
                             "AAM_VAULT_ROLE_ID": "role-id"}}
# Kinds a kube-apiserver stores without a kubelet or controllers having to run anything.
STORED_KINDS = {"CustomResourceDefinition", "ServiceAccount", "Role", "RoleBinding", "ConfigMap",
                "Service", "Deployment", "PodDisruptionBudget", "NetworkPolicy"}


@pytest.fixture(scope="module")
def helm() -> str:
    path = DEFAULT_TOOLS_DIR / "bin" / "helm"
    if not os.access(path, os.X_OK):
        pytest.fail(f"helm not found at {path}; run scripts/setup", pytrace=False)
    out = subprocess.run([str(path), "version", "--short"], capture_output=True, text=True,
                         check=True).stdout
    assert out.startswith(HELM_VERSION), f"{path} is {out.strip()}, want {HELM_VERSION} (scripts/setup)"
    return str(path)


def _values_file(tmp: Path, name: str) -> Path:
    f = tmp / f"{name}-values.yaml"
    f.write_text(yaml.safe_dump(VALUE_SETS[name]))
    return f


def _helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=60)


def render(helm: str, tmp: Path, name: str) -> list[dict[str, Any]]:
    r = _helm(helm, "template", "aam", str(CHART), "--namespace", NAMESPACE, "--include-crds",
              "-f", str(_values_file(tmp, name)))
    assert r.returncode == 0, f"helm template ({name}) failed:\n{r.stderr}"
    return [d for d in yaml.safe_load_all(r.stdout) if d]


@pytest.fixture(scope="module")
def rendered(helm: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("helm")
    return {name: render(helm, tmp, name) for name in VALUE_SETS}


def kinds(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = kinds(docs, kind)
    assert len(found) == 1, f"want one {kind}, got {len(found)}"
    return found[0]


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


def containers(docs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    spec = pod_spec(docs)
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_lint(helm: str, tmp_path: Path, name: str) -> None:
    r = _helm(helm, "lint", "--strict", str(CHART), "-f", str(_values_file(tmp_path, name)))
    assert r.returncode == 0, f"helm lint ({name}):\n{r.stdout}\n{r.stderr}"
    assert "0 chart(s) failed" in r.stdout


@pytest.mark.parametrize("values, message", [
    ({}, "policies.files is empty"),
    ({"policies": {"source": "crds"}}, "policies.source must be configMap"),
    ({"policies": {"files": {"a.yaml": "x"}}, "ledger": {"enabled": True, "secretName": "l"}},
     "needs audit.keySecretName"),
    ({"policies": {"files": {"a.yaml": "x"}}, "config": {"ledger_url": "postgresql://x"}},
     "config.ledger_url is set by the chart"),
])
def test_refused_values_fail_with_a_message(helm: str, tmp_path: Path, values: dict[str, Any],
                                            message: str) -> None:
    f = tmp_path / "values.yaml"
    f.write_text(yaml.safe_dump(values))
    r = _helm(helm, "template", "aam", str(CHART), "-f", str(f))
    assert r.returncode != 0 and message in r.stderr, r.stderr


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_object_validates_against_kubernetes_schemas(
        rendered: dict[str, list[dict[str, Any]]], name: str) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail("kubernetes-validate is missing; run scripts/setup", pytrace=False)
    docs = rendered[name]
    assert {"Deployment", "Service", "ConfigMap", "CustomResourceDefinition"} <= {d["kind"] for d in docs}
    for doc in docs:
        # strict: a field the schema does not know (a typo, a wrong level) fails.
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_rendered_settings_load(rendered: dict[str, list[dict[str, Any]]], tmp_path: Path,
                                name: str) -> None:
    """The PDP's own loader accepts the rendered pdp.toml (unknown or malformed settings fail)."""
    config = next(c for c in kinds(rendered[name], "ConfigMap") if "pdp.toml" in c["data"])
    f = tmp_path / "pdp.toml"
    f.write_text(config["data"]["pdp.toml"])
    settings = Settings.load(f, env=SECRET_ENV.get(name, {}))
    assert settings.grpc_addr == "0.0.0.0:50051"
    assert settings.policies == ("/etc/aam/policies/repo/policies" if name == "policies-volume"
                                 else "/etc/aam/policies")
    if name == "production":
        assert not settings.plaintext and settings.tls_cert and settings.tls_client_ca
        assert settings.workers == 2 and settings.broker == "vault"
        assert settings.ledger_url.startswith("host=") and settings.audit_key_file
        assert settings.opa_url == "http://127.0.0.1:8181" and settings.bundle_signing_key
        assert settings.trusted_gateways == ("spiffe://prod/gateway/envoy",)
        assert settings.extauthz_addr == "0.0.0.0:9191"
    if name == "policies-customresources":
        assert settings.policy_source == "kubernetes" and settings.kube_namespace == NAMESPACE
    if name == "policies-configmap":
        assert settings.plaintext and settings.gateway_token_file
        assert settings.opa_url == "" and settings.opa_binary == "/usr/local/bin/opa"


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_pod_security(rendered: dict[str, list[dict[str, Any]]], name: str) -> None:
    docs = rendered[name]
    spec = pod_spec(docs)
    pod_sc = spec["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] != 0
    assert spec["automountServiceAccountToken"] is (name in ("production", "policies-customresources"))
    for c in containers(docs):
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True, c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"], c["name"]
        assert sc["seccompProfile"]["type"] == "RuntimeDefault", c["name"]
        assert "privileged" not in sc and "resources" in c, c["name"]
        # Writable paths are volumes: /tmp for the PDP and OPA.
        if c["name"] in ("pdp", "opa"):
            assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}, c["name"]
    assert not spec.get("hostNetwork") and not spec.get("hostPID")


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_secrets_only_by_reference(rendered: dict[str, list[dict[str, Any]]], name: str) -> None:
    docs = rendered[name]
    assert not kinds(docs, "Secret"), "the chart never renders a Secret (values hold no secrets)"
    for c in containers(docs):
        for env in c.get("env", []):
            if env["name"].startswith("AAM_"):
                assert set(env) == {"name", "valueFrom"} and "secretKeyRef" in env["valueFrom"], env
    text = yaml.safe_dump_all(kinds(docs, "ConfigMap"))
    for marker in ("PRIVATE KEY", "password", "secret_id =", "ledger_url", "vault_role_id"):
        assert marker not in text, f"{marker!r} in a ConfigMap"
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    if name == "production":
        env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in one(docs, "Deployment")
               ["spec"]["template"]["spec"]["containers"][0]["env"] if "valueFrom" in e}
        assert env["AAM_LEDGER_URL"] == {"name": "aam-ledger", "key": "url"}
        assert env["AAM_VAULT_ROLE_ID"] == {"name": "aam-vault-approle", "key": "role-id"}
        for vol, secret in [("tls", "aam-svid"), ("vault-secret-id", "aam-vault-approle"),
                            ("audit-key", "aam-audit-key"), ("bundle-signing-key", "aam-bundle-signing")]:
            assert volumes[vol]["secret"]["secretName"] == secret
        # The files the PDP requires to be 0600 reach it through the init container's copy.
        init = pod_spec(docs)["initContainers"][0]
        assert {m["name"] for m in init["volumeMounts"]} == {
            "secret-files", "bundle-signing-key", "audit-key"}
        opa = next(c for c in containers(docs) if c["name"] == "opa")
        assert {m["name"] for m in opa["volumeMounts"]} == {
            "config", "bundle-signing-public-key", "tmp"}, "OPA gets the public key only"


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_probes(rendered: dict[str, list[dict[str, Any]]], name: str) -> None:
    pdp = next(c for c in containers(rendered[name]) if c["name"] == "pdp")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if name == "production":  # mTLS: the kubelet has no client certificate
            assert pdp[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}
        else:  # plaintext: the kubelet asks grpc.health.v1.Health
            assert pdp[probe]["grpc"] == {"port": 50051}
    opa = [c for c in containers(rendered[name]) if c["name"] == "opa"]
    if name != "policies-configmap":
        assert opa[0]["readinessProbe"]["httpGet"]["path"] == "/health?bundles"
    else:
        assert not opa


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_disruption_budget_and_network_policy(rendered: dict[str, list[dict[str, Any]]],
                                              name: str) -> None:
    docs = rendered[name]
    replicas = one(docs, "Deployment")["spec"]["replicas"]
    assert replicas == VALUE_SETS[name].get("replicaCount", 1)
    pdbs = kinds(docs, "PodDisruptionBudget")
    assert len(pdbs) == (1 if replicas > 1 else 0)
    selector = one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    if pdbs:
        assert pdbs[0]["spec"]["selector"]["matchLabels"] == selector
    netpol = one(docs, "NetworkPolicy")["spec"]
    assert netpol["podSelector"]["matchLabels"] == selector and netpol["policyTypes"] == ["Ingress"]
    gateways, metrics = netpol["ingress"]
    assert gateways["from"][0]["podSelector"] == {"matchLabels": {"access.envisionai.dev/gateway": "true"}}
    assert {p["port"] for p in gateways["ports"]} == (
        {"grpc", "ext-authz"} if name == "production" else {"grpc"})
    assert metrics["from"] == [{"namespaceSelector": {
        "matchLabels": {"access.envisionai.dev/metrics": "true"}}}]
    assert [p["port"] for p in metrics["ports"]] == ["metrics"]


def test_custom_resource_rbac_is_read_only_on_the_four_kinds(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    assert not kinds(rendered["defaults"], "Role") and not kinds(rendered["defaults"], "ClusterRole")
    rules = one(rendered["production"], "Role")["rules"]
    groups = {yaml.safe_load(p.read_text())["spec"]["group"] for p in CRDS.glob("*.yaml")}
    plurals = sorted(yaml.safe_load(p.read_text())["spec"]["names"]["plural"] for p in CRDS.glob("*.yaml"))
    assert rules == [
        {"apiGroups": sorted(groups), "resources": plurals, "verbs": ["get", "list", "watch"]},
        {"apiGroups": sorted(groups), "resources": [f"{p}/status" for p in plurals],
         "verbs": ["get", "patch", "update"]},
    ]
    assert not kinds(rendered["production"], "ClusterRole")
    assert one(rendered["policies-customresources"], "Role")["rules"] == rules
    binding = one(rendered["policies-customresources"], "RoleBinding")
    assert binding["subjects"][0]["name"] == one(rendered["policies-customresources"],
                                                 "ServiceAccount")["metadata"]["name"]


def test_chart_crds_are_deploy_crds(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """One source of truth: the chart's crds/ is a symlink to deploy/crds (generated)."""
    assert (CHART / "crds").resolve() == CRDS.resolve()
    want = sorted(yaml.safe_load(p.read_text())["metadata"]["name"] for p in CRDS.glob("*.yaml"))
    got = sorted(d["metadata"]["name"] for d in kinds(rendered["defaults"], "CustomResourceDefinition"))
    assert got == want


# --- applied to a real kube-apiserver -------------------------------------------------------

def _url(doc: dict[str, Any]) -> str:
    group_version: str = doc["apiVersion"]
    base = f"/api/{group_version}" if "/" not in group_version else f"/apis/{group_version}"
    plural = {"NetworkPolicy": "networkpolicies", "PodDisruptionBudget": "poddisruptionbudgets",
              "CustomResourceDefinition": "customresourcedefinitions"}.get(
        doc["kind"], doc["kind"].lower() + "s")
    name = doc["metadata"]["name"]
    if doc["kind"] == "CustomResourceDefinition":
        return f"{base}/{plural}/{name}"
    return f"{base}/namespaces/{NAMESPACE}/{plural}/{name}"


def test_rendered_objects_are_stored_by_a_real_api_server(
        rendered: dict[str, list[dict[str, Any]]], kube: servers.Kube) -> None:
    """Server-side apply of every object a kube-apiserver stores without a kubelet: the API
    server's own validation and admission (beyond the OpenAPI schemas) accept them."""
    s = kube.session()
    r = s.post(f"{kube.url}/api/v1/namespaces",
               json={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    assert r.status_code in (201, 409), r.text
    for name in ("production", "defaults", "policies-configmap", "policies-volume"):
        docs = rendered[name]
        assert {d["kind"] for d in docs} <= STORED_KINDS, {d["kind"] for d in docs} - STORED_KINDS
        for doc in docs:
            r = s.patch(f"{kube.url}{_url(doc)}", params={"fieldManager": "aam-helm-test", "force": "true"},
                        data=yaml.safe_dump(doc),
                        headers={"Content-Type": "application/apply-patch+yaml"})
            assert r.status_code in (200, 201), f"{name}: {doc['kind']} {doc['metadata']['name']}: {r.text}"
        stored = s.get(f"{kube.url}{_url(one(docs, 'Deployment'))}").json()
        assert stored["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
        assert stored["spec"]["replicas"] == VALUE_SETS[name].get("replicaCount", 1)


def test_rendered_settings_are_valid_toml(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for docs in rendered.values():
        config = next(c for c in kinds(docs, "ConfigMap") if "pdp.toml" in c["data"])
        tomllib.loads(config["data"]["pdp.toml"])
        if "opa-config.yaml" in config["data"]:
            opa = yaml.safe_load(config["data"]["opa-config.yaml"])
            assert opa["bundles"]["aam"]["signing"]["keyid"] == "aam"
            assert "decision_logs" not in opa and "status" not in opa
