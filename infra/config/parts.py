"""The parts of a cloud stack's config every cloud reads: training, vector store, endpoint and its
autoscaling, images, alarms, network, and the pipeline trigger (`stackwise:pipelineTrigger`)."""

from __future__ import annotations

import re
from typing import Annotated, Literal, get_args

from pydantic import Field, field_validator, model_validator

from stackwise.contract import VectorStoreKind
from stackwise.images import DEFAULT_BASE_IMAGE, DEFAULT_EXTRAS
from stackwise.registry import vector_store_kinds

from .base import ConfigModel


class TrainingConfig(ConfigModel):
    """The GPU training platform: what jobs ask for by default, and the Azure cluster's bounds."""

    gpu: str = Field(description="Portable GPU name from the catalog, e.g. A10G, L4, T4.")
    count: int = Field(1, ge=1, le=8, description="GPUs per node.")
    max_nodes: int = Field(2, ge=1, le=64, description="Upper bound of the Azure AmlCompute cluster (it idles at 0).")
    spot: bool = Field(True, description="Use spot / low-priority capacity for training jobs.")


_SECRET_REF = re.compile(r"^(env|aws-sm|gcp-sm|azure-kv)://\S+$")


class VectorStoreConfig(ConfigModel):
    """Where indexes live: the embedded store on the object store, a Pinecone serverless index the
    program creates, or a Weaviate or Milvus cluster run elsewhere (`host` + `apiKeySecret`)."""

    kind: VectorStoreKind = "embedded"
    host: str | None = Field(None, description="weaviate / milvus: the existing cluster's URL.")
    api_key_secret: str | None = Field(
        None, description="weaviate / milvus: secret reference of its API key or token (aws-sm://, gcp-sm://, "
        "azure-kv://, env://), read by jobs at run time; never the key itself.")
    index: str = Field("stackwise", pattern=r"^[a-z0-9-]{1,45}$", description="Pinecone index name.")
    dimension: int = Field(384, ge=1, le=20000, description="Vector size (384 for all-MiniLM-L6-v2).")
    metric: Literal["cosine", "dotproduct", "euclidean"] = "cosine"
    # Pinecone's own list of the clouds it hosts serverless indexes on (not stackwise.clouds).
    cloud: Literal["aws", "gcp", "azure"] | None = Field(
        None, description="Where Pinecone hosts the serverless index (default: the stack's cloud)."
    )
    region: str | None = Field(None, description="Pinecone serverless region (default: the stack's region).")

    @model_validator(mode="after")
    def _external_cluster(self) -> "VectorStoreConfig":
        external = self.kind in vector_store_kinds("external")
        if external and not (self.host and self.host.startswith(("http://", "https://"))):
            raise ValueError(f"kind {self.kind} needs host: the URL of the existing {self.kind} cluster "
                             "(this program does not create one; see docs/stacks.md)")
        if not external and (self.host or self.api_key_secret):
            raise ValueError(f"host and apiKeySecret are for {' or '.join(vector_store_kinds('external'))} clusters, "
                             f"not kind {self.kind}")
        if self.api_key_secret and not _SECRET_REF.fullmatch(self.api_key_secret):
            raise ValueError("apiKeySecret must be a secret reference such as aws-sm://ARN or env://NAME, "
                             "never the key itself")
        return self


# The SDK's shorthand for a model version registered in the stack's Azure ML workspace.
_AZUREML_MODEL = re.compile(r"azureml:[A-Za-z0-9][A-Za-z0-9._-]*:[A-Za-z0-9._-]+")


ScalingMetric = Literal["utilization", "invocations", "concurrency", "latency"]
SCALING_METRICS: tuple[str, ...] = get_args(ScalingMetric)


class ScalingConfig(ConfigModel):
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


class EndpointConfig(ConfigModel):
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


class ImagesConfig(ConfigModel):
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


class AlarmsConfig(ConfigModel):
    latency_ms: int = Field(2000, ge=1, description="Alarm when the latencyPercentile model latency exceeds this.")
    latency_percentile: Literal[50, 90, 95, 99] = Field(
        90, description="Which latency percentile the alarm watches (GCP aligns at 50, 95 and 99 only: 90 is "
        "watched as 95 there).")
    error_rate_percent: float = Field(5.0, gt=0, le=100, description="Alarm when 5xx responses exceed this share.")


class NetworkConfig(ConfigModel):
    cidr: str = Field("10.42.0.0/16", pattern=r"^\d+\.\d+\.\d+\.\d+/\d+$", description="Private network range.")
    internet_egress: bool = Field(False, description="AWS: a NAT gateway, so jobs and endpoints reach the internet over "
                                  "HTTPS (Hugging Face models by id); off, models come from the artifact store.")




WeekDay = Literal["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


class RecurrenceConfig(ConfigModel):
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


class PipelineTriggerConfig(ConfigModel):
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


