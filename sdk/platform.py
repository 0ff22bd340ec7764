"""The SDK entry point for services and notebooks: `stackwise.connect(stack=None)`.

Everything the CLI does goes through a `Platform`, so code can do it too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .jobs import ComputeBackend, JobHandle, JobInfo
from .specs import FineTuneSpec, IndexSpec
from .stack import Stack, load_stack
from .vectors import Filter, Hit, IndexInfo, VectorStore, check_filter

if TYPE_CHECKING:
    from .deploy import DeployBackend, Deployment
    from .governance import Placement
    from .model_registry import Registry
    from .specs import EvaluateSpec


class Jobs:
    """The active stack's jobs."""

    def __init__(self, platform: "Platform"):
        self._platform = platform

    def list(self, limit: int = 50) -> list[JobInfo]:
        return self._platform.compute.list(limit=limit)

    def get(self, job_id: str) -> JobHandle:
        compute = self._platform.compute
        return JobHandle(compute, compute.info(job_id).id)


class Platform:
    """One stack's lifecycle operations. Backends load on first use."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self._compute: ComputeBackend | None = None
        self._store: VectorStore | None = None
        self._embedders: dict[str, Any] = {}
        self._placements: dict[str, Any] = {}
        self.jobs = Jobs(self)

    def __repr__(self) -> str:
        return f"Platform(stack={self.stack.name!r}, cloud={self.stack.cloud!r})"

    @property
    def compute(self) -> ComputeBackend:
        if self._compute is None:
            from .registry import COMPUTE, load

            self._compute = load(COMPUTE, self.stack.compute_kind, "compute")(self.stack)
        return self._compute

    @property
    def vector_store(self) -> VectorStore:
        if self._store is None:
            from .vectors import open_store

            self._store = open_store(self.stack.outputs.vector_store)
        return self._store

    def index(self, spec: IndexSpec | None = None, *, new: bool = False, run_name: str | None = None,
              preflight: bool = True, **fields: Any) -> JobHandle:
        """Submit an index job (a spec, or its fields as keywords) and return its handle at once.

        Every submit follows the job identity rules (`stackwise.specs._JobSpec`): the spec's job is
        returned while it is PENDING or RUNNING; `new=True` starts a fresh run. First
        `spec.preflight()` refuses a missing or malformed input at once (InputError, exit 2), as the
        CLI does, for index, finetune and evaluate alike; `preflight=False` leaves the input to the
        job, which fails with the same error (the caller checked already, or wants the job to)."""
        if spec is None:
            fields.setdefault("embedding", {"model": self.stack.outputs.embedding_model})
            spec = IndexSpec(**fields)
        if preflight:
            spec.preflight()
        return self.compute.submit(spec, new=new, run_name=run_name)

    def finetune(self, spec: FineTuneSpec | None = None, *, new: bool = False, run_name: str | None = None,
                 preflight: bool = True, **fields: Any) -> JobHandle:
        """Submit a fine-tuning job (a spec, or its fields as keywords) and return its handle at once.

        While the spec's job runs, submitting it again returns that job; once it ended (failed,
        cancelled, interrupted), submitting it again starts the next attempt, which resumes from
        the last complete checkpoint, on every stack. `new=True` starts from scratch.
        """
        if spec is None:
            spec = FineTuneSpec(**fields)
        if preflight:
            spec.preflight()
        spec, _ = self.plan_finetune(spec)
        return self.compute.submit(spec, new=new, run_name=run_name)

    def plan_finetune(self, spec: FineTuneSpec) -> tuple[FineTuneSpec, "Placement"]:
        """(the spec to submit, where it runs and its estimated cost), before anything is submitted:
        the base's licence against the stack's allowedLicenses/allowGated (exit 2), on a cloud stack
        the cheapest allowed GPU that holds the job when none is given, and the cost against the
        stack's maxJobCostUsd (exit 3). See stackwise.governance."""
        from .governance import plan_finetune

        key = spec.digest()
        if key not in self._placements:
            self._placements[key] = plan_finetune(spec, self.stack)
        return self._placements[key]

    def render(self, spec: Any, *, new: bool = False, run_name: str | None = None) -> Any:
        """What submitting `spec` would create on the stack's compute backend, as data, with no call:
        a Kubernetes stack's manifests (a list), a cloud's job request (SageMaker, Vertex AI, Azure ML),
        for the spec's first attempt. A fine-tune is placed first (`plan_finetune`). The local stack
        runs jobs as processes and has nothing to render (ConfigError)."""
        from stackwise.adapters.compute.base import job_name
        from stackwise.adapters.compute.checks import check_paths, with_run

        from .errors import ConfigError

        if spec.kind == "finetune":
            spec, _ = self.plan_finetune(spec)
        build = getattr(self.compute, "build", None)
        if build is None:
            raise ConfigError(f"stack {self.stack.name!r} runs its jobs on this machine (compute kind "
                              f"{self.stack.compute_kind}): there is no job request to print", where="--dry-run",
                              fix="use --dry-run with a cloud or kubernetes stack")
        spec = with_run(spec, new, run_name)
        check_paths(spec, self.stack)
        return build(spec, job_name(spec, 1), 1)

    def evaluate(self, spec: "EvaluateSpec | None" = None, *, new: bool = False, run_name: str | None = None,
                 preflight: bool = True, **fields: Any) -> JobHandle:
        """Submit an evaluation job (a spec, or its fields as keywords) and return its handle at once.

        The job logs one MLflow run per model evaluated and writes an HTML + Markdown report.
        `preflight` as for `index`."""
        from .specs import EvaluateSpec

        if spec is None:
            spec = EvaluateSpec(**fields)
        if preflight:
            spec.preflight()
        return self.compute.submit(spec, new=new, run_name=run_name)

    @property
    def models(self) -> "Registry":
        """The stack's model registry (MLflow): versions, aliases, lineage, promotion."""
        from .model_registry import Registry

        return Registry(self.stack)

    @property
    def deployer(self) -> "DeployBackend":
        """The stack's inference endpoint backend (sdk/deploy.py), loaded on first use."""
        if getattr(self, "_deployer", None) is None:
            from .registry import DEPLOY, load

            self._deployer = load(DEPLOY, self.stack.deploy_kind, "deploy")(self.stack)
        return self._deployer

    def deploy(self, model_ref: str, traffic: dict[str, int] | None = None,
               endpoint: str | None = None) -> "Deployment":
        """Roll a registered version (`chat@champion`, `chat:3`) onto the stack's endpoint.

        Default traffic: 100% to that version. `traffic={"chat:2": 90, "chat:3": 10}` splits it
        across versions on the endpoint (or being deployed); versions left out get 0%. Idempotent:
        a version already on the endpoint is not deployed again, only its weight changes."""
        from .deploy import resolve_target, resolve_traffic

        from .governance import check_version_licence

        registry = self.models
        target = resolve_target(registry, model_ref)
        split = {target.key: 100} if traffic is None else resolve_traffic(registry, traffic)
        for key, weight in split.items():
            if weight > 0 and ":" in key:  # NAME:VERSION of a registered model (rag apps carry no base)
                name, version = key.rsplit(":", 1)
                check_version_licence(registry, name, version, self.stack)
        return self.deployer.deploy([target], split, endpoint)

    def endpoint(self, endpoint: str | None = None) -> "Deployment":
        """The stack's endpoint and the versions it serves, with their traffic."""
        return self.deployer.describe(endpoint)

    def indexes(self) -> list[IndexInfo]:
        store = self.vector_store
        return [store.describe(name) for name in store.list_indexes()]

    def embedder(self, model: str) -> Any:
        """The embedding model `model` (an index's), loaded once per platform."""
        from .embeddings import load_embedder

        embedder = self._embedders.get(model)
        if embedder is None:
            embedder = self._embedders[model] = load_embedder(model)
        return embedder

    def search(self, index: str, query: str, k: int = 10, filter: Filter | None = None) -> list[Hit]:
        """Embed `query` with the index's own model and return the `k` nearest chunks.

        `filter` is the portable filter (`stackwise.filters`), applied before ranking, e.g.
        `{"lang": "en", "year": {"$gte": 2019, "$lt": 2023}}` or `{"$or": [...]}`; a bad one
        raises SpecError before the model is loaded."""
        check_filter(filter)
        store = self.vector_store
        vector = self.embedder(store.model_of(index)).encode([query])[0]
        return store.query(index, vector, k=k, filter=filter)


def connect(stack: str | None = None) -> Platform:
    """The platform of `stack` (else `$STACKWISE_STACK`, else `local`), config validated now."""
    return Platform(load_stack(stack))
