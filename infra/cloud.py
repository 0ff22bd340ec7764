"""What a cloud gives the Pulumi program: one `InfraCloud` object per cloud (`infra/<cloud>/`).

The program (`program.py`), the mocks (`offline.py`), `stackwise plan` (`plan.py`), the stack
config (`config.py`) and the policy pack (`policy/`) hold no per-cloud code: they look the
stack's cloud up here (`infra_cloud(name)`, from the registry `stackwise.clouds.CLOUDS`) and
call its hooks. A cloud implements the abstract ones (its platform, endpoint, budget and
Kubernetes cluster) and overrides the others where it has something to say.

Importing this module, or a cloud's object, loads neither Pulumi nor a provider: the config and
the policy pack use them before any provider loads. Hooks import their components when called.
"""

from __future__ import annotations

import hashlib
import importlib
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pulumi

    from stackwise.catalog import Offer

    from .config import InfraConfig
    from .offline import RecordedResource
    from .plan import Pricer
    from .program import Secrets

Report = Callable[..., None]


@dataclass
class PlatformOutputs:
    """A cloud's training platform, as the program needs it: the contract's platform fields, and
    the component the cloud's other hooks build on."""

    artifact_store: pulumi.Output[str]
    """Root URI of the artifact store (`<scheme>://...`, the scheme in the cloud's registry entry)."""
    job_role: pulumi.Input[str]
    """The role, service account or identity jobs run as."""
    training_image: pulumi.Input[str]
    serving_image: pulumi.Input[str]
    """The serving image an endpoint without `image` runs (the platform registry's `serve` image)."""
    secrets: dict[str, pulumi.Output[str]] = field(default_factory=dict)
    """Named secret references (`pinecone_api_key` when the platform stores the Pinecone key)."""
    contract: dict[str, Any] = field(default_factory=dict)
    """The cloud's own contract fields (`network`, `gcp_project`, `azure_workspace`, ...)."""
    component: Any = None
    """The cloud's platform component itself (its key, network, registry...), for its other hooks."""


@dataclass
class ClusterOutputs:
    """A stack's Kubernetes cluster (created, or an existing one the program binds to)."""

    name: pulumi.Input[str | None]
    kubeconfig: pulumi.Input[str | None]
    """How the program reaches a created cluster (None: the stack's kubeconfig context)."""
    ready: list[Any]
    """What must exist before anything is installed on the cluster."""
    identity: pulumi.Input[str] | None = None
    """The job identity the stack's service account is bound to, for `InfraCloud.workload_identity`."""


@dataclass(frozen=True)
class PolicyRules:
    """A cloud's part of each guardrail of the policy pack (`infra/policy`), keyed by resource type.

    Each check takes the resource's properties (the engine's camelCase) and `report`."""

    encryption: Mapping[str, Callable[[dict, Report], None]] = field(default_factory=dict)
    """encryption-at-rest: checks of the types that store data."""
    not_public: Mapping[str, Callable[[dict, Report], None]] = field(default_factory=dict)
    """no-public-access: checks of the types that could be reached from outside."""
    tags: Mapping[str, str] = field(default_factory=dict)
    """required-tags: taggable type -> the property holding its tags (`tags`, `labels`)."""
    instances: Mapping[str, Callable[[dict], list[str]]] = field(default_factory=dict)
    """gpu-allow-list: type -> the catalog instance types a resource provisions (GPU ones only)."""
    replicas: Mapping[str, Callable[[dict], tuple[Any, Any]]] = field(default_factory=dict)
    """bounded-replicas: type -> (minimum, maximum) replicas or nodes."""
    budgets: tuple[str, ...] = ()
    """budget-present: the cloud's budget types."""
    budget_label: str = ""
    """How the budget-present message names the cloud's budget ("AWS Budgets")."""
    names: Mapping[str, Callable[[dict, Report], None]] = field(default_factory=dict)
    """kubernetes-names: checks of the cloud's cluster and node pool names."""
    stack_policies: tuple[tuple[str, str, Callable[[Any, Report], None]], ...] = ()
    """Policies of this cloud alone that compare resources: (name, description, validate(args,
    report)), added to the pack as stack validation policies."""


@dataclass(frozen=True)
class Fake:
    """What the mocks (`offline.py`) know when faking a provider's answer for one resource or call."""

    config: InfraConfig
    name: str = ""
    """The resource's logical name."""
    physical: str = ""
    """Its physical name (its `name` input, or `<name>-<digest>`)."""
    digest: str = ""
    """8 hex digits unique to its type and name."""
    secret: str = ""
    """The placeholder a faked call answers for a credential (never a real one)."""

    @staticmethod
    def digest_of(typ: str, name: str) -> str:
        return hashlib.sha1(f"{typ}/{name}".encode()).hexdigest()[:8]


class InfraCloud(ABC):
    """One cloud's Pulumi side. Subclasses set the class attributes and implement the hooks.

    The program calls, in order: `platform`; `endpoint` (a managed endpoint) unless the stack's
    compute kind is kubernetes; `pipeline_trigger` when `stackwise:pipelineTrigger` is set;
    `budget`; and `cluster` on a kubernetes stack.
    """

    name: str
    """The cloud's name in `stackwise.clouds.CLOUDS` and `stackwise:cloud`."""
    provider: str
    """The package part of its Pulumi provider's type tokens (`aws` in `aws:s3/bucket:Bucket`)."""
    config_fields: Mapping[str, tuple[Any, Any]] = {}
    """Top-level `stackwise:` keys only this cloud reads: field name -> (type, pydantic Field),
    added to `InfraConfig` (e.g. GCP's `gcp_project`, key `gcpProject`)."""
    pipeline_target: str = ""
    """`stackwise pipeline compile --target` of the pipelines its trigger runs (empty: no trigger)."""
    spot_tolerations: tuple[dict[str, str], ...] = ()
    """Taints the cloud puts on its own spot nodes, which spot pods must tolerate besides stackwise's."""

    @property
    def policy(self) -> PolicyRules:
        """The cloud's part of the policy pack (imported when the pack loads, not with the cloud)."""
        return PolicyRules()

    # -- config ------------------------------------------------------------------------------------
    def check_config(self, config: InfraConfig) -> None:
        """Cross-checks of a stack's config (raise ValueError saying what to set). Called for every
        cloud on every stack: `config.cloud` may be another cloud, whose stacks must not set this
        cloud's keys (`config_fields` are refused there already)."""

    def check_schedule(self, trigger: Any, source: str) -> None:
        """Check `stackwise:pipelineTrigger`'s schedule in the cloud's own syntax (raise ConfigError)."""
        raise self._no_trigger(source)

    def read_pipeline(self, path: Any, text: str, parameters: dict[str, Any], source: str) -> Any:
        """The compiled pipeline at `path` (its `text`), checked to declare `parameters` (raise ConfigError)."""
        raise self._no_trigger(source)

    def _no_trigger(self, source: str) -> Exception:
        from stackwise.errors import ConfigError

        return ConfigError(f"stackwise:pipelineTrigger is not supported on {self.name}", where=source,
                           fix="remove stackwise:pipelineTrigger")

    # -- the program ---------------------------------------------------------------------------------
    @abstractmethod
    def platform(self, prefix: str, config: InfraConfig, secrets: Secrets) -> PlatformOutputs:
        """Create the training platform: artifact store, registry, job identity, network, keys."""

    @abstractmethod
    def endpoint(self, prefix: str, config: InfraConfig, platform: PlatformOutputs,
                 image: pulumi.Input[str]) -> Any:
        """Create the managed endpoint of `config.endpoint`; return a component with `name` and
        `url` outputs (and, on GCP, `autoscaling_metric_specs`)."""

    def pipeline_trigger(self, prefix: str, config: InfraConfig, platform: PlatformOutputs, definition: Any,
                         pipeline_name: str) -> None:
        """Create the pipeline and what starts it (`stackwise:pipelineTrigger`)."""
        raise NotImplementedError(f"{self.name} has no pipeline trigger")

    @abstractmethod
    def budget(self, prefix: str, config: InfraConfig, platform: PlatformOutputs) -> None:
        """Create the monthly budget with its alerts."""

    @abstractmethod
    def cluster(self, prefix: str, config: InfraConfig, platform: PlatformOutputs,
                offer: Offer | None) -> ClusterOutputs:
        """A kubernetes stack's cluster: created with a GPU node pool of `offer`, or an existing one
        bound to the job identity."""

    def workload_identity(self, identity: Any) -> tuple[dict[str, Any], dict[str, str]]:
        """(service account annotations, pod labels) that make pods run as the job identity."""
        return {}, {}

    # -- the mocks -----------------------------------------------------------------------------------
    def fake_resource(self, typ: str, inputs: dict[str, Any], state: dict[str, Any], fake: Fake) -> str:
        """What the provider would answer for a new resource of this cloud: fill `state` with the
        outputs it computes (ids, ARNs, hosts) and return the resource's id."""
        return f"{fake.physical}-id"

    def fake_call(self, token: str, args: dict[str, Any], fake: Fake) -> dict[str, Any] | None:
        """What the provider would answer for a function call (`getClientConfig`); None: nothing."""
        return None

    # -- stackwise plan ------------------------------------------------------------------------------
    def price(self, resource: RecordedResource, pricer: Pricer) -> bool:
        """Add the monthly line items of an idle resource of this cloud; False: not priced here
        (its fixed price in the catalog, if any, applies)."""
        return False


def get(props: Any, *path: str | int) -> Any:
    """The value at `path` in a resource's properties (None where any step is missing)."""
    for step in path:
        if isinstance(step, int):
            props = props[step] if isinstance(props, list) and len(props) > step else None
        else:
            props = props.get(step) if isinstance(props, dict) else None
    return props


def name_check(key: str, pattern: re.Pattern[str], rule: str) -> Callable[[dict, Report], None]:
    """A kubernetes-names check: property `key`, when set, must match `pattern` (`rule` says how)."""
    def check(props: dict, report: Report) -> None:
        if props.get(key) is not None and not pattern.fullmatch(str(props[key])):
            report(f"{key} {props[key]!r} is not a name the cloud accepts: {rule}")

    return check


def infra_cloud(name: str) -> InfraCloud:
    """The `InfraCloud` of cloud `name` (imported from its registry entry)."""
    from stackwise.clouds import CLOUDS, one_of
    from stackwise.errors import ConfigError

    ref = CLOUDS.get(name)
    if ref is None:
        raise ConfigError(f"no cloud {name!r}", where="stackwise.clouds.CLOUDS",
                          fix=f"set stackwise:cloud to {one_of(tuple(CLOUDS))}")
    module, _, attr = ref.infra.partition(":")
    return getattr(importlib.import_module(module), attr)


def infra_clouds() -> list[InfraCloud]:
    """Every cloud's `InfraCloud`, in the registry's order."""
    from stackwise.clouds import CLOUDS

    return [infra_cloud(name) for name in CLOUDS]


def cloud_of_type(typ: str) -> InfraCloud | None:
    """The cloud whose provider a resource type or function token belongs to (`aws:...`)."""
    package = typ.split(":", 1)[0]
    return next((c for c in infra_clouds() if c.provider == package), None)
