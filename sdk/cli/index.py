"""Indexing and search: `stackwise index` (and `index copy`), `search`, and `stackwise indexes`
(list, drop, rebuild)."""

from __future__ import annotations

import sys
from typing import Annotated, Any, Optional

import typer

from ..errors import StackwiseError
from .common import DetachOpt, DryRunOpt, JsonOpt, NewOpt, RunNameOpt, StackOpt, YesOpt, connect, curation_config
from .jobs import follow, run_job
from .render import get_console, print_index_report, print_json, print_rendered


def index(
    source: Annotated[str, typer.Argument(help="A file, folder or glob; a local path or an fsspec URI (s3://, gs://, az://).")],
    index_name: Annotated[str, typer.Option("--index", "-i", help="Index name.")],
    stack: StackOpt = None,
    detach: DetachOpt = False,
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

    from ..errors import SpecError
    from ..specs import IndexSpec

    if from_stack or to_stack or to_index:
        if source != "copy" or not (from_stack and to_stack):
            raise SpecError("--from-stack, --to-stack and --to-index belong to `stackwise index copy`",
                            where="stackwise index options",
                            fix="run `stackwise index copy --from-stack A --index NAME --to-stack B`")
        _copy_index(from_stack, index_name, to_stack, to_index, as_json)
        return

    platform = connect(stack)
    try:
        spec = IndexSpec(
            source=source, index=index_name, prune=prune, workers=workers, follow_links=follow_links,
            chunking={"size": chunk_size, "overlap": chunk_overlap},
            embedding={"model": model or platform.stack.outputs.embedding_model, "backend": embedding_backend},
            curation=curation_config(curate),
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["loc"][:2] == ("embedding", "backend"):
            raise SpecError(f"--embedding-backend {embedding_backend!r} is not one of auto, torch, onnx, onnx-int8",
                            where="stackwise index --embedding-backend",
                            fix="use auto (the default), torch, onnx or onnx-int8") from None
        raise SpecError(first["msg"].removeprefix("Value error, "), where="stackwise index options",
                        fix="see `stackwise index --help`") from None
    spec.preflight()
    if dry_run:
        print_rendered(platform.render(spec, new=new, run_name=run_name), as_json)
        return
    run_job(platform.index(spec, new=new, run_name=run_name, preflight=False), detach, as_json, print_index_report,
            needs="chunks")


def _copy_index(from_stack: str, index_name: str, to_stack: str, to_index: str | None, as_json: bool) -> None:
    from ..vector_copy import copy_index

    source, target = connect(from_stack), connect(to_stack)
    report = copy_index(source.vector_store, target.vector_store, index_name, to_index)
    if as_json:
        print_json({"from_stack": from_stack, "to_stack": to_stack, **report.model_dump()})
        return
    get_console().print(
        f"copied index {report.index} ({report.model}, {report.dim}-d) from stack {from_stack} to "
        f"{report.to_index} in stack {to_stack}: {report.documents} documents, {report.chunks} chunks "
        f"in {report.seconds:.1f} s (nothing re-embedded)",
        markup=False,
    )


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
    from ..filters import parse_filter_json
    from ..vectors import check_index_name, parse_filter_args

    check_index_name(index_name, where="--index")
    flt = parse_filter_args(filters or [])
    if where_json is not None:
        where = parse_filter_json(where_json, where="--where-json")
        flt = {"$and": [flt, where]} if flt else where
    hits = connect(stack).search(index_name, query, k=k, filter=flt or None)
    if as_json:
        print_json([{"id": h.id, "score": round(h.score, 6), "doc_id": h.doc_id, "chunk": h.chunk,
                      "text": h.text, "metadata": dict(h.metadata)} for h in hits])
        return
    console = get_console()
    if not hits:
        console.print("no results")
    for rank, hit in enumerate(hits, 1):
        snippet = " ".join(hit.text.split())
        console.print(f"[bold]{rank}.[/bold] {hit.score:.3f}  {hit.doc_id}  chunk {hit.chunk}")
        console.print(f"   {snippet[:240]}{'...' if len(snippet) > 240 else ''}", markup=False)


indexes_app = typer.Typer(help="List the indexes of the active stack's vector store (no subcommand); drop or "
                          "rebuild one.", invoke_without_command=True)


@indexes_app.callback()
def indexes(ctx: typer.Context, stack: StackOpt = None, as_json: JsonOpt = False) -> None:
    """List the indexes in the active stack's vector store; a damaged one is listed with its error
    (and the command exits 2)."""
    if ctx.invoked_subcommand is not None:
        return
    store = connect(stack).vector_store
    rows: list[dict[str, Any]] = []
    damaged: list[StackwiseError] = []
    for name in store.list_indexes():
        try:
            rows.append(vars(store.describe(name)))
        except StackwiseError as exc:
            damaged.append(exc)
            rows.append({"name": name, "dim": None, "model": None, "count": None, "error": exc.what})
    if as_json:
        print_json(rows)
    else:
        from rich.table import Table

        table = Table("index", "chunks", "dim", "model")
        for row in rows:
            table.add_row(row["name"], "DAMAGED" if "error" in row else str(row["count"]), str(row["dim"] or "-"),
                          row["model"] or "-")
        get_console().print(table)
    for exc in damaged:
        sys.stderr.write(f"error: {exc}\n")
    if damaged:
        raise typer.Exit(2)


def _confirm(question: str, yes: bool) -> None:
    from ..errors import SpecError

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
    from ..errors import StoreError
    from ..vectors import check_index_name

    platform = connect(stack)
    store = platform.vector_store
    existing = store.list_indexes()
    if name not in existing:
        check_index_name(name, where="NAME")
        raise StoreError(f"index {name!r} does not exist", where=f"stack {platform.stack.name}",
                         fix="existing: " + (", ".join(existing) or "none"))
    _confirm(f"drop index {name} from stack {platform.stack.name} (its chunks cannot be recovered)", yes)
    store.drop_index(name)
    if as_json:
        print_json({"dropped": name, "stack": platform.stack.name})
    else:
        get_console().print(f"dropped index {name} from stack {platform.stack.name}", markup=False)


@indexes_app.command("rebuild")
def indexes_rebuild(name: str, stack: StackOpt = None, yes: YesOpt = False, as_json: JsonOpt = False) -> None:
    """Drop an index and index it again from the sources its index jobs recorded on this stack.

    Each source's latest successful index job is run again, with its chunking and model. Refused,
    with nothing changed, when no such job is recorded or a recorded source is gone."""
    from ..vectors import check_index_name

    check_index_name(name, where="NAME")
    platform = connect(stack)
    specs = _rebuild_specs(platform, name)
    _confirm(f"drop index {name} from stack {platform.stack.name} and index {len(specs)} source(s) again", yes)
    platform.vector_store.drop_index(name)
    reports = []
    for spec in specs:
        handle = platform.index(spec)
        reports.append(follow(handle, quiet=as_json))
        if not as_json:
            print_index_report(reports[-1])
    if as_json:
        print_json(reports)


def _rebuild_specs(platform: Any, name: str) -> list[Any]:
    """The spec of the latest successful index job of each source of index `name`, sources
    canonical and checked to exist (InputError naming a gone one, StoreError if none is recorded)."""
    from ..documents import Source, canonical_source
    from ..errors import InputError, StoreError
    from ..specs import IndexSpec

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
