"""Settings of where the policy set comes from: a directory (compiled, maybe watched) or the
Kubernetes API server's custom resources (pdp/kubesource.py)."""

from __future__ import annotations

from dataclasses import dataclass

from pdp.settingbase import REPO_ROOT, SettingsPart, setting_error

POLICY_SOURCES = ("directory", "kubernetes")


@dataclass(frozen=True)
class PolicySettings(SettingsPart):
    """Where the policy set comes from, and the shadow set."""

    # Policy directory compiled into the bundle the PDP serves.
    policies: str = str(REPO_ROOT / "examples")
    # A whole candidate policy set evaluated in shadow beside the enforced one: its
    # AgentPolicies never decide, their disagreements are audited and counted
    # (docs/ledger-and-audit.md, "Shadow rollout"). "" for none.
    shadow_policies: str = ""
    # Recompile and republish the bundle when a policy file changes.
    watch: bool = False
    # Where the policy set comes from: "directory" (policies above) or "kubernetes": the
    # AgentPolicy, ModelRoute, Tool and ToolCredential custom resources of the API server
    # (pdp/kubesource.py), watched (always, whatever watch says), each resource's compile
    # outcome written to its status.
    policy_source: str = "directory"
    # policy_source = kubernetes: the API server's URL; the default is the in-cluster name.
    kube_api_url: str = "https://kubernetes.default.svc"
    # Bearer token file (re-read on every request: kubelet rotates projected tokens) and
    # the CA bundle the API server's certificate must chain to; both default to the pod's
    # service-account mount.
    kube_token_file: str = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    kube_ca_file: str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    # Namespace whose resources make the policy set; "" for all namespaces (needs a
    # ClusterRole rather than a Role).
    kube_namespace: str = ""
    # Label selector (the API server's syntax, e.g. "team=finance") the resources must
    # match; "" for all.
    kube_label_selector: str = ""

    def validate(self) -> None:
        if self.policy_source not in POLICY_SOURCES:
            raise setting_error("policy_source", f"must be {' or '.join(POLICY_SOURCES)}, "
                                                 f"got {self.policy_source!r}")
        if self.policy_source != "kubernetes":
            return
        if not self.kube_api_url.startswith("https://"):
            raise setting_error("kube_api_url", f"must be https://..., got {self.kube_api_url!r}")
        for name in ("kube_token_file", "kube_ca_file"):
            if not getattr(self, name):
                raise setting_error(name, "must not be empty with policy_source = kubernetes")
