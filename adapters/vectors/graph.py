"""A graph index (HNSW, by usearch) kept beside an embedded LanceDB table, for fast unfiltered search.

LanceDB's own vector indexes answer a query in 5-6 ms at 100k rows on this machine, most of it
the fixed cost of its query path, where an in-process HNSW graph answers in a fraction of a
millisecond (bench/retrieval.py, docs/vector-store.md). So `EmbeddedStore.optimize` also writes,
for the table version it leaves, a folder of plain files beside the table:

    <store>/_stackwise_graphs/<index>/v<version>/
        graph.usearch    HNSW graph over int8-quantized vectors (usearch), memory-mapped by readers
        vectors.npy      the rows' L2-normalized float32 vectors: candidates are re-scored exactly
        keys.npy         each row's key (a 63-bit hash of its id), in the order of the files
        payload.arrow    id, doc_id, source, chunk, text, metadata (Arrow IPC, memory-mapped)
        manifest.json    written last: a folder without it is ignored

A reader uses the folder only when its version is the table's latest version, so a write that
has not been optimized yet (or a restore) falls back to LanceDB's path, which sees every row: a
graph never answers for data it does not cover. Filtered queries always take LanceDB's path
(prefilter on the promoted columns' scalar indexes).

The graph is updated incrementally: `build` loads the previous version's graph and vectors,
removes the keys whose rows are gone or changed and adds the new and changed rows, and rebuilds
from scratch when removed entries exceed REBUILD_REMOVED of the live ones (or the parameters
changed). Local folders are written under a temporary name and renamed into place; on object
stores the files are uploaded before the manifest, and readers copy a version's folder into
the local cache once (STACKWISE_CACHE, default ~/.cache/stackwise).

Over ~400 lines on purpose: it stays whole because it is the one place that writes and reads the
folder format above: the build, the loader and the search share its files and manifest, and
splitting them would put one format's two halves in different files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from stackwise.userinput import cache_dir

log = logging.getLogger(__name__)

GRAPH_FOLDER = "_stackwise_graphs"
FORMAT = 1
# HNSW parameters, chosen by bench/retrieval.py at 100k and 1M (docs/vector-store.md).
CONNECTIVITY = 16
EXPANSION_ADD = 128
SCALAR = "i8"
# The search expansion (ef) is tuned per build: the smallest of these whose recall@10 against
# exact search, measured on TUNE_QUERIES query-like vectors, reaches TUNE_RECALL (the largest when
# none does). A graph's recall at a fixed ef falls as it grows: on bench/retrieval.py's
# embedding-like vectors ef 128 gives 0.97-0.98 at 100k rows and 0.74 at 1M, where the tuning
# queries below measured 0.73 / 0.78 / 0.89 / 0.97 / 0.98 / 0.997 at ef 128 to 2048 and the
# benchmark's held-out queries found 0.76 / - / 0.89 / 0.95 / 0.96 / 0.98: the tuning ships 1536
# at 1M (3.6 ms p50 through `search`, docs/vector-store.md).
# Query-like: a query is not a copy of a stored chunk. Each tuning query is a stored vector turned
# away from itself to cosine TUNE_COSINE (a question and its best passage under sentence embedders
# are typically 0.3-0.7 apart; the benchmark's held-out queries are 0.47 from their nearest row).
# Stored vectors themselves as queries land inside their cluster and overstate recall: at 1M they
# measured 0.98 at ef 128, where held-out queries found 0.74.
EXPANSIONS = (128, 256, 512, 1024, 1536, 2048)
EXPANSION_SEARCH = EXPANSIONS[0]
TUNE_QUERIES = 64
TUNE_RECALL = 0.97
TUNE_COSINE = 0.5
TUNE_MIN_ROWS = 2000
# Candidates taken from the graph per result, re-scored exactly with the float32 vectors.
CANDIDATES_PER_HIT = 4
MIN_CANDIDATES = 40
# Up to this many rows a query scans the float32 vectors exactly (about as fast as the graph).
EXACT_ROWS = 5000
# Rebuild from scratch once this share of the graph's entries has been removed.
REBUILD_REMOVED = 0.25
PAYLOAD_COLUMNS = ["id", "doc_id", "source", "chunk", "text", "metadata"]
_FILES = ("graph.usearch", "vectors.npy", "keys.npy", "payload.arrow")


def enabled() -> bool:
    """False when STACKWISE_GRAPH_INDEX=0: no graph is built or read (LanceDB's path only)."""
    return os.environ.get("STACKWISE_GRAPH_INDEX", "1").strip().lower() not in ("0", "false", "no", "off")


def keys_for(ids) -> np.ndarray:
    """A stable 63-bit key per id (blake2b), the same in every version and process."""
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "little") >> 1 for i in ids),
        dtype=np.uint64,
        count=len(ids),
    )


def _normalized(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unit vectors, mask of rows with a non-zero norm): cosine never matches a zero vector."""
    norms = np.linalg.norm(vectors, axis=1)
    ok = norms > 0
    out = np.zeros_like(vectors, dtype=np.float32)
    out[ok] = vectors[ok] / norms[ok, None]
    return out, ok


def _threads() -> int:
    from stackwise.userinput import env_threads

    return env_threads() or os.cpu_count() or 1


def _tune(index, keys: np.ndarray, vectors: np.ndarray, live: np.ndarray) -> tuple[int, float | None]:
    """(the search expansion to ship, the recall@10 it measured): see EXPANSIONS. Results are
    re-scored exactly as `Graph.search` does. Small tables keep the first expansion unmeasured."""
    rows = np.flatnonzero(live)
    if len(rows) < TUNE_MIN_ROWS:
        return EXPANSIONS[0], None
    rng = np.random.default_rng(0)
    sample = rng.choice(rows, TUNE_QUERIES, replace=False)
    origin = vectors[sample]
    away = rng.standard_normal(origin.shape).astype(np.float32)
    away -= np.sum(away * origin, axis=1, keepdims=True) * origin  # orthogonal to its origin
    away /= np.linalg.norm(away, axis=1, keepdims=True)
    queries = (TUNE_COSINE * origin + np.sqrt(1 - TUNE_COSINE**2) * away).astype(np.float32)
    truth = []
    for lo in range(0, len(sample), 16):  # 16 x rows scores at a time
        scores = queries[lo:lo + 16] @ vectors.T
        scores[:, ~live] = -np.inf
        top = np.argpartition(-scores, 10, axis=1)[:, :10]
        truth.extend(set(keys[t].tolist()) for t in top)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    wanted = MIN_CANDIDATES
    measured = 0.0
    for expansion in EXPANSIONS:
        index.expansion_search = expansion
        found = index.search(queries, wanted, threads=_threads())
        hits = []
        for i, q in enumerate(queries):
            candidates = np.asarray(found.keys[i][: int(found.counts[i])], dtype=np.uint64)
            at = order[np.searchsorted(sorted_keys, candidates)]
            best = candidates[np.argsort(-(vectors[at] @ q), kind="stable")[:10]]
            hits.append(len(truth[i] & set(best.tolist())) / 10)
        measured = float(np.mean(hits))
        if measured >= TUNE_RECALL:
            return expansion, round(measured, 4)
    return EXPANSIONS[-1], round(measured, 4)


def _one_chunk(payload: pa.Table) -> pa.Table:
    """The payload as one record batch (a take across many chunks costs milliseconds), with
    64-bit string offsets so no column overflows 2 GB; metadata as plain JSON text."""
    large = {pa.string(): pa.large_string(), pa.binary(): pa.large_binary()}
    fields = []
    for field in payload.schema:
        kind = field.type
        if isinstance(kind, pa.BaseExtensionType):
            kind = kind.storage_type
        fields.append(pa.field(field.name, large.get(kind, kind)))
    columns = [
        (column.cast(field.type) if not isinstance(column.type, pa.BaseExtensionType)
         else pa.chunked_array([c.storage for c in column.chunks], type=column.type.storage_type).cast(field.type))
        for column, field in zip(payload.columns, fields)
    ]
    return pa.Table.from_arrays(columns, schema=pa.schema(fields)).combine_chunks()


@dataclass
class Graph:
    """One version's graph and rows, memory-mapped, read-only."""

    version: int
    index: Any
    vectors: np.ndarray
    sorted_keys: np.ndarray
    order: np.ndarray
    payload: pa.Table
    _live: np.ndarray | None = None

    @property
    def live_rows(self) -> np.ndarray:
        """Rows with a non-zero vector (those in the graph), computed once."""
        if self._live is None:
            self._live = np.flatnonzero(np.any(np.asarray(self.vectors) != 0, axis=1))
        return self._live

    def search(self, vector, k: int) -> list[tuple[dict, float]]:
        """The k nearest rows by cosine, as (row, score), best first; scores exact (float32)."""
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        norm = float(np.linalg.norm(query))
        if norm == 0 or k <= 0 or len(self.index) == 0:
            return []
        query = query / norm
        wanted = max(MIN_CANDIDATES, CANDIDATES_PER_HIT * k)
        if len(self.vectors) <= EXACT_ROWS or wanted >= len(self.index):
            # Exact: as fast as the graph on a small table, and every row when k asks for them all.
            rows = self.live_rows
        else:
            if self.index.expansion_search < wanted:  # only ever raised: safe with concurrent searches
                self.index.expansion_search = wanted
            found = self.index.search(query, wanted, threads=1)
            keys = np.asarray(found.keys, dtype=np.uint64)
            rows = self.order[np.searchsorted(self.sorted_keys, keys)]
        scores = self.vectors[rows] @ query
        best = np.argsort(-scores, kind="stable")[:k]
        picked = rows[best]
        data = self.payload.take(pa.array(picked)).to_pylist()
        return [(row, float(score)) for row, score in zip(data, scores[best])]


class GraphStore:
    """The graph folders of one embedded store (a local folder or an object-store URI)."""

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")
        self.remote = "://" in uri and not uri.startswith("file://")
        self._fs = None

    # -- locations ---------------------------------------------------------------------------
    @property
    def fs(self):
        if self._fs is None:
            from fsspec.core import url_to_fs

            # A fresh instance: fsspec's cache would hand back one made for another endpoint or
            # credentials (from the environment, which is not part of its cache key).
            self._fs, _ = url_to_fs(self.uri, skip_instance_cache=True)
        return self._fs

    def folder(self, name: str) -> str:
        base = self.uri.removeprefix("file://")
        return f"{base}/{GRAPH_FOLDER}/{name}"

    def _fresh(self):
        """The filesystem with its listings cache dropped: other processes write graph folders."""
        self.fs.invalidate_cache()
        return self.fs

    def _path(self, url: str) -> str:
        """The filesystem path of a URL under the store (fsspec strips the scheme)."""
        return self.fs._strip_protocol(url) if self.remote else url

    def versions(self, name: str) -> list[int]:
        """Versions with a complete folder (manifest written), oldest first."""
        folder = self.folder(name)
        try:
            if self.remote:
                entries = [p.rsplit("/", 1)[-1] for p in self._fresh().ls(self._path(folder), detail=False)]
            else:
                entries = os.listdir(folder)
        except (FileNotFoundError, NotADirectoryError):
            return []
        found = []
        for entry in entries:
            if entry.startswith("v") and entry[1:].isdigit() and self._exists(f"{folder}/{entry}/manifest.json"):
                found.append(int(entry[1:]))
        return sorted(found)

    def _exists(self, url: str) -> bool:
        return self.fs.exists(self._path(url)) if self.remote else os.path.exists(url)

    def drop(self, name: str) -> None:
        folder = self.folder(name)
        if self.remote:
            if self.fs.exists(self._path(folder)):
                self.fs.rm(self._path(folder), recursive=True)
        else:
            shutil.rmtree(folder, ignore_errors=True)

    # -- reading -----------------------------------------------------------------------------
    def _local_copy(self, name: str, version: int) -> Path | None:
        """A local folder holding the version's files (the store's own folder when local)."""
        url = f"{self.folder(name)}/v{version}"
        if not self.remote:
            return Path(url) if os.path.exists(f"{url}/manifest.json") else None
        digest = hashlib.sha256(self.uri.encode()).hexdigest()[:16]
        local = cache_dir() / "graphs" / digest / name / f"v{version}"
        if (local / "manifest.json").exists():
            return local
        if not self._fresh().exists(self._path(f"{url}/manifest.json")):
            return None
        partial = local.with_name(f"{local.name}.part-{uuid.uuid4().hex[:8]}")
        partial.mkdir(parents=True)
        try:
            for file in (*_FILES, "manifest.json"):
                self.fs.get(self._path(f"{url}/{file}"), str(partial / file))
            try:
                partial.rename(local)
            except OSError:  # another process finished the copy first
                shutil.rmtree(partial, ignore_errors=True)
            for other in local.parent.iterdir():  # older copies of this index: superseded
                if other.name.startswith("v") and other != local and ".part-" not in other.name:
                    shutil.rmtree(other, ignore_errors=True)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        return local

    def load(self, name: str, version: int, table_id: str = "") -> Graph | None:
        """The graph for exactly `version` of the table `table_id`, or None when there is none
        (or it cannot be read)."""
        try:
            folder = self._local_copy(name, version)
            if folder is None:
                return None
            manifest = json.loads((folder / "manifest.json").read_text())
            if (manifest.get("format"), manifest.get("version"), manifest.get("table")) != (FORMAT, version, table_id):
                return None
            from usearch.index import Index

            index = Index.restore(str(folder / "graph.usearch"), view=True)
            if index is not None:
                index.expansion_search = max(int(manifest.get("expansion_search", EXPANSION_SEARCH)), MIN_CANDIDATES)
            keys = np.load(folder / "keys.npy", mmap_mode="r")
            vectors = np.load(folder / "vectors.npy", mmap_mode="r")
            payload = pa.ipc.open_file(pa.memory_map(str(folder / "payload.arrow"))).read_all()
            if index is None or len(keys) != len(vectors) or len(keys) != payload.num_rows:
                return None
            order = np.argsort(keys, kind="stable")
            return Graph(version, index, vectors, np.asarray(keys)[order], order, payload)
        except (OSError, ValueError, RuntimeError, pa.ArrowException, json.JSONDecodeError) as exc:
            log.warning("graph index %s v%s unreadable (%s): LanceDB's path answers", name, version, exc)
            return None

    # -- writing -----------------------------------------------------------------------------
    def build(self, name: str, version: int, rows: pa.Table, table_id: str = "") -> dict:
        """Write the graph folder for `version` from the table's rows (PAYLOAD_COLUMNS + vector),
        updating the newest earlier graph incrementally when it can; then delete older folders.
        Returns what it did (for logs and reports)."""
        from usearch.index import Index

        start = time.perf_counter()
        ids = rows["id"].to_pylist()
        keys = keys_for(ids)
        if len(np.unique(keys)) != len(keys):
            log.warning("graph index %s: two ids share a key; not built (LanceDB's path answers)", name)
            return {"built": False, "reason": "key collision"}
        dim = rows.schema.field("vector").type.list_size
        raw = rows["vector"].combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
        vectors, live = _normalized(np.asarray(raw, dtype=np.float32))
        params = {"connectivity": CONNECTIVITY, "expansion_add": EXPANSION_ADD, "dtype": SCALAR, "dim": dim}

        index, mode, added, removed, carried = None, "full", 0, 0, 0
        previous = [v for v in self.versions(name) if v < version]
        if previous:
            index, mode, added, removed, carried = self._update(name, previous[-1], params, table_id, keys, vectors, live)
        if index is None:
            index = Index(ndim=dim, metric="cos", dtype=SCALAR, connectivity=CONNECTIVITY, expansion_add=EXPANSION_ADD)
            if live.any():
                index.add(keys[live], vectors[live], threads=_threads())
            added, mode = int(live.sum()), "full"
        expansion, measured = _tune(index, keys, vectors, live)
        manifest = {
            "format": FORMAT, "version": version, "table": table_id, "rows": len(keys), "graph_entries": len(index),
            "expansion_search": expansion, "tuned_recall_at_10": measured,
            "removed_since_full_build": carried + removed if mode == "incremental" else 0,
            "params": params, "built_at": time.time(),
        }
        self._write(name, version, index, keys, vectors, _one_chunk(rows.select(PAYLOAD_COLUMNS)), manifest)
        self._prune(name, keep=version)
        seconds = round(time.perf_counter() - start, 3)
        log.info("graph index %s v%s: %s, %d added, %d removed, %.1f s", name, version, mode, added, removed, seconds)
        return {"built": True, "mode": mode, "added": added, "removed": removed, "rows": len(keys),
                "expansion_search": expansion, "tuned_recall_at_10": measured, "seconds": seconds}

    def _update(self, name, old_version, params, table_id, keys, vectors, live):
        """The previous graph with this version's changes applied, or (None, ...) for a full build."""
        from usearch.index import Index

        folder = self._local_copy(name, old_version)
        if folder is None:
            return None, "full", 0, 0, 0
        try:
            manifest = json.loads((folder / "manifest.json").read_text())
            if (manifest.get("format"), manifest.get("params"), manifest.get("table")) != (FORMAT, params, table_id):
                return None, "full", 0, 0, 0
            index = Index.restore(str(folder / "graph.usearch"))  # into memory: it is modified
            old_keys = np.load(folder / "keys.npy")
            old_vectors = np.load(folder / "vectors.npy", mmap_mode="r")
        except (OSError, ValueError, RuntimeError, json.JSONDecodeError):
            return None, "full", 0, 0, 0
        if index is None:
            return None, "full", 0, 0, 0
        carried = int(manifest.get("removed_since_full_build", 0))
        new_live = keys[live]
        common, old_at, new_at = np.intersect1d(old_keys, keys, assume_unique=True, return_indices=True)
        changed = common[np.any(np.asarray(old_vectors[old_at]) != vectors[new_at], axis=1)]
        gone = np.setdiff1d(old_keys, new_live, assume_unique=True)
        doomed = np.union1d(gone, changed)
        doomed = doomed[index.contains(doomed)] if len(doomed) else doomed
        if carried + len(doomed) > REBUILD_REMOVED * max(len(new_live), 1):
            return None, "full", 0, 0, 0
        if len(doomed):
            index.remove(doomed)
        fresh = np.setdiff1d(new_live, old_keys, assume_unique=True)
        adding = np.union1d(fresh, np.intersect1d(changed, new_live, assume_unique=True))
        if len(adding):
            order = np.argsort(keys, kind="stable")
            index.add(adding, vectors[order[np.searchsorted(keys[order], adding)]], threads=_threads())
        return index, "incremental", int(len(adding)), int(len(doomed)), carried

    def _write(self, name, version, index, keys, vectors, payload: pa.Table, manifest: dict) -> None:
        folder = self.folder(name)
        final = f"{folder}/v{version}"
        if self.remote:
            staging = cache_dir() / "graphs-staging" / uuid.uuid4().hex
        else:
            os.makedirs(folder, exist_ok=True)
            staging = Path(f"{folder}/.v{version}.tmp-{uuid.uuid4().hex[:8]}")
        staging.mkdir(parents=True)
        try:
            index.save(str(staging / "graph.usearch"))
            np.save(staging / "vectors.npy", vectors)
            np.save(staging / "keys.npy", keys)
            with pa.OSFile(str(staging / "payload.arrow"), "wb") as sink:
                with pa.ipc.new_file(sink, payload.schema) as writer:
                    writer.write_table(payload)
            (staging / "manifest.json").write_text(json.dumps(manifest, sort_keys=True))
            if self.remote:
                target = self._path(final)
                for file in _FILES:  # the manifest last: readers ignore a folder without it
                    self.fs.put(str(staging / file), f"{target}/{file}")
                self.fs.put(str(staging / "manifest.json"), f"{target}/manifest.json")
            else:
                if os.path.exists(final):
                    shutil.rmtree(final)
                os.rename(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _prune(self, name: str, keep: int) -> None:
        """Delete the folders of versions older than `keep` and their staging leftovers (readers
        that mapped an old version's files keep them until they close; a new reader finds the
        latest). Newer versions stay: on an object store another worker may be writing one."""
        folder = self.folder(name)
        try:
            entries = ([p.rsplit("/", 1)[-1] for p in self._fresh().ls(self._path(folder), detail=False)]
                       if self.remote else os.listdir(folder))
        except FileNotFoundError:
            return
        for entry in entries:
            digits = entry.lstrip(".v").split(".", 1)[0]
            if not digits.isdigit() or int(digits) >= keep:
                continue
            if self.remote:
                self.fs.rm(self._path(f"{folder}/{entry}"), recursive=True)
            else:
                shutil.rmtree(f"{folder}/{entry}", ignore_errors=True)
