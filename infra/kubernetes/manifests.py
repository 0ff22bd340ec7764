"""What a stack installs on its Kubernetes cluster, as plain manifests (dicts, camelCase as the API
server reads them): pure functions, no Pulumi, no client.

`ClusterInstall` (install.py) creates exactly these objects with pulumi-kubernetes' typed
resources, and the tests validate each one against the pinned Kubernetes version's schemas and
the upstream CRDs (Kueue kueue.x-k8s.io/v1beta1, prometheus-operator monitoring.coreos.com/v1).
Values may be Pulumi outputs (an identity's ARN, email or client id): Pulumi resolves them where
the dict is passed as a resource input.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from stackwise.adapters.kube import MANAGED_BY

from ..config import GPU_LABEL, GPU_TAINT, SPOT_LABEL, SPOT_TAINT

RBAC_GROUP = "rbac.authorization.k8s.io"
KUEUE_VERSION = "kueue.x-k8s.io/v1beta1"
"""Served by every Kueue release up to v0.19 (v1beta2 is its storage version since v0.15)."""
PODMONITOR_VERSION = "monitoring.coreos.com/v1"
ENDPOINT_LABEL = "stackwise.dev/endpoint"
"""Every serving pod of an endpoint carries it (the deploy adapter's label); the PodMonitor selects on it."""
METRICS_PORT = "http"
"""The serving container's port name (`stackwise serve` answers /metrics on it)."""

# What submitters (the `submitters` groups) may do in the stack's namespace: exactly the calls the
# kubernetes compute adapter (jobs, their pods and logs, the headless Service of a multi-node job)
# and deploy adapter (Deployments, Services, HTTPRoutes, KEDA ScaledObjects) make, plus reading
# Kueue's Workloads (why a job waits) and events (why a pod is unschedulable). Listing nodes
# (the compute adapter's check that a GPU exists) needs a ClusterRole and is not granted: without it
# the adapter skips that check and relies on the pod's scheduling events.
SUBMITTER_RULES: list[dict[str, Any]] = [
    {"apiGroups": ["batch"], "resources": ["jobs"],
     "verbs": ["create", "get", "list", "watch", "delete", "patch"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["services"], "verbs": ["create", "get", "list", "delete", "patch", "update"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["apps"], "resources": ["deployments"],
     "verbs": ["create", "get", "list", "watch", "delete", "patch", "update"]},
    {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["httproutes"],
     "verbs": ["create", "get", "list", "delete", "patch", "update"]},
    {"apiGroups": ["keda.sh"], "resources": ["scaledobjects"],
     "verbs": ["create", "get", "list", "delete", "patch", "update"]},
    {"apiGroups": ["kueue.x-k8s.io"], "resources": ["workloads"], "verbs": ["get", "list", "watch"]},
]


@dataclass(frozen=True)
class Queue:
    """A Kueue queue the program creates: two ResourceFlavors, a ClusterQueue, a LocalQueue.

    CPU and memory are one resource group with a flavor that names no nodes, GPUs another with a
    flavor that names the GPU nodes (a created pool's labels): Kueue assigns a flavor per group, so a
    CPU-only job is not pinned to GPU nodes, and a GPU job is placed where its GPUs are.
    """

    name: str
    cluster_queue: str
    gpus: int
    cpu: int
    memory: str
    gpu_node_labels: dict[str, str] = field(default_factory=dict)

    @property
    def cpu_flavor(self) -> str:
        return f"{self.cluster_queue}-cpu"

    @property
    def gpu_flavor(self) -> str:
        return f"{self.cluster_queue}-gpu"


@dataclass(frozen=True)
class Install:
    """Everything the program installs on a cluster."""

    namespace: str
    service_account: str
    sa_annotations: dict[str, Any] = field(default_factory=dict)
    """Workload identity annotations (GKE, AKS); values may be Pulumi outputs."""
    sa_labels: dict[str, str] = field(default_factory=dict)
    submitters: tuple[str, ...] = ()
    queue: Queue | None = None
    pod_monitor: bool = False
    stack: str = ""


def _meta(name: str, namespace: str | None = None, labels: dict[str, str] | None = None,
          annotations: dict[str, Any] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    meta["labels"] = {**MANAGED_BY, **(labels or {})}
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def namespace(name: str, stack: str = "") -> dict[str, Any]:
    labels = {"stackwise.dev/stack": stack} if stack else {}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(name, labels=labels)}


def service_account(namespace: str, name: str, annotations: dict[str, Any] | None = None,
                    labels: dict[str, str] | None = None) -> dict[str, Any]:
    """The service account every job and endpoint pod runs as, annotated for the cloud's workload
    identity (`workload_identity`)."""
    return {"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": _meta(name, namespace, labels=labels, annotations=annotations)}


def submitter_role(namespace: str, name: str = "stackwise-submitter") -> dict[str, Any]:
    return {"apiVersion": f"{RBAC_GROUP}/v1", "kind": "Role", "metadata": _meta(name, namespace),
            "rules": [dict(rule) for rule in SUBMITTER_RULES]}


def submitter_binding(namespace: str, groups: list[str] | tuple[str, ...],
                      role: str = "stackwise-submitter") -> dict[str, Any]:
    return {"apiVersion": f"{RBAC_GROUP}/v1", "kind": "RoleBinding", "metadata": _meta(role, namespace),
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": "Role", "name": role},
            "subjects": [{"kind": "Group", "apiGroup": RBAC_GROUP, "name": g} for g in groups]}


def resource_flavors(queue: Queue) -> list[dict[str, Any]]:
    gpu_spec = {"nodeLabels": dict(queue.gpu_node_labels)} if queue.gpu_node_labels else {}
    return [{"apiVersion": KUEUE_VERSION, "kind": "ResourceFlavor", "metadata": _meta(queue.cpu_flavor), "spec": {}},
            {"apiVersion": KUEUE_VERSION, "kind": "ResourceFlavor", "metadata": _meta(queue.gpu_flavor),
             "spec": gpu_spec}]


def cluster_queue(queue: Queue, namespace: str) -> dict[str, Any]:
    """A ClusterQueue that admits workloads of `namespace` only, up to the CPU, memory and GPU quotas."""
    cpu = [{"name": "cpu", "nominalQuota": queue.cpu}, {"name": "memory", "nominalQuota": queue.memory}]
    gpu = [{"name": "nvidia.com/gpu", "nominalQuota": queue.gpus}]
    return {"apiVersion": KUEUE_VERSION, "kind": "ClusterQueue", "metadata": _meta(queue.cluster_queue), "spec": {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
        "queueingStrategy": "BestEffortFIFO",
        "resourceGroups": [
            {"coveredResources": ["cpu", "memory"], "flavors": [{"name": queue.cpu_flavor, "resources": cpu}]},
            {"coveredResources": ["nvidia.com/gpu"], "flavors": [{"name": queue.gpu_flavor, "resources": gpu}]},
        ]}}


def local_queue(queue: Queue, namespace: str) -> dict[str, Any]:
    return {"apiVersion": KUEUE_VERSION, "kind": "LocalQueue", "metadata": _meta(queue.name, namespace),
            "spec": {"clusterQueue": queue.cluster_queue}}


def pod_monitor(namespace: str, name: str = "stackwise-endpoints") -> dict[str, Any]:
    """prometheus-operator's PodMonitor: scrape /metrics of every serving pod in the namespace (the
    pods labelled stackwise.dev/endpoint), so KEDA's Prometheus trigger sees the serving metrics."""
    return {"apiVersion": PODMONITOR_VERSION, "kind": "PodMonitor", "metadata": _meta(name, namespace), "spec": {
        "selector": {"matchExpressions": [{"key": ENDPOINT_LABEL, "operator": "Exists"}]},
        "namespaceSelector": {"matchNames": [namespace]},
        "podMetricsEndpoints": [{"port": METRICS_PORT, "path": "/metrics", "interval": "15s"}]}}


def manifests(install: Install) -> list[dict[str, Any]]:
    """The objects, in the order they are created (the namespace first, each queue after what it names)."""
    ns = install.namespace
    found = [namespace(ns, install.stack),
             service_account(ns, install.service_account, install.sa_annotations, install.sa_labels)]
    if install.submitters:
        found += [submitter_role(ns), submitter_binding(ns, install.submitters)]
    if install.queue is not None:
        found += [*resource_flavors(install.queue), cluster_queue(install.queue, ns), local_queue(install.queue, ns)]
    if install.pod_monitor:
        found.append(pod_monitor(ns))
    return found


# -- workload identity ------------------------------------------------------------------------------
GKE_SA_ANNOTATION = "iam.gke.io/gcp-service-account"
AKS_CLIENT_ID_ANNOTATION = "azure.workload.identity/client-id"
AKS_USE_LABEL = "azure.workload.identity/use"
IRSA_ANNOTATION = "eks.amazonaws.com/role-arn"


def workload_identity(cloud: str, identity: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """(service account annotations, pod labels) that make pods run as the platform's job identity.

    AWS uses EKS Pod Identity (an association of namespace/service account with the job role,
    made through the EKS API: no annotation; the IRSA annotation `eks.amazonaws.com/role-arn`
    would need the role to trust the cluster's OIDC provider, and would win over Pod Identity in
    the SDKs' credential chain). GCP: the Google service account's email; AKS: the user-assigned
    identity's client id, and the pod label that makes the webhook inject the token.
    """
    if cloud == "gcp":
        return {GKE_SA_ANNOTATION: identity}, {}
    if cloud == "azure":
        return {AKS_CLIENT_ID_ANNOTATION: identity}, {AKS_USE_LABEL: "true"}
    return {}, {}


def identity_subject(namespace: str, service_account: str) -> str:
    """The service account as OIDC tokens name it (AKS federated credential subject)."""
    return f"system:serviceaccount:{namespace}:{service_account}"


# -- kubeconfig for the program's provider ---------------------------------------------------------
def kubeconfig(name: str, server: str, ca_data: str, command: str, args: list[str],
               env: dict[str, str] | None = None, install_hint: str = "") -> str:
    """A kubeconfig (JSON) for a created cluster, authenticating through an exec plugin (`aws eks
    get-token`, `gke-gcloud-auth-plugin`, `kubelogin`): it holds no credential, only how to get one
    on the machine running `pulumi up`."""
    user_exec: dict[str, Any] = {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": command,
                                 "args": list(args), "interactiveMode": "Never"}
    if env:
        user_exec["env"] = [{"name": k, "value": v} for k, v in env.items()]
    if install_hint:
        user_exec["installHint"] = install_hint
    if command == "gke-gcloud-auth-plugin":
        user_exec["provideClusterInfo"] = True
    return json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": name,
        "clusters": [{"name": name, "cluster": {"server": server, "certificate-authority-data": ca_data}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "users": [{"name": name, "user": {"exec": user_exec}}],
    }, sort_keys=True)


def eks_kubeconfig(name: str, endpoint: str, ca_data: str, region: str) -> str:
    return kubeconfig(name, endpoint, ca_data, "aws",
                      ["eks", "get-token", "--cluster-name", name, "--region", region, "--output", "json"],
                      install_hint="install the AWS CLI v2: https://docs.aws.amazon.com/cli/")


def gke_kubeconfig(name: str, endpoint: str, ca_data: str) -> str:
    return kubeconfig(name, f"https://{endpoint}", ca_data, "gke-gcloud-auth-plugin", [],
                      install_hint="gcloud components install gke-gcloud-auth-plugin")


# The Entra ID application every AKS cluster with managed Entra ID integration names as its server.
AKS_SERVER_ID = "6dae42f8-4368-4678-94ff-3960e28e3630"


def aks_kubeconfig(name: str, server: str, ca_data: str) -> str:
    return kubeconfig(name, server, ca_data, "kubelogin",
                      ["get-token", "--login", "azurecli", "--server-id", AKS_SERVER_ID],
                      install_hint="az aks install-cli (installs kubelogin)")


# -- node pools the program creates ----------------------------------------------------------------
def pool_labels_and_taints(gpu: str, spot: bool) -> tuple[dict[str, str], list[dict[str, str]]]:
    """The labels and taints of a created GPU pool: jobs select the GPU by stackwise.dev/gpu and
    tolerate nvidia.com/gpu; spot pools are labelled and tainted stackwise.dev/spot."""
    labels = {GPU_LABEL: gpu}
    taints = [dict(GPU_TAINT)]
    if spot:
        labels[SPOT_LABEL] = "true"
        taints.append(dict(SPOT_TAINT))
    return labels, taints
