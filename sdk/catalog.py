"""The GPU catalog: portable GPU names mapped to each cloud's instance types and prices.

`gpu="A10G", count=1` means `ml.g5.xlarge` on SageMaker; `gpu="L4", count=1` means
`g2-standard-8` with one `NVIDIA_L4` on Vertex AI; `gpu="T4"` means `Standard_NC4as_T4_v3` on
Azure. The data lives in `stackwise/data/gpu_catalog.yaml`, every price dated and its public
page named. The Pulumi program, `stackwise plan` and the cloud compute adapters all read this
one catalog, so what is provisioned, what is priced and what jobs ask for cannot disagree.

Pure data and pydantic-free: importing it loads PyYAML only (no Pulumi, no cloud SDK).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

from .errors import ConfigError

HOURS_PER_MONTH = 730.0
_WHERE = "GPU catalog (stackwise/data/gpu_catalog.yaml)"


@dataclass(frozen=True)
class Offer:
    """One way to get `count` GPUs of one kind on one cloud, and what it costs per hour."""

    gpu: str
    cloud: str
    count: int
    instance: str
    on_demand_hourly: float
    spot_hourly: float
    accelerator: str | None  # GCP only: Vertex AI's AcceleratorType enum name
    region: str
    as_of: str
    source: str
    # Per figure ("on_demand", "spot"): how it was checked (a date, then what matched where), or
    # why it could not be. Every figure of every offer is in exactly one of the two.
    checked: dict[str, str] = field(default_factory=dict, compare=False)
    unverified: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def verified(self) -> bool:
        """True when the on-demand price (the one `stackwise plan` uses) was checked against a source."""
        return "on_demand" in self.checked

    def hourly(self, spot: bool = False) -> float:
        return self.spot_hourly if spot else self.on_demand_hourly

    def monthly(self, replicas: float = 1, spot: bool = False) -> float:
        """USD for `replicas` instances running all month (730 hours)."""
        return round(self.hourly(spot) * replicas * HOURS_PER_MONTH, 2)


@dataclass(frozen=True)
class FixedCost:
    resource_type: str
    usd: float
    source: str


@dataclass(frozen=True)
class GpuSpec:
    """One GPU kind: its memory and peak dense bf16 Tensor Core TFLOPS, with how that figure was checked."""

    name: str
    memory_gb: int
    bf16_tflops: float | None  # dense (no 2:4 sparsity); None where the catalog gives none
    checked: dict[str, str] = field(default_factory=dict, compare=False)
    unverified: dict[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Catalog:
    gpus: dict[str, int]  # canonical name -> memory in GB
    aliases: dict[str, str]  # upper-cased alias or name -> canonical name
    offers: tuple[Offer, ...]
    fixed: dict[str, FixedCost]
    clouds: dict[str, dict[str, str]]
    specs: dict[str, GpuSpec] = field(default_factory=dict)  # canonical name -> its spec


@lru_cache(maxsize=1)
def catalog() -> Catalog:
    """The catalog shipped with the package (parsed once)."""
    import yaml

    # libyaml's safe loader when PyYAML has it: the same data, parsed ~20x faster than in Python.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    data: dict[str, Any] = yaml.load(  # noqa: S506 - a safe loader
        resources.files("stackwise").joinpath("data/gpu_catalog.yaml").read_text("utf-8"), Loader=loader
    )
    clouds = {name: {k: str(v) for k, v in meta.items()} for name, meta in data["clouds"].items()}
    gpus: dict[str, int] = {}
    aliases: dict[str, str] = {}
    specs: dict[str, GpuSpec] = {}
    for name, meta in data["gpus"].items():
        gpus[name] = int(meta["memory_gb"])
        tflops = meta.get("bf16_tflops")
        specs[name] = GpuSpec(
            name=name, memory_gb=gpus[name], bf16_tflops=None if tflops is None else float(tflops),
            checked={str(k): str(v) for k, v in (meta.get("checked") or {}).items()},
            unverified={str(k): str(v) for k, v in (meta.get("unverified") or {}).items()},
        )
        aliases[name.upper()] = name
        for alias in meta.get("aliases") or []:
            aliases[str(alias).upper()] = name
    offers = tuple(
        Offer(
            gpu=o["gpu"], cloud=o["cloud"], count=int(o["count"]), instance=o["instance"],
            on_demand_hourly=float(o["on_demand"]), spot_hourly=float(o["spot"]),
            accelerator=o.get("accelerator"), region=clouds[o["cloud"]]["region"],
            as_of=clouds[o["cloud"]]["as_of"], source=clouds[o["cloud"]]["source"],
            checked={str(k): str(v) for k, v in (o.get("checked") or {}).items()},
            unverified={str(k): str(v) for k, v in (o.get("unverified") or {}).items()},
        )
        for o in data["offers"]
    )
    fixed = {k: FixedCost(k, float(v["usd"]), v["source"]) for k, v in (data.get("fixed_monthly") or {}).items()}
    return Catalog(gpus=gpus, aliases=aliases, offers=offers, fixed=fixed, clouds=clouds, specs=specs)


def gpu_names() -> list[str]:
    """Every portable GPU name the catalog knows."""
    return list(catalog().gpus)


def canonical_gpu(name: str) -> str:
    """The catalog's name for `name` (case-insensitive, aliases such as A100 -> A100-40GB).

    Raises ConfigError listing the known GPUs when the name is unknown.
    """
    found = catalog().aliases.get(str(name).strip().upper())
    if found is None:
        raise ConfigError(
            f"unknown GPU {name!r}",
            where=_WHERE,
            fix=f"use one of: {', '.join(gpu_names())}",
        )
    return found


def gpu_spec(name: str) -> GpuSpec:
    """The catalog's spec of GPU `name` (aliases allowed); ConfigError when the name is unknown."""
    return catalog().specs[canonical_gpu(name)]


def offers(cloud: str, gpu: str | None = None) -> list[Offer]:
    """What `cloud` offers, optionally of one GPU, ordered by GPU then count."""
    chosen = canonical_gpu(gpu) if gpu else None
    return [o for o in catalog().offers if o.cloud == cloud and (chosen is None or o.gpu == chosen)]


def _offered(cloud: str) -> str:
    by_gpu: dict[str, list[str]] = {}
    for o in offers(cloud):
        by_gpu.setdefault(o.gpu, []).append(str(o.count))
    return "; ".join(f"{g} x {'/'.join(c)}" for g, c in by_gpu.items())


def offer(gpu: str, cloud: str, count: int = 1) -> Offer:
    """The catalog entry for `count` x `gpu` on `cloud`.

    Raises ConfigError naming what the cloud offers when the GPU is unknown, absent on that
    cloud, or not offered in that count on one instance.
    """
    if cloud not in catalog().clouds:
        raise ConfigError(f"the GPU catalog has no cloud {cloud!r}", where=_WHERE,
                          fix=f"use one of: {', '.join(catalog().clouds)}")
    name = canonical_gpu(gpu)
    same_gpu = offers(cloud, name)
    if not same_gpu:
        raise ConfigError(
            f"{cloud} does not offer the GPU {name}",
            where=_WHERE,
            fix=f"choose a GPU {cloud} offers: {_offered(cloud)}",
        )
    for o in same_gpu:
        if o.count == count:
            return o
    raise ConfigError(
        f"{cloud} does not offer {count} x {name} on one instance",
        where=_WHERE,
        fix=f"use a count {cloud} offers for {name}: {', '.join(str(o.count) for o in same_gpu)}",
    )


def offer_for_instance(cloud: str, instance: str) -> Offer | None:
    """The entry whose instance type (SageMaker ml.*, GCE machine type, Azure size) is `instance`."""
    wanted = instance.lower()
    for o in catalog().offers:
        if o.cloud == cloud and o.instance.lower() == wanted:
            return o
    return None


def fixed_monthly(resource_type: str) -> FixedCost | None:
    """The standing monthly cost of an idle resource of this Pulumi type, if it has one."""
    return catalog().fixed.get(resource_type)
