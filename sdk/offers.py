"""Cost and placement: rank the GPU catalog's offers, estimate a fine-tune's cost, pick and police.

`rank("A100", 8)` lists every catalog offer of 8 x A100-40GB on every cloud, cheapest first, the way
SkyPilot's optimizer does (sky/optimizer.py, sky/catalog/common.py): each candidate costs its hourly
price (spot or on-demand) times the estimated run time (one hour when none is given), the cheapest
wins, and a request names a GPU and an exact count (`A100:8`). Ties go to fewer GPUs, then to the
cloud's name, then to the instance name, so the order is stable.

`estimate_finetune_cost` turns a job (parameters, tokens, method, epochs) into hours and dollars on an
offer; `choose_offer` picks the cheapest fitting GPU of a stack; `check_budget` refuses an estimate
above the stack's `maxJobCostUsd` with `CostLimitError` (exit 3).

Pure and light: reads the packaged catalog (PyYAML) and pydantic, nothing else.
"""

from __future__ import annotations

import difflib
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict

from . import catalog as gpu_catalog
from .errors import CostLimitError, InputError  # noqa: F401 - CostLimitError is raised here and re-exported

Method = Literal["full", "lora", "qlora"]
_WHERE = "GPU catalog (stackwise/data/gpu_catalog.yaml)"
# Training FLOPs per parameter per token (see flops_per_param_token and docs/models.md).
FLOPS_PER_PARAM_TOKEN: dict[str, float] = {"full": 6.0, "lora": 4.0, "qlora": 4.0}
# Model FLOPs utilization assumed when none is given: single-node fine-tuning with Hugging Face
# Transformers commonly reaches 30-50 % on A100/H100; 0.35 sits at the cautious end.
DEFAULT_MFU = 0.35
DEFAULT_MAX_RUNTIME_S = 24 * 3600  # stackwise.specs.Compute.max_runtime_s's default


class RankedOffer(BaseModel):
    """One catalog offer that fits a request, with the price that ranked it and where that price comes from."""

    model_config = ConfigDict(frozen=True)

    rank: int  # 1 = cheapest
    cloud: str
    region: str  # the catalog's source region for this cloud's prices
    instance: str
    accelerator: str | None  # GCP's Vertex AI AcceleratorType; None elsewhere
    gpu: str
    count: int
    memory_gb_per_gpu: int
    total_memory_gb: int
    on_demand_hourly: float
    spot_hourly: float
    price_used: Literal["on_demand", "spot"]
    hourly_usd: float  # the price used, per instance-hour
    price_checked: bool  # the used price was checked against a source (else: why not, in price_note)
    price_note: str  # the catalog's `checked` (date: what matched, where) or `unverified` (why) note
    as_of: str  # the date the cloud's prices were entered
    source: str  # the cloud's pricing pages


class CostEstimate(BaseModel):
    """What a fine-tune costs on one offer: FLOPs / (peak x GPUs x MFU) hours times the hourly price."""

    model_config = ConfigDict(frozen=True)

    method: Method
    params: float
    tokens: int  # tokens per epoch
    epochs: float
    flops_per_param_token: float  # 6 (full) or 4 (LoRA, QLoRA)
    flops: float
    gpu: str
    count: int
    peak_tflops_per_gpu: float  # dense bf16 Tensor Core peak (T4: fp16)
    peak_note: str  # the catalog's checked/unverified note of that peak
    mfu: float
    cloud: str
    instance: str
    spot: bool
    hourly_usd: float
    hours: float
    usd: float
    max_runtime_s: int
    upper_bound_usd: float  # hourly price x max_runtime_s: the job is stopped there, whatever the estimate
    exceeds_max_runtime: bool  # the estimate runs past max_runtime_s: the job would be stopped unfinished


class GpuRequest(BaseModel):
    """A parsed GPU spec: `A100:8` (GPU and exact count), `H100` (every count), `24GB` (total memory)."""

    model_config = ConfigDict(frozen=True)

    gpu: str | None = None
    count: int | None = None
    total_memory_gb: float | None = None


def _closest(name: str) -> list[str]:
    """Catalog GPU names closest to `name`, aliases counted (difflib ratio >= 0.4), best first."""
    aliases = gpu_catalog.catalog().aliases  # upper-cased name or alias -> canonical name
    matches = difflib.get_close_matches(name.strip().upper(), list(aliases), n=3, cutoff=0.4)
    return list(dict.fromkeys(aliases[m] for m in matches))


def resolve_gpu(name: str, where: str = _WHERE) -> str:
    """The catalog's name for `name` (case-insensitive, aliases: A100 -> A100-40GB).

    Unknown names raise InputError suggesting the closest known names (difflib), then listing them all.
    """
    found = gpu_catalog.catalog().aliases.get(str(name).strip().upper())
    if found is not None:
        return found
    close = _closest(str(name))
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise InputError(f"unknown GPU {name!r}", where=where,
                     fix=f"{hint}the catalog's GPUs: {', '.join(gpu_catalog.gpu_names())}")


def _resolve_clouds(clouds: list[str] | None, where: str) -> list[str]:
    known = list(gpu_catalog.catalog().clouds)
    if clouds is None:
        return known
    chosen: list[str] = []
    for raw in clouds:
        name = raw.strip().lower()
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.4)
            hint = f"did you mean {close[0]}? " if close else ""
            raise InputError(f"unknown cloud {raw!r}", where=where, fix=f"{hint}use one or more of: {', '.join(known)}")
        if name not in chosen:
            chosen.append(name)
    if not chosen:
        raise InputError("no cloud given", where=where, fix=f"name one or more of: {', '.join(known)}")
    return chosen


def parse_gpu_spec(spec: str, where: str = "the GPU spec") -> GpuRequest:
    """`A100:8` -> A100-40GB x 8; `H100` -> H100, any count; `24GB` -> any GPUs with 24 GB in all."""
    text = spec.strip()
    memory = re.fullmatch(r"(\d+(?:\.\d+)?)\s*gb?", text, flags=re.IGNORECASE)
    if memory:
        gb = float(memory.group(1))
        if gb <= 0:
            raise InputError(f"memory {spec!r} must be above 0 GB", where=where, fix="give e.g. 24GB")
        return GpuRequest(total_memory_gb=gb)
    name, sep, count_text = text.partition(":")
    if not name.strip():
        raise InputError(f"GPU spec {spec!r} names no GPU", where=where,
                         fix="write GPU[:COUNT] such as A100:8 or H100, or a memory such as 24GB")
    gpu = resolve_gpu(name.strip(), where=where)
    if not sep:
        return GpuRequest(gpu=gpu)
    if not re.fullmatch(r"\d+", count_text.strip()) or int(count_text) < 1:
        raise InputError(f"GPU count {count_text!r} in {spec!r} is not a whole number of 1 or more", where=where,
                         fix=f"write {name.strip()}:COUNT with COUNT one of {_counts(gpu) or '1'}")
    return GpuRequest(gpu=gpu, count=int(count_text))


def _counts(gpu: str, clouds: list[str] | None = None) -> str:
    counts = sorted({o.count for o in gpu_catalog.catalog().offers
                     if o.gpu == gpu and (clouds is None or o.cloud in clouds)})
    return ", ".join(str(c) for c in counts)


def _note(offer: gpu_catalog.Offer, figure: str) -> tuple[bool, str]:
    if figure in offer.checked:
        return True, offer.checked[figure]
    return False, offer.unverified.get(figure, "no note in the catalog")


def _ranked(offer: gpu_catalog.Offer, spot: bool, position: int) -> RankedOffer:
    figure = "spot" if spot else "on_demand"
    checked, note = _note(offer, figure)
    memory = gpu_catalog.catalog().gpus[offer.gpu]
    return RankedOffer(
        rank=position, cloud=offer.cloud, region=offer.region, instance=offer.instance,
        accelerator=offer.accelerator, gpu=offer.gpu, count=offer.count, memory_gb_per_gpu=memory,
        total_memory_gb=memory * offer.count, on_demand_hourly=offer.on_demand_hourly,
        spot_hourly=offer.spot_hourly, price_used=figure, hourly_usd=offer.hourly(spot),
        price_checked=checked, price_note=note, as_of=offer.as_of, source=offer.source,
    )


def sort_key(hourly_usd: float, count: int, cloud: str, instance: str) -> tuple[float, int, str, str]:
    """SkyPilot's order: cheapest first; ties to fewer GPUs, then the cloud's name, then the instance."""
    return (round(hourly_usd, 6), count, cloud, instance)


def rank(
    gpu: str | None,
    count: int | None,
    *,
    min_memory_gb_per_gpu: float | None = None,
    total_memory_gb: float | None = None,
    spot: bool = False,
    clouds: list[str] | None = None,
    allowed_gpus: list[str] | None = None,
) -> list[RankedOffer]:
    """Every catalog offer that fits, cheapest hourly price first (spot prices when `spot`).

    `gpu` and `count` filter exactly (`A100`, 8 = the A100-40GB in 8s); `gpu` alone takes every count;
    `count` alone every GPU in that count. `min_memory_gb_per_gpu` keeps GPUs with at least that memory
    each, `total_memory_gb` instances whose GPUs hold at least that much together. `clouds` and
    `allowed_gpus` restrict where and what. An empty list means nothing fits; unknown GPU or cloud
    names, or a count below 1, raise InputError (exit 2).
    """
    if count is not None and count < 1:
        raise InputError(f"GPU count {count} is below 1", where="the GPU request", fix="ask for 1 or more GPUs")
    chosen_clouds = _resolve_clouds(clouds, where="the clouds to rank")
    wanted = resolve_gpu(gpu) if gpu else None
    allowed = None if allowed_gpus is None else {resolve_gpu(g, where="allowedGpus") for g in allowed_gpus}
    memory = gpu_catalog.catalog().gpus
    fitting = [
        o for o in gpu_catalog.catalog().offers
        if o.cloud in chosen_clouds
        and (wanted is None or o.gpu == wanted)
        and (count is None or o.count == count)
        and (allowed is None or o.gpu in allowed)
        and (min_memory_gb_per_gpu is None or memory[o.gpu] >= min_memory_gb_per_gpu)
        and (total_memory_gb is None or memory[o.gpu] * o.count >= total_memory_gb)
    ]
    fitting.sort(key=lambda o: sort_key(o.hourly(spot), o.count, o.cloud, o.instance))
    return [_ranked(o, spot, i) for i, o in enumerate(fitting, start=1)]


def nothing_fits(request: GpuRequest, clouds: list[str] | None, spot: bool = False) -> InputError:
    """The error for a request no offer meets, naming what the catalog has instead (SkyPilot's fuzzy list)."""
    chosen = _resolve_clouds(clouds, where="the clouds to rank")
    where = f"{_WHERE}, clouds {', '.join(chosen)}"
    if request.gpu is not None:
        offered = _counts(request.gpu, chosen)
        if not offered:
            elsewhere = _counts(request.gpu)
            fix = (f"{request.gpu} is offered in counts {elsewhere} on other clouds: drop --clouds or add them"
                   if elsewhere else "choose another GPU")
            return InputError(f"no cloud of {', '.join(chosen)} offers {request.gpu}", where=where, fix=fix)
        return InputError(f"no instance offers {request.count} x {request.gpu}", where=where,
                          fix=f"use a count offered for {request.gpu}: {offered}")
    biggest = max((o for o in gpu_catalog.catalog().offers if o.cloud in chosen),
                  key=lambda o: gpu_catalog.catalog().gpus[o.gpu] * o.count)
    total = gpu_catalog.catalog().gpus[biggest.gpu] * biggest.count
    return InputError(f"no offer has {request.total_memory_gb:g} GB of GPU memory", where=where,
                      fix=f"the largest is {biggest.count} x {biggest.gpu} ({total} GB) on {biggest.cloud}: "
                          "ask for less memory or add clouds")


def flops_per_param_token(method: str) -> float:
    """Training FLOPs per parameter per token: 6 for full fine-tuning, 4 for LoRA and QLoRA.

    Full: forward 2N (a multiply and an add per weight), backward 4N (gradients with respect to
    activations, 2N, and to weights, 2N): C = 6ND (Kaplan et al. 2020, "Scaling Laws for Neural
    Language Models", section 2.1). LoRA/QLoRA freeze the base: the forward and the activation
    gradients still run through every frozen weight, but no weight gradients are formed for it, so
    about 2N + 2N = 4N (the adapters add well under 1 %). The LoRA paper (Hu et al. 2021) reports a
    higher training throughput than full fine-tuning, for this reason (no gradients for most
    parameters); its ~25 % on GPT-3 175B is within the 1.5x that 6N/4N bounds. QLoRA does the same
    FLOPs plus 4-bit dequantization, which costs time, not counted FLOPs: a lower MFU covers it.
    Gradient checkpointing adds one more forward (2N): pass a lower MFU for it too.
    """
    try:
        return FLOPS_PER_PARAM_TOKEN[method]
    except KeyError:
        raise InputError(f"unknown fine-tuning method {method!r}", where="the cost estimate",
                         fix=f"use one of: {', '.join(FLOPS_PER_PARAM_TOKEN)}") from None


def _peak(gpu: str) -> tuple[float, str]:
    spec = gpu_catalog.gpu_spec(gpu)
    if not spec.bf16_tflops:
        raise InputError(f"the GPU catalog gives no bf16_tflops for {gpu}", where=_WHERE,
                         fix=f"add bf16_tflops (dense) with a checked or unverified note to {gpu}")
    note = spec.checked.get("bf16_tflops") or spec.unverified.get("bf16_tflops") or ""
    return spec.bf16_tflops, note


def estimate_finetune_cost(
    params: float,
    tokens: int,
    method: str,
    offer: RankedOffer,
    spot: bool,
    epochs: float,
    mfu: float = DEFAULT_MFU,
    *,
    max_runtime_s: int = DEFAULT_MAX_RUNTIME_S,
) -> CostEstimate:
    """Hours and USD to fine-tune a `params`-parameter model on `tokens` tokens per epoch on `offer`.

    FLOPs = k x params x tokens x epochs (k from flops_per_param_token); hours = FLOPs /
    (peak dense bf16 TFLOPS x 1e12 x GPUs x MFU) / 3600; usd = hours x the offer's hourly price (spot
    when `spot`). `upper_bound_usd` is the price of `max_runtime_s`, where the job is stopped.
    Compute only: storage, data transfer and start-up time are not counted.
    """
    where = "the cost estimate"
    for label, value in (("params", params), ("tokens", tokens), ("epochs", epochs)):
        if not value > 0:
            raise InputError(f"{label} must be above 0, got {value!r}", where=where, fix=f"give a positive {label}")
    if not 0 < mfu <= 1:
        raise InputError(f"MFU {mfu!r} must be in (0, 1]", where=where, fix="use e.g. 0.35 (35 % of peak)")
    if max_runtime_s < 1:
        raise InputError(f"max_runtime_s {max_runtime_s} must be 1 or more", where=where, fix="use e.g. 86400")
    k = flops_per_param_token(method)
    peak, note = _peak(offer.gpu)
    hourly = offer.spot_hourly if spot else offer.on_demand_hourly
    flops = k * float(params) * float(tokens) * float(epochs)
    hours = flops / (peak * 1e12 * offer.count * mfu) / 3600.0
    return CostEstimate(
        method=method, params=float(params), tokens=int(tokens), epochs=float(epochs), flops_per_param_token=k,
        flops=flops, gpu=offer.gpu, count=offer.count, peak_tflops_per_gpu=peak, peak_note=note, mfu=mfu,
        cloud=offer.cloud, instance=offer.instance, spot=spot, hourly_usd=hourly, hours=hours,
        usd=hours * hourly, max_runtime_s=max_runtime_s, upper_bound_usd=max_runtime_s / 3600.0 * hourly,
        exceeds_max_runtime=hours * 3600.0 > max_runtime_s,
    )


def choose_offer(
    cloud: str, allowed_gpus: list[str], memory_gb_needed: float, spot: bool, count_hint: int | None,
) -> RankedOffer:
    """The cheapest offer on `cloud` among `allowed_gpus` whose every GPU has `memory_gb_needed` GB.

    `memory_gb_needed` is per GPU (each data-parallel GPU holds the whole job); `count_hint` asks for
    exactly that many GPUs, None for any count (price ties go to fewer GPUs). When nothing fits, an
    InputError (exit 2) names the memory needed, the biggest allowed GPU and the ways out.
    """
    if not memory_gb_needed > 0:
        raise InputError(f"memory needed {memory_gb_needed!r} GB must be above 0", where="GPU placement",
                         fix="pass the sizing estimate in GB")
    found = rank(None, count_hint, min_memory_gb_per_gpu=memory_gb_needed, spot=spot, clouds=[cloud],
                 allowed_gpus=allowed_gpus)
    if found:
        return found[0]
    memory = gpu_catalog.catalog().gpus
    allowed = sorted({resolve_gpu(g, where="allowedGpus") for g in allowed_gpus}, key=lambda g: memory[g])
    biggest = f"{allowed[-1]} ({memory[allowed[-1]]} GB)" if allowed else "none (allowedGpus is empty)"
    anywhere = rank(None, count_hint, min_memory_gb_per_gpu=memory_gb_needed, spot=spot, clouds=[cloud])
    if anywhere:
        best = anywhere[0]
        add = (f"add {best.gpu} ({best.memory_gb_per_gpu} GB; cheapest fitting on {cloud}: {best.count} x {best.gpu}, "
               f"{best.instance}, ${best.hourly_usd:,.3f}/h) to allowedGpus in the stack file")
    else:
        add = f"no GPU {cloud} offers in the catalog has that much memory; use a stack on another cloud"
    counted = f" in a count of {count_hint}" if count_hint is not None else ""
    raise InputError(
        f"the job needs {memory_gb_needed:.1f} GB per GPU and no GPU this stack allows on {cloud}{counted} has it: "
        f"the biggest allowed is {biggest}",
        where="stack config allowedGpus",
        fix=f"{add}, or use --method qlora (4-bit base weights), or a smaller --max-seq-length",
    )


def check_budget(estimate: CostEstimate, max_job_cost_usd: float | None, *,
                 where: str = "stack config maxJobCostUsd") -> None:
    """Raise CostLimitError (exit 3) when the estimate is above the stack's `maxJobCostUsd` (None: no limit)."""
    if max_job_cost_usd is None or estimate.usd <= max_job_cost_usd:
        return
    price = "spot" if estimate.spot else "on-demand"
    raise CostLimitError(
        f"estimated job cost ${estimate.usd:,.2f} ({estimate.hours:,.1f} h on {estimate.count} x {estimate.gpu}, "
        f"{estimate.instance} on {estimate.cloud} at ${estimate.hourly_usd:,.3f}/h {price}) is above the limit "
        f"${max_job_cost_usd:,.2f}",
        where=where,
        fix="raise maxJobCostUsd in the stack file if the cost is intended, or lower it: --spot, fewer epochs "
            "or tokens, --method lora/qlora, or a smaller base model",
    )
