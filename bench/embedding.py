#!/usr/bin/env python
"""Embedding throughput of each backend on the same chunks, in the same run, against PyTorch:

- chunks/s (wall) and chunks per CPU-second of torch (sentence-transformers), onnx (ONNX Runtime,
  fp32) and onnx-int8, encoding the Lee corpus cut as bench/run.py cuts it (800 characters, overlap
  100), in rounds that alternate the order of the backends; ratios to torch are taken per round
  (other processes' load moves between rounds, less within one);
- agreement with torch: cosine of each chunk's vector (min, mean) and recall@10 of 50 questions
  against torch's top 10 over the chunks;
- load time in a fresh interpreter (the start of an index job) and the one-time export time.

    python bench/embedding.py [--chunks 300] [--rounds 3] [--threads 2] [--out bench/out/embedding.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable
MODEL = "all-MiniLM-L6-v2"
BACKENDS = ("torch", "onnx", "onnx-int8")


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def lee_chunks(limit: int) -> tuple[list[str], list[str]]:
    """The chunks bench/run.py indexes, and 50 sentences of the Lee test corpus as questions."""
    from gensim.test.utils import datapath

    from stackwise.documents import Source, chunk_document, read_documents
    from stackwise.quickstart import write_corpus

    with tempfile.TemporaryDirectory(prefix="stackwise-bench-") as work:
        corpus = write_corpus(Path(work) / "lee.jsonl")
        documents, _ = read_documents(Source(str(corpus)))
        chunks = [c.text for d in documents for c in chunk_document(d, 800, 100)]
    text = " ".join(Path(datapath("lee.cor")).read_text(encoding="latin-1").split())
    questions = [s.strip() for s in text.split(". ") if 30 < len(s.strip()) <= 200][:50]
    return chunks[:limit] if limit else chunks, questions


def fresh_load_s(backend: str, threads: int, runs: int) -> float:
    """Median seconds to import stackwise and load the model on `backend` in a new interpreter."""
    code = ("import time; t = time.perf_counter(); from stackwise.embeddings import load_embedder; "
            f"e = load_embedder({MODEL!r}, backend={backend!r}); assert e.backend == {backend!r}; "
            "print(time.perf_counter() - t)")
    env = dict(os.environ, STACKWISE_THREADS=str(threads))
    times = []
    for _ in range(runs):
        out = subprocess.run([PY, "-c", code], check=True, capture_output=True, text=True, env=env)
        times.append(float(out.stdout.strip().splitlines()[-1]))
    return statistics.median(times)


def recall_at_10(ref_chunks, ref_questions, chunks, questions) -> float:
    import numpy as np

    top_ref = np.argsort(-(ref_questions @ ref_chunks.T), axis=1)[:, :10]
    top = np.argsort(-(questions @ chunks.T), axis=1)[:, :10]
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top_ref, top)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=300, help="first N chunks of the Lee corpus (0: all 626)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--load-runs", type=int, default=3)
    parser.add_argument("--out", default=str(HERE / "out" / "embedding.json"))
    args = parser.parse_args()
    os.environ["STACKWISE_THREADS"] = str(args.threads)

    import numpy as np

    from stackwise.embeddings import load_embedder

    started = time.perf_counter()
    loads = [load_avg()]
    chunks, questions = lee_chunks(args.chunks)
    embedders, first_load_s = {}, {}
    for backend in BACKENDS:  # first load: exports into the cache if it is not there yet
        start = time.perf_counter()
        embedders[backend] = load_embedder(MODEL, backend=backend)
        first_load_s[backend] = round(time.perf_counter() - start, 2)
        embedders[backend].encode(chunks[:16])  # warm-up
    export_s = {b: embedders[b]._model.manifest.get("export_s") for b in BACKENDS if b != "torch"}

    walls: dict[str, list[float]] = {b: [] for b in BACKENDS}
    cpus: dict[str, list[float]] = {b: [] for b in BACKENDS}
    vectors = {}
    for round_ in range(args.rounds):
        order = BACKENDS[round_ % 3 :] + BACKENDS[: round_ % 3]
        for backend in order:
            wall0, cpu0 = time.perf_counter(), time.process_time()
            vectors[backend] = embedders[backend].encode(chunks, batch_size=args.batch_size)
            walls[backend].append(time.perf_counter() - wall0)
            cpus[backend].append(time.process_time() - cpu0)
        loads.append(load_avg())
        print(f"round {round_ + 1}/{args.rounds}: " + ", ".join(f"{b} {walls[b][-1]:.1f}s" for b in BACKENDS)
              + f" (load {loads[-1]})", flush=True)

    ref = vectors["torch"]
    ref_q = embedders["torch"].encode(questions)
    n = len(chunks)
    results = {}
    for backend in BACKENDS:
        cos = np.sum(vectors[backend] * ref, axis=1)
        ratios = [walls["torch"][i] / walls[backend][i] for i in range(args.rounds)]
        cpu_ratios = [cpus["torch"][i] / cpus[backend][i] for i in range(args.rounds)]
        results[backend] = {
            "chunks_per_s": round(n / statistics.median(walls[backend]), 2),
            "chunks_per_s_rounds": [round(n / w, 2) for w in walls[backend]],
            "chunks_per_cpu_s": round(n / statistics.median(cpus[backend]), 2),
            "speedup_vs_torch_wall": round(statistics.median(ratios), 3),
            "speedup_vs_torch_cpu": round(statistics.median(cpu_ratios), 3),
            "cosine_min": round(float(cos.min()), 6),
            "cosine_mean": round(float(cos.mean()), 6),
            "recall_at_10_vs_torch": round(recall_at_10(ref, ref_q, vectors[backend],
                                                        embedders[backend].encode(questions)), 3),
            "first_load_in_process_s": first_load_s[backend],
            "export_s": export_s.get(backend),
        }
    for backend in BACKENDS:
        results[backend]["fresh_process_load_s"] = round(fresh_load_s(backend, args.threads, args.load_runs), 2)
    loads.append(load_avg())

    from importlib import metadata

    report = {
        "date": time.strftime("%Y-%m-%d"),
        "command": "python bench/embedding.py " + " ".join(sys.argv[1:]),
        "model": MODEL,
        "chunks": n,
        "chunk_chars_mean": round(statistics.mean(len(c) for c in chunks)),
        "questions": len(questions),
        "threads": args.threads,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "load_average_1_5_15": loads,
        "libraries": {d: metadata.version(d) for d in ("torch", "sentence-transformers", "onnxruntime")},
        "backends": results,
        "total_s": round(time.perf_counter() - started, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))

    print(f"\n{n} chunks (~{report['chunk_chars_mean']} chars), {args.threads} threads, batch {args.batch_size}, "
          f"{args.rounds} alternating rounds; load average during the run: "
          f"{min(l[0] for l in loads)}-{max(l[0] for l in loads)} (1 min) on {os.cpu_count()} CPUs")
    print(f"| backend | chunks/s | x torch (wall) | chunks/CPU-s | x torch (CPU) | cosine min / mean | recall@10 "
          f"| fresh-process load s | export s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for backend, r in results.items():
        print(f"| {backend} | {r['chunks_per_s']} | {r['speedup_vs_torch_wall']} | {r['chunks_per_cpu_s']} "
              f"| {r['speedup_vs_torch_cpu']} | {r['cosine_min']:.6f} / {r['cosine_mean']:.6f} "
              f"| {r['recall_at_10_vs_torch']:.3f} | {r['fresh_process_load_s']} | {r['export_s'] or '-'} |")
    print(f"\nwrote {out} ({report['total_s']} s)")


if __name__ == "__main__":
    main()
