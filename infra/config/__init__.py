"""The typed config of a cloud stack: every `stackwise:` key of `stacks/Pulumi.<stack>.yaml`.

`infra/__main__.py` reads it once (`InfraConfig.load`) and hands typed parts to the components;
no component reads Pulumi config. An unknown key or a bad value fails naming the key and the
stack file. Importing this package needs pydantic only (no Pulumi), so `stackwise plan` and the
tests can validate a stack file before any provider loads.

The keys every cloud reads are here (their parts in `parts.py` and `kubernetes.py`); a cloud's
own keys and cross-checks are its `InfraCloud.config_fields` and `check_config` (infra/<cloud>/),
added to `InfraConfig` from the registry of clouds.
"""

from __future__ import annotations

import json
import re
from typing import Any, get_args

from pydantic import BaseModel, Field, ValidationError, create_model, field_validator, model_validator

from stackwise import catalog
from stackwise import clouds
from stackwise.errors import ConfigError

from ..cloud import infra_clouds
from .base import ConfigModel, camel, from_catalog
from .kubernetes import (GPU_LABEL, GPU_TAINT, K8S_NAME, SPOT_LABEL, SPOT_TAINT, ComputeConfig, KubernetesConfig,
                         NodePoolConfig, QueueConfig)
from .parts import (SCALING_METRICS, AlarmsConfig, EndpointConfig, ImagesConfig, NetworkConfig, PipelineTriggerConfig,
                    RecurrenceConfig, ScalingConfig, ScalingMetric, TrainingConfig, VectorStoreConfig, WeekDay)

__all__ = [
    "GPU_LABEL", "GPU_TAINT", "K8S_NAME", "REQUIRED_TAGS", "SCALING_METRICS", "SPOT_LABEL", "SPOT_TAINT",
    "AlarmsConfig", "ComputeConfig", "EndpointConfig", "ImagesConfig", "InfraConfig", "KubernetesConfig",
    "NetworkConfig", "NodePoolConfig", "PipelineTriggerConfig", "QueueConfig", "RecurrenceConfig", "ScalingConfig",
    "ScalingMetric", "TrainingConfig", "VectorStoreConfig", "WeekDay",
]

REQUIRED_TAGS = ("project", "env", "owner", "cost-center")
_LABEL = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


class _StackConfig(ConfigModel):
    """A cloud stack's config (the `stackwise:` namespace of its stack file): the keys every cloud
    reads. `InfraConfig` adds each cloud's own keys (`InfraCloud.config_fields`)."""

    cloud: str = Field(description="The stack's cloud: a name of stackwise.clouds.CLOUDS.")
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

    @field_validator("cloud")
    @classmethod
    def _known_cloud(cls, value: str) -> str:
        # The registry, read now (not frozen into a Literal), so a cloud declared there is valid here.
        if value not in clouds.CLOUDS:
            raise ValueError(f"Input should be {clouds.one_of(tuple(clouds.CLOUDS))}")
        return value

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
        return [from_catalog(catalog.canonical_gpu, g) for g in value]

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
    def _cross_checks(self) -> "_StackConfig":
        uses = [("training.gpu", self.training.gpu, self.training.count)]
        if self.endpoint is not None:
            uses.append(("endpoint.gpu", self.endpoint.gpu, self.endpoint.count))
            if self.endpoint.max_replicas > self.max_endpoint_replicas:
                raise ValueError(f"endpoint.maxReplicas {self.endpoint.max_replicas} exceeds maxEndpointReplicas "
                                 f"{self.max_endpoint_replicas}")
        for key, gpu, count in uses:
            name = from_catalog(catalog.canonical_gpu, gpu)
            if name not in self.allowed_gpus:
                raise ValueError(f"{key} {name} is not in allowedGpus ({', '.join(self.allowed_gpus)})")
            from_catalog(catalog.offer, name, self.cloud, count)  # lists what the cloud offers
        self._kubernetes_checks()
        for cloud in infra_clouds():
            own = [name for name in cloud.config_fields if getattr(self, name, None)]
            if cloud.name != self.cloud and own:
                keys = [camel(name) for name in cloud.config_fields]
                raise ValueError(f"{' and '.join(keys)} are for {cloud.name} stacks only")
            cloud.check_config(self)
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
            name = from_catalog(catalog.canonical_gpu, pool.gpu)
            if name not in self.allowed_gpus:
                raise ValueError(f"kubernetes.nodePool.gpu {name} is not in allowedGpus ({', '.join(self.allowed_gpus)})")
            try:
                from_catalog(catalog.offer, name, self.cloud, pool.count)
            except ValueError as exc:
                raise ValueError(f"kubernetes.nodePool {exc}") from None
            uses = [("training", self.training.gpu, self.training.count)]
            if self.endpoint is not None:
                uses.append(("endpoint", self.endpoint.gpu, self.endpoint.count))
            for key, wanted, count in uses:
                if from_catalog(catalog.canonical_gpu, wanted) != name or count > pool.count:
                    raise ValueError(f"kubernetes.nodePool.gpu is {pool.count} x {name}, but {key} asks for {count} x "
                                     f"{from_catalog(catalog.canonical_gpu, wanted)}: the created cluster has no other "
                                     f"GPU nodes; make {key}.gpu {name} (count at most {pool.count}) or change the pool")
            if pool.max_nodes > self.max_endpoint_replicas:
                raise ValueError(f"kubernetes.nodePool.maxNodes {pool.max_nodes} exceeds maxEndpointReplicas "
                                 f"{self.max_endpoint_replicas} (the policy bound on nodes and replicas)")

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
    def load(cls, raw: dict[str, Any], source: str) -> "_StackConfig":
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
            from ..pipeline_trigger import checked  # reads the definition file: only when the key is set

            config = checked(config, source)
        return config


def _with_cloud_keys() -> type[_StackConfig]:
    fields: dict[str, Any] = {}
    for cloud in infra_clouds():
        fields.update(cloud.config_fields)
    return create_model("InfraConfig", __base__=_StackConfig, __module__=__name__, **fields)


InfraConfig = _with_cloud_keys()
"""A cloud stack's config: `_StackConfig`'s keys and every cloud's own (GCP's `gcpProject`, ...)."""


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

