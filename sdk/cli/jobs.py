"""`stackwise jobs ...`: list, show, follow, wait on and cancel jobs; and how every job command
follows the job it submitted (a progress bar per stage, then the report)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from ..progress import parse as parse_progress
from .common import JsonOpt, StackOpt, connect
from .render import fmt_time, get_console, print_json, progress_text

if TYPE_CHECKING:
    from ..reports import Report

jobs_app = typer.Typer(help="List, follow, wait on and cancel jobs of the active stack.", no_args_is_help=True)


def follow(handle, quiet: bool) -> "Report":
    """Follow a job's log with a progress bar until it ends; return its report or raise."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = get_console(stderr=True)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), console=console, disable=quiet, transient=False)
    task = None
    stage = None
    try:
        with progress:
            for line in handle.logs(follow=True):
                event = parse_progress(line)
                if event is None:
                    continue
                total = event.get("total") or None
                if task is None or event["stage"] != stage:  # a new stage gets its own bar
                    stage = event["stage"]
                    task = progress.add_task(f"{handle.id}: {stage}", total=total)
                progress.update(task, completed=event.get("done") or 0, total=total,
                                description=progress_text(handle.id, event))
    except KeyboardInterrupt:
        console.print(f"interrupted: cancelling job {handle.id} (use --detach to leave jobs running)")
        handle.cancel()
        raise typer.Exit(130) from None
    info = handle.wait()
    if info.state.value != "SUCCEEDED":
        # The workload's own what, where and fix; a workload that rejected its input exits 2: bad input.
        raise info.failure()
    return info.report()


def run_job(handle, detach: bool, as_json: bool, print_report: Any, needs: str | None = None) -> None:
    """Print the submitted job's id (--detach), or follow it to the end and print its report.

    A report without the `needs` key (a cloud job whose result file could not be read gives
    only its output URIs) is printed as JSON rather than half-rendered.
    """
    if detach:
        if as_json:
            print_json({"job": handle.id, "state": handle.status().value})
        else:
            get_console().print(f"submitted {handle.id}; follow it with `stackwise jobs logs -f {handle.id}`")
        return
    report = follow(handle, quiet=as_json)
    if as_json or (needs is not None and needs not in report):
        print_json(report)
    else:
        print_report(report)


@jobs_app.command("list")
def jobs_list(
    stack: StackOpt = None,
    limit: Annotated[int, typer.Option(min=1, help="How many of the newest jobs to list (1 or more).")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List recent jobs, newest first. Job ids are printed whole, whatever the terminal's width."""
    infos = connect(stack).jobs.list(limit=limit)
    if as_json:
        print_json([i.as_dict() for i in infos])
        return
    from rich.table import Table

    table = Table()
    # An id is copied into other commands: never cut or wrapped; the error column gives way instead.
    table.add_column("job", no_wrap=True, min_width=max((len(i.id) for i in infos), default=3))
    table.add_column("kind", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("created")
    table.add_column("ended")
    table.add_column("error", overflow="fold")
    for i in infos:
        table.add_row(i.id, i.kind, i.state.value, fmt_time(i.created_at), fmt_time(i.ended_at),
                      (i.error or "").split("\n", 1)[0][:80])
    get_console().print(table)


@jobs_app.command("show")
def jobs_show(job_id: str, stack: StackOpt = None, as_json: JsonOpt = False) -> None:
    """Show one job: state, times, spec, outputs."""
    info = connect(stack).jobs.get(job_id).info()
    if as_json:
        print_json(info.as_dict())
        return
    console = get_console()
    for key, value in info.as_dict().items():
        if key in ("spec", "outputs"):
            value = json.dumps(value, indent=2)
        elif key.endswith("_at"):
            value = fmt_time(value)
        console.print(f"{key}: {value}", markup=False, highlight=False)


@jobs_app.command("logs")
def jobs_logs(
    job_id: str,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")] = False,
    stack: StackOpt = None,
) -> None:
    """Print a job's log."""
    handle = connect(stack).jobs.get(job_id)
    try:
        for line in handle.logs(follow=follow):
            print(line, flush=True)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@jobs_app.command("wait")
def jobs_wait(
    job_id: str,
    timeout: Annotated[Optional[float], typer.Option(help="Give up after this many seconds (exit 1).")] = None,
    stack: StackOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Wait for a job to end; exit 0 if it succeeded, 1 otherwise (with the job's error: what,
    where and how to fix it)."""
    import math

    from ..errors import SpecError

    if timeout is not None and (math.isnan(timeout) or timeout < 0):
        raise SpecError(f"--timeout {timeout} is not a number of seconds", where="stackwise jobs wait --timeout",
                        fix="give 0 or more seconds, or leave --timeout out to wait until the job ends")
    handle = connect(stack).jobs.get(job_id)
    try:
        info = handle.wait(timeout=timeout)
    except TimeoutError as exc:
        get_console(stderr=True).print(str(exc))
        raise typer.Exit(1) from None
    if as_json:
        print_json(info.as_dict())
    else:
        get_console().print(f"{info.id}: {info.state.value}", markup=False, highlight=False)
        if info.state.value != "SUCCEEDED":
            from ..jobs import split_error

            failure = info.failure()
            lines = [("error", split_error(info.error)[0]), ("where", failure.where), ("fix", failure.fix)]
            get_console().print("\n".join(f"  {label}: {text}" for label, text in lines if text),
                             markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(0 if info.state.value == "SUCCEEDED" else 1)


@jobs_app.command("cancel")
def jobs_cancel(job_id: str, stack: StackOpt = None, as_json: JsonOpt = False) -> None:
    """Cancel a job. A job that already ended keeps its state, but any process of it still running
    (its supervisor was killed) is stopped too."""
    info = connect(stack).jobs.get(job_id).cancel()
    if as_json:
        print_json(info.as_dict())
    else:
        get_console().print(f"{info.id}: {info.state.value}")
