"""`stackwise models catalog`: the model catalog with licence, size and the GPUs that fit.

A typer command function (`catalog`); the main CLI registers it on its `models` group:
    models_app.command("catalog")(catalog)
Errors are StackwiseErrors (exit 2 through the main CLI).
"""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from ..errors import InputError


def parse_fits(value: str) -> tuple[str, int]:
    """'A10G:1' -> ('A10G', 1), with the GPU checked against the GPU catalog; InputError otherwise."""
    from ..catalog import catalog as gpu_catalog

    name, _, count = value.partition(":")
    fix = f"use GPU:COUNT, e.g. A10G:1; GPUs: {', '.join(gpu_catalog().gpus)}"
    gpu = gpu_catalog().aliases.get(name.strip().upper())
    if gpu is None:
        raise InputError(f"unknown GPU {name!r} in --fits {value!r}", where="--fits", fix=fix)
    try:
        n = int(count or "1")
    except ValueError:
        raise InputError(f"bad GPU count {count!r} in --fits {value!r}", where="--fits", fix=fix) from None
    if not 1 <= n <= 64:
        raise InputError(f"GPU count {n} out of range in --fits {value!r}", where="--fits", fix="use 1 to 64 GPUs")
    return gpu, n


def rows(license: Optional[str] = None, fits: Optional[str] = None, method: str = "inference", seq_len: int = 2048,
         batch: int = 1, gradient_checkpointing: bool = False, headroom: float = 0.9) -> list[dict]:
    """One dict per catalog model that passes the filters: what the table and --json show."""
    from .. import model_catalog, sizing
    from ..licences import known

    if method not in sizing.METHODS:
        raise InputError(f"unknown method {method!r}", where="--method", fix=f"use one of: {', '.join(sizing.METHODS)}")
    if license is not None:
        known(license)  # exit 2 with the known ids
    target = parse_fits(fits) if fits else None
    kwargs = {"gradient_checkpointing": gradient_checkpointing} if method != "inference" else {}
    out = []
    for m in model_catalog.models(license=license, fits=target, method=method, seq_len=seq_len, batch=batch,
                                  headroom=headroom, **kwargs):
        est = m.size(method, seq_len=seq_len, batch=batch, **kwargs)
        out.append({
            "id": m.id, "hf_id": m.hf_id, "params_b": m.params_b, "active_params_b": m.active_params_b,
            "context": m.context, "licence": m.licence.id, "commercial": m.commercial, "gated": m.licence.gated,
            "chat_template": m.chat_template, "method": method, "seq_len": seq_len, "batch": batch,
            "memory_gb": round(est.total_gb, 2), "breakdown_gb": est.breakdown_gb(),
            "gpus": [f"{f.gpu}:{f.count}" for f in sizing.fits(est, headroom=headroom)],
        })
    return out


def catalog(
    license: Annotated[Optional[str], typer.Option("--license", help="Only models under this licence id "
                                                   "(e.g. apache-2.0, mit, llama3.1, gemma, qwen).")] = None,
    fits: Annotated[Optional[str], typer.Option("--fits", help="Only models that fit GPU:COUNT, e.g. A10G:1.")] = None,
    method: Annotated[str, typer.Option("--method", help="inference, lora, qlora or full.")] = "inference",
    seq_len: Annotated[int, typer.Option("--seq-len", min=1, help="Tokens per sequence.")] = 2048,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Sequences per step (per batch).")] = 1,
    gradient_checkpointing: Annotated[bool, typer.Option("--gradient-checkpointing",
                                                         help="Size training with activation checkpointing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON only.")] = False,
) -> None:
    """Open models with licence, commercial terms, gating, memory for a method and the GPUs that fit."""
    from .. import model_catalog

    found = rows(license, fits, method, seq_len, batch, gradient_checkpointing)
    if as_json:
        typer.echo(json.dumps({"as_of": model_catalog.catalog().as_of, "models": found}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Model catalog (as of {model_catalog.catalog().as_of}): {method}, seq {seq_len} x batch "
                        f"{batch}")
    table.add_column("id", no_wrap=True)
    for col in ("params", "context", "licence", "commercial", "gated", "GB"):
        table.add_column(col, no_wrap=True)
    table.add_column("fewest GPUs that fit", overflow="fold")
    for r in found:
        params = f"{r['params_b']:g}B" + (f" ({r['active_params_b']:g}B act.)" if r["active_params_b"] else "")
        table.add_row(r["id"], params, f"{r['context'] // 1024}k", r["licence"], r["commercial"],
                      "yes" if r["gated"] else "no", f"{r['memory_gb']:.1f}", _fewest(r["gpus"]) or "none")
    table.caption = "GPUs: the fewest of each GPU that hold the model (GPU:COUNT); every fit in --json"
    Console().print(table)


def _fewest(fits: list[str]) -> str:
    """`A10G:1 T4:2 ...` from every `GPU:COUNT` that fits: the smallest count of each GPU, in the given order."""
    fewest: dict[str, int] = {}
    for item in fits:
        gpu, _, count = item.partition(":")
        fewest[gpu] = min(fewest.get(gpu, 10**6), int(count or 1))
    return " ".join(f"{g}:{c}" for g, c in fewest.items())
