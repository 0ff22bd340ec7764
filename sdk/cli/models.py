"""Evaluation and the model registry: `stackwise eval`, `promote` and `stackwise models`
(list, show, register, alias, catalog)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .catalog import catalog as models_catalog
from .common import DetachOpt, DryRunOpt, JsonOpt, NewOpt, RunNameOpt, StackOpt, connect
from .jobs import run_job
from .render import get_console, print_eval_report, print_gate, print_json, print_rendered


models_app = typer.Typer(help="The stack's model registry (MLflow): versions, aliases, lineage.", no_args_is_help=True)


def eval_command(
    data: Annotated[str, typer.Option("--data", help="Evaluation records (JSONL; MMLU CSV for mmlu); a path or fsspec URI.")],
    suite: Annotated[str, typer.Option("--suite", help="Comma-separated: perplexity,rouge,bleu,chrf,qa,retrieval,instruction,mmlu,safety,bias.")],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Candidate: a shipped name, path, HF id, models:/NAME/VERSION, models:/NAME@ALIAS or a RAG app rag:NAME[@ALIAS].")] = None,
    baseline: Annotated[Optional[str], typer.Option("--baseline", help="A second model evaluated on the same data.")] = None,
    compare: Annotated[Optional[list[str]], typer.Option("--compare", help="Another model or RAG app (rag:NAME[@ALIAS]) "
                                                         "evaluated on the same data, shown side by side; repeatable "
                                                         "(up to 8).")] = None,
    index_name: Annotated[Optional[str], typer.Option("--index", "-i", help="Index for retrieval (and RAG context for qa).")] = None,
    k: Annotated[int, typer.Option("-k", min=1, max=1000, help="Cut-off for retrieval metrics and retrieved context.")] = 5,
    train_data: Annotated[Optional[list[str]], typer.Option("--train-data", help="A training dataset to check for leakage; repeatable.")] = None,
    allow_leakage: Annotated[bool, typer.Option("--allow-leakage", help="Report evaluation records found in training data instead of failing.")] = False,
    max_examples: Annotated[Optional[int], typer.Option(min=1, help="Records per suite at most.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Tokens generated per answer.")] = 64,
    new: NewOpt = False,
    run_name: RunNameOpt = None,
    stack: StackOpt = None,
    detach: DetachOpt = False,
    dry_run: DryRunOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Evaluate a model (against an optional baseline) on the active stack: metrics, MLflow runs, a report."""
    from pydantic import ValidationError

    from ..errors import SpecError
    from ..specs import EvaluateSpec

    try:
        spec = EvaluateSpec(model=model, baseline=baseline, compare=compare or [], suites=[s.strip() for s in suite.split(",") if s.strip()],
                            data=data, index=index_name, k=k, train_data=train_data or [],
                            allow_leakage=allow_leakage, max_examples=max_examples,
                            generation={"max_new_tokens": max_new_tokens})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise SpecError(first["msg"].removeprefix("Value error, "), where="stackwise eval options",
                        fix="see `stackwise eval --help`") from None
    spec.preflight()  # fail fast on a missing or malformed file
    if dry_run:
        print_rendered(connect(stack).render(spec, new=new, run_name=run_name), as_json)
        return
    run_job(connect(stack).evaluate(spec, new=new, run_name=run_name, preflight=False), detach, as_json, print_eval_report,
             needs="candidate")


def promote(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    gate: Annotated[str, typer.Option("--gate", help="Gate file (YAML): metrics the candidate must beat the champion on.")],
    version: Annotated[Optional[str], typer.Option("--version", help="Version to review (sets the candidate alias; default: the current candidate).")] = None,
    stack: StackOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Promote the candidate to champion only if it beats the champion on every gated metric (else exit 4)."""
    from ..model_registry import GateFailed

    registry = connect(stack).models
    try:
        result = registry.promote(model, gate, version)
    except GateFailed as exc:
        if exc.result is not None:  # the metrics that failed, as a passing gate shows them
            print_json(exc.result.model_dump()) if as_json else print_gate(exc.result)
        raise
    if as_json:
        print_json(result.model_dump())
        return
    if result.rows:
        print_gate(result)
    note = f" ({result.note})" if result.note else ""
    get_console().print(f"promoted: {model} version {result.candidate} is now the champion{note}", markup=False)


@models_app.command("list")
def models_list(stack: StackOpt = None, as_json: JsonOpt = False) -> None:
    """List registered models with their latest version and aliases."""
    rows = connect(stack).models.list_models()
    if as_json:
        print_json(rows)
        return
    from rich.table import Table

    table = Table("model", "versions", "latest", "aliases")
    for row in rows:
        table.add_row(row["name"], str(row["versions"]), str(row["latest"]),
                      ", ".join(f"{a}=v{v}" for a, v in sorted(row["aliases"].items())) or "-")
    get_console().print(table)


@models_app.command("show")
def models_show(name: str, stack: StackOpt = None, as_json: JsonOpt = False) -> None:
    """Show a model's versions: aliases, lineage (base, data, adapter, code, evaluations) and evaluation metrics."""
    info = connect(stack).models.show(name)
    if as_json:
        print_json(info)
        return
    console = get_console()
    console.print(f"[bold]{name}[/bold]  aliases: " + (", ".join(f"{a}=v{v}" for a, v in sorted(info["aliases"].items())) or "-"))
    for v in info["versions"]:
        console.print(f"  version {v['version']}" + (f"  [{', '.join(v['aliases'])}]" if v["aliases"] else ""), markup=False)
        for key, value in sorted(v["lineage"].items()):
            console.print(f"    {key}: {value}", markup=False)
        for run in v["evaluations"][:3]:
            shown = ", ".join(f"{m}={x:.4g}" for m, x in sorted(run["metrics"].items())[:8])
            console.print(f"    eval {run['run_id'][:12]} on {run['data']}: {shown}", markup=False)


@models_app.command("register")
def models_register(
    path: Annotated[str, typer.Argument(help="A folder saved with save_pretrained (a model or a LoRA adapter).")],
    name: Annotated[str, typer.Option("--name", help="Registered model name.")],
    base: Annotated[Optional[str], typer.Option(help="Lineage: the base model it derives from.")] = None,
    data: Annotated[Optional[str], typer.Option(help="Lineage: the training dataset (enables the leakage guard).")] = None,
    alias: Annotated[Optional[str], typer.Option(help="Also point this alias (e.g. candidate) at the new version "
                                                 "(never champion: it moves only through `stackwise promote`).")] = None,
    stack: StackOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Register a saved model or adapter as a new version (copied into the stack's artifact store)."""
    from ..model_registry import check_alias, check_model_name

    check_model_name(name)  # before anything is logged or copied
    if alias is not None:
        check_alias(alias)
    registry = connect(stack).models
    lineage = {"base": base or "", "data": data or ""}
    if data and ("://" not in data or data.startswith("file://")):
        from ..training.data import read_dataset

        lineage["dataset_sha256"] = read_dataset(data).sha256
    version = registry.register(path, name, {k: v for k, v in lineage.items() if v}, alias=alias)
    if as_json:
        print_json({"model": name, "version": version, "alias": alias})
    else:
        get_console().print(f"registered {name} version {version}" + (f" as {alias}" if alias else ""), markup=False)


@models_app.command("alias")
def models_alias(name: str, version: str, alias: str, stack: StackOpt = None, as_json: JsonOpt = False) -> None:
    """Point ALIAS (e.g. candidate) at VERSION. The champion alias moves only through `stackwise promote`."""
    from ..model_registry import check_alias, check_model_name, check_version

    check_model_name(name)
    check_alias(alias)
    check_version(version)
    connect(stack).models.set_alias(name, alias, version)
    if as_json:
        print_json({"model": name, "alias": alias, "version": version})
        return
    get_console().print(f"{name}@{alias} -> version {version}", markup=False)


models_app.command("catalog")(models_catalog)
