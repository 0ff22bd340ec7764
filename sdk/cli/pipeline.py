"""`stackwise pipeline ...`: run a pipeline file (stackwise.yaml) on a stack, see its runs, watch its data.

Mounted by the main CLI as `app.add_typer(pipeline_app, name="pipeline")`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..errors import SpecError

pipeline_app = typer.Typer(help="Run the lifecycle as one versioned, cached, resumable pipeline (stackwise.yaml).",
                           no_args_is_help=True)

FileOpt = Annotated[str, typer.Option("--file", "-f", help="The pipeline file.")]
StackOpt = Annotated[Optional[str], typer.Option("--stack", "-s", help="Stack name (default: the file's `stack`, "
                                                 "else $STACKWISE_STACK, else local).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON only.")]


def _load(file: str, params: list[str] | None = None) -> Any:
    from ..pipeline.spec import load, parse

    pipeline = load(file)
    if params:
        raw = pipeline.file.model_dump(by_alias=True)
        for item in params:
            key, sep, value = item.partition("=")
            if not sep or key not in raw["params"]:
                raise SpecError(f"--param {item!r}: expected NAME=VALUE with a NAME the file declares",
                                where=f"{pipeline.path}: params", fix=f"params: {', '.join(raw['params']) or 'none'}")
            old = raw["params"][key]
            try:
                raw["params"][key] = type(old)(value) if isinstance(old, (int, float)) and not isinstance(old, bool) \
                    else (value.lower() in ("1", "true", "yes")) if isinstance(old, bool) else value
            except ValueError:
                raise SpecError(f"--param {item!r}: {key} is a {type(old).__name__}", where=f"{pipeline.path}: params.{key}",
                                fix=f"give a {type(old).__name__}") from None
        pipeline = parse(raw, pipeline.path, base=pipeline.base)
    return pipeline


def _stack_name(pipeline: Any, stack: str | None) -> str:
    """--stack, else the file's `stack`, else what every command uses ($STACKWISE_STACK, else local)."""
    from ..stack import stack_name

    return stack_name(stack or pipeline.file.stack)


@pipeline_app.command("run")
def run(
    file: FileOpt = "stackwise.yaml",
    stack: StackOpt = None,
    from_: Annotated[Optional[str], typer.Option("--from", help="Run this step and what depends on it (the steps "
                                                 "before it come from the cache).")] = None,
    only: Annotated[Optional[list[str]], typer.Option("--only", help="Run only this step (repeatable).")] = None,
    until: Annotated[Optional[str], typer.Option("--until", help="Run this step and what it depends on, nothing "
                                                 "after (e.g. everything up to the gate, not the deploy).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Rerun the selected steps even when cached.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate, hash the inputs and say what would run.")] = False,
    param: Annotated[Optional[list[str]], typer.Option("--param", "-p", help="Override a declared param: NAME=VALUE "
                                                       "(repeatable).")] = None,
    parallel: Annotated[int, typer.Option("--parallel", min=1, max=32, help="Independent steps at once.")] = 4,
    as_json: JsonOpt = False,
) -> None:
    """Run the pipeline's steps on the stack in dependency order, skipping those whose inputs are unchanged.
    A rerun after a crash or Ctrl-C continues where it stopped. Exit 4 when a promotion gate refuses."""
    from ..pipeline.runner import Options, Runner, exit_code
    from ..pipeline.view import make_view

    pipeline = _load(file, param)
    options = Options(stack=_stack_name(pipeline, stack), only=list(only or []), from_=from_, until=until,
                      force=force, dry_run=dry_run, parallel=parallel)
    runner = Runner(pipeline, options, make_view(as_json))
    record = runner.run()
    if as_json:
        sys.stdout.write(json.dumps(record, indent=2, default=str) + "\n")
    code = exit_code(record)
    if code:
        raise typer.Exit(code)


def _state(file: str, stack: str | None) -> tuple[Any, Any]:
    from ..pipeline.runner import state_for
    from ..stack import load_stack

    pipeline = _load(file)
    return pipeline, state_for(pipeline, load_stack(_stack_name(pipeline, stack)))


def _alive(state: Any, record: dict[str, Any]) -> str:
    """A record left `running` by a run that no longer holds the state's lock was killed."""
    if record.get("status") == "running" and not state.held():
        return "interrupted (its process is gone; `stackwise pipeline run` continues it)"
    return record.get("status", "?")


@pipeline_app.command("status")
def status(file: FileOpt = "stackwise.yaml", stack: StackOpt = None, as_json: JsonOpt = False) -> None:
    """The latest run: each step's state, cache key and outputs."""
    _, state = _state(file, stack)
    record = state.run("latest")
    if record is None:
        raise SpecError("this pipeline has no runs on this stack yet", where=state.uri("runs"),
                        fix="stackwise pipeline run")
    record["status"] = _alive(state, record)
    if as_json:
        sys.stdout.write(json.dumps(record, indent=2, default=str) + "\n")
    else:
        _print_run(record)


@pipeline_app.command("history")
def history(file: FileOpt = "stackwise.yaml", stack: StackOpt = None,
            limit: Annotated[int, typer.Option("--limit", min=1)] = 20, as_json: JsonOpt = False) -> None:
    """Past runs, newest first: status, steps run and cached, duration."""
    _, state = _state(file, stack)
    runs = list(reversed(state.runs()))[:limit]
    rows = [{"run": r["run"], "status": _alive(state, r), "stack": r["stack"],
             "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["started"])),
             "seconds": round(r.get("finished", r["started"]) - r["started"], 1),
             "ran": [n for n, s in r["steps"].items() if s["state"] not in ("cached", "excluded", "pending")],
             "cached": [n for n, s in r["steps"].items() if s["state"] == "cached"]} for r in runs]
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("run", "status", "started (UTC)", "s", "ran", "cached")
    for r in rows:
        table.add_row(r["run"], r["status"], r["started"], f"{r['seconds']:.1f}", ", ".join(r["ran"]) or "-",
                      ", ".join(r["cached"]) or "-")
    Console(highlight=False).print(table)


@pipeline_app.command("show")
def show(run_id: Annotated[str, typer.Argument(help="A run id, or `latest`.")] = "latest",
         file: FileOpt = "stackwise.yaml", stack: StackOpt = None, as_json: JsonOpt = False,
         markdown: Annotated[bool, typer.Option("--markdown", help="A Markdown summary (CI job summaries).")] = False) -> None:
    """One run in full: inputs' hashes, outputs, evaluation metrics and the gate's decision."""
    _, state = _state(file, stack)
    record = state.run(run_id)
    if record is None:
        raise SpecError(f"no run {run_id!r} of this pipeline on this stack", where=state.uri("runs"),
                        fix="list them with: stackwise pipeline history")
    record["status"] = _alive(state, record)
    if as_json:
        sys.stdout.write(json.dumps(record, indent=2, default=str) + "\n")
    elif markdown:
        from ..pipeline.report import markdown as render

        sys.stdout.write(render(record))
    else:
        _print_run(record, full=True)


def _print_run(record: dict[str, Any], full: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    from ..pipeline.view import STYLE, summary_line

    console = Console(highlight=False)
    table = Table("step", "kind", "state", "s", "key", "outputs / error", title=summary_line(record), title_justify="left")
    for name, step in record["steps"].items():
        shown = step.get("error") or ", ".join(f"{k}={v}" for k, v in (step.get("outputs") or {}).items()
                                               if not isinstance(v, dict))
        table.add_row(name, step["kind"], f"[{STYLE.get(step['state'], 'white')}]{step['state']}[/]",
                      f"{step['seconds']:.1f}" if "seconds" in step else "", step["key"][:12], shown[:120])
    console.print(table)
    if full:
        for name, step in record["steps"].items():
            for key, value in (step.get("inputs") or {}).items():
                console.print(f"  {name}.{key}: {value}", markup=False)


@pipeline_app.command("watch")
def watch(file: FileOpt = "stackwise.yaml", stack: StackOpt = None,
          interval: Annotated[float, typer.Option("--interval", min=1.0, help="Seconds between checks.")] = 60.0,
          max_runs: Annotated[Optional[int], typer.Option("--max-runs", min=1, help="Stop after this many runs.")] = None,
          max_checks: Annotated[Optional[int], typer.Option("--max-checks", min=1, help="Stop after this many checks.")] = None) -> None:
    """Run the pipeline whenever its inputs change (hashes checked every --interval seconds)."""
    from ..pipeline.runner import Options, Runner, exit_code
    from ..pipeline.view import make_view

    runs = checks = 0
    while True:
        pipeline = _load(file)
        options = Options(stack=_stack_name(pipeline, stack))
        runner = Runner(pipeline, options, make_view(False))
        checks += 1
        if "run" in runner.prepare().values():  # the run uses these hashes and decisions as they are
            sys.stderr.write(f"{time.strftime('%H:%M:%S')} inputs changed: running\n")
            code = exit_code(runner.run())
            runs += 1
            if code not in (0, 4):
                sys.stderr.write(f"the run failed (exit {code}); watching on\n")
        if (max_runs and runs >= max_runs) or (max_checks and checks >= max_checks):
            return
        time.sleep(interval)


@pipeline_app.command("example")
def example(folder: Annotated[str, typer.Argument(help="Where to write the example project.")] = "lee-pipeline",
            force: Annotated[bool, typer.Option("--force", help="Overwrite files that exist.")] = False) -> None:
    """Write the quickstart's lifecycle as a pipeline: stackwise.yaml, gate, curation config and the Lee
    news data (gensim's corpus). Then: cd FOLDER && stackwise pipeline run."""
    from ..pipeline.example import write_example

    written = write_example(Path(folder), force=force)
    sys.stdout.write("wrote " + ", ".join(str(p) for p in written) + f"\nnext: cd {folder} && stackwise pipeline run\n")


@pipeline_app.command("compile")
def compile_(
    target: Annotated[str, typer.Option("--target", "-t", help="The managed pipeline to emit: sagemaker, vertex or "
                                        "azureml.")],
    file: FileOpt = "stackwise.yaml",
    stack: StackOpt = None,
    image: Annotated[Optional[str], typer.Option("--image", help="The image every step runs (default: the stack's "
                                                 "training image).")] = None,
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="Where to write the definition (default: "
                                               "<name>.<target>.<json|yaml|yml> here).")] = None,
    upload: Annotated[bool, typer.Option("--upload", help="Copy the pipeline file, the local data it names and the "
                                         "stack's files to the artifact store, where the steps read them.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write the cloud's own pipeline definition (SageMaker Pipelines, Vertex AI Pipelines, Azure ML pipeline job)
    of the pipeline file: one container step per step, running `stackwise pipeline run --only STEP` on the stack
    in its training image, with the file's dependencies; validated with that cloud's SDK or API model."""
    from ..pipeline.compile import check_target, compile_definition, run_hint
    from ..stack import load_stack

    check_target(target)
    pipeline = _load(file)
    compiled = compile_definition(pipeline, target, load_stack(_stack_name(pipeline, stack)), image=image,
                                  upload=upload)
    path = Path(out or compiled.filename)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(compiled.text, encoding="utf-8")
    except OSError as exc:
        from ..errors import InputError

        raise InputError(f"cannot write {path}: {exc.strerror or exc}", where="--out", fix="choose a writable path") from None
    bundle, plan = compiled.bundle, compiled.plan
    argv = ["stackwise", "pipeline", "compile", "--target", target, "--file", file, "--stack", plan.stack]
    argv += ["--image", image] if image else []
    argv += ["--out", out] if out else []
    import shlex

    upload_command = shlex.join([*argv, "--upload"])
    if as_json:
        sys.stdout.write(json.dumps({
            "target": target, "definition": str(path), "stack": plan.stack, "image": plan.image,
            "steps": [{"name": s.name, "kind": s.kind, "after": list(s.upstream), "command": list(s.argv)}
                      for s in plan.steps],
            "bundle": {"uri": bundle.folder, "file": bundle.file_uri, "files": bundle.names, "uploaded": compiled.uploaded},
            "upload_command": None if compiled.uploaded else upload_command, "run": run_hint(compiled)}, indent=2) + "\n")
        return
    sys.stdout.write(f"wrote {path}: {len(plan.steps)} steps ({', '.join(s.name for s in plan.steps)}) in {plan.image}\n")
    if compiled.uploaded:
        sys.stdout.write(f"uploaded {len(bundle.files)} files to {bundle.folder}\n")
    else:
        sys.stdout.write(f"the steps read {bundle.file_uri}, not uploaded yet ({len(bundle.files)} files: the pipeline "
                         f"file, its local data and the stack's files); upload them with:\n  {upload_command}\n")
    sys.stdout.write("then create and start it:\n  " + run_hint(compiled).replace("\n", "\n  ") + "\n")
