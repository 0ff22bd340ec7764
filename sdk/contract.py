"""The stack contract: one typed model of the outputs every stack exports.

The Pulumi program (infra/) exports exactly this shape and adapters read only it, so the
infrastructure and the SDK cannot drift apart. Secrets are never values here, only
references (`env://NAME`, `aws-sm://ARN`, `gcp-sm://...`, `azure-kv://...`).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from . import clouds as _clouds
from .registry import vector_store_kinds


def _known_cloud(value: str) -> str:
    # Checked against the registry when validating (not frozen into a Literal at import), so a
    # cloud added to `stackwise.clouds.CLOUDS` is valid here with no other change.
    if value not in _clouds.stack_clouds():
        raise ValueError(f"Input should be {_clouds.one_of(_clouds.stack_clouds())}")
    return value


#: A stack's cloud: `local` or a name of `stackwise.clouds.CLOUDS`.
Cloud = Annotated[str, AfterValidator(_known_cloud)]


def __getattr__(name: str) -> tuple[str, ...]:
    # `CLOUDS`: the clouds of this installation, read from `stackwise.clouds` when asked (not frozen
    # at import, which would depend on what was registered when this module was first imported).
    if name == "CLOUDS":
        return _clouds.stack_clouds()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

_SECRET_REF = re.compile(r"^(env|file|aws-sm|gcp-sm|azure-kv)://\S+$")

#: Top-level folder of the artifact store that holds every fine-tuning identity's checkpoints
#: (`checkpoints/<model>-<digest>/checkpoint-N/...`). Object-store lifecycle rules match only
#: key prefixes (S3 cannot wildcard; GCS matches a prefix or a suffix), so the folder that the
#: rules target must come first in the key: infra/ and the adapters share this constant.
CHECKPOINTS_PREFIX = "checkpoints/"


def checkpoint_uri(artifact_store: str, output_name: str) -> str:
    """Where a fine-tuning identity's checkpoints live: `<store>/checkpoints/<output_name>`."""
    return f"{artifact_store.rstrip('/')}/{CHECKPOINTS_PREFIX}{output_name}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# The registered vector store kinds (`stackwise.registry.VECTOR_STORES`), read when this module loads.
VectorStoreKind = Literal[vector_store_kinds()]  # type: ignore[valid-type]


class VectorStoreOutput(_Strict):
    """Where the stack's vector store lives."""

    kind: VectorStoreKind = Field(
        description="Engine: the embedded store (local disk or the object store), or a hosted one."
    )
    uri: str | None = Field(None, description="Embedded store: a folder or object-store URI.")
    host: str | None = Field(None, description="Hosted store: the index or cluster host URL.")
    api_key_secret: str | None = Field(None, description="Secret reference for the store's API key.")

    @field_validator("api_key_secret")
    @classmethod
    def _is_reference(cls, value: str | None) -> str | None:
        if value is not None and not _SECRET_REF.fullmatch(value):
            raise ValueError(
                "must be a secret reference such as env://PINECONE_API_KEY, never the key itself"
            )
        return value


ScalingMetric = Literal["utilization", "invocations", "concurrency", "latency"]


class VertexMetricSpec(BaseModel):
    """One Vertex AI `autoscalingMetricSpecs` entry, as the REST API spells it (`metricName`,
    `target`); the snake_case name is accepted too, and is what the outputs file holds."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    metric_name: str = Field(alias="metricName", pattern=r"^aiplatform\.googleapis\.com/prediction/online/\S+$")
    target: int = Field(ge=1, le=100, description="Target utilization in percent.")


class EndpointScaling(_Strict):
    """How every version deployed on an endpoint autoscales: the endpoint's replica bounds and
    `stackwise:endpoint.scaling`, exported so that `stackwise deploy` gives the versions it adds the
    autoscaling the Pulumi program gives the endpoint's own deployment (docs/serving.md,
    "Autoscaling and monitoring on each cloud"). Fields mirror infra's `ScalingConfig`; each
    cloud's deploy adapter reads the ones its mechanism uses."""

    max_replicas: int = Field(ge=1, le=100, description="Upper bound of each deployed version's replicas.")
    metric: ScalingMetric | None = Field(None, description="What is tracked (None: the cloud's default).")
    target_invocations: int = Field(100, ge=1, description="invocations: requests per replica per minute.")
    target_concurrency: float = Field(4.0, gt=0, le=1000, description="concurrency: requests in flight per replica.")
    target_latency_ms: int | None = Field(None, ge=1, le=600_000, description="Average model latency to hold.")
    gpu_percent: int = Field(70, ge=1, le=100, description="utilization: GPU busy % per GPU.")
    cpu_percent: int = Field(60, ge=1, le=100, description="GCP utilization: CPU % target.")
    scale_out_cooldown_seconds: int | None = Field(None, ge=60, le=3600)
    scale_in_cooldown_seconds: int | None = Field(None, ge=60, le=3600)
    vertex_metric_specs: list[VertexMetricSpec] = Field(
        default_factory=list, description="GCP: the deployed models' autoscalingMetricSpecs (empty: Vertex's "
        "own 60 % targets).")

    @model_validator(mode="after")
    def _latency_target(self) -> "EndpointScaling":
        if self.metric == "latency" and self.target_latency_ms is None:
            raise ValueError("scaling.metric latency needs scaling.target_latency_ms")
        return self


class EndpointOutput(_Strict):
    """One inference endpoint the stack provisioned."""

    name: str
    url: str | None = None
    # What `stackwise deploy` needs to add model versions (infra exports them; optional, so outputs
    # synced before they existed stay valid).
    serving_image: str | None = Field(None, description="Serving container image for deployed versions.")
    gpu: str | None = Field(None, description="Portable GPU name of each replica (default: the stack's default_gpu).")
    gpu_count: int = Field(1, ge=1, description="GPUs per replica.")
    min_replicas: int = Field(1, ge=1, description="Replicas each deployed version starts with.")
    scaling: EndpointScaling | None = Field(
        None, description="How deployed versions autoscale (absent: they keep min_replicas, as before).")

    @model_validator(mode="after")
    def _replica_bounds(self) -> "EndpointOutput":
        if self.scaling is not None and self.scaling.max_replicas < self.min_replicas:
            raise ValueError(f"endpoint {self.name}: scaling.max_replicas ({self.scaling.max_replicas}) is below "
                             f"min_replicas ({self.min_replicas})")
        return self


class NetworkOutput(_Strict):
    """The stack's private network, where cloud jobs and endpoints run (AWS and GCP stacks).

    AWS: the private subnets and the security group every training job and endpoint model gets
    as its `VpcConfig`. GCP: the VPC network a Vertex AI CustomJob is peered with (`network`,
    by project number, as Vertex requires) and the reserved range of the peering.
    """

    subnets: list[str] = Field(default_factory=list, description="AWS: private subnet ids.")
    security_groups: list[str] = Field(default_factory=list, description="AWS: security group ids.")
    network: str | None = Field(None, description="GCP: `projects/<number>/global/networks/<name>`.")
    reserved_ip_ranges: list[str] = Field(
        default_factory=list, description="GCP: names of the ranges reserved for Vertex AI's peering.")


#: A Kubernetes object name (an RFC 1123 label: namespaces, service accounts, queues).
_K8S_NAME = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"


class KubernetesOutput(_Strict):
    """Where and how jobs and endpoints run on a Kubernetes cluster (a stack whose
    `stackwise:compute` is `{kind: kubernetes}`; docs/kubernetes.md).

    The cluster is reached through the submitting machine's kubeconfig (its file and context are
    stack config, `stackwise:kubernetes.kubeconfig` / `.context`, never outputs: a kubeconfig may
    hold credentials). These outputs say what the program installed on the cluster.
    """

    namespace: str = Field(pattern=_K8S_NAME, description="Namespace jobs, endpoints and their services live in.")
    service_account: str | None = Field(None, pattern=_K8S_NAME, description="Service account pods run as (bound "
                                        "to the cloud identity that reads the artifact store); None: `default`.")
    queue: str | None = Field(None, pattern=_K8S_NAME, description="Kueue LocalQueue jobs are submitted to "
                              "(`kueue.x-k8s.io/queue-name`); None: no Kueue.")
    cluster: str | None = Field(None, description="The cluster's name, when the program created it (EKS, GKE, AKS).")
    gpu_label: str = Field("nvidia.com/gpu.product", description="Node label whose value names a node's GPU "
                           "(NVIDIA GPU feature discovery's by default).")
    gpu_values: dict[str, str] = Field(default_factory=dict, description="Catalog GPU -> value of gpu_label "
                                       "(absent GPUs: GPU feature discovery's product names).")
    gpu_tolerations: list[dict[str, str]] = Field(
        default_factory=lambda: [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        description="Tolerations GPU pods get (GPU node pools are tainted so CPU pods stay off them).")
    spot_selector: dict[str, str] = Field(default_factory=dict, description="Node labels of spot / preemptible "
                                          "nodes, added to the pods of a spot job.")
    spot_tolerations: list[dict[str, str]] = Field(default_factory=list, description="Tolerations of a spot job.")
    pod_labels: dict[str, str] = Field(default_factory=dict, description="Labels every job and endpoint pod gets "
                                       "(AKS workload identity needs `azure.workload.identity/use: \"true\"`).")
    autoscaled_gpus: list[str] = Field(default_factory=list, description="Catalog GPUs a node pool scales up from "
                                       "zero: a job asking for one is not refused when no such node exists yet.")
    gateway: str | None = Field(None, description="`namespace/name` of the Gateway API Gateway endpoints' HTTPRoutes "
                                "attach to; None: each endpoint's Service only (no traffic split).")
    metrics_url: str | None = Field(None, description="Prometheus server URL KEDA queries to scale endpoints on "
                                    "the serving metrics; None: no autoscaling beyond min replicas.")


class StackOutputs(_Strict):
    """Everything an adapter may know about a stack; exported by infra/ for every stack."""

    cloud: Cloud
    region: str = Field(description="Cloud region, or 'local'.")
    artifact_store: str = Field(description="Root URI of the artifact store (file://, s3://, gs://, az://).")
    job_role: str | None = Field(None, description="Role ARN, service account or identity jobs run as.")
    training_image: str | None = Field(None, description="Container image URI that runs workloads.")
    default_gpu: str | None = Field(None, description="Portable GPU name from the catalog, e.g. 'A10G'.")
    vector_store: VectorStoreOutput
    embedding_model: str = Field("all-MiniLM-L6-v2", description="Default embedding model for indexes.")
    endpoints: list[EndpointOutput] = Field(default_factory=list)
    tracking_uri: str | None = Field(None, description="MLflow tracking URI.")
    secrets: dict[str, str] = Field(default_factory=dict, description="Named secret references.")
    network: NetworkOutput | None = Field(
        None, description="The private network jobs and endpoints run in (absent: the cloud's default).")
    kubernetes: KubernetesOutput | None = Field(
        None, description="The cluster jobs and endpoints run on, for a stack whose compute kind is kubernetes.")
    # Cloud-specific coordinates: only the active cloud's are set.
    gcp_project: str | None = None
    azure_subscription_id: str | None = None
    azure_resource_group: str | None = None
    azure_workspace: str | None = None
    azure_identity_client_id: str | None = Field(
        None, description="Client id of the jobs' user-assigned identity (job_role): what DefaultAzureCredential "
        "inside a job needs, as AZURE_CLIENT_ID, to pick that identity.")

    @field_validator("secrets")
    @classmethod
    def _secret_references(cls, value: dict[str, str]) -> dict[str, str]:
        for name, ref in value.items():
            if not _SECRET_REF.fullmatch(ref):
                raise ValueError(f"secrets.{name} must be a secret reference such as env://NAME")
        return value


class JobContext(_Strict):
    """What a running job may know about its stack: the part of the stack outputs a workload
    reads, sent by `submit` with the spec (a file beside it, or an environment variable).

    Workloads, training and evaluation code take this and never resolve a stack by name: inside a
    container there is neither a `stacks/` folder, nor an outputs file, nor a Pulumi CLI. It holds
    no credentials: secrets are references (`secrets`, `vector_store.api_key_secret`) the job
    resolves with its own identity.
    """

    version: Literal[1] = 1
    stack: str = Field(description="The stack the job was submitted to (for logs and tags only).")
    cloud: Cloud
    region: str
    artifact_store: str = Field(description="Root URI of the artifact store (a folder on the local stack).")
    vector_store: VectorStoreOutput
    embedding_model: str = "all-MiniLM-L6-v2"
    tracking_uri: str | None = None
    secrets: dict[str, str] = Field(default_factory=dict, description="Named secret references.")
    job_id: str | None = Field(None, description="This attempt's job id on its backend.")
    attempt: int = Field(1, ge=1, description="1 for the first run of the spec's identity, then 2, 3, ...")

    @classmethod
    def from_outputs(cls, stack: str, outputs: StackOutputs, job_id: str | None = None,
                     attempt: int = 1) -> "JobContext":
        return cls(stack=stack, cloud=outputs.cloud, region=outputs.region, artifact_store=outputs.artifact_store,
                   vector_store=outputs.vector_store, embedding_model=outputs.embedding_model,
                   tracking_uri=outputs.tracking_uri, secrets=dict(outputs.secrets), job_id=job_id, attempt=attempt)

    @field_validator("secrets")
    @classmethod
    def _secret_references(cls, value: dict[str, str]) -> dict[str, str]:
        return StackOutputs._secret_references(value)
