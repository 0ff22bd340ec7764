"""The embedded vector store: LanceDB tables on local disk or on the stack's object store.

Chosen by measurement (docs/vector-store.md): persistent columnar files that several processes
can read, upsert and delete by id, SQL prefilters on metadata, ANN indexes (IVF_PQ) for large
tables, and the same files readable from s3://, gs:// or az:// (and by LanceDB's distributed
deployments), so an index built here can move to the cloud without re-embedding.

One table per index. Metadata is stored as a JSON column and filtered with Lance's JSON
functions. Each write is one Lance commit, so a crash leaves the table at the previous or the
next version, never in between.
"""

from __future__ import annotations

import json
import math
from datetime import timedelta
from collections.abc import Sequence
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa

from stackwise.errors import StoreError
from stackwise.vectors import Filter, Hit, IndexInfo, Record, VectorStore, check_dimensions, check_filter, check_same_model

# Below this many rows an exact (flat) scan is fast enough and needs no index build.
ANN_THRESHOLD = 50_000
# IVF_SQ, probing 40 partitions and re-ranking 10x candidates exactly: recall@10 0.97 at 100k
# embedding-like vectors, where IVF_PQ with 20 probes gave 0.80 (docs/vector-store.md).
NPROBES = 40
REFINE_FACTOR = 10
# Retrain the partitions once the table has grown this much since they were trained.
RETRAIN_GROWTH = 2.0
# Old versions kept by `optimize` for readers still on them; older ones are deleted.
KEEP_VERSIONS = timedelta(hours=1)
_INDEX_PREFIX = "vector_ivfsq_n"
_MODEL_KEY = b"stackwise.model"
_DIM_KEY = b"stackwise.dim"
_COLUMNS = ["id", "doc_id", "source", "chunk", "text", "metadata"]


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return _quote(str(value))


def _metadata_equals(key: str, value: Any) -> str:
    """`metadata[key]` equals `value`, or is a list containing it (list metadata from JSONL).

    Compares JSON forms, as stored: 3 and 3.0 are different values, as in JSON Schema's `const`.
    """
    path = _quote(f'$["{key}"]')
    as_json = _quote(json.dumps(value, ensure_ascii=False))
    return f"(json_extract(metadata, {path}) = {as_json} OR json_array_contains(metadata, {path}, {_literal(value)}))"


def to_where(filter: Filter | None) -> str | None:
    """Translate a portable filter into a Lance SQL predicate (pure; tested on its own)."""
    checked = check_filter(filter)
    clauses = []
    for key, value in checked.items():
        values = value if isinstance(value, list) else [value]
        if key in ("doc_id", "source"):
            if len(values) == 1:
                clauses.append(f"{key} = {_literal(values[0])}")
            else:
                clauses.append(f"{key} IN ({', '.join(_literal(v) for v in values)})")
            continue
        terms = [_metadata_equals(key, v) for v in values]
        clauses.append(terms[0] if len(terms) == 1 else "(" + " OR ".join(terms) + ")")
    return " AND ".join(clauses) or None


def _in_list(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(_quote(v) for v in values)})"


class EmbeddedStore(VectorStore):
    """LanceDB-backed store rooted at a folder or object-store URI."""

    def __init__(self, uri: str):
        self.uri = uri
        self._db = lancedb.connect(uri)

    # -- indexes -----------------------------------------------------------------------------
    def list_indexes(self) -> list[str]:
        return sorted(self._db.list_tables().tables)

    def _schema(self, dim: int, model: str) -> pa.Schema:
        return pa.schema(
            [
                pa.field("id", pa.string(), nullable=False),
                pa.field("doc_id", pa.string()),
                pa.field("source", pa.string()),
                pa.field("chunk", pa.int32()),
                pa.field("text", pa.string()),
                pa.field("metadata", pa.json_(pa.utf8())),
                pa.field("vector", pa.list_(pa.float32(), dim)),
            ],
            metadata={_MODEL_KEY: model.encode(), _DIM_KEY: str(dim).encode()},
        )

    def _table(self, name: str):
        try:
            return self._db.open_table(name)
        except (ValueError, FileNotFoundError):
            raise StoreError(
                f"index {name!r} does not exist",
                where=f"embedded store at {self.uri}",
                fix=f"create it with `stackwise index SOURCE --index {name}`; existing: "
                + (", ".join(self.list_indexes()) or "none"),
            ) from None

    def create_index(self, name: str, dim: int, model: str) -> IndexInfo:
        if name in self.list_indexes():
            info = self.describe(name)
            check_same_model(info, dim, model, where=f"embedded store at {self.uri}")
            return info
        try:
            self._db.create_table(name, schema=self._schema(dim, model))
        except ValueError:
            # Another process created it first; validate what it created.
            return self.create_index(name, dim, model)
        return IndexInfo(name=name, dim=dim, model=model, count=0)

    def describe(self, name: str) -> IndexInfo:
        table = self._table(name)
        meta = table.schema.metadata or {}
        return IndexInfo(
            name=name,
            dim=int(meta.get(_DIM_KEY, b"0")),
            model=meta.get(_MODEL_KEY, b"").decode(),
            count=table.count_rows(),
        )

    def drop_index(self, name: str) -> None:
        if name in self.list_indexes():
            self._db.drop_table(name)

    # -- writes ------------------------------------------------------------------------------
    def _arrow(self, table, records: Sequence[Record]) -> pa.Table:
        meta = table.schema.metadata or {}
        dim = int(meta.get(_DIM_KEY, b"0"))
        # Build with our own schema: the table reports its JSON column as Lance's binary
        # JSONB, and text written into that would not be parsed as JSON.
        schema = self._schema(dim, meta.get(_MODEL_KEY, b"").decode())
        check_dimensions(records, dim, where=f"index {table.name!r} in {self.uri}")
        return pa.Table.from_pydict(
            {
                "id": [r.id for r in records],
                "doc_id": [r.doc_id for r in records],
                "source": [r.source for r in records],
                "chunk": [r.chunk for r in records],
                "text": [r.text for r in records],
                "metadata": [json.dumps(dict(r.metadata), sort_keys=True) for r in records],
                "vector": pa.FixedSizeListArray.from_arrays(
                    pa.array(np.asarray([r.vector for r in records], dtype=np.float32).reshape(-1)), dim
                ),
            },
            schema=schema,
        )

    def upsert(self, name: str, records: Sequence[Record]) -> None:
        if not records:
            return
        table = self._table(name)
        data = self._arrow(table, records)
        table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(data)

    def replace_documents(self, name: str, doc_ids: Sequence[str], records: Sequence[Record]) -> None:
        """One Lance commit: upsert `records` and delete every other chunk of `doc_ids`."""
        table = self._table(name)
        if not doc_ids:
            return self.upsert(name, records)
        scope = _in_list("doc_id", sorted(set(doc_ids)))
        if not records:
            table.delete(scope)
            return None
        data = self._arrow(table, records)
        (
            table.merge_insert("id")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .when_not_matched_by_source_delete(scope)
            .execute(data)
        )
        return None

    def delete(self, name: str, ids: Sequence[str] = (), doc_ids: Sequence[str] = ()) -> int:
        table = self._table(name)
        clauses = []
        if ids:
            clauses.append(_in_list("id", list(ids)))
        if doc_ids:
            clauses.append(_in_list("doc_id", list(doc_ids)))
        if not clauses:
            return 0
        where = " OR ".join(clauses)
        doomed = table.count_rows(where)
        if doomed:
            table.delete(where)
        return doomed

    # -- reads -------------------------------------------------------------------------------
    def query(self, name: str, vector: Sequence[float], k: int = 10, filter: Filter | None = None) -> list[Hit]:
        table = self._table(name)
        where = to_where(filter)
        search = table.search(list(map(float, vector)), vector_column_name="vector").distance_type("cosine")
        if self._has_ann(table):
            search = search.nprobes(NPROBES).refine_factor(REFINE_FACTOR)
        if where:
            search = search.where(where, prefilter=True)
        rows = search.select([*_COLUMNS, "_distance"]).limit(k).to_arrow().to_pylist()
        return [
            Hit(
                id=row["id"],
                score=1.0 - float(row["_distance"]),
                text=row["text"],
                doc_id=row["doc_id"],
                source=row["source"],
                chunk=row["chunk"],
                metadata=json.loads(row["metadata"] or "{}"),
            )
            for row in rows
            if not math.isnan(row["_distance"])
        ]

    def count(self, name: str, filter: Filter | None = None) -> int:
        return self._table(name).count_rows(to_where(filter))

    def _scan(self, table, columns: list[str], where: str | None) -> pa.Table:
        query = table.search().select(columns)
        if where:
            query = query.where(where)
        return query.limit(max(table.count_rows(), 1)).to_arrow()

    def fetch(self, name: str, ids: Sequence[str]) -> list[Record]:
        if not ids:
            return []
        table = self._table(name)
        rows = self._scan(table, [*_COLUMNS, "vector"], _in_list("id", list(ids))).to_pylist()
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
        where = f"source = {_quote(source)}" if source is not None else None
        data = self._scan(table, ["id", "doc_id"], where)
        result: dict[str, set[str]] = {}
        for chunk_id, doc_id in zip(data["id"].to_pylist(), data["doc_id"].to_pylist()):
            result.setdefault(doc_id, set()).add(chunk_id)
        return result

    # -- maintenance -------------------------------------------------------------------------
    @staticmethod
    def _vector_index(table) -> str | None:
        """The name of the table's vector index, if it has one."""
        for index in table.list_indices():
            if "vector" in (index.columns or []):
                return index.name
        return None

    @classmethod
    def _has_ann(cls, table) -> bool:
        return cls._vector_index(table) is not None

    def optimize(self, name: str) -> None:
        """Compact small commits, fold new rows into the vector index, drop versions older than
        KEEP_VERSIONS; build an IVF_SQ index once the table reaches ANN_THRESHOLD rows, and
        retrain it when the table has grown RETRAIN_GROWTH times since it was trained."""
        from lancedb.index import IvfSq

        table = self._table(name)
        rows = table.count_rows()
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
