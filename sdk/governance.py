"""What a stack's governance settles before a fine-tune is submitted, and before a version is promoted
or deployed: the base's licence, where the job runs and what it is expected to cost.

`plan_finetune(spec, stack)` is called by `Platform.finetune` (so SDK users and the CLI get the same
refusals, before any job or cloud call):

1. Licence: the stack's `allowedLicenses` / `allowGated` (stackwise.licences.check_allowed; exit 2).
2. Placement, on a cloud stack for a base in the model catalog given no `--gpu`: the memory the job
   needs (stackwise.sizing, from the base's architecture, the method, `max_seq_length`, `batch_size`
   and gradient checkpointing) picks the cheapest offer of the stack's cloud among its `allowedGpus`
   that holds it (stackwise.offers.choose_offer; nothing fits: exit 2). The spec's compute is set to
   that GPU and count.
3. Cost, on a cloud stack: training tokens (from `max_steps`, else the dataset's records, each at
   most `max_seq_length` tokens, about 4 characters per token) x epochs, the FLOPs per parameter per
   token of the method, the GPU's peak and an assumed MFU give hours, times the offer's hourly price
   (spot with `--spot`). Above the stack's `maxJobCostUsd`: CostLimitError, exit 3, nothing submitted.
   A base outside the catalog has no parameter count: only the upper bound (max_runtime_s at the
   hourly price) is given, and the limit is checked against that bound.

The local stack checks the licence only: it runs on this machine, at no cloud price.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from .errors import InputError

CHARS_PER_TOKEN = 4.0  # the usual rule of thumb for English with BPE tokenizers


class Placement(BaseModel):
    """Where a fine-tune runs and what it is expected to cost (shown before submit)."""

    base: str
    licence: str
    cloud: str
    gpu: str | None = None
    count: int = 1
    instance: str | None = None
    chosen: bool = False  # the GPU was picked here (no --gpu)
    memory_gb_needed: float | None = None  # per GPU, from stackwise.sizing
    tokens: int | None = None
    hours: float | None = None
    usd: float | None = None
    upper_bound_usd: float | None = None
    hourly_usd: float | None = None
    spot: bool = False
    max_job_cost_usd: float | None = None
    notes: list[str] = []


def _catalog_entry(base: str) -> Any:
    from . import model_catalog
    from .model_catalog import ModelEntry

    entry = model_catalog.find(base)
    return entry if isinstance(entry, ModelEntry) else None


def training_tokens(spec: Any) -> int | None:
    """Tokens one epoch trains on (or the whole run with max_steps); None when the data cannot be read here."""
    training = spec.training
    if training.max_steps:
        return int(training.max_steps * training.batch_size * training.gradient_accumulation
                   * spec.compute.processes * training.max_seq_length)
    from .training.data import read_dataset

    try:
        dataset = read_dataset(spec.data)
    except Exception:  # noqa: BLE001 - a dataset this machine cannot read: no estimate, the job reads it
        return None
    import json

    per_record = [min(len(json.dumps(r, ensure_ascii=False)) / CHARS_PER_TOKEN, training.max_seq_length)
                  for r in dataset.records]
    return max(1, int(sum(per_record)))


def _cost_limit(stack: Any) -> float | None:
    raw = (stack.config or {}).get("maxJobCostUsd")
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw <= 0:
        raise InputError(f"stackwise:maxJobCostUsd must be a positive number of US dollars, got {raw!r}",
                         where=f"{stack.source}: config.stackwise:maxJobCostUsd", fix="e.g. stackwise:maxJobCostUsd: 50")
    return float(raw)


def plan_finetune(spec: Any, stack: Any) -> tuple[Any, Placement]:
    """(the spec to submit, its Placement): licence checked, GPU chosen, cost estimated and limited."""
    from . import offers
    from .licences import check_allowed, licence_record

    check_allowed(spec.base, stack, declared=spec.licence)
    record = licence_record(spec.base, spec.licence)
    limit = _cost_limit(stack)
    placement = Placement(base=spec.base, licence=record["licence"], cloud=stack.cloud, gpu=spec.compute.gpu,
                          count=spec.compute.count, spot=bool(spec.compute.spot), max_job_cost_usd=limit)
    if stack.is_local:
        return spec, placement
    entry = _catalog_entry(spec.base)
    training = spec.training
    if entry is not None:
        size = entry.size(spec.method, seq_len=training.max_seq_length, batch=training.batch_size,
                          gradient_checkpointing=training.gradient_checkpointing,
                          lora_rank=spec.lora.r if spec.method != "full" else 16)
        placement.memory_gb_needed = round(size.total_gb, 2)
    if spec.compute.gpu is None and entry is not None:
        allowed = list((stack.config or {}).get("allowedGpus") or [])
        hint = spec.compute.count if spec.compute.count > 1 else None
        offer = offers.choose_offer(stack.cloud, allowed, size.total_gb, placement.spot, hint)
        spec = spec.model_copy(update={"compute": spec.compute.model_copy(update={"gpu": offer.gpu,
                                                                                  "count": offer.count})})
        placement.gpu, placement.count, placement.chosen = offer.gpu, offer.count, True
    gpu = spec.compute.gpu or stack.outputs.default_gpu
    if not gpu:
        placement.notes.append("no GPU: the job runs on the cloud's CPU instance; no estimate")
        return spec, placement
    offer = next(iter(offers.rank(gpu, spec.compute.count, spot=placement.spot, clouds=[stack.cloud])), None)
    if offer is None:
        return spec, placement  # the compute adapter refuses a GPU/count the cloud lacks, naming its offers
    placement.gpu, placement.count, placement.instance = offer.gpu, offer.count, offer.instance
    placement.hourly_usd = offer.hourly_usd
    nodes = spec.compute.nodes
    if entry is None:
        placement.upper_bound_usd = round(spec.compute.max_runtime_s / 3600 * offer.hourly_usd * nodes, 2)
        placement.notes.append(f"{spec.base} is not in the model catalog: no parameter count, so only the upper "
                               "bound (max_runtime_s at the hourly price) is known")
        if limit is not None and placement.upper_bound_usd > limit:
            from .errors import CostLimitError

            raise CostLimitError(
                f"this fine-tune may cost up to ${placement.upper_bound_usd:,.2f} ({spec.compute.max_runtime_s} s on "
                f"{nodes} x {offer.instance} at ${offer.hourly_usd:,.3f}/h), above the limit ${limit:,.2f}; its base "
                "is not in the model catalog, so no closer estimate exists",
                where=f"{stack.source}: config.stackwise:maxJobCostUsd",
                fix="lower compute.max_runtime_s, use a catalog base (stackwise models catalog), or raise maxJobCostUsd")
        return spec, placement
    tokens = training_tokens(spec)
    if tokens is None:
        placement.notes.append(f"{spec.data} cannot be read from here: no token count, no estimate")
        return spec, placement
    epochs = 1.0 if training.max_steps else float(training.epochs or 1.0)
    params = entry.params_b * 1e9 if not entry.active_params_b else entry.active_params_b * 1e9
    estimate = offers.estimate_finetune_cost(params, tokens, spec.method, offer, placement.spot, epochs,
                                             max_runtime_s=spec.compute.max_runtime_s)
    # FLOPs split over every node's GPUs: hours shrink as nodes multiply, the GPU-hours (the cost) stay.
    hours = estimate.hours / nodes
    placement.tokens, placement.hours, placement.usd = tokens, round(hours, 4), round(estimate.usd, 4)
    placement.upper_bound_usd = round(estimate.upper_bound_usd * nodes, 2)
    if hours * 3600 > spec.compute.max_runtime_s:
        placement.notes.append(f"the estimate ({hours:,.1f} h) is above compute.max_runtime_s "
                               f"({spec.compute.max_runtime_s} s): the job would be stopped there and resumed by a "
                               "rerun from its checkpoint")
    offers.check_budget(estimate, limit,
                        where=f"{stack.source}: config.stackwise:maxJobCostUsd")
    return spec, placement


def check_version_licence(registry: Any, name: str, version: str, stack: Any) -> None:
    """Refuse to promote or deploy a version whose base's licence the stack does not allow (exit 2).

    The base comes from the version's tags (`base`, or its lineage); a licence recorded at fine-tune time
    (`licence.licence`, from the spec's declared `licence`) counts as declared."""
    from .licences import UNKNOWN, check_allowed

    tags = dict(registry.version(name, version).tags or {})
    if tags.get("stackwise.kind") == "rag":
        return  # a RAG app is config: its generator is a version of its own, checked when that is deployed
    base = tags.get("base") or tags.get("lineage.base")
    if not base:
        config = (stack.config or {}) if not isinstance(stack, dict) else stack
        if config.get("allowedLicenses") is None:
            return
        raise InputError(f"model {name} version {version} records no base model, so its licence cannot be checked",
                         where=f"model {name}/{version} tags",
                         fix="register versions through stackwise finetune (which records the base and its "
                             "licence), or set the version's `base` tag")
    declared = tags.get("licence.licence")
    check_allowed(base, stack, declared=None if declared in (None, "", UNKNOWN) else declared)
