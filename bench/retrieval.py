#!/usr/bin/env python
"""Retrieval at 100k and 1M chunks: the embedded store's graph index against LanceDB's IVF_SQ
path, hnswlib and exact numpy search, side by side in the same run (docs/vector-store.md).

    python bench/retrieval.py [--sizes 100000,1000000] [--queries 200] [--out bench/out/retrieval.json]

Vectors: embedding-like, as bench/vector_engines.py makes them (all-MiniLM-L6-v2 embeddings of
the Lee corpus sentences plus noise, renormalized; held-out sentences plus noise as queries;
exact top-10 as ground truth), cached per size under bench/out/retrieval/.

Per size:
- build: rows written into an EmbeddedStore table (Arrow appends, in the store's schema), then
  `EmbeddedStore.optimize` (IVF_SQ + scalar indexes + compaction) and the graph index it writes
  (`build_graph`), timed apart; hnswlib (M=16, ef_construction=100) built on the same vectors;
  sizes on disk and resident memory after loading each structure;
- queries, interleaved per query in a rotating order so load drift hits every path alike:
  `Platform.search` (the SDK's search: describe, embed, query) with the embedding replaced by
  a lookup of the precomputed query vector, so embedding time is reported separately (the
  model's encode of the query texts, measured at the end); `EmbeddedStore.query` through the
  graph; the same with the graph off (STACKWISE_GRAPH_INDEX=0: LanceDB IVF_SQ, nprobes 40,
  refine 10); `Graph.search` alone (no table check, no Hit objects) at the shipped search
  expansion and others (--graph-ef); hnswlib at ef 64 and 128;
  exact numpy (a matrix-vector product over all rows);
  and filtered queries (one category of 10, ~10% of rows) through the store (LanceDB prefilter);
- p50 / p99 in ms and recall@10 against the exact top-10 (the exact filtered top-10 for filters).
"""

from __future__ import annotations

import argparse
import json
import os
import platform as _platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
DIM, K = 384, 10
HNSW_M, HNSW_EFC = 16, 100
MODEL = "all-MiniLM-L6-v2"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def disk_mb(path: Path) -> float:
    if path.is_file():
        return round(path.stat().st_size / 2**20, 1)
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 1)


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def data_for(n: int, args, root: Path) -> Path:
    import vector_engines as ve

    folder = root / f"data{n}"
    stamp = folder / "params.json"
    params = {"n": n, "queries": args.queries, "noise": args.noise, "seed": args.seed}
    if stamp.exists() and json.loads(stamp.read_text()).get("params") == params:
        return folder
    info = ve.prepare(argparse.Namespace(**params), folder)
    stamp.write_text(json.dumps({"params": params, "info": info}))
    return folder


def build_store(n: int, folder: Path, root: Path) -> tuple[object, dict]:
    import pyarrow as pa

    from stackwise.adapters.vectors.embedded import EmbeddedStore

    vectors = np.load(folder / "vectors.npy", mmap_mode="r")
    cat = np.load(folder / "cat.npy")
    texts = json.loads((folder / "texts.json").read_text())
    src = np.load(folder / "src.npy")
    uri = root / f"store{n}"
    shutil.rmtree(uri, ignore_errors=True)
    store = EmbeddedStore(str(uri))
    store.create_index("bench", DIM, MODEL)
    table = store._table("bench")
    schema = table.schema
    fields = [f for f in schema if f.name != "metadata"] + [pa.field("metadata", pa.string())]
    out: dict = {}
    start = time.perf_counter()
    batch = 50_000
    for lo in range(0, n, batch):
        hi = min(n, lo + batch)
        rows = range(lo, hi)
        columns = {
            "id": [f"v{i}" for i in rows], "doc_id": [f"d{i // 10}" for i in rows], "source": ["lee"] * (hi - lo),
            "chunk": [i % 10 for i in rows], "text": [texts[src[i]] for i in rows],
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(vectors[lo:hi]).reshape(-1)), DIM),
            "metadata": [json.dumps({"cat": f"c{int(cat[i])}"}) for i in rows],
        }
        data = pa.Table.from_pydict(columns, schema=pa.schema(fields, metadata=schema.metadata))
        table.add(data)
    out["append_s"] = round(time.perf_counter() - start, 1)
    store = EmbeddedStore(str(uri))  # promotion sees the metadata on optimize (the migration path)
    os.environ["STACKWISE_GRAPH_INDEX"] = "0"
    start, cpu = time.perf_counter(), time.process_time()
    store.optimize("bench")
    out["optimize_without_graph_s"] = round(time.perf_counter() - start, 1)
    out["optimize_without_graph_cpu_s"] = round(time.process_time() - cpu, 1)
    os.environ["STACKWISE_GRAPH_INDEX"] = "1"
    start, cpu = time.perf_counter(), time.process_time()
    report = store.build_graph("bench")
    out["graph_build_s"] = round(time.perf_counter() - start, 1)
    out["graph_build_cpu_s"] = round(time.process_time() - cpu, 1)
    out["graph_report"] = report
    out["disk_mb_table"] = disk_mb(uri / "bench.lance")
    out["disk_mb_graph"] = disk_mb(uri / "_stackwise_graphs")
    # An incremental update: 1% of the rows re-written with new vectors, then the graph updated.
    rng = np.random.default_rng(1)
    moved = rng.choice(n, max(1, n // 100), replace=False)
    from stackwise.vectors import Record

    new = vectors[moved] + 0.01 * rng.standard_normal((len(moved), DIM)).astype(np.float32)
    store.upsert("bench", [Record(id=f"v{i}", vector=v, text=texts[src[i]], doc_id=f"d{i // 10}", source="lee",
                                  chunk=int(i % 10), metadata={"cat": f"c{int(cat[i])}"})
                           for i, v in zip(moved, new)])
    start = time.perf_counter()
    os.environ["STACKWISE_GRAPH_INDEX"] = "0"
    store.optimize("bench")
    os.environ["STACKWISE_GRAPH_INDEX"] = "1"
    inc = store.build_graph("bench")
    out["update_1pct"] = {"rows_changed": int(len(moved)), "graph": inc,
                          "optimize_plus_graph_s": round(time.perf_counter() - start, 1)}
    # Put the original vectors back so the ground truth holds, and update the graph again.
    store.upsert("bench", [Record(id=f"v{i}", vector=vectors[i], text=texts[src[i]], doc_id=f"d{i // 10}",
                                  source="lee", chunk=int(i % 10), metadata={"cat": f"c{int(cat[i])}"})
                           for i in moved])
    store.optimize("bench")
    return EmbeddedStore(str(uri)), out


def pct(times: list[float], q: float) -> float:
    return round(float(np.percentile(times, q)) * 1000, 3)


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    return round(float(np.mean([len(set(f) & set(t.tolist())) / K for f, t in zip(found, truth)])), 4)


def run(n: int, args, root: Path) -> dict:
    import hnswlib

    import stackwise
    from stackwise.embeddings import Embedder

    folder = data_for(n, args, root)
    res: dict = {"n": n, "load_before": load_avg(), "rss_mb_start": rss_mb()}
    res["data"] = json.loads((folder / "params.json").read_text())["info"]
    vectors = np.load(folder / "vectors.npy")
    queries, qcat = np.load(folder / "queries.npy"), np.load(folder / "qcat.npy")
    gt, gtf, cat = np.load(folder / "gt.npy"), np.load(folder / "gtf.npy"), np.load(folder / "cat.npy")
    if args.reuse and (root / f"store{n}" / "_stackwise_graphs").exists():
        from stackwise.adapters.vectors.embedded import EmbeddedStore

        store, res["build"] = EmbeddedStore(str(root / f"store{n}")), {"reused": str(root / f"store{n}")}
    else:
        store, res["build"] = build_store(n, folder, root)
    print(json.dumps({"n": n, "build": res["build"]}), flush=True)

    # The SDK's search, embedding replaced by the precomputed vector of each query text.
    os.environ.setdefault("STACKWISE_HOME", str(root / "home"))
    plat = stackwise.connect("local")
    plat._store = store
    lookup = {f"q{i}": q for i, q in enumerate(queries)}

    class Precomputed:
        def encode(self, texts, batch_size=64):
            return np.stack([lookup[t] for t in texts])

    plat._embedders[MODEL] = Embedder(name=MODEL, dim=DIM, _model=None)
    plat._embedders[MODEL].encode = Precomputed().encode  # type: ignore[method-assign]

    rss = rss_mb()
    store.query("bench", queries[0], k=K)
    res["rss_mb_graph_loaded"] = round(rss_mb() - rss, 1)

    rss = rss_mb()
    start = time.perf_counter()
    hnsw = hnswlib.Index(space="cosine", dim=DIM)
    hnsw.init_index(max_elements=n, M=HNSW_M, ef_construction=HNSW_EFC)
    hnsw.set_num_threads(os.cpu_count() or 1)
    hnsw.add_items(vectors, np.arange(n))
    res["hnswlib_build_s"] = round(time.perf_counter() - start, 1)
    res["rss_mb_hnswlib"] = round(rss_mb() - rss, 1)
    hnsw.set_num_threads(1)

    def sdk(i, q):
        return [int(h.id[1:]) for h in plat.search("bench", f"q{i}", k=K)]

    def graph(i, q):
        return [int(h.id[1:]) for h in store.query("bench", q, k=K)]

    def lance(i, q):
        os.environ["STACKWISE_GRAPH_INDEX"] = "0"
        try:
            return [int(h.id[1:]) for h in store.query("bench", q, k=K)]
        finally:
            os.environ["STACKWISE_GRAPH_INDEX"] = "1"

    def filtered(i, q):
        return [int(h.id[1:]) for h in store.query("bench", q, k=K, filter={"cat": f"c{int(qcat[i])}"})]

    def hnsw_ef(ef):
        def search(i, q):
            hnsw.set_ef(ef)
            return hnsw.knn_query(q, k=K)[0][0].tolist()
        return search

    def numpy_exact(i, q):
        return np.argpartition(-(vectors @ q), K)[:K].tolist()

    from stackwise.adapters.vectors import graph as graphs

    def graph_ef(ef):
        """Graph.search alone (no table check) on its own mapping of the graph, at expansion ef."""
        import dataclasses

        from usearch.index import Index

        current = store._current("bench")
        view = Index.restore(str(root / f"store{n}" / graphs.GRAPH_FOLDER / "bench" / f"v{current.version}"
                                 / "graph.usearch"), view=True)
        view.expansion_search = ef
        alone = dataclasses.replace(current.graph, index=view)
        return lambda i, q: [int(row["id"][1:]) for row, _ in alone.search(q, K)]

    paths = {"sdk_search": sdk, "store_graph": graph, "store_lancedb_ivf_sq": lance, "store_filtered": filtered,
             "hnswlib_ef64": hnsw_ef(64), "hnswlib_ef128": hnsw_ef(128), "numpy_exact": numpy_exact}
    shipped = int(store._current("bench").graph.index.expansion_search)
    res["graph_expansion_search_tuned"] = shipped
    for ef in sorted({*args.graph_ef, shipped}):
        paths[f"graph_search_alone_ef{ef}"] = graph_ef(ef)
    times = {p: [] for p in paths}
    found = {p: [] for p in paths}
    names = list(paths)
    for i, q in enumerate(queries[:5]):
        for p in names:
            paths[p](i, q)
    for i, q in enumerate(queries):
        order = names[i % len(names):] + names[: i % len(names)]
        for p in order:
            start = time.perf_counter()
            ids = paths[p](i, q)
            times[p].append(time.perf_counter() - start)
            found[p].append(ids)
    res["queries"] = {}
    for p in names:
        truth = gtf if p == "store_filtered" else gt
        res["queries"][p] = {"p50_ms": pct(times[p], 50), "p99_ms": pct(times[p], 99), "recall_at_10": recall(found[p], truth)}
    hn = res["queries"]["hnswlib_ef128"]["p50_ms"]
    res["ratio_sdk_search_to_hnswlib_ef128_p50"] = round(res["queries"]["sdk_search"]["p50_ms"] / hn, 2)
    res["ratio_lancedb_to_graph_p50"] = round(res["queries"]["store_lancedb_ivf_sq"]["p50_ms"]
                                              / res["queries"]["store_graph"]["p50_ms"], 2)
    res["load_after"] = load_avg()
    res["rss_mb_end"] = rss_mb()
    print(json.dumps({"n": n, "queries": res["queries"]}), flush=True)
    del hnsw
    return res


def embedding_latency(args, root: Path) -> dict:
    """The model's encode of one query text, as the SDK's search pays it (PyTorch path)."""
    import vector_engines as ve

    from stackwise.embeddings import load_embedder

    texts = ve.lee_sentences()[-args.queries:]
    embedder = load_embedder(MODEL)
    for t in texts[:5]:
        embedder.encode([t])
    times = []
    for t in texts:
        start = time.perf_counter()
        embedder.encode([t])
        times.append(time.perf_counter() - start)
    return {"p50_ms": pct(times, 50), "p99_ms": pct(times, 99), "queries": len(texts),
            "backend": getattr(embedder, "backend", "torch")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--noise", type=float, default=0.03)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch / build threads")
    parser.add_argument("--graph-ef", type=lambda v: [int(x) for x in v.split(",")], default=[128, 512, 1024],
                        help="other search expansions of the graph index to measure beside the shipped one")
    parser.add_argument("--keep", action="store_true", help="keep the stores under bench/out/retrieval/")
    parser.add_argument("--reuse", action="store_true",
                        help="query the stores a --keep run left instead of building them (no build figures)")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "retrieval.json")
    args = parser.parse_args()
    os.environ["STACKWISE_THREADS"] = str(args.threads)
    root = HERE / "out" / "retrieval"
    root.mkdir(parents=True, exist_ok=True)
    from importlib import metadata

    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
               "machine": _platform.processor() or _platform.machine(),
               "versions": {d: metadata.version(d) for d in ("lancedb", "usearch", "hnswlib", "numpy")},
               "sizes": []}
    for n in (int(s) for s in args.sizes.split(",")):
        results["sizes"].append(run(n, args, root))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
        if not args.keep:
            shutil.rmtree(root / f"store{n}", ignore_errors=True)
    results["embedding_one_query"] = embedding_latency(args, root)
    args.out.write_text(json.dumps(results, indent=2))
    print("\n| n | path | p50 ms | p99 ms | recall@10 |\n|---|---|---|---|---|")
    for size in results["sizes"]:
        for p, q in size["queries"].items():
            print(f"| {size['n']:,} | {p} | {q['p50_ms']} | {q['p99_ms']} | {q['recall_at_10']} |")
    print(f"\nembedding one query (separate): {results['embedding_one_query']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
