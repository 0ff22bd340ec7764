"""Filtered search in the embedded store: promoted metadata columns against the JSON path.

Two `EmbeddedStore`s get the same N rows in the same run: one as indexes were written before
promotion (`promote=False`: metadata only in the JSON column, the old path) and one with
promoted columns and their scalar indexes. Both are optimized (IVF_SQ once N >= 50,000), then
answer the same queries, alternating per query so load from other processes hits both alike.

Reported per filter shape: p50 / p99 latency of each path, the ratio old / new, and recall@10
of each against the exact filtered top-10 (numpy), so a faster path that returned other rows
would show. Nothing is asserted; figures go to bench/out/filters.json.

    python bench/filters.py --n 100000 --queries 100
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "2")

DIM = 384
K = 10
CATS = [f"c{i}" for i in range(10)]
LANGS = ["en", "de", "fr"]
SHAPES = {
    "none": lambda q: None,
    "eq (10%)": lambda q: {"cat": CATS[q % 10]},
    "range (12%)": lambda q: {"year": {"$gte": 2010, "$lt": 2013}},
    "ne + in (60%)": lambda q: {"lang": {"$ne": "fr"}, "cat": CATS[:9]},
    "or (20%)": lambda q: {"$or": [{"cat": CATS[q % 10]}, {"score": {"$lt": 0.1}}]},
    "nested, no match": lambda q: {"$and": [{"year": {"$gt": 2030}}, {"$or": [{"lang": "en"}, {"cat": "c1"}]}]},
}


def make_data(n: int, n_queries: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((500, DIM)).astype(np.float32)
    vectors = centers[rng.integers(0, 500, n)] + 0.35 * rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = centers[rng.integers(0, 500, n_queries)] + 0.35 * rng.standard_normal((n_queries, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return {
        "vectors": vectors,
        "queries": queries,
        "cat": rng.integers(0, 10, n),
        "year": rng.integers(2000, 2025, n),
        "lang": rng.integers(0, 3, n),
        "score": rng.random(n).round(4),
    }


def metadata(data: dict, i: int) -> dict:
    return {"cat": CATS[data["cat"][i]], "year": int(data["year"][i]), "lang": LANGS[data["lang"][i]],
            "score": float(data["score"][i])}


def mask(data: dict, flt: dict | None) -> np.ndarray:
    """Rows a filter selects, computed with numpy (the ground truth)."""
    n = len(data["cat"])
    if flt is None:
        return np.ones(n, bool)
    out = np.ones(n, bool)
    for key, cond in flt.items():
        if key == "$and":
            for sub in cond:
                out &= mask(data, sub)
            continue
        if key == "$or":
            any_ = np.zeros(n, bool)
            for sub in cond:
                any_ |= mask(data, sub)
            out &= any_
            continue
        col = {"cat": np.array(CATS)[data["cat"]], "lang": np.array(LANGS)[data["lang"]],
               "year": data["year"], "score": data["score"]}[key]
        ops = cond if isinstance(cond, dict) else ({"$in": cond} if isinstance(cond, list) else {"$eq": cond})
        for op, v in ops.items():
            out &= {"$eq": lambda: col == v, "$ne": lambda: col != v, "$in": lambda: np.isin(col, v),
                    "$gt": lambda: col > v, "$gte": lambda: col >= v, "$lt": lambda: col < v,
                    "$lte": lambda: col <= v}[op]()
    return out


def exact(data: dict, q: np.ndarray, rows: np.ndarray) -> set[int]:
    idx = np.flatnonzero(rows)
    if not len(idx):
        return set()
    scores = data["vectors"][idx] @ q
    return set(idx[np.argsort(-scores)[:K]].tolist())


def build(store, data: dict, batch: int = 10_000) -> float:
    from stackwise.vectors import Record

    n = len(data["cat"])
    store.create_index("bench", DIM, "bench")
    start = time.perf_counter()
    for lo in range(0, n, batch):
        store.upsert("bench", [Record(id=f"r{i}", vector=data["vectors"][i], text="", doc_id=f"d{i // 10}",
                                      metadata=metadata(data, i)) for i in range(lo, min(n, lo + batch))])
    store.optimize("bench")
    return time.perf_counter() - start


def pct(times: list[float], q: float) -> float:
    return round(float(np.percentile(np.array(times) * 1000, q)), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--out", default="bench/out/filters.json")
    args = parser.parse_args()

    from stackwise.adapters.vectors.embedded import EmbeddedStore, filter_columns, to_where

    data = make_data(args.n, args.queries)
    work = Path(tempfile.mkdtemp(prefix="stackwise-bench-filters-"))
    res: dict = {"n": args.n, "queries": args.queries, "dim": DIM, "k": K,
                 "python": platform.python_version(), "load_before": os.getloadavg()}
    try:
        old = EmbeddedStore(str(work / "old"), promote=False)
        new = EmbeddedStore(str(work / "new"))
        res["build_s"] = {"json (old)": round(build(old, data), 1), "promoted (new)": round(build(new, data), 1)}
        res["promoted_columns"] = {k: vars(c) for k, c in filter_columns(new._table("bench")).items()}
        res["indexes"] = [{"name": i.name, "type": i.index_type, "columns": i.columns}
                          for i in new._table("bench").list_indices()]
        rows = []
        for shape, make in SHAPES.items():
            times = {"old": [], "new": []}
            hits_ok = {"old": [], "new": []}
            for store, label in ((old, "old"), (new, "new")):  # warm-up
                for q in range(3):
                    store.query("bench", data["queries"][q], k=K, filter=make(q))
            for q in range(args.queries):
                flt = make(q)
                truth = exact(data, data["queries"][q], mask(data, flt))
                order = ((old, "old"), (new, "new")) if q % 2 == 0 else ((new, "new"), (old, "old"))
                for store, label in order:
                    start = time.perf_counter()
                    hits = store.query("bench", data["queries"][q], k=K, filter=flt)
                    times[label].append(time.perf_counter() - start)
                    found = {int(h.id[1:]) for h in hits}
                    hits_ok[label].append(len(found & truth) / len(truth) if truth else float(not found))
            selectivity = float(mask(data, make(0)).mean())
            row = {
                "filter": shape,
                "example": make(0),
                "selectivity": round(selectivity, 3),
                "old_where": to_where(make(0)),
                "new_where": to_where(make(0), filter_columns(new._table("bench"))),
                "old_p50_ms": pct(times["old"], 50), "old_p99_ms": pct(times["old"], 99),
                "new_p50_ms": pct(times["new"], 50), "new_p99_ms": pct(times["new"], 99),
                "old_recall": round(float(np.mean(hits_ok["old"])), 3),
                "new_recall": round(float(np.mean(hits_ok["new"])), 3),
            }
            row["p50_ratio_old_over_new"] = round(row["old_p50_ms"] / row["new_p50_ms"], 2)
            rows.append(row)
            print(f"{shape:18s} sel {selectivity:5.3f}  old {row['old_p50_ms']:7.1f} / {row['old_p99_ms']:7.1f} ms"
                  f"  new {row['new_p50_ms']:7.1f} / {row['new_p99_ms']:7.1f} ms  x{row['p50_ratio_old_over_new']:5.2f}"
                  f"  recall old {row['old_recall']:.3f} new {row['new_recall']:.3f}", flush=True)
        res["results"] = rows
        res["load_after"] = os.getloadavg()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2, default=str))
    print(f"build s: {res['build_s']}; load {res['load_before']} -> {res['load_after']}; wrote {args.out}")


if __name__ == "__main__":
    main()
