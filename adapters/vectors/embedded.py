"""The embedded vector store: LanceDB tables on local disk or on the stack's object store.

Chosen by measurement (docs/vector-store.md): persistent columnar files that several processes
can read, upsert and delete by id, SQL prefilters on metadata, ANN indexes (IVF_PQ) for large
tables, and the same files readable from s3://, gs:// or az:// (and by LanceDB's distributed
deployments), so an index built here can move to the cloud without re-embedding.

One table per index: its layout (metadata as JSON, and scalar keys promoted to typed columns
that filters compare) and the functions on a table are in embedded_table.py.

Unfiltered queries of an optimized table are answered by a graph index (HNSW, usearch) that
`optimize` writes beside the table for the version it leaves (adapters/vectors/graph.py): 0.8 ms
at 100k rows and 2.4 ms at 1M where LanceDB's own path takes 13 and 31 ms (bench/retrieval.py). It is
used only while it was built for exactly the table's latest version and this table (a random id
stamped at creation); any later write, a restore, or a missing or damaged graph sends queries
back to LanceDB's path until the next `optimize`. Filtered queries always take LanceDB's path.

Each write is one Lance commit, so a crash leaves the table at the previous or the next
version, never in between.

A damaged table is detected and restored as embedded_damage.py describes.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from collections.abc import Sequence

import lancedb

from stackwise.adapters.vectors import graph as graphs
from stackwise.errors import StoreError
from stackwise.adapters.vectors.embedded_filters import sql_quote, to_lance
from stackwise.filters import parse_filter
from stackwise.vectors import Filter, Hit, IndexInfo, Record, VectorStore, check_same_model

from .embedded_damage import Integrity
from .embedded_table import (
    COLUMNS,
    DIM_KEY,
    MODEL_KEY,
    TABLE_ID_KEY,
    add_promoted,
    column_name,
    filter_columns,
    in_list,
    index_promoted,
    manifest_identity,
    mark_impure,
    migrate,
    promotable,
    promoted_columns,
    scan,
    schema_for,
    to_arrow,
    to_hit,
    to_where,
    vector_index,
)

# Re-exported: the names tests, benchmarks and callers import from this module.
__all__ = ["ANN_THRESHOLD", "EmbeddedStore", "column_name", "filter_columns", "promotable", "to_where"]

# Below this many rows an exact (flat) scan is fast enough and needs no index build.
#: Runs of `optimize` after a commit lost to a concurrent one (another shard of the same job).
COMMIT_RETRIES = 5
ANN_THRESHOLD = 50_000
# IVF_SQ, probing 40 partitions and re-ranking 10x candidates exactly: recall@10 0.97 at 100k
# embedding-like vectors, where IVF_PQ with 20 probes gave 0.80 (docs/vector-store.md).
NPROBES = 40
REFINE_FACTOR = 10
# Retrain the partitions once the table has grown this much since they were trained.
RETRAIN_GROWTH = 2.0
# Old versions kept by `optimize` for readers still on them; older ones are deleted.
KEEP_VERSIONS = timedelta(hours=1)
# A version found without a graph is looked at again after this long (a writer in another
# process may be building it for that very version).
GRAPH_RECHECK_S = 2.0
_INDEX_PREFIX = "vector_ivfsq_n"


@dataclass
class _Current:
    """A table version as `EmbeddedStore._current` found it: what identifies it, its model and
    its graph index (None: none was built for it, looked at again after GRAPH_RECHECK_S)."""

    key: tuple
    version: int
    model: str
    graph: graphs.Graph | None
    checked: float

    def fresh(self) -> bool:
        return self.graph is not None or time.monotonic() - self.checked < GRAPH_RECHECK_S


class EmbeddedStore(VectorStore):
    """LanceDB-backed store rooted at a folder or object-store URI."""

    def __init__(self, uri: str, *, promote: bool = True):
        """`promote=False` writes and migrates no promoted columns: tables look as they did
        before promotion existed (the old path, kept for comparison in bench/filters.py)."""
        self.uri = uri
        self.promote = promote
        self._connection = None
        # Which table versions this store found (or made) intact: each version is probed once.
        self._integrity = Integrity(uri)
        # The graph index beside each table (adapters/vectors/graph.py), loaded once per version.
        self._graph_store = graphs.GraphStore(uri)
        self._state: dict[str, _Current] = {}

    # -- indexes -----------------------------------------------------------------------------
    def list_indexes(self) -> list[str]:
        if self._connection is None and self._missing_folder():
            return []
        return sorted(self._db.list_tables().tables)

    def _missing_folder(self) -> bool:
        """A local store whose folder does not exist yet: reads find nothing and create nothing."""
        import os

        path = self.uri.removeprefix("file://")
        return ("://" not in path) and not os.path.exists(path)

    @property
    def _db(self):
        # Connected on first use: connecting creates the folder, which only a write should do.
        if self._connection is None:
            self._connection = lancedb.connect(self.uri)
        return self._connection

    def _table(self, name: str, check: bool = True):
        """The index's table at its latest version; with `check`, StoreError if that version is damaged."""
        try:
            if self._connection is None and self._missing_folder():
                raise FileNotFoundError(name)
            table = self._db.open_table(name)
        except (ValueError, FileNotFoundError):
            raise StoreError(
                f"index {name!r} does not exist",
                where=f"embedded store at {self.uri}",
                fix=f"create it with `stackwise index SOURCE --index {name}`; existing: "
                + (", ".join(self.list_indexes()) or "none"),
            ) from None
        if check:
            self._integrity.check(name, table)
        return table

    def recover(self, name: str) -> int | None:
        """Restore a damaged index's last good version (Lance `restore`: a new version equal to it)
        and return it; None when it is intact. StoreError when no version is intact."""
        return self._integrity.restore(name, self._table(name, check=False))

    def create_index(self, name: str, dim: int, model: str) -> IndexInfo:
        # The name rule is checked first by the VectorStore base class (`check_index_name`).
        for attempt in range(2):
            if name in self.list_indexes():
                info = self.describe(name)
                check_same_model(info, dim, model, where=f"embedded store at {self.uri}")
                return info
            if attempt:
                break
            try:
                self._db.create_table(name, schema=schema_for(dim, model, uuid.uuid4().hex.encode()))
                return IndexInfo(name=name, dim=dim, model=model, count=0)
            except ValueError:
                continue  # another process created it first: validate what it created
        raise StoreError(
            f"LanceDB refused to create index {name!r}",
            where=f"embedded store at {self.uri}",
            fix="check that the store's folder is writable and the name follows the index name rule",
        )

    def describe(self, name: str) -> IndexInfo:
        table = self._table(name)
        meta = table.schema.metadata or {}
        return IndexInfo(
            name=name,
            dim=int(meta.get(DIM_KEY, b"0")),
            model=meta.get(MODEL_KEY, b"").decode(),
            count=table.count_rows(),
        )

    def drop_index(self, name: str) -> None:
        """Remove the table and all its versions (a damaged one too)."""
        self._integrity.forget(name)
        self._state.pop(name, None)
        if name in self.list_indexes():
            self._db.drop_table(name)
        self._graph_store.drop(name)

    # -- writes ------------------------------------------------------------------------------
    def _writable(self, name: str, records: Sequence[Record]):
        """The table, ready for `records`: promoted columns created on the first write into an
        empty index, and marked impure where a record holds a value that does not fit them."""
        table = self._table(name)
        if self.promote and add_promoted(table, records):
            table = self._table(name)
        mark_impure(table, records)
        return table

    def upsert(self, name: str, records: Sequence[Record]) -> None:
        if not records:
            return
        table = self._writable(name, records)
        data = to_arrow(table, records, self.uri)
        table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(data)
        self._integrity.wrote(name, table)

    def replace_documents(self, name: str, doc_ids: Sequence[str], records: Sequence[Record]) -> None:
        """One Lance commit: upsert `records` and delete every other chunk of `doc_ids`."""
        table = self._table(name)
        if not doc_ids:
            return self.upsert(name, records)
        scope = in_list("doc_id", sorted(set(doc_ids)))
        if not records:
            table.delete(scope)
            self._integrity.wrote(name, table)
            return None
        table = self._writable(name, records)
        data = to_arrow(table, records, self.uri)
        (
            table.merge_insert("id")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .when_not_matched_by_source_delete(scope)
            .execute(data)
        )
        self._integrity.wrote(name, table)
        return None

    def delete(self, name: str, ids: Sequence[str] = (), doc_ids: Sequence[str] = ()) -> int:
        table = self._table(name)
        clauses = []
        if ids:
            clauses.append(in_list("id", list(ids)))
        if doc_ids:
            clauses.append(in_list("doc_id", list(doc_ids)))
        if not clauses:
            return 0
        where = " OR ".join(clauses)
        doomed = self._integrity.reading(name, table, lambda: table.count_rows(where))
        if doomed:
            table.delete(where)
            self._integrity.wrote(name, table)
        return doomed

    # -- reads -------------------------------------------------------------------------------
    def _current(self, name: str) -> "_Current":
        """The table's latest version with what queries of it reuse (model, graph index). On a
        local store a query that finds the same manifest as the last one reuses it all without
        opening the table; otherwise the table is opened (and probed, `_table`)."""
        identity = None if self._graph_store.remote else manifest_identity(self.uri, name)
        cached = self._state.get(name)
        if identity is not None and cached is not None and cached.key == identity and cached.fresh():
            return cached
        table = self._table(name)
        version = table.version
        meta = table.schema.metadata or {}
        table_id = meta.get(TABLE_ID_KEY, b"").decode()
        key: tuple = identity if identity is not None and identity[0] == version else ("opened", version, table_id)
        if cached is not None and cached.key == key and cached.fresh():
            return cached
        graph = self._graph_store.load(name, version, table_id) if graphs.enabled() else None
        state = self._state[name] = _Current(key, version, meta.get(MODEL_KEY, b"").decode(), graph, time.monotonic())
        return state

    def model_of(self, name: str) -> str:
        return self._current(name).model

    def _graph_query(self, name: str, vector: Sequence[float], k: int) -> list[Hit] | None:
        """Hits from the graph index when one was built for exactly this table at its latest
        version, else None: LanceDB's path answers."""
        graph = self._current(name).graph
        if graph is None or len(vector) != graph.vectors.shape[1]:
            return None
        return [to_hit(row, score) for row, score in graph.search(vector, k)]

    def query(self, name: str, vector: Sequence[float], k: int = 10, filter: Filter | None = None) -> list[Hit]:
        expr = parse_filter(filter)
        if expr is None and graphs.enabled():
            hits = self._graph_query(name, vector, k)
            if hits is not None:
                return hits
        table = self._table(name)
        where = to_lance(expr, filter_columns(table))
        search = table.search(list(map(float, vector)), vector_column_name="vector").distance_type("cosine")
        if self._has_ann(table):
            search = search.nprobes(NPROBES).refine_factor(REFINE_FACTOR)
        if where:
            search = search.where(where, prefilter=True)
        rows = self._integrity.reading(
            name, table, lambda: search.select([*COLUMNS, "_distance"]).limit(k).to_arrow().to_pylist())
        return [to_hit(row, 1.0 - float(row["_distance"])) for row in rows if not math.isnan(row["_distance"])]

    def count(self, name: str, filter: Filter | None = None) -> int:
        expr = parse_filter(filter)
        table = self._table(name)
        return self._integrity.reading(name, table, lambda: table.count_rows(to_lance(expr, filter_columns(table))))

    def fetch(self, name: str, ids: Sequence[str]) -> list[Record]:
        if not ids:
            return []
        table = self._table(name)
        rows = self._integrity.reading(
            name, table, lambda: scan(table, [*COLUMNS, "vector"], in_list("id", list(ids)))).to_pylist()
        return [
            Record(
                id=r["id"],
                vector=r["vector"],
                text=r["text"],
                doc_id=r["doc_id"],
                source=r["source"],
                chunk=r["chunk"],
                metadata=json.loads(r["metadata"] or "{}"),
            )
            for r in rows
        ]

    def chunk_ids(self, name: str, source: str | None = None) -> dict[str, set[str]]:
        table = self._table(name)
        where = f"source = {sql_quote(source)}" if source is not None else None
        data = self._integrity.reading(name, table, lambda: scan(table, ["id", "doc_id"], where))
        result: dict[str, set[str]] = {}
        for chunk_id, doc_id in zip(data["id"].to_pylist(), data["doc_id"].to_pylist()):
            result.setdefault(doc_id, set()).add(chunk_id)
        return result

    # -- maintenance -------------------------------------------------------------------------
    _vector_index = staticmethod(vector_index)  # the name of the table's vector index, if it has one

    @classmethod
    def _has_ann(cls, table) -> bool:
        return cls._vector_index(table) is not None

    def needs_optimize(self, name: str) -> bool:
        """True when `optimize` left indexing undone: a promoted metadata column without its scalar
        index, an index missing rows, or no vector index from ANN_THRESHOLD rows (a run killed
        before or inside `optimize` leaves one of these). Small commits left uncompacted are not
        counted: Lance keeps some small fragments after a clean compaction too (next to an index's
        coverage), so they are compacted by the next run that writes. A table version without
        its graph index counts too (an index written before graphs existed is migrated so)."""
        table = self._table(name)
        rows = table.count_rows()
        if rows == 0:
            return False
        indices = table.list_indices()
        if any(getattr(index, "num_unindexed_rows", 0) for index in indices):
            return True
        indexed = {c for index in indices for c in (index.columns or [])}
        if self.promote and any(column not in indexed for column, _, _ in promoted_columns(table).values()):
            return True
        if rows >= ANN_THRESHOLD and self._vector_index(table) is None:
            return True
        return graphs.enabled() and table.version not in self._graph_store.versions(name)

    def optimize(self, name: str) -> None:
        """Promote metadata columns of an older index (once), give promoted columns a scalar
        index, compact small commits, fold new rows into the indexes, drop versions older than
        KEEP_VERSIONS; build an IVF_SQ index once the table reaches ANN_THRESHOLD rows, and
        retrain it when the table has grown RETRAIN_GROWTH times since it was trained; last,
        write the graph index for the version this leaves (`build_graph`).

        The shards of an index job optimize the same table at once: a commit that loses to another
        shard's (Lance's "Retryable commit conflict") makes the whole step run again on the table's
        new version, which finds done what the other shard did (every step checks first)."""
        import random
        import time

        for attempt in range(1, COMMIT_RETRIES + 1):
            try:
                return self._optimize_once(name)
            except RuntimeError as exc:  # Lance names no exception type: its message says retryable
                if "Retryable commit conflict" not in str(exc) or attempt == COMMIT_RETRIES:
                    raise
                time.sleep(random.uniform(0.05, 0.25) * attempt)

    def _optimize_once(self, name: str) -> None:
        from lancedb.index import IvfSq

        table = self._table(name)
        rows = table.count_rows()
        if self.promote and rows:
            if migrate(table):
                table = self._table(name)
            index_promoted(table)
        current = self._vector_index(table)
        trained = int(current.removeprefix(_INDEX_PREFIX)) if current and current.startswith(_INDEX_PREFIX) else 0
        if rows >= ANN_THRESHOLD and (current is None or rows >= RETRAIN_GROWTH * max(trained, 1)):
            if current is not None:
                table.drop_index(current)
            table.create_index(
                "vector",
                config=IvfSq(distance_type="cosine", num_partitions=max(16, int(math.sqrt(rows)))),
                name=f"{_INDEX_PREFIX}{rows}",
            )
        table.optimize(cleanup_older_than=KEEP_VERSIONS)
        if graphs.enabled():
            self.build_graph(name)

    def build_graph(self, name: str) -> dict:
        """Write the graph index for the table's current version (adapters/vectors/graph.py):
        an incremental update of the previous one when there is one."""
        table = self._table(name)
        if table.count_rows() == 0:
            self._graph_store.drop(name)
            return {"built": False, "reason": "empty"}
        rows = self._integrity.reading(name, table, lambda: scan(table, [*graphs.PAYLOAD_COLUMNS, "vector"], None))
        self._state.pop(name, None)
        table_id = (table.schema.metadata or {}).get(TABLE_ID_KEY, b"").decode()
        return self._graph_store.build(name, table.version, rows, table_id)
