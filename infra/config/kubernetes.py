"""Where a cloud stack's jobs and endpoints run (`stackwise:compute`), and the Kubernetes cluster of
a `compute: {kind: kubernetes}` stack (`stackwise:kubernetes`; docs/kubernetes.md)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from stackwise import catalog

from .base import ConfigModel, from_catalog

# A Kubernetes object name (an RFC 1123 label): namespaces, service accounts, queues, groups' Roles.
K8S_NAME = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
# The labels and taints of the node pools the program creates (docs/kubernetes.md): jobs and
# endpoints select the GPU by GPU_LABEL, tolerate the GPU taint, and spot jobs the spot taint.
GPU_LABEL = "stackwise.dev/gpu"
SPOT_LABEL = "stackwise.dev/spot"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
SPOT_TAINT = {"key": SPOT_LABEL, "value": "true", "effect": "NoSchedule"}


class ComputeConfig(ConfigModel):
    """Where a cloud stack's jobs and endpoints run (`stackwise:compute`)."""

    kind: Literal["managed", "kubernetes"] = Field(
        "managed", description="managed: the cloud's ML service (SageMaker, Vertex AI, Azure ML); kubernetes: a "
        "cluster (stackwise:kubernetes; docs/kubernetes.md).")


class QueueConfig(ConfigModel):
    """A Kueue queue the program creates: a ResourceFlavor, a ClusterQueue with these quotas, and the
    LocalQueue `name` in the stack's namespace that jobs are submitted to."""

    name: str = Field("stackwise", pattern=K8S_NAME, description="The LocalQueue's name (jobs' queue-name label).")
    cluster_queue: str | None = Field(None, pattern=K8S_NAME, description="The ClusterQueue's name (default: "
                                      "<namespace>-<name>).")
    gpus: int = Field(ge=0, le=4096, description="nvidia.com/gpu quota: GPUs admitted at once.")
    cpu: int = Field(64, ge=1, le=100_000, description="CPU quota (cores) of the admitted jobs.")
    memory: str = Field("256Gi", pattern=r"^[0-9]+(Ki|Mi|Gi|Ti)$", description="Memory quota, e.g. 256Gi.")


class NodePoolConfig(ConfigModel):
    """The GPU node pool of a cluster the program creates (`createCluster: true`)."""

    gpu: str = Field(description="Catalog GPU of the pool's nodes (in allowedGpus, offered by the cloud).")
    count: int = Field(1, ge=1, le=8, description="GPUs per node (a catalog count: the instance type).")
    min_nodes: int = Field(0, ge=0, le=64, description="Nodes always running (0: scale from zero, no idle cost).")
    max_nodes: int = Field(2, ge=1, le=64, description="Upper bound the autoscaler may reach.")
    spot: bool = Field(True, description="Spot / preemptible capacity (nodes labelled and tainted stackwise.dev/spot).")

    @model_validator(mode="after")
    def _bounds(self) -> "NodePoolConfig":
        if self.max_nodes < self.min_nodes:
            raise ValueError(f"maxNodes ({self.max_nodes}) is below minNodes ({self.min_nodes})")
        return self


class KubernetesConfig(ConfigModel):
    """The cluster of a `compute: {kind: kubernetes}` stack (`stackwise:kubernetes`).

    `kubeconfig` and `context` are read by the SDK on the submitting machine; the program reads
    `context` only to reach an existing cluster (`createCluster: false`), never the kubeconfig.
    The program installs the namespace, the service account (bound to the cloud identity that
    reads the artifact store), the submitters' Role, the Kueue queue and the metrics scrape
    config, and with `createCluster` creates the cluster (EKS, GKE, AKS) with a GPU node pool.
    """

    context: str | None = Field(None, min_length=1, description="kubeconfig context (SDK; and the program's, for an "
                                "existing cluster). Default: the current context.")
    kubeconfig: str | None = Field(None, min_length=1, description="SDK only: the kubeconfig file (default "
                                   "$KUBECONFIG, then ~/.kube/config).")
    namespace: str | None = Field(None, pattern=K8S_NAME, description="Namespace of jobs and endpoints (sw-<env>).")
    service_account: str = Field("stackwise-jobs", pattern=K8S_NAME, description="Service account pods run as.")
    queue: str | QueueConfig | None = Field(
        None, description="Kueue: a LocalQueue name that exists already, or {name, clusterQueue, gpus, cpu, memory}: "
        "the program creates the ResourceFlavor, ClusterQueue and LocalQueue.")
    create_cluster: bool = Field(False, description="Create the cluster (EKS, GKE, AKS) with nodePool.")
    node_pool: NodePoolConfig | None = Field(None, description="createCluster: the GPU node pool.")
    cluster_tier: Literal["free", "standard"] = Field("free", description="azure createCluster: the AKS tier "
                                                      "(free: no control plane fee, no uptime SLA).")
    cluster_name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$",
                                     description="aws existing cluster: its EKS name, for the EKS Pod Identity "
                                     "association of the service account with the job role.")
    oidc_issuer: str | None = Field(None, pattern=r"^https://\S+$", description="azure existing cluster: its OIDC "
                                    "issuer URL, for the federated credential of the job identity.")
    gpu_label: str | None = Field(None, min_length=1, description="Existing cluster: node label naming the GPU "
                                  "(default nvidia.com/gpu.product, GPU feature discovery's).")
    gpu_values: dict[str, str] = Field(default_factory=dict, description="Existing cluster: catalog GPU -> value of "
                                       "gpuLabel.")
    gpu_tolerations: list[dict[str, str]] | None = Field(None, description="Existing cluster: tolerations of GPU pods.")
    spot_selector: dict[str, str] = Field(default_factory=dict, description="Existing cluster: node labels of spot "
                                          "nodes.")
    spot_tolerations: list[dict[str, str]] = Field(default_factory=list, description="Existing cluster: tolerations "
                                                   "of spot pods.")
    pod_labels: dict[str, str] = Field(default_factory=dict, description="Labels every job and endpoint pod gets.")
    autoscaled_gpus: list[str] = Field(default_factory=list, description="Existing cluster: catalog GPUs a node pool "
                                       "scales up from zero.")
    gateway: str | None = Field(None, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
                                description="namespace/name of the Gateway API Gateway endpoints attach to.")
    metrics_url: str | None = Field(None, pattern=r"^https?://\S+$", description="Prometheus URL KEDA queries.")
    pod_monitor: bool | None = Field(None, description="Create the PodMonitor that scrapes serving pods' /metrics "
                                     "(needs prometheus-operator's CRDs). Default: when metricsUrl is set.")
    submitters: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list, description="Groups (as the cluster's authenticator names them) bound to the submitters' "
        "Role in the namespace.")

    @field_validator("autoscaled_gpus")
    @classmethod
    def _catalog_gpus(cls, value: list[str]) -> list[str]:
        return [from_catalog(catalog.canonical_gpu, g) for g in value]

    @field_validator("gpu_values")
    @classmethod
    def _catalog_keys(cls, value: dict[str, str]) -> dict[str, str]:
        return {from_catalog(catalog.canonical_gpu, g): v for g, v in value.items()}

    @model_validator(mode="after")
    def _existing_or_created(self) -> "KubernetesConfig":
        if self.create_cluster and self.node_pool is None:
            raise ValueError("createCluster needs nodePool: {gpu, count, minNodes, maxNodes, spot}")
        if self.node_pool is not None and not self.create_cluster:
            raise ValueError("nodePool is for a cluster the program creates: set createCluster: true, or remove "
                             "nodePool and describe the existing cluster's GPU nodes (gpuLabel, gpuValues, ...)")
        if self.create_cluster:
            existing = [key for key, value in (
                ("gpuLabel", self.gpu_label), ("gpuValues", self.gpu_values), ("gpuTolerations", self.gpu_tolerations),
                ("spotSelector", self.spot_selector), ("spotTolerations", self.spot_tolerations),
                ("autoscaledGpus", self.autoscaled_gpus), ("clusterName", self.cluster_name),
                ("oidcIssuer", self.oidc_issuer)) if value]
            if existing:
                raise ValueError(f"{', '.join(existing)} describe an existing cluster; with createCluster the program "
                                 "labels and taints the node pool it creates itself: remove them")
        if self.cluster_tier != "free" and not self.create_cluster:
            raise ValueError("clusterTier is the tier of an AKS cluster the program creates: needs createCluster")
        if self.pod_monitor and not self.metrics_url:
            raise ValueError("podMonitor needs metricsUrl: the Prometheus server that reads what it scrapes")
        return self

    @property
    def monitored(self) -> bool:
        """Whether the program creates the PodMonitor."""
        return self.pod_monitor if self.pod_monitor is not None else self.metrics_url is not None


