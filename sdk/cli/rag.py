"""`stackwise rag ...`: RAG apps as versioned config in the stack's model registry.

A Typer sub-app (`rag_app`), mounted by the main CLI as `stackwise rag`. Promotion, aliases and
rollback are the model registry's (`stackwise promote NAME`, `stackwise models alias`); evaluation
is `stackwise eval --model rag:NAME@candidate`. Errors are `StackwiseError`s: the main CLI prints
them without a traceback (exit 2).
"""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from .common import JsonOpt, StackOpt, connect
from .render import get_console, print_json

rag_app = typer.Typer(help="RAG apps: retrieval, prompt template and generator as versioned config in the model "
                      "registry (register, list, show, ask).", no_args_is_help=True)

RefArg = Annotated[str, typer.Argument(help="NAME (the champion, else the newest version), NAME@ALIAS or "
                                       "NAME/VERSION.")]


@rag_app.command("register")
def register(
    file: Annotated[str, typer.Argument(help="A YAML file with a top-level `rag:` section.")],
    alias: Annotated[Optional[str], typer.Option(
        help="Also point this alias (e.g. candidate) at the version (never champion: it moves only through "
        "`stackwise promote`).")] = None,
    stack: StackOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Register a RAG app file as a new version of its `rag.name` (an identical config returns its version)."""
    from ..model_registry import check_alias
    from ..rag import load_rag_file, register_rag

    app = load_rag_file(file)
    if alias is not None:
        check_alias(alias)
    platform = connect(stack)
    if app.index not in platform.vector_store.list_indexes():
        from ..errors import InputError

        raise InputError(f"index {app.index} is not in stack {platform.stack.name}'s vector store",
                         where=f"{file}: rag.index",
                         fix=f"index documents first: stackwise index SOURCE --index {app.index}")
    version = register_rag(app, platform.models, alias=alias)
    if as_json:
        print_json({"rag": app.name, "version": version, "alias": alias, "ref": f"rag:{app.name}/{version}"})
        return
    get_console().print(f"registered rag:{app.name} version {version}" + (f" as {alias}" if alias else ""),
                            markup=False)


@rag_app.command("list")
def list_command(stack: StackOpt = None, as_json: JsonOpt = False) -> None:
    """List registered RAG apps with their latest version and aliases."""
    from ..rag import list_rags

    rows = list_rags(connect(stack).models)
    if as_json:
        print_json(rows)
        return
    from rich.table import Table

    table = Table("rag app", "versions", "latest", "aliases")
    for row in rows:
        table.add_row(row["name"], str(row["versions"]), str(row["latest"]),
                      ", ".join(f"{a}=v{v}" for a, v in sorted(row["aliases"].items())) or "-")
    get_console().print(table)


@rag_app.command("show")
def show(ref: RefArg, stack: StackOpt = None, as_json: JsonOpt = False) -> None:
    """Show the config of one RAG app version, with the aliases that point at it."""
    from ..rag import dump_rag, resolve_rag

    registry = connect(stack).models
    app, version = resolve_rag(ref if ref.startswith("rag:") else f"rag:{ref}", registry)
    aliases = sorted(a for a, v in registry.show(app.name)["aliases"].items() if v == version)
    if as_json:
        print_json({"rag": app.name, "version": version, "aliases": aliases, "config": app.model_dump()})
        return
    console = get_console()
    console.print(f"rag:{app.name} version {version}" + (f"  [{', '.join(aliases)}]" if aliases else ""), markup=False)
    console.print(dump_rag(app).rstrip(), markup=False)


@rag_app.command("ask")
def ask(
    ref: RefArg,
    question: Annotated[str, typer.Argument(help="The question, in plain words.")],
    k: Annotated[Optional[int], typer.Option("-k", min=1, max=50,
                                             help="Sources to retrieve (default: the app's k).")] = None,
    filters: Annotated[Optional[list[str]], typer.Option(
        "--filter", "-f", help="Narrow retrieval (ANDed with the app's filter): key=value, key=a,b, key!=v, key>v, "
        "key>=v, key<v, key<=v; repeatable.")] = None,
    where_json: Annotated[Optional[str], typer.Option(
        "--where-json", help="Narrow retrieval with a portable filter object (JSON); ANDed with --filter.")] = None,
    stack: StackOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Answer one question here: retrieve, fill the template, generate; print the answer and its numbered sources."""
    from ..evaluation.lm import load
    from ..filters import parse_filter_args, parse_filter_json
    from ..rag import RagLM, resolve_rag, stored_vectors

    flt: dict[str, Any] | None = parse_filter_args(filters) if filters else None
    if where_json is not None:
        where = parse_filter_json(where_json, where="--where-json")
        flt = {"$and": [flt, where]} if flt else where
    platform = connect(stack)
    app, version = resolve_rag(ref if ref.startswith("rag:") else f"rag:{ref}", platform.models)
    generator = load(app.generator, context=platform.stack)
    rag = RagLM(app, version, generator, platform.search, stored_vectors(platform.vector_store))
    answer = rag.answer(question, k=k, filter=flt)
    if as_json:
        print_json({"model": rag.ref, "answer": answer.text, "annotations": answer.annotations,
                            "sources": answer.sources, "usage": {"prompt_tokens": answer.prompt_tokens,
                                                                "completion_tokens": answer.completion_tokens}})
        return
    console = get_console()
    console.print(answer.text or "(empty answer)", markup=False)
    console.print(f"sources ({rag.ref}):", markup=False)
    for source, hit in zip(answer.sources, answer.hits):
        snippet = " ".join(hit.text.split())
        console.print(f"  [{source['n']}] {source['score']:.3f}  {source['doc_id']}  chunk {source['chunk']}",
                      markup=False)
        console.print(f"      {snippet[:160]}{'...' if len(snippet) > 160 else ''}", markup=False)
