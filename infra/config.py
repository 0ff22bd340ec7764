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
from stackwise.contract import VectorStoreKind
from stackwise.errors import ConfigError
from stackwise.images import DEFAULT_BASE_IMAGE, DEFAULT_EXTRAS
from stackwise.registry import vector_store_kinds

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

    kind: VectorStoreKind = "embedded"
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
        if self.cloud == "gcp" and not (self.gcp_project and self.gcp_billing_account):
            raise ValueError("gcp stacks need gcpProject and gcpBillingAccount")
        if self.cloud != "gcp" and (self.gcp_project or self.gcp_billing_account):
            raise ValueError("gcpProject and gcpBillingAccount are for gcp stacks only")
        return self

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
            first = exc.errors()[0]
            key = ".".join(str(p) for p in first["loc"]) or "(stack)"
            message = first["msg"].removeprefix("Value error, ")
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
