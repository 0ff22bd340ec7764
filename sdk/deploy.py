"""Deploy: roll registered model versions onto the stack's endpoint, with a traffic split.

`platform.deploy("chat@champion")` resolves the reference through the model registry into a
`DeployTarget` (name, version, artifact URI, base model) and hands it to the stack's
`DeployBackend` (chosen by `stack.deploy_kind`, the cloud or `kubernetes`, from `stackwise.registry.DEPLOY`, imported lazily).

How a cloud implements it (adapters/deploy/<cloud>.py):

1. Subclass `DeployBackend`; the constructor takes the `Stack` and must not call the cloud.
   Import the cloud SDK inside methods or through `stackwise.registry.require`.
2. `describe(endpoint)` returns the endpoint's `Deployment`: one `Variant` per model version on
   it (`model`, `version`, `traffic` percent, `state`), the endpoint's `state` ("creating",
   "updating", "ready", "failed", or "absent" when nothing is deployed yet) and its URL.
3. `deploy(targets, traffic, endpoint)` makes the endpoint serve every version already on it plus
   `targets`, with `traffic` (keys `"name:version"`, integer percents summing to 100; versions
   on the endpoint that `traffic` leaves out get 0). It must:
   - call `self.check_traffic(traffic, known)` first, `known` = versions on the endpoint plus
     `targets`, so a bad split raises `SpecError` before any cloud call;
   - be idempotent: a version already on the endpoint is never created or deployed again
     (one model / variant / deployed model per version, named from `variant_name`), and
     deploying the same targets and split twice changes nothing;
   - make a change of weights alone a traffic-only update (no new model, no redeploy);
   - return the resulting `Deployment` (it may still be "updating": deploy does not block).
4. `undeploy(key, endpoint)` removes one version (`"name:version"`); it must carry 0% traffic
   first (else `SpecError`), and removing a version that is not there is a no-op.
5. Register the class in `stackwise.registry.DEPLOY` with its extra, mix
   `stackwise.testing.deploy.DeployContract` into its tests against the cloud's emulator, and
   never put a secret (keys, tokens, signed URLs) in a request log, error or `Deployment`.

The endpoint name comes from the call, else the stack's first `endpoints` output; a stack
with none is a `ConfigError` that says how to add one.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ConfigError, SpecError

_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_REF_FORMS = "NAME:VERSION, NAME@ALIAS, models:/NAME/VERSION or models:/NAME@ALIAS"


@dataclass(frozen=True)
class ModelRef:
    """A registered model reference: a version (`chat:3`) or an alias (`chat@champion`)."""

    name: str
    version: str | None = None
    alias: str | None = None

    @classmethod
    def parse(cls, text: str) -> "ModelRef":
        """Parse `NAME:VERSION`, `NAME@ALIAS`, `models:/NAME/VERSION` or `models:/NAME@ALIAS`."""
        raw = (text or "").strip()
        body = raw.removeprefix("models:/")
        m = re.fullmatch(rf"({_NAME})(?:(?::|/)(\d+)|@([A-Za-z][A-Za-z0-9_-]*))", body)
        if not m or (raw.startswith("models:/") and ":" in body) or (not raw.startswith("models:/") and "/" in body):
            raise SpecError(f"{text!r} is not a model reference", where="model reference",
                            fix=f"write {_REF_FORMS}, e.g. chat:3 or chat@champion")
        return cls(name=m.group(1), version=m.group(2), alias=m.group(3))

    def __str__(self) -> str:
        return f"{self.name}:{self.version}" if self.version else f"{self.name}@{self.alias}"


def version_key(model: str, version: str) -> str:
    """The key of one model version in a traffic split: `name:version`."""
    return f"{model}:{version}"


@dataclass(frozen=True)
class DeployTarget:
    """One registered model version to serve."""

    model: str
    version: str
    artifact_uri: str  # the version's registry source: the saved model or LoRA adapter folder
    base_model: str | None = None  # lineage.base: what a LoRA adapter loads on top of
    kind: str = "model"  # "rag": a RAG app version (its folder holds rag.yaml; tag stackwise.kind=rag)

    @property
    def key(self) -> str:
        return version_key(self.model, self.version)


@dataclass
class Variant:
    """One model version on an endpoint."""

    model: str
    version: str
    traffic: int
    state: str = "ready"
    name: str = ""  # the cloud's name for it: SageMaker variant, Vertex deployed model id
    artifact_uri: str | None = None
    base_model: str | None = None

    @property
    def key(self) -> str:
        return version_key(self.model, self.version)


@dataclass
class Deployment:
    """An endpoint and the model versions it serves."""

    endpoint: str
    cloud: str
    state: str  # absent | creating | updating | ready | failed
    url: str | None = None
    variants: list[Variant] = field(default_factory=list)

    @property
    def traffic(self) -> dict[str, int]:
        return {v.key: v.traffic for v in self.variants}

    def variant(self, key: str) -> Variant | None:
        return next((v for v in self.variants if v.key == key), None)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["traffic"] = self.traffic
        return out


def parse_traffic_items(items: list[str] | None) -> dict[str, int] | None:
    """CLI `--traffic chat:2=90 --traffic chat:3=10` -> {"chat:2": 90, "chat:3": 10}."""
    if not items:
        return None
    out: dict[str, int] = {}
    for item in items:
        ref, sep, pct = item.rpartition("=")
        if not sep or not ref:
            raise SpecError(f"--traffic {item!r} is not REF=PERCENT", where="--traffic",
                            fix="write --traffic chat:2=90 --traffic chat:3=10")
        if ref in out:
            raise SpecError(f"--traffic names {ref} twice", where="--traffic", fix="give each version once")
        out[ref] = _percent(pct, ref)
    return out


def _percent(value: Any, key: str) -> int:
    if isinstance(value, bool):
        value = None
    try:
        pct = int(value) if isinstance(value, int) or str(value).strip().isdigit() else None
    except (TypeError, ValueError):
        pct = None
    if pct is None or not 0 <= pct <= 100:
        raise SpecError(f"traffic for {key} is {value!r}, not an integer percent from 0 to 100",
                        where=f"traffic[{key!r}]", fix="give whole percents that sum to 100, e.g. {'chat:2': 90, 'chat:3': 10}")
    return pct


def validate_traffic(traffic: dict[str, Any], known: set[str] | list[str]) -> dict[str, int]:
    """Check a split: keys `name:version` among `known` (on the endpoint or being deployed),
    integer percents from 0 to 100 summing to 100. Returns it as {key: int}."""
    known = set(known)
    if not traffic:
        raise SpecError("the traffic split is empty", where="traffic",
                        fix="give at least one version 100, e.g. {'chat:3': 100}")
    out: dict[str, int] = {}
    for key, value in traffic.items():
        if key not in known:
            raise SpecError(f"traffic names {key}, which is neither on the endpoint nor being deployed",
                            where=f"traffic[{key!r}]",
                            fix="name versions on the endpoint (`stackwise endpoints`) or the one being deployed: "
                                + (", ".join(sorted(known)) or "none yet"))
        out[key] = _percent(value, key)
    total = sum(out.values())
    if total != 100:
        raise SpecError(f"traffic percents sum to {total}, not 100", where="traffic " + ", ".join(
            f"{k}={v}" for k, v in out.items()), fix="make the percents add up to exactly 100")
    return out


class DeployBackend(ABC):
    """The stack's inference endpoint. See the module docstring for what an implementation owes."""

    cloud: str = ""

    def __init__(self, stack: Any):
        self.stack = stack

    # -- endpoint name ---------------------------------------------------------------------
    def endpoint_output(self, endpoint: str | None = None) -> Any:
        """The stack's `EndpointOutput` named `endpoint` (default: the first)."""
        endpoints = list(self.stack.outputs.endpoints)
        if not endpoints:
            raise ConfigError(f"stack {self.stack.name!r} has no inference endpoint",
                              where=f"stack {self.stack.name}, output 'endpoints'",
                              fix="add `stackwise:endpoint` to the stack file, `pulumi up`, then `stackwise sync`"
                                  if self.stack.cloud != "local" else "the local stack always has one; check its outputs")
        if endpoint is None:
            return endpoints[0]
        for out in endpoints:
            if out.name == endpoint:
                return out
        raise ConfigError(f"stack {self.stack.name!r} has no endpoint named {endpoint!r}",
                          where=f"stack {self.stack.name}, output 'endpoints'",
                          fix="use one of: " + ", ".join(e.name for e in endpoints))

    def endpoint_name(self, endpoint: str | None = None) -> str:
        return self.endpoint_output(endpoint).name

    @staticmethod
    def check_traffic(traffic: dict[str, Any], known: set[str] | list[str]) -> dict[str, int]:
        return validate_traffic(traffic, known)

    # -- the interface ---------------------------------------------------------------------
    @abstractmethod
    def describe(self, endpoint: str | None = None) -> Deployment:
        """The endpoint now; state "absent" and no variants when nothing was deployed yet."""

    @abstractmethod
    def deploy(self, targets: list[DeployTarget], traffic: dict[str, int], endpoint: str | None = None) -> Deployment:
        """Serve the endpoint's versions plus `targets` with `traffic`; idempotent."""

    @abstractmethod
    def undeploy(self, key: str, endpoint: str | None = None) -> Deployment:
        """Remove one version (`name:version`) carrying 0% traffic; a no-op when it is not there."""

    # -- helpers for implementations -------------------------------------------------------
    def plan(self, current: Deployment, targets: list[DeployTarget], traffic: dict[str, int]) -> tuple[
            list[DeployTarget], dict[str, int]]:
        """Validate `traffic` against `current` + `targets`; return the targets not yet on the
        endpoint and the full split (every version, 0 for those `traffic` leaves out)."""
        known = [v.key for v in current.variants] + [t.key for t in targets]
        split = self.check_traffic(traffic, known)
        on = {v.key for v in current.variants}
        new: list[DeployTarget] = []
        for t in targets:
            if t.key not in on and t.key not in {n.key for n in new}:
                new.append(t)
        full = {key: split.get(key, 0) for key in dict.fromkeys(known)}
        return new, full

    def check_removable(self, current: Deployment, key: str) -> Variant | None:
        variant = current.variant(key)
        if variant is not None and variant.traffic:
            raise SpecError(f"{key} still carries {variant.traffic}% of the traffic on {current.endpoint}",
                            where=f"endpoint {current.endpoint}",
                            fix=f"move its traffic first: stackwise deploy {key} --traffic OTHER=100")
        if variant is not None and len(current.variants) == 1:
            raise SpecError(f"{key} is the only version on {current.endpoint}", where=f"endpoint {current.endpoint}",
                            fix="deploy another version first")
        return variant


def variant_name(model: str, version: str) -> str:
    """A cloud-safe name for one version: letters, digits and '-', at most 63 characters."""
    safe = re.sub(r"[^A-Za-z0-9-]+", "-", model).strip("-")[:50] or "model"
    return f"{safe}-v{version}"


# -- resolving references through the model registry ------------------------------------------
def resolve_target(registry: Any, model_ref: str) -> DeployTarget:
    """`chat@champion` / `chat:3` -> the registered version, its artifact and base model."""
    ref = ModelRef.parse(model_ref)
    mv = registry.version(ref.name, ref.version) if ref.version else registry.version_by_alias(ref.name, ref.alias)
    tags = dict(mv.tags or {})
    base = tags.get("lineage.base") or tags.get("base") or None
    kind = "rag" if tags.get("stackwise.kind") == "rag" else "model"  # stackwise.rag.KIND_TAG, set by register_rag
    return DeployTarget(model=ref.name, version=str(mv.version), artifact_uri=str(mv.source), base_model=base,
                        kind=kind)


def resolve_traffic(registry: Any, traffic: dict[str, Any]) -> dict[str, Any]:
    """Keys as references (`chat:2`, `chat@champion`, `models:/chat/2`) -> `name:version`."""
    out: dict[str, Any] = {}
    for key, pct in traffic.items():
        ref = ModelRef.parse(key)
        version = ref.version or str(registry.version_by_alias(ref.name, ref.alias).version)
        canonical = version_key(ref.name, version)
        if canonical in out:
            raise SpecError(f"traffic names {canonical} twice (as {key})", where="traffic",
                            fix="give each version once")
        out[canonical] = pct
    return out
