#!/usr/bin/env python
"""The foundation's benchmark, every figure a ratio against a baseline run in the same process
or run (no timing is asserted anywhere in tests):

1. start-up: `python -c "import stackwise"` and `stackwise --help` against `python -c pass`;
2. index throughput: the index workload end to end (read, chunk, embed, write) and as a local
   job through the CLI, against the embedding model alone on the same chunks (the limit);
3. query p50/p99 and recall@10 of the embedded store at 100k chunks against exact search
   (delegated to bench/vector_engines.py with its numpy and lancedb engines).

    python bench/run.py [--n 100000] [--skip-query] [--out bench/out/run.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable
STACKWISE = str(Path(PY).with_name("stackwise"))


def wall(cmd: list[str], runs: int, env: dict | None = None) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        times.append(time.perf_counter() - start)
    return times


def startup(runs: int) -> dict:
    base = statistics.median(wall([PY, "-c", "pass"], runs))
    imp = statistics.median(wall([PY, "-c", "import stackwise"], runs))
    helps = statistics.median(wall([STACKWISE, "--help"], runs))
    return {
        "python_pass_s": round(base, 4),
        "import_stackwise_s": round(imp, 4),
        "stackwise_help_s": round(helps, 4),
        "import_over_python": round(imp / base, 2),
        "help_over_python": round(helps / base, 2),
    }


def index_throughput(threads: int) -> dict:
    os.environ["STACKWISE_THREADS"] = str(threads)
    from stackwise.adapters.vectors.embedded import EmbeddedStore
    from stackwise.documents import Source, chunk_document, read_documents
    from stackwise.embeddings import load_embedder
    from stackwise.quickstart import write_corpus
    from stackwise.specs import IndexSpec
    from stackwise.workloads.index import run_index

    work = Path(tempfile.mkdtemp(prefix="stackwise-bench-"))
    try:
        corpus = write_corpus(work / "lee.jsonl")
        spec = IndexSpec(source=str(corpus), index="bench", chunking={"size": 800, "overlap": 100})
        documents, _ = read_documents(Source(spec.source))
        texts = [c.text for d in documents for c in chunk_document(d, 800, 100)]

        # Baseline: the embedding model alone on the same chunk texts (the limit).
        start = time.perf_counter()
        embedder = load_embedder(spec.embedding.model)
        load_s = time.perf_counter() - start
        embedder.encode(texts[:64])  # warm-up
        start = time.perf_counter()
        embedder.encode(texts, batch_size=spec.embedding.batch_size)
        encode_s = time.perf_counter() - start

        # The workload in this process (it loads its own model, as a job does).
        store = EmbeddedStore(str(work / "vectors"))
        start = time.perf_counter()
        report = run_index(spec, store=store, progress=lambda *a, **k: None)
        index_s = time.perf_counter() - start
        start = time.perf_counter()
        rerun = run_index(spec, store=store, progress=lambda *a, **k: None)
        rerun_s = time.perf_counter() - start
        assert report.added == len(texts) and rerun.embedded == 0, (report, rerun)

        # The same as a local job through the CLI: supervisor + workload processes, fresh state.
        env = dict(os.environ, STACKWISE_HOME=str(work / "home"))
        start = time.perf_counter()
        subprocess.run([STACKWISE, "index", str(corpus), "--index", "bench", "--json"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        job_s = time.perf_counter() - start
    finally:
        shutil.rmtree(work, ignore_errors=True)
    n = len(texts)
    return {
        "chunks": n,
        "threads": threads,
        "model_load_s": round(load_s, 2),
        "model_alone_chunks_per_s": round(n / encode_s, 1),
        "model_alone_with_load_chunks_per_s": round(n / (encode_s + load_s), 1),
        "index_in_process_s": round(index_s, 2),
        "index_in_process_chunks_per_s": round(n / index_s, 1),
        "index_job_via_cli_s": round(job_s, 2),
        "index_job_chunks_per_s": round(n / job_s, 1),
        "rerun_unchanged_s": round(rerun_s, 2),
        "ratio_index_vs_model_with_load": round((n / index_s) / (n / (encode_s + load_s)), 3),
        "ratio_index_vs_model_encode_only": round((n / index_s) / (n / encode_s), 3),
        "ratio_job_vs_model_with_load": round((n / job_s) / (n / (encode_s + load_s)), 3),
    }


def query(n: int) -> dict:
    out = HERE / "out" / "run_query.json"
    subprocess.run([PY, str(HERE / "vector_engines.py"), "--n", str(n), "--engines", "numpy,lancedb",
                    "--out", str(out)], check=True)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="vectors for the query benchmark")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10, help="repetitions of each start-up command")
    parser.add_argument("--skip-query", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "run.json")
    args = parser.parse_args()

    results = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count()}
    results["startup"] = startup(args.runs)
    print(json.dumps({"startup": results["startup"]}, indent=2), flush=True)
    results["index"] = index_throughput(args.threads)
    print(json.dumps({"index": results["index"]}, indent=2), flush=True)
    if not args.skip_query:
        results["query"] = query(args.n)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
