"""`stackwise quickstart`: the local lifecycle on real data, in a few minutes on 2 cores.

Today: index gensim's Lee news corpus (300 Australian news articles from 2001, shipped on PyPI)
into the embedded vector store through a real local job, search it, and show that a rerun is
incremental. Later stages (fine-tune, evaluate, promote) join here as they land.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import InputError
from .paths import state_dir
from .registry import require

INDEX = "quickstart-lee"
QUERIES = [
    ("bushfires threatening homes near Sydney", None),
    ("peace talks in the Middle East", None),
    ("cricket match result", {"corpus": "lee-background"}),
]


def lee_corpus() -> Path:
    """The Lee background corpus file inside the installed gensim package."""
    gensim = require("gensim", "local", "the quickstart corpus")
    path = Path(gensim.__file__).parent / "test" / "test_data" / "lee_background.cor"
    if not path.is_file():
        raise InputError("gensim's Lee corpus is missing", where=str(path), fix="pip install --force-reinstall gensim")
    return path


def write_corpus(target: Path) -> Path:
    """One JSONL record per article, with its number as id and metadata to filter on."""
    lines = lee_corpus().read_text(encoding="latin-1").splitlines()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        for number, text in enumerate(lines, 1):
            if text.strip():
                record = {"id": f"lee-{number:03d}", "text": text.strip(), "corpus": "lee-background",
                          "article": number}
                out.write(json.dumps(record) + "\n")
    tmp.replace(target)
    return target


def run(stack: str | None, as_json: bool, follow: Callable[..., dict[str, Any]],
        print_report: Callable[[dict[str, Any]], None]) -> None:
    from rich.console import Console

    from .platform import connect
    from .specs import IndexSpec

    console = Console(highlight=False, quiet=as_json)
    started = time.perf_counter()
    platform = connect(stack)
    corpus = write_corpus(state_dir() / "quickstart" / "lee_background.jsonl")
    console.print(f"[bold]stackwise quickstart[/bold] on stack {platform.stack.name!r} ({platform.stack.cloud})")
    console.print(f"1. corpus: {corpus} (gensim's Lee news corpus, 300 articles)")

    spec = IndexSpec(source=str(corpus), index=INDEX, chunking={"size": 800, "overlap": 100})
    console.print(f"2. index job: embedding with {spec.embedding.model} into the {platform.stack.outputs.vector_store.kind} store")
    first = follow(platform.index(spec), quiet=as_json)
    print_report(first) if not as_json else None

    console.print("3. searches:")
    searches = []
    for query, flt in QUERIES:
        hits = platform.search(INDEX, query, k=3, filter=flt)
        searches.append({"query": query, "filter": flt,
                         "hits": [{"doc_id": h.doc_id, "score": round(h.score, 4), "text": h.text[:200]} for h in hits]})
        console.print(f"   [bold]{query}[/bold]" + (f"  (filter {flt})" if flt else ""))
        for hit in hits:
            console.print(f"     {hit.score:.3f}  {hit.doc_id.rsplit('#', 1)[-1]}  {' '.join(hit.text.split())[:110]}",
                          markup=False)

    console.print("4. rerun the same index job: nothing changed, so nothing is embedded or written")
    second = follow(platform.index(spec), quiet=as_json)
    print_report(second) if not as_json else None
    elapsed = time.perf_counter() - started
    console.print(f"done in {elapsed:.0f} s. Try: stackwise search 'floods in Queensland' --index {INDEX}")
    if as_json:
        print(json.dumps({"index": first, "searches": searches, "rerun": second, "seconds": round(elapsed, 1)},
                         indent=2))
