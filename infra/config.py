"""The typed config of a cloud stack: every `stackwise:` key of `stacks/Pulumi.<stack>.yaml`.

`infra/__main__.py` reads it once (`InfraConfig.load`) and hands typed parts to the components;
no component reads Pulumi config. An unknown key or a bad value fails naming the key and the
stack file. Importing this module needs pydantic only (no Pulumi), so `stackwise plan` and the
tests can validate a stack file before any provider loads.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from stackwise import catalog
from stackwise.errors import ConfigError
from stackwise.images import DEFAULT_BASE_IMAGE, DEFAULT_EXTRAS

REQUIRED_TAGS = ("project", "env", "owner", "cost-center")
_LABEL = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


def _from_catalog(fn, *args):
    """Call the catalog inside a validator: its ConfigError becomes a plain message for pydantic."""
    try:
        return fn(*args)
    except ConfigError as exc:
        raise ValueError(f"{exc.what}; {exc.fix}") from None


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=_camel, populate_by_name=True)


class TrainingConfig(_Model):
    """The GPU training platform: what jobs ask for by default, and the Azure cluster's bounds."""

    gpu: str = Field(description="Portable GPU name from the catalog, e.g. A10G, L4, T4.")
    count: int = Field(1, ge=1, le=8, description="GPUs per node.")
    max_nodes: int = Field(2, ge=1, le=64, description="Upper bound of the Azure AmlCompute cluster (it idles at 0).")
    spot: bool = Field(True, description="Use spot / low-priority capacity for training jobs.")


_SECRET_REF = re.compile(r"^(env|aws-sm|gcp-sm|azure-kv)://\S+$")


class VectorStoreConfig(_Model):
    """Where indexes live: the embedded store on the object store, a Pinecone serverless index the
    program creates, or a Weaviate or Milvus cluster run elsewhere (`host` + `apiKeySecret`)."""

    kind: Literal["embedded", "pinecone", "weaviate", "milvus"] = "embedded"
    host: str | None = Field(None, description="weaviate / milvus: the existing cluster's URL.")
    api_key_secret: str | None = Field(
        None, description="weaviate / milvus: secret reference of its API key or token (aws-sm://, gcp-sm://, "
        "azure-kv://, env://), read by jobs at run time; never the key itself.")
    index: str = Field("stackwise", pattern=r"^[a-z0-9-]{1,45}$", description="Pinecone index name.")
    dimension: int = Field(384, ge=1, le=20000, description="Vector size (384 for all-MiniLM-L6-v2).")
    metric: Literal["cosine", "dotproduct", "euclidean"] = "cosine"
    cloud: Literal["aws", "gcp", "azure"] | None = Field(
        None, description="Where Pinecone hosts the serverless index (default: the stack's cloud)."
    )
    region: str | None = Field(None, description="Pinecone serverless region (default: the stack's region).")

    @model_validator(mode="after")
    def _external_cluster(self) -> "VectorStoreConfig":
        external = self.kind in ("weaviate", "milvus")
        if external and not (self.host and self.host.startswith(("http://", "https://"))):
            raise ValueError(f"kind {self.kind} needs host: the URL of the existing {self.kind} cluster "
                             "(this program does not create one; see docs/stacks.md)")
        if not external and (self.host or self.api_key_secret):
            raise ValueError(f"host and apiKeySecret are for weaviate or milvus clusters, not kind {self.kind}")
        if self.api_key_secret and not _SECRET_REF.fullmatch(self.api_key_secret):
            raise ValueError("apiKeySecret must be a secret reference such as aws-sm://ARN or env://NAME, "
                             "never the key itself")
        return self


# The SDK's shorthand for a model version registered in the stack's Azure ML workspace.
_AZUREML_MODEL = re.compile(r"azureml:[A-Za-z0-9][A-Za-z0-9._-]*:[A-Za-z0-9._-]+")


ScalingMetric = Literal["utilization", "invocations", "concurrency", "latency"]
SCALING_METRICS: tuple[str, ...] = get_args(ScalingMetric)


class ScalingConfig(_Model):
    """What an endpoint's autoscaling holds at a target (`stackwise:endpoint.scaling`).

    Each cloud turns it into its own mechanism (AWS: Application Auto Scaling target tracking;
    GCP: Vertex autoscaling metric specs; Azure: an Azure Monitor autoscale setting) and refuses,
    naming this key, a metric it cannot scale on (docs/serving.md, "Autoscaling and monitoring
    on each cloud"). Every field has a default, so stacks without `scaling` keep their behaviour.
    """

    metric: ScalingMetric | None = Field(
        None, description="utilization: GPU busy % per replica (gpuPercent); invocations: requests per replica per "
        "minute (endpoint.targetInvocations); concurrency: requests in flight or queued per replica "
        "(targetConcurrency; AWS only); latency: average model latency (targetLatencyMs; AWS, Azure). "
        "Unset: AWS invocations, GCP Vertex's own 60 % targets, Azure utilization.")
    target_concurrency: float = Field(4.0, gt=0, le=1000,
                                      description="concurrency: requests in flight or queued per replica to hold.")
    target_latency_ms: int | None = Field(
        None, ge=1, le=600_000, description="latency: average model latency to hold. With another metric: a "
        "scale-out-only guard that adds replicas while the average exceeds it (AWS, Azure).")
    gpu_percent: int = Field(70, ge=1, le=100, description="utilization: GPU busy % per replica (per GPU) to hold.")
    cpu_percent: int = Field(60, ge=1, le=100,
                             description="GCP utilization: CPU % target that Vertex also scales on.")
    scale_out_cooldown_seconds: int | None = Field(
        None, ge=60, le=3600, description="Wait after adding replicas (default: AWS 60, Azure 300).")
    scale_in_cooldown_seconds: int | None = Field(
        None, ge=60, le=3600, description="Wait after removing replicas (default: AWS 300, Azure 600).")

    @model_validator(mode="after")
    def _latency_target(self) -> "ScalingConfig":
        if self.metric == "latency" and self.target_latency_ms is None:
            raise ValueError("metric latency needs targetLatencyMs: the average model latency to hold, e.g. 1500")
        return self

    @property
    def cooldowns_set(self) -> bool:
        return self.scale_out_cooldown_seconds is not None or self.scale_in_cooldown_seconds is not None


class EndpointConfig(_Model):
    """One real-time inference endpoint with autoscaling between min and max replicas."""

    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,40}$")
    gpu: str
    count: int = Field(1, ge=1, le=8, description="GPUs per replica.")
    model: str = Field(description="Model to serve: a Hugging Face id, or an artifact URI of the stack.")
    image: str | None = Field(None, description="Serving image (default: the stack registry's `serve` image).")
    min_replicas: int = Field(1, ge=1, le=100, description="Replicas always running (the cost floor).")
    max_replicas: int = Field(1, ge=1, le=100)
    target_invocations: int = Field(100, ge=1, description="Invocations per replica per minute to scale at.")
    scaling: ScalingConfig = Field(ScalingConfig(), description="What autoscaling tracks (see ScalingConfig).")

    @model_validator(mode="after")
    def _bounds(self) -> "EndpointConfig":
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"maxReplicas ({self.max_replicas}) is below minReplicas ({self.min_replicas})")
        if self.model.startswith("azureml:") and not (self.model.startswith("azureml://")
                                                      or _AZUREML_MODEL.fullmatch(self.model)):
            raise ValueError(f"model {self.model!r} is not an Azure ML model version: write "
                             "azureml:<name>:<version>, e.g. azureml:chat-model:1")
        return self


class ImagesConfig(_Model):
    """The training and serving images: built from this checkout's Containerfile and pushed to the
    stack's registry by `pulumi up` (pulumi-docker-build; Docker with BuildKit where it runs), the
    outputs then pinned to their digests. `build: false`: `stackwise image build --push` provides
    them and the outputs name tags."""

    build: bool = Field(True, description="Build and push both images in `pulumi up`.")
    base_image: str = Field(DEFAULT_BASE_IMAGE, min_length=1, description="BASE_IMAGE build argument.")
    extras: str = Field(DEFAULT_EXTRAS, pattern=r"^[a-z0-9,-]+$", description="stackwise extras in the images.")
    wheelhouse: str = Field("~/.cache/stackwise/wheels", min_length=1,
                            description="The wheelhouse folder (scripts/wheelhouse.sh OUTDIR EXTRAS), the build "
                                        "context `wheels`.")
    platform: str = Field("linux/amd64", pattern=r"^linux/(amd64|arm64)$", description="Platform built for.")


class AlarmsConfig(_Model):
    latency_ms: int = Field(2000, ge=1, description="Alarm when the latencyPercentile model latency exceeds this.")
    latency_percentile: Literal[50, 90, 95, 99] = Field(
        90, description="Which latency percentile the alarm watches (GCP aligns at 50, 95 and 99 only: 90 is "
        "watched as 95 there).")
    error_rate_percent: float = Field(5.0, gt=0, le=100, description="Alarm when 5xx responses exceed this share.")


class NetworkConfig(_Model):
    cidr: str = Field("10.42.0.0/16", pattern=r"^\d+\.\d+\.\d+\.\d+/\d+$", description="Private network range.")
    internet_egress: bool = Field(False, description="AWS: a NAT gateway, so jobs and endpoints reach the internet over "
                                  "HTTPS (Hugging Face models by id); off, models come from the artifact store.")


WeekDay = Literal["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


class RecurrenceConfig(_Model):
    """A Logic Apps Recurrence (`stackwise:pipelineTrigger.recurrence`): Azure's schedule syntax."""

    frequency: Literal["Minute", "Hour", "Day", "Week", "Month"]
    interval: int = Field(1, ge=1, le=1000, description="Run every `interval` units of `frequency`.")
    hours: list[Annotated[int, Field(ge=0, le=23)]] | None = Field(None, description="Day, Week, Month: at these hours.")
    minutes: list[Annotated[int, Field(ge=0, le=59)]] | None = Field(None, description="Day, Week, Month: at these "
                                                                       "minutes of each hour.")
    week_days: list[WeekDay] | None = Field(None, description="Week: on these days.")
    month_days: list[Annotated[int, Field(ge=1, le=31)]] | None = Field(None, description="Month: on these days.")

    @model_validator(mode="after")
    def _schedule_fits_frequency(self) -> "RecurrenceConfig":
        # Logic Apps applies a recurrence's `schedule` only at these frequencies.
        if self.week_days and self.frequency != "Week":
            raise ValueError("weekDays needs frequency Week")
        if self.month_days and self.frequency != "Month":
            raise ValueError("monthDays needs frequency Month")
        if (self.hours or self.minutes) and self.frequency not in ("Day", "Week", "Month"):
            raise ValueError(f"hours and minutes need frequency Day, Week or Month, not {self.frequency}")
        return self


# Object names every cloud's event filter takes literally: no wildcards, spaces or quotes.
_OBJECT_KEY_PART = re.compile(r"[A-Za-z0-9_.=/-]+")


class PipelineTriggerConfig(_Model):
    """Runs the stack's compiled pipeline on a schedule and when data lands under a prefix of the
    artifact store (`stackwise:pipelineTrigger`; docs/pipelines.md, "Triggers in the cloud").

    Each cloud reads the schedule in its own syntax: `schedule` is an EventBridge expression on
    AWS (`cron(0 3 * * ? *)`, `rate(1 day)`, UTC) and a unix-cron line with `timeZone` on GCP;
    Azure takes `recurrence` (a Logic Apps Recurrence). `InfraConfig.load` checks both against
    the stack's cloud, and reads and checks the definition file (see infra/pipeline_trigger.py).
    """

    definition: str = Field(min_length=1, description="The compiled pipeline (`stackwise pipeline compile "
                            "--target sagemaker|vertex|azureml`), relative to the project folder.")
    schedule: str | None = Field(None, min_length=1, description="AWS: cron(...) or rate(...) (UTC); GCP: unix-cron.")
    recurrence: RecurrenceConfig | None = Field(None, description="Azure: a Logic Apps Recurrence.")
    time_zone: str | None = Field(None, description="GCP: an IANA zone (Etc/UTC); Azure: a Windows zone name (UTC).")
    data_prefix: str | None = Field(None, description="A run starts when an object is written under this prefix "
                                                      "of the artifact store (bucket or container).")
    data_suffix: str | None = Field(None, description="Only objects whose name ends so start a run (a marker such "
                                                      "as _SUCCESS, so a batch upload starts one run, not one per file).")
    parameters: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Values of parameters the pipeline declares, passed to every run.")
    enabled: bool = Field(True, description="false: the pipeline and the trigger resources stay, no run starts.")

    @field_validator("data_prefix", "data_suffix")
    @classmethod
    def _object_name_part(cls, value: str | None) -> str | None:
        if value is not None and not (_OBJECT_KEY_PART.fullmatch(value) and not value.startswith("/")):
            raise ValueError(f"{value!r} may hold only letters, digits and _ . = / - (no wildcards), and may not "
                             "start with '/' (object names in a bucket have no leading slash)")
        return value

    @model_validator(mode="after")
    def _something_triggers(self) -> "PipelineTriggerConfig":
        if not (self.schedule or self.recurrence or self.data_prefix):
            raise ValueError("set a schedule (recurrence on Azure), a dataPrefix, or both")
        if self.data_suffix and not self.data_prefix:
            raise ValueError("dataSuffix needs dataPrefix")
        return self


# A Kubernetes object name (an RFC 1123 label): namespaces, service accounts, queues, groups' Roles.
K8S_NAME = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
# The labels and taints of the node pools the program creates (docs/kubernetes.md): jobs and
# endpoints select the GPU by GPU_LABEL, tolerate the GPU taint, and spot jobs the spot taint.
GPU_LABEL = "stackwise.dev/gpu"
SPOT_LABEL = "stackwise.dev/spot"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
SPOT_TAINT = {"key": SPOT_LABEL, "value": "true", "effect": "NoSchedule"}


class ComputeConfig(_Model):
    """Where a cloud stack's jobs and endpoints run (`stackwise:compute`)."""

    kind: Literal["managed", "kubernetes"] = Field(
        "managed", description="managed: the cloud's ML service (SageMaker, Vertex AI, Azure ML); kubernetes: a "
        "cluster (stackwise:kubernetes; docs/kubernetes.md).")


class QueueConfig(_Model):
    """A Kueue queue the program creates: a ResourceFlavor, a ClusterQueue with these quotas, and the
    LocalQueue `name` in the stack's namespace that jobs are submitted to."""

    name: str = Field("stackwise", pattern=K8S_NAME, description="The LocalQueue's name (jobs' queue-name label).")
    cluster_queue: str | None = Field(None, pattern=K8S_NAME, description="The ClusterQueue's name (default: "
                                      "<namespace>-<name>).")
    gpus: int = Field(ge=0, le=4096, description="nvidia.com/gpu quota: GPUs admitted at once.")
    cpu: int = Field(64, ge=1, le=100_000, description="CPU quota (cores) of the admitted jobs.")
    memory: str = Field("256Gi", pattern=r"^[0-9]+(Ki|Mi|Gi|Ti)$", description="Memory quota, e.g. 256Gi.")


class NodePoolConfig(_Model):
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


class KubernetesConfig(_Model):
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
        return [_from_catalog(catalog.canonical_gpu, g) for g in value]

    @field_validator("gpu_values")
    @classmethod
    def _catalog_keys(cls, value: dict[str, str]) -> dict[str, str]:
        return {_from_catalog(catalog.canonical_gpu, g): v for g, v in value.items()}

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


class InfraConfig(_Model):
    """A cloud stack's config (the `stackwise:` namespace of its stack file)."""

    cloud: Literal["aws", "gcp", "azure"]
    region: str = Field(min_length=2)
    env: str = Field(pattern=r"^[a-z][a-z0-9-]{0,15}$", description="Environment name, part of every resource name.")
    tags: dict[str, str] = Field(description="Tags on every resource; must include project, owner, cost-center.")
    monthly_budget_usd: float = Field(gt=0, description="Monthly budget; alerts at 50/80/100 %, plan exits 3 above it.")
    budget_alert_emails: list[str] = Field(min_length=1)
    allowed_gpus: list[str] = Field(min_length=1, description="GPUs this stack may provision (catalog names).")
    training: TrainingConfig
    vector_store: VectorStoreConfig = VectorStoreConfig()
    endpoint: EndpointConfig | None = None
    embedding_model: str = "all-MiniLM-L6-v2"
    tracking_uri: str | None = None
    network: NetworkConfig = NetworkConfig()
    alarms: AlarmsConfig = AlarmsConfig()
    images: ImagesConfig = ImagesConfig()
    max_endpoint_replicas: int = Field(10, ge=1, le=100, description="Policy bound on endpoint replicas.")
    gcp_project: str | None = Field(None, description="GCP project id (gcp stacks).")
    gcp_billing_account: str | None = Field(None, description="GCP billing account id for the budget (gcp stacks).")
    # Governance, read by the SDK (the program provisions nothing for them): docs/models.md.
    allowed_licenses: list[str] | None = Field(None, description="Licences of base models this stack may fine-tune, "
                                                                 "promote and deploy (absent: any).")
    allow_gated: bool = Field(True, description="Whether gated models (licence acceptance on the Hub) are allowed.")
    max_job_cost_usd: float | None = Field(None, gt=0, description="Refuse a fine-tune whose estimated cost is above.")
    pipeline_trigger: PipelineTriggerConfig | None = Field(None, description="Run the compiled pipeline on a "
                                                           "schedule and on data changes (PipelineTriggerConfig).")
    compute: ComputeConfig = Field(ComputeConfig(), description="Where jobs and endpoints run (ComputeConfig).")
    kubernetes: KubernetesConfig | None = Field(None, description="compute kind kubernetes: the cluster "
                                                "(KubernetesConfig; default: an existing cluster, namespace sw-<env>).")

    @field_validator("budget_alert_emails")
    @classmethod
    def _emails(cls, value: list[str]) -> list[str]:
        for email in value:
            if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", email):
                raise ValueError(f"{email!r} is not an email address")
        return value

    @field_validator("allowed_gpus")
    @classmethod
    def _known_gpus(cls, value: list[str]) -> list[str]:
        return [_from_catalog(catalog.canonical_gpu, g) for g in value]

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: dict[str, str]) -> dict[str, str]:
        # GCP labels are the strictest form of tags: lower-case keys and values.
        for key, tag in value.items():
            if not _LABEL.match(key) or not re.fullmatch(r"[a-z0-9_-]{0,63}", str(tag)):
                raise ValueError(f"tag {key}={tag!r} must be lower-case letters, digits, '-' or '_' (GCP label rules)")
        missing = [t for t in REQUIRED_TAGS if t != "env" and t not in value]
        if missing:
            raise ValueError(f"missing required tags: {', '.join(missing)}")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> "InfraConfig":
        uses = [("training.gpu", self.training.gpu, self.training.count)]
        if self.endpoint is not None:
            uses.append(("endpoint.gpu", self.endpoint.gpu, self.endpoint.count))
            if self.endpoint.max_replicas > self.max_endpoint_replicas:
                raise ValueError(f"endpoint.maxReplicas {self.endpoint.max_replicas} exceeds maxEndpointReplicas "
                                 f"{self.max_endpoint_replicas}")
        for key, gpu, count in uses:
            name = _from_catalog(catalog.canonical_gpu, gpu)
            if name not in self.allowed_gpus:
                raise ValueError(f"{key} {name} is not in allowedGpus ({', '.join(self.allowed_gpus)})")
            _from_catalog(catalog.offer, name, self.cloud, count)  # lists what the cloud offers
        if self.endpoint is not None and self.endpoint.model.startswith("azureml:") and self.cloud != "azure":
            raise ValueError(f"endpoint.model {self.endpoint.model!r} names an Azure ML model, which only azure "
                             "stacks can serve; use a Hugging Face id or an artifact URI of this stack")
        self._kubernetes_checks()
        if self.cloud == "gcp" and not (self.gcp_project and self.gcp_billing_account):
            raise ValueError("gcp stacks need gcpProject and gcpBillingAccount")
        if self.cloud != "gcp" and (self.gcp_project or self.gcp_billing_account):
            raise ValueError("gcpProject and gcpBillingAccount are for gcp stacks only")
        return self

    def _kubernetes_checks(self) -> None:
        if self.kubernetes is not None and self.compute.kind != "kubernetes":
            raise ValueError("kubernetes is read only with compute: {kind: kubernetes}; set compute.kind kubernetes "
                             "or remove the kubernetes mapping")
        if self.compute.kind != "kubernetes":
            return
        k8s = self.cluster
        if k8s.node_pool is not None:
            pool = k8s.node_pool
            name = _from_catalog(catalog.canonical_gpu, pool.gpu)
            if name not in self.allowed_gpus:
                raise ValueError(f"kubernetes.nodePool.gpu {name} is not in allowedGpus ({', '.join(self.allowed_gpus)})")
            try:
                _from_catalog(catalog.offer, name, self.cloud, pool.count)
            except ValueError as exc:
                raise ValueError(f"kubernetes.nodePool {exc}") from None
            uses = [("training", self.training.gpu, self.training.count)]
            if self.endpoint is not None:
                uses.append(("endpoint", self.endpoint.gpu, self.endpoint.count))
            for key, wanted, count in uses:
                if _from_catalog(catalog.canonical_gpu, wanted) != name or count > pool.count:
                    raise ValueError(f"kubernetes.nodePool.gpu is {pool.count} x {name}, but {key} asks for {count} x "
                                     f"{_from_catalog(catalog.canonical_gpu, wanted)}: the created cluster has no other "
                                     f"GPU nodes; make {key}.gpu {name} (count at most {pool.count}) or change the pool")
            if pool.max_nodes > self.max_endpoint_replicas:
                raise ValueError(f"kubernetes.nodePool.maxNodes {pool.max_nodes} exceeds maxEndpointReplicas "
                                 f"{self.max_endpoint_replicas} (the policy bound on nodes and replicas)")
        if not k8s.create_cluster:
            if self.cloud == "aws" and not k8s.cluster_name:
                raise ValueError("kubernetes.clusterName is needed on aws for an existing cluster: the EKS cluster's "
                                 "name, so its pods run as the job role (EKS Pod Identity); or set createCluster: true")
            if self.cloud == "azure" and not k8s.oidc_issuer:
                raise ValueError("kubernetes.oidcIssuer is needed on azure for an existing cluster: its OIDC issuer URL "
                                 "(`az aks show --query oidcIssuerProfile.issuerUrl`), so its pods run as the job "
                                 "identity (workload identity); or set createCluster: true")
        if self.cloud != "aws" and k8s.cluster_name:
            raise ValueError("kubernetes.clusterName is for aws (EKS Pod Identity) only")
        if self.cloud != "azure" and (k8s.oidc_issuer or k8s.cluster_tier != "free"):
            raise ValueError("kubernetes.oidcIssuer and kubernetes.clusterTier are for azure (AKS) only")

    @property
    def cluster(self) -> KubernetesConfig:
        """The stack's `kubernetes` settings, defaults filled in (namespace sw-<env>)."""
        k8s = self.kubernetes or KubernetesConfig()
        return k8s if k8s.namespace else k8s.model_copy(update={"namespace": f"sw-{self.env}"})

    @property
    def all_tags(self) -> dict[str, str]:
        """The stack's tags with `env` filled in: what every taggable resource carries."""
        return {**self.tags, "env": self.env}

    @property
    def training_gpu(self) -> str:
        return catalog.canonical_gpu(self.training.gpu)

    @classmethod
    def load(cls, raw: dict[str, Any], source: str) -> "InfraConfig":
        """Validate the `stackwise:` keys of a stack (namespace stripped); `source` names the file.

        Values may be JSON strings, as Pulumi hands structured config to programs. With
        `pipelineTrigger`, its definition is read and checked for the stack's cloud, and the
        returned config names it by absolute path.
        """
        data = {key: _decode(value) for key, value in raw.items()}
        try:
            config = cls.model_validate(data)
        except ValidationError as exc:
            errors = exc.errors()
            # A union's branches each report (loc ends in the branch: `str`, `QueueConfig`): the model's
            # branch says what is wrong with a mapping, the first error otherwise.
            first = next((e for e in errors if any(str(p)[:1].isupper() and str(p).endswith("Config")
                                                   for p in e["loc"])), errors[0])
            first = {**first, "loc": tuple(p for p in first["loc"] if not (str(p) in _UNION_TAGS or (
                str(p)[:1].isupper() and str(p).endswith("Config"))))}
            key = ".".join(str(p) for p in first["loc"]) or "(stack)"
            message = first["msg"].removeprefix("Value error, ")
            named = _CROSS_CHECK_KEY.match(message) if not first["loc"] else None
            if named:  # a cross-check that names the key it is about
                key = named.group(1)
            if first["type"] == "extra_forbidden":
                parent = ".".join(str(p) for p in first["loc"][:-1])
                model = _model_at(cls, first["loc"][:-1])
                known = ", ".join(sorted(f.alias or n for n, f in model.model_fields.items()))
                reads = f"stackwise:{parent} reads" if parent else "cloud stacks read"
                raise ConfigError(f"unknown key stackwise:{key}", where=source,
                                  fix=f"remove it or correct its spelling; {reads}: {known}") from None
            if first["type"] == "missing":
                raise ConfigError(f"missing key stackwise:{key}", where=source,
                                  fix="add it (docs/stacks.md lists every key)") from None
            raise ConfigError(f"bad value for stackwise:{key}: {message}", where=source,
                              fix="correct it (docs/stacks.md lists every key and its values)") from None
        if config.pipeline_trigger is not None:
            from .pipeline_trigger import checked  # reads the definition file: only when the key is set

            config = checked(config, source)
        return config


# Union branch tags pydantic puts in error locations (`queue.str`, `queue.QueueConfig.gpus`).
_UNION_TAGS = {"str", "int", "float", "bool", "list", "dict"}
# Cross-checks of the kubernetes settings start with the key they are about.
_CROSS_CHECK_KEY = re.compile(r"^((?:kubernetes|compute)(?:\.[A-Za-z]+)*) ")


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel]:
    """The model that holds the key at `loc` (aliases, as in error locations), for its key list."""
    for step in loc:
        fields = {f.alias or n: f for n, f in model.model_fields.items()}
        field = fields.get(str(step))
        inner = [a for a in get_args(field.annotation) if isinstance(a, type) and issubclass(a, BaseModel)] \
            if field is not None else []
        if field is not None and isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            inner = [field.annotation]
        if not inner:
            break
        model = inner[0]
    return model


def _decode(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value
