"""`stackwise finetune`: a FineTuneSpec from the options (or `--spec FILE`), placed and priced,
then submitted and followed."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from .common import DetachOpt, DryRunOpt, JsonOpt, NewOpt, RunNameOpt, StackOpt, connect, curation_config
from .jobs import run_job
from .render import print_finetune_report, print_placement, print_rendered


def _parse_gpu(value: str | None) -> tuple[str | None, int | None]:
    """'A100:8' -> ('A100', 8); 'A100' -> ('A100', None)."""
    from ..errors import SpecError

    if not value:
        return None, None
    name, _, count = value.partition(":")
    if not name or (count and not count.isdigit()) or count == "0":
        raise SpecError(f"--gpu {value!r} is not NAME or NAME:COUNT", where="--gpu", fix="e.g. --gpu A100:8")
    return name, int(count) if count else None


def finetune(
    ctx: typer.Context,
    base: Annotated[Optional[str], typer.Option("--base", "-b", help="Base model: smollm2-135m-instruct, a Hugging Face id, a path or URI, or models:/NAME/VERSION (required without --spec).")] = None,
    data: Annotated[Optional[str], typer.Option("--data", help="JSONL dataset (text, prompt/completion or messages); a path or fsspec URI (required without --spec).")] = None,
    method: Annotated[str, typer.Option(help="lora, qlora or full.")] = "lora",
    gpu: Annotated[Optional[str], typer.Option("--gpu", help="Portable GPU name and count per node, e.g. A100:8 (default: CPU).")] = None,
    count: Annotated[Optional[int], typer.Option("--count", min=1, help="Devices per node: GPUs, or CPU processes without --gpu.")] = None,
    nodes: Annotated[int, typer.Option(min=1, help="Nodes.")] = 1,
    strategy: Annotated[Optional[str], typer.Option(help="none, ddp, fsdp, deepspeed-zero2 or deepspeed-zero3 (default: ddp for more than one process).")] = None,
    spot: Annotated[bool, typer.Option("--spot", help="Use spot capacity (resumes from checkpoints when interrupted).")] = False,
    epochs: Annotated[Optional[float], typer.Option(help="Passes over the data (default 1).")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Optimizer steps (overrides --epochs).")] = None,
    learning_rate: Annotated[float, typer.Option("--lr", help="Peak learning rate.")] = 2e-4,
    batch_size: Annotated[int, typer.Option(help="Sequences per device per step.")] = 4,
    grad_accum: Annotated[int, typer.Option(help="Gradient accumulation steps.")] = 1,
    max_seq_length: Annotated[int, typer.Option(help="Tokens per sequence.")] = 512,
    packing: Annotated[bool, typer.Option("--packing", help="Pack examples into full-length sequences.")] = False,
    rank: Annotated[int, typer.Option("--rank", "-r", help="LoRA rank.")] = 16,
    alpha: Annotated[float, typer.Option(help="LoRA alpha.")] = 32,
    checkpoint_every: Annotated[int, typer.Option(help="Save a resumable checkpoint every N steps.")] = 50,
    merge: Annotated[bool, typer.Option("--merge", help="Also save the base with the adapter merged in.")] = False,
    name: Annotated[Optional[str], typer.Option(help="Registered model name (default: finetune-<base>).")] = None,
    curate: Annotated[Optional[str], typer.Option("--curate", help="Curate the input first with this curation YAML (dedup, quality, language, PII, bias screen: docs/curation.md).")] = None,
    spec_file: Annotated[Optional[str], typer.Option("--spec", help="A whole FineTuneSpec as YAML (JSON with a .json suffix) instead of the options that describe the job; relative paths in it are read from its folder.")] = None,
    new: NewOpt = False,
    run_name: RunNameOpt = None,
    stack: StackOpt = None,
    detach: DetachOpt = False,
    dry_run: DryRunOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Fine-tune a causal LM (LoRA, QLoRA or full) on the active stack.

    While this spec's job runs, rerunning the command follows that job; after it failed or was
    interrupted, rerunning starts the next attempt, which resumes from its last checkpoint (on every
    stack). --new starts from scratch."""
    from pydantic import ValidationError

    from ..errors import SpecError
    from ..specs import FineTuneSpec

    if spec_file:
        given = [p.opts[0] for p in ctx.command.params if p.name in _FINETUNE_SPEC_OPTIONS
                 and getattr(ctx.get_parameter_source(p.name), "name", "") in ("COMMANDLINE", "ENVIRONMENT")]
        if given:
            raise SpecError(f"--spec holds the whole spec, so {', '.join(given)} cannot be given with it",
                            where=f"--spec {spec_file}", fix="set those fields in the spec file, or leave out --spec")
    elif base is None or data is None:
        raise SpecError("stackwise finetune needs --base and --data, or --spec FILE", where="stackwise finetune options",
                        fix="e.g. stackwise finetune --base smollm2-135m-instruct --data train.jsonl, "
                            "or stackwise finetune --spec finetune.yaml")
    try:
        if spec_file:
            from ..specs import read_spec_file

            spec = read_spec_file(spec_file, FineTuneSpec)
        else:
            gpu_name, gpu_count = _parse_gpu(gpu)
            # Absolute local paths: the job may run in another folder, and the same file keeps the
            # same spec digest (the resume key) from wherever it is submitted.
            from pathlib import Path

            if "://" not in data:
                data = str(Path(data).expanduser().resolve())
            if "://" not in base and Path(base).expanduser().exists():
                base = str(Path(base).expanduser().resolve())
            training: dict[str, Any] = {
                "learning_rate": learning_rate, "batch_size": batch_size, "gradient_accumulation": grad_accum,
                "max_seq_length": max_seq_length, "packing": packing, "checkpoint_every": checkpoint_every,
            }
            if epochs is not None:
                training["epochs"] = epochs
            if max_steps is not None:
                training["max_steps"] = max_steps
            spec = FineTuneSpec(
                base=base, data=data, method=method, merge=merge, name=name,
                lora={"r": rank, "alpha": alpha}, training=training,
                compute={"gpu": gpu_name, "count": count or gpu_count or 1, "nodes": nodes, "strategy": strategy,
                         "spot": spot},
                curation=curation_config(curate),
            )
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise SpecError(f"{key}: " + first["msg"].removeprefix("Value error, "), where=spec_file or "stackwise finetune options",
                        fix="see `stackwise finetune --help`") from None
    spec.preflight()
    platform = connect(stack)
    _, placement = platform.plan_finetune(spec)
    if not as_json:
        print_placement(placement)
    if dry_run:
        print_rendered(platform.render(spec, new=new, run_name=run_name), as_json)
        return
    run_job(platform.finetune(spec, new=new, run_name=run_name, preflight=False), detach, as_json, print_finetune_report)


# The options that describe the job: with --spec the file describes it instead.
_FINETUNE_SPEC_OPTIONS = ("base", "data", "curate", "method", "gpu", "count", "nodes", "strategy", "spot", "epochs", "max_steps",
                          "learning_rate", "batch_size", "grad_accum", "max_seq_length", "packing", "rank", "alpha",
                          "checkpoint_every", "merge", "name")
