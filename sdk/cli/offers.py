"""`stackwise offers GPU[:COUNT] | MEMORY`: every catalog offer that fits, cheapest first, with its price's source.

`stackwise offers A100:8` ranks the 8 x A100-40GB instances of every cloud by hourly price;
`--spot` ranks by spot price; `--clouds aws,gcp` restricts the clouds; `24GB` ranks every GPU
whose memory (per GPU x count) holds 24 GB. With a job (`--params 8B --tokens 20M --method qlora`)
each offer also gets the job's estimated hours and cost, and the ranking is by that cost (as
SkyPilot's optimizer does when a task has a time estimate); `--max-job-cost USD` refuses (exit 3)
when even the cheapest estimate is above it. Registered in stackwise.cli as `stackwise offers`.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Annotated, Any, Optional

import typer

from ..errors import InputError

offers_app = typer.Typer(help="Rank the GPU catalog's offers by price.", add_completion=False,
                         pretty_exceptions_enable=False, rich_markup_mode=None)
_SUFFIX = {"": 1.0, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}


def parse_quantity(text: str, option: str) -> float:
    """`8B` -> 8e9, `135M` -> 1.35e8, `2e7` -> 2e7, `1.5k` -> 1500; InputError naming `option` otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?(?:e\d+)?)\s*([kmbgt]?)\s*", text, flags=re.IGNORECASE)
    if not match or float(match.group(1)) * _SUFFIX[match.group(2).upper()] <= 0:
        raise InputError(f"{option} {text!r} is not a positive number", where=option,
                         fix="write a number, optionally with K, M, B or T: e.g. 8B, 135M, 2e7")
    return float(match.group(1)) * _SUFFIX[match.group(2).upper()]


def _short_source(note: str, checked: bool) -> str:
    """`2026-11-29 github.com/owner/repo` for a checked note; `unverified: ...` and its reason's start otherwise."""
    if not checked:
        return "unverified: " + (note if len(note) <= 50 else note[:47] + "...")
    date = note.split(":", 1)[0]
    url = re.search(r"https://([^\s)]+)", note)
    if not url:
        return date
    parts = url.group(1).rstrip(".,").split("/")
    where = "/".join(parts[:3]) if parts[0] == "github.com" else "/".join(parts[:2])
    return f"{date} {where}"


def _footnote(row: dict[str, Any], notes: dict[str, int]) -> str:
    """`2026-11-29 [1]` or `unverified [2]`, numbering each distinct short source once in `notes`."""
    text = _short_source(row["price_note"], row["price_checked"])
    number = notes.setdefault(text, len(notes) + 1)
    return f"{'unverified' if not row['price_checked'] else text.split(' ')[0]} [{number}]"


def _rows(ranked: list[Any], estimates: list[Any] | None) -> list[dict[str, Any]]:
    rows = []
    for i, offer in enumerate(ranked):
        row = offer.model_dump()
        if estimates is not None:
            row["estimate"] = estimates[i].model_dump()
        rows.append(row)
    return rows


def _print_table(rows: list[dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    with_job = bool(rows) and "estimate" in rows[0]
    table = Table(title=title, title_justify="left")
    for name, justify in (("#", "right"), ("cloud", "left"), ("instance", "left"), ("GPUs", "left"),
                          ("GB", "right"), ("on-demand $/h", "right"), ("spot $/h", "right"), ("price", "left")):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    if with_job:
        table.add_column("hours", justify="right")
        table.add_column("est. $", justify="right")
    notes: dict[str, int] = {}
    for row in rows:
        used = "spot_hourly" if row["price_used"] == "spot" else "on_demand_hourly"
        prices = {key: f"{row[key]:,.3f}" + (" *" if key == used else "") for key in ("on_demand_hourly", "spot_hourly")}
        cells = [str(row["rank"]), f"{row['cloud']} {row['region']}", row["instance"], f"{row['count']} x {row['gpu']}",
                 str(row["total_memory_gb"]), prices["on_demand_hourly"], prices["spot_hourly"],
                 _footnote(row, notes)]
        if with_job:
            cells += [f"{row['estimate']['hours']:,.2f}", f"{row['estimate']['usd']:,.2f}"]
        table.add_row(*cells)
    table.caption = "* the price ranked on; price: the date its figure was checked (or unverified) [its source]"
    table.caption_justify = "left"
    console = Console(highlight=False)
    console.print(table)
    for text, number in notes.items():
        console.print(f"[{number}] {text}", markup=False)


@offers_app.command()
def offers(
    gpu_spec: Annotated[str, typer.Argument(help="GPU[:COUNT] (A100:8, H100, l4:1) or total GPU memory (24GB).")],
    spot: Annotated[bool, typer.Option("--spot", help="Rank by spot price instead of on-demand.")] = False,
    clouds: Annotated[Optional[str], typer.Option(
        "--clouds", help="Only these clouds, comma-separated: aws,gcp,azure.")] = None,
    params: Annotated[Optional[str], typer.Option(
        "--params", help="Model parameters for a job estimate: 8B, 135M.")] = None,
    tokens: Annotated[Optional[str], typer.Option(
        "--tokens", help="Training tokens per epoch for the estimate: 20M.")] = None,
    method: Annotated[str, typer.Option(
        "--method", help="full, lora or qlora (the estimate's FLOPs: 6 or 4 per parameter per token).")] = "lora",
    epochs: Annotated[float, typer.Option("--epochs", help="Epochs for the estimate.")] = 1.0,
    mfu: Annotated[Optional[float], typer.Option(
        "--mfu", help="Model FLOPs utilization assumed (default 0.35).")] = None,
    max_runtime_s: Annotated[int, typer.Option(
        "--max-runtime-s", help="The job's time limit: the estimate's upper bound.")] = 24 * 3600,
    max_job_cost: Annotated[Optional[float], typer.Option(
        "--max-job-cost", help="Refuse (exit 3) when even the cheapest job estimate is above this (USD).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON only.")] = False,
) -> None:
    """Rank every GPU catalog offer that fits, cheapest first, with each price's source and date."""
    from .. import offers as ranking

    request = ranking.parse_gpu_spec(gpu_spec, where="the GPU spec argument")
    cloud_list = None if clouds is None else [c.strip() for c in clouds.split(",") if c.strip()]
    ranked = ranking.rank(request.gpu, request.count, total_memory_gb=request.total_memory_gb, spot=spot,
                          clouds=cloud_list)
    if not ranked:
        raise ranking.nothing_fits(request, cloud_list, spot)
    if (params is None) != (tokens is None):
        raise InputError("a job estimate needs both --params and --tokens", where="--params/--tokens",
                         fix="give both (e.g. --params 8B --tokens 20M), or neither for prices only")
    estimates = None
    if params is not None and tokens is not None:
        n, t = parse_quantity(params, "--params"), parse_quantity(tokens, "--tokens")
        pairs = [(o, ranking.estimate_finetune_cost(n, int(t), method, o, spot, epochs,
                                                    ranking.DEFAULT_MFU if mfu is None else mfu,
                                                    max_runtime_s=max_runtime_s)) for o in ranked]
        pairs.sort(key=lambda p: (round(p[1].usd, 6), p[0].count, p[0].cloud, p[0].instance))
        ranked = [o.model_copy(update={"rank": i}) for i, (o, _) in enumerate(pairs, start=1)]
        estimates = [e for _, e in pairs]
        ranking.check_budget(estimates[0], max_job_cost,
                             where="--max-job-cost (for `stackwise finetune`: the stack config key maxJobCostUsd)")
    elif max_job_cost is not None:
        raise InputError("--max-job-cost needs a job to estimate", where="--max-job-cost",
                         fix="add --params and --tokens (and --method, --epochs)")
    rows = _rows(ranked, estimates)
    if as_json:
        sys.stdout.write(json.dumps({"request": request.model_dump(), "spot": spot, "offers": rows}, indent=2) + "\n")
        return
    what = (f"{request.count or 'any'} x {request.gpu}" if request.gpu
            else f"{request.total_memory_gb:g} GB of GPU memory")
    basis = "estimated job cost" if estimates else ("spot" if spot else "on-demand") + " price per hour"
    _print_table(rows, f"Offers for {what}, cheapest {basis} first")
