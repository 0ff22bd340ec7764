"""The embedded vector store: LanceDB tables on local disk or on the stack's object store.

Chosen by measurement (docs/vector-store.md): persistent columnar files that several processes
can read, upsert and delete by id, SQL prefilters on metadata, ANN indexes (IVF_PQ) for large
tables, and the same files readable from s3://, gs:// or az:// (and by LanceDB's distributed
deployments), so an index built here can move to the cloud without re-embedding.

One table per index. Metadata is stored whole as a JSON column (what reads return). Scalar
metadata keys are also kept as typed columns of their own ("promoted": `meta_<key>`), so the
portable filter (`embedded_filters.to_lance`) compares plain columns, with a BITMAP or BTREE
scalar index after `optimize`, instead of parsing JSON per row: filtered queries at 100k rows
7x (equality) to 68x (a 9-value `$in`) faster, measured by bench/filters.py. Which keys: those of the first batch written into an
empty index whose values all have one type (string, integer, float or boolean); an index
written before promotion existed gets its columns from `optimize` (a one-time migration). A
column stays authoritative while every stored value of its key fits it; once a list or another
type is written for the key it is marked impure and filters on that key go back to the JSON
column. Readers that know nothing of promotion still read every record unchanged.

Unfiltered queries of an optimized table are answered by a graph index (HNSW, usearch) that
`optimize` writes beside the table for the version it leaves (adapters/vectors/graph.py): 0.8 ms
at 100k rows and 2.4 ms at 1M where LanceDB's own path takes 13 and 31 ms (bench/retrieval.py). It is
used only while it was built for exactly the table's latest version and this table (a random id
stamped at creation); any later write, a restore, or a missing or damaged graph sends queries
back to LanceDB's path until the next `optimize`. Filtered queries always take LanceDB's path.

Each write is one Lance commit, so a crash leaves the table at the previous or the next
version, never in between.

A data file deleted or corrupted under the store (a disk fault, a stray `rm`) is detected the
first time a process opens that version of the table (a scan of the id and promoted columns,
which opens every data file), and by any read that then fails in Lance: a StoreError names the
index, the damage, the last good version (Lance keeps versions: `checkout`) and the fix.
`recover` restores the last good version (Lance's `restore`: a new version equal to it); the
index workload calls it before indexing, so `stackwise index` heals a damaged index.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa

from stackwise.adapters.vectors import graph as graphs
from stackwise.errors import StoreError
from stackwise.adapters.vectors.embedded_filters import LanceColumn, sql_quote, to_lance
from stackwise.filters import COLUMN_KEYS, KEY_PATTERN, NOT_FILTERABLE, Expr, parse_filter
from stackwise.vectors import (
    Filter,
    Hit,
    IndexInfo,
    Record,
    VectorStore,
    check_dimensions,
    check_same_model,
)

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
# A version found without a graph is looked at again after this long (a writer in another
# process may be building it for that very version).
GRAPH_RECHECK_S = 2.0
_INDEX_PREFIX = "vector_ivfsq_n"
_MODEL_KEY = b"stackwise.model"
_DIM_KEY = b"stackwise.dim"
# A random id stamped on each table at creation: a graph is trusted only for the table it was
# built from (a dropped and re-created index restarts its version numbers).
_TABLE_ID_KEY = b"stackwise.table"
_COLUMNS = ["id", "doc_id", "source", "chunk", "text", "metadata"]
# Promoted metadata columns: at most this many per index, strings up to this length decide
# promotion (longer ones still fit the column once it exists).
MAX_PROMOTED = 32
MAX_PROMOTED_TEXT = 256
# A promoted column with at most this many distinct values gets a BITMAP index, else a BTREE.
BITMAP_MAX_DISTINCT = 1000
_PROMOTED_PREFIX = "meta_"
_KEY_META, _KIND_META, _PURE_META = "stackwise.key", "stackwise.kind", "stackwise.pure"
_ARROW_TYPES = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_()}
_FILTER_KINDS = {"str": "str", "int": "num", "float": "num", "bool": "bool"}
_JSON_GETTERS = {"str": "json_get_string", "int": "json_get_int", "float": "json_get_float", "bool": "json_get_bool"}
_ESCAPES = {"_": "_u", "-": "_d", ".": "_p"}


def _quote(value: str) -> str:
    return sql_quote(value)


def to_where(filter: Filter | Expr | None, columns: dict[str, LanceColumn] | None = None) -> str | None:
    """Translate a portable filter into a Lance SQL predicate (pure; `embedded_filters.to_lance`).

    `columns`: the index's promoted metadata columns; without them every metadata key is read
    from the JSON column (the path indexes written before promotion take)."""
    return to_lance(parse_filter(filter), columns)


# -- promoted metadata columns ------------------------------------------------------------------
def column_name(key: str) -> str:
    """The promoted column of a metadata key: `meta_` + the key, '_', '-', '.' escaped."""
    return _PROMOTED_PREFIX + "".join(_ESCAPES.get(ch, ch) for ch in key)


def _value_kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if -(2**63) <= value < 2**63 else None
    if isinstance(value, float):
        return "float" if math.isfinite(value) else None
    if isinstance(value, str):
        return "str" if len(value) <= MAX_PROMOTED_TEXT else None
    return None


def _fits(kind: str, value: Any) -> bool:
    """Whether a stored value can live in a promoted column of this kind."""
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind == "int":
        return isinstance(value, int) and -(2**63) <= value < 2**63
    return isinstance(value, (int, float)) and math.isfinite(value)


def promotable(metadatas: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """key -> column kind ('str', 'int', 'float', 'bool') for the metadata keys whose values
    all have one scalar type (ints and floats together make 'float'); filterable keys only."""
    kinds: dict[str, set[str | None]] = {}
    for metadata in metadatas:
        for key, value in metadata.items():
            kinds.setdefault(key, set()).add(_value_kind(value))
    chosen: dict[str, str] = {}
    for key in sorted(kinds):
        found = kinds[key]
        if (None in found or key in COLUMN_KEYS or key in NOT_FILTERABLE
                or not isinstance(key, str) or not KEY_PATTERN.fullmatch(key)):
            continue
        if found == {"int", "float"}:
            found = {"float"}
        if len(found) == 1:
            chosen[key] = found.pop()  # type: ignore[assignment]
        if len(chosen) >= MAX_PROMOTED:
            break
    return chosen


def _promoted(table) -> dict[str, tuple[str, str, bool]]:
    """key -> (column, kind, pure) for the table's promoted columns."""
    found = {}
    for f in table.schema:
        meta = {k.decode(): v.decode() for k, v in (f.metadata or {}).items()}
        if _KEY_META in meta and meta.get(_KIND_META) in _ARROW_TYPES:
            found[meta[_KEY_META]] = (f.name, meta[_KIND_META], meta.get(_PURE_META) == "true")
    return found


def filter_columns(table) -> dict[str, LanceColumn]:
    """The promoted columns filters may use: those that hold every stored value of their key."""
    return {key: LanceColumn(col, _FILTER_KINDS[kind]) for key, (col, kind, pure) in _promoted(table).items() if pure}


def _field_meta(key: str, kind: str) -> dict[str, str]:
    return {_KEY_META: key, _KIND_META: kind, _PURE_META: "true"}


def _in_list(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(_quote(v) for v in values)})"


# What Lance says when a file of the table is missing, truncated or not a Lance file.
_DAMAGE_MARKS = ("Not found", "not appear to be a Lance file", "LanceError(IO)", "fill whole buffer", "corrupt",
                 "No such file", "invalid magic")


def _is_damage(exc: BaseException) -> bool:
    return isinstance(exc, (OSError, RuntimeError, ValueError)) and any(m in str(exc) for m in _DAMAGE_MARKS)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    missing = re.search(r"Not found: (?:Wrapped error: Not found: )?(\S+\.lance)\b", text)
    return f"missing file {missing.group(1)}" if missing else text.split(", /rustc/")[0][:300]


def _probe(table) -> str | None:
    """None when every data file of the table's checked-out version opens and its id and promoted
    columns read; else what Lance said. Reads two small columns, not the vectors or the text."""
    columns = ["id", *(column for column, _, _ in _promoted(table).values())]
    try:
        table.search().select(columns).limit(max(table.count_rows(), 1)).to_arrow()
    except (OSError, RuntimeError, ValueError) as exc:
        if not _is_damage(exc):
            raise
        return _first_line(exc)
    return None


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
        # index -> the table version this store found (or made) intact: each version is probed once.
        self._intact: dict[str, int] = {}
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

    def _schema(self, dim: int, model: str, table_id: bytes | None = None) -> pa.Schema:
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
            metadata={_MODEL_KEY: model.encode(), _DIM_KEY: str(dim).encode(),
                      **({_TABLE_ID_KEY: table_id} if table_id else {})},
        )

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
        if check and self._intact.get(name) != table.version:
            problem = _probe(table)
            if problem is not None:
                raise self._damaged(name, table, problem)
            self._intact[name] = table.version
        return table

    def _wrote(self, name: str, table) -> None:
        """After a write on an intact version: the version it made is intact too (no second probe)."""
        self._intact[name] = table.version

    def _last_good(self, table) -> tuple[int, int] | None:
        """(version, rows) of the newest version older than the checked-out one whose files all read."""
        current = table.version
        try:
            for version in sorted((v["version"] for v in table.list_versions()), reverse=True):
                if version >= current:
                    continue
                table.checkout(version)
                if _probe(table) is None:
                    return version, table.count_rows()
            return None
        finally:
            table.checkout_latest()

    def _damaged(self, name: str, table, problem: str) -> StoreError:
        """The error for a damaged index: what Lance said, the last good version, how to fix it."""
        good = self._last_good(table)
        if good is None:
            fix = (f"run `stackwise indexes rebuild {name}` (re-indexes it from the sources its index jobs "
                   f"recorded), or `stackwise indexes drop {name}` and index again")
            last = "no earlier version is intact"
        else:
            fix = (f"run `stackwise index SOURCE --index {name}` (it restores version {good[0]} and re-indexes "
                   f"what that version lacks) or `stackwise indexes rebuild {name}`")
            last = f"the last good version is {good[0]} ({good[1]} chunks)"
        return StoreError(
            f"index {name!r} is damaged at version {table.version}: a data file is missing or corrupt "
            f"({problem}); {last}",
            where=f"embedded store at {self.uri}",
            fix=fix,
        )

    def _reading(self, name: str, table, read):
        """`read()`, with Lance's error for a damaged file turned into the StoreError for the index."""
        try:
            return read()
        except (OSError, RuntimeError, ValueError) as exc:
            if not _is_damage(exc):
                raise
            self._intact.pop(name, None)
            raise self._damaged(name, table, _first_line(exc)) from None

    def recover(self, name: str) -> int | None:
        """Restore a damaged index's last good version (Lance `restore`: a new version equal to it)
        and return it; None when it is intact. StoreError when no version is intact."""
        table = self._table(name, check=False)
        problem = _probe(table)
        if problem is None:
            self._intact[name] = table.version
            return None
        good = self._last_good(table)
        if good is None:
            raise self._damaged(name, table, problem)
        table.restore(good[0])
        self._intact[name] = table.version
        return good[0]

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
                self._db.create_table(name, schema=self._schema(dim, model, uuid.uuid4().hex.encode()))
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
            dim=int(meta.get(_DIM_KEY, b"0")),
            model=meta.get(_MODEL_KEY, b"").decode(),
            count=table.count_rows(),
        )

    def drop_index(self, name: str) -> None:
        """Remove the table and all its versions (a damaged one too)."""
        self._intact.pop(name, None)
        self._state.pop(name, None)
        if name in self.list_indexes():
            self._db.drop_table(name)
        self._graph_store.drop(name)

    # -- writes ------------------------------------------------------------------------------
    def _arrow(self, table, records: Sequence[Record]) -> pa.Table:
        meta = table.schema.metadata or {}
        dim = int(meta.get(_DIM_KEY, b"0"))
        # Build with our own schema: the table reports its JSON column as Lance's binary
        # JSONB, and text written into that would not be parsed as JSON.
        schema = self._schema(dim, meta.get(_MODEL_KEY, b"").decode(), meta.get(_TABLE_ID_KEY))
        check_dimensions(records, dim, where=f"index {table.name!r} in {self.uri}")
        columns: dict[str, Any] = {
            "id": [r.id for r in records],
            "doc_id": [r.doc_id for r in records],
            "source": [r.source for r in records],
            "chunk": [r.chunk for r in records],
            "text": [r.text for r in records],
            "metadata": [json.dumps(dict(r.metadata), sort_keys=True) for r in records],
            "vector": pa.FixedSizeListArray.from_arrays(
                pa.array(np.asarray([r.vector for r in records], dtype=np.float32).reshape(-1)), dim
            ),
        }
        for key, (column, kind, _) in _promoted(table).items():
            values = [r.metadata.get(key) for r in records]
            columns[column] = [v if v is not None and _fits(kind, v) else None for v in values]
            schema = schema.append(pa.field(column, _ARROW_TYPES[kind]))
        return pa.Table.from_pydict(columns, schema=schema)

    def _writable(self, name: str, records: Sequence[Record]):
        """The table, ready for `records`: promoted columns created on the first write into an
        empty index, and marked impure where a record holds a value that does not fit them."""
        table = self._table(name)
        promoted = _promoted(table)
        if not promoted and self.promote and records and table.count_rows() == 0:
            kinds = promotable(r.metadata for r in records)
            if kinds:
                fields = [pa.field(column_name(k), _ARROW_TYPES[kind], metadata=_field_meta(k, kind))
                          for k, kind in kinds.items()]
                try:
                    table.add_columns(fields)
                except Exception:  # another writer promoted first: use its columns
                    pass
                table = self._table(name)
                promoted = _promoted(table)
        spoiled = [
            column for key, (column, kind, pure) in promoted.items()
            if pure and any(key in r.metadata and not _fits(kind, r.metadata[key]) for r in records)
        ]
        if spoiled:
            # Before the write: a filter must never trust a column missing some values.
            table.update_field_metadata(*({"path": c, "metadata": {_PURE_META: "false"}} for c in spoiled))
        return table

    def upsert(self, name: str, records: Sequence[Record]) -> None:
        if not records:
            return
        table = self._writable(name, records)
        data = self._arrow(table, records)
        table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(data)
        self._wrote(name, table)

    def replace_documents(self, name: str, doc_ids: Sequence[str], records: Sequence[Record]) -> None:
        """One Lance commit: upsert `records` and delete every other chunk of `doc_ids`."""
        table = self._table(name)
        if not doc_ids:
            return self.upsert(name, records)
        scope = _in_list("doc_id", sorted(set(doc_ids)))
        if not records:
            table.delete(scope)
            self._wrote(name, table)
            return None
        table = self._writable(name, records)
        data = self._arrow(table, records)
        (
            table.merge_insert("id")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .when_not_matched_by_source_delete(scope)
            .execute(data)
        )
        self._wrote(name, table)
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
        doomed = self._reading(name, table, lambda: table.count_rows(where))
        if doomed:
            table.delete(where)
            self._wrote(name, table)
        return doomed

    # -- reads -------------------------------------------------------------------------------
    def _manifest_identity(self, name: str) -> tuple[int, int, int, int] | None:
        """Local stores: (latest version, inode, mtime, size of its manifest file), read from the
        table's `_versions` folder in microseconds (Lance names manifests `<version>.manifest`,
        or u64::MAX - version in 20 digits); None for object stores or an unreadable folder.
        `_current` checks the version it reads against LanceDB's before trusting it."""
        if self._graph_store.remote:
            return None
        best = None
        try:
            with os.scandir(f"{self.uri.removeprefix('file://')}/{name}.lance/_versions") as entries:
                for entry in entries:
                    stem, _, ext = entry.name.partition(".")
                    if ext != "manifest" or not stem.isdigit():
                        continue
                    version = (2**64 - 1 - int(stem)) if len(stem) == 20 else int(stem)
                    if best is None or version > best[0]:
                        best = (version, entry)
            if best is None:
                return None
            stat = best[1].stat()
        except OSError:
            return None
        return (best[0], stat.st_ino, stat.st_mtime_ns, stat.st_size)

    def _current(self, name: str) -> "_Current":
        """The table's latest version with what queries of it reuse (model, graph index). On a
        local store a query that finds the same manifest as the last one reuses it all without
        opening the table; otherwise the table is opened (and probed, `_table`)."""
        identity = self._manifest_identity(name)
        cached = self._state.get(name)
        if identity is not None and cached is not None and cached.key == identity and cached.fresh():
            return cached
        table = self._table(name)
        version = table.version
        meta = table.schema.metadata or {}
        table_id = meta.get(_TABLE_ID_KEY, b"").decode()
        key: tuple = identity if identity is not None and identity[0] == version else ("opened", version, table_id)
        if cached is not None and cached.key == key and cached.fresh():
            return cached
        graph = self._graph_store.load(name, version, table_id) if graphs.enabled() else None
        state = self._state[name] = _Current(key, version, meta.get(_MODEL_KEY, b"").decode(), graph, time.monotonic())
        return state

    def model_of(self, name: str) -> str:
        return self._current(name).model

    def _graph_query(self, name: str, vector: Sequence[float], k: int) -> list[Hit] | None:
        """Hits from the graph index when one was built for exactly this table at its latest
        version, else None: LanceDB's path answers."""
        graph = self._current(name).graph
        if graph is None or len(vector) != graph.vectors.shape[1]:
            return None
        return [
            Hit(id=row["id"], score=score, text=row["text"], doc_id=row["doc_id"], source=row["source"],
                chunk=row["chunk"], metadata=json.loads(row["metadata"] or "{}"))
            for row, score in graph.search(vector, k)
        ]

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
        rows = self._reading(name, table, lambda: search.select([*_COLUMNS, "_distance"]).limit(k).to_arrow().to_pylist())
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
        expr = parse_filter(filter)
        table = self._table(name)
        return self._reading(name, table, lambda: table.count_rows(to_lance(expr, filter_columns(table))))

    def _scan(self, table, columns: list[str], where: str | None) -> pa.Table:
        query = table.search().select(columns)
        if where:
            query = query.where(where)
        return query.limit(max(table.count_rows(), 1)).to_arrow()

    def fetch(self, name: str, ids: Sequence[str]) -> list[Record]:
        if not ids:
            return []
        table = self._table(name)
        rows = self._reading(name, table, lambda: self._scan(table, [*_COLUMNS, "vector"], _in_list("id", list(ids)))).to_pylist()
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
        data = self._reading(name, table, lambda: self._scan(table, ["id", "doc_id"], where))
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

    def _migrate(self, name: str, table):
        """Promote the metadata columns of an index written before promotion existed (no
        promoted column yet), computed from the stored JSON in one commit per column set."""
        if _promoted(table):
            return table
        stored = self._scan(table, ["metadata"], None)["metadata"].to_pylist()
        kinds = promotable(json.loads(m or "{}") for m in stored)
        if not kinds:
            return table
        table.add_columns({column_name(k): f"{_JSON_GETTERS[kind]}(metadata, {sql_quote(k)})"
                           for k, kind in kinds.items()})
        # Marked only once filled: until then filters keep reading the JSON column.
        table.update_field_metadata(*({"path": column_name(k), "metadata": _field_meta(k, kind)}
                                      for k, kind in kinds.items()))
        return self._table(name)

    @staticmethod
    def _index_promoted(table) -> None:
        """A scalar index on each promoted column that has none: BITMAP for few distinct
        non-float values, else BTREE (`table.optimize` keeps them up to date afterwards)."""
        from lancedb.index import BTree, Bitmap

        indexed = {c for index in table.list_indices() for c in (index.columns or [])}
        for column, kind, _ in _promoted(table).values():
            if column in indexed:
                continue
            config = BTree()
            if kind != "float":  # Lance builds BITMAP indexes on strings, integers and booleans only
                values = table.search().select([column]).limit(max(table.count_rows(), 1)).to_arrow()[column]
                if len(values.unique()) <= BITMAP_MAX_DISTINCT:
                    config = Bitmap()
            table.create_index(column, config=config, replace=True)  # with a config, the first argument is the column

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
        if self.promote and any(column not in indexed for column, _, _ in _promoted(table).values()):
            return True
        if rows >= ANN_THRESHOLD and self._vector_index(table) is None:
            return True
        return graphs.enabled() and table.version not in self._graph_store.versions(name)

    def optimize(self, name: str) -> None:
        """Promote metadata columns of an older index (once), give promoted columns a scalar
        index, compact small commits, fold new rows into the indexes, drop versions older than
        KEEP_VERSIONS; build an IVF_SQ index once the table reaches ANN_THRESHOLD rows, and
        retrain it when the table has grown RETRAIN_GROWTH times since it was trained; last,
        write the graph index for the version this leaves (`build_graph`)."""
        from lancedb.index import IvfSq

        table = self._table(name)
        rows = table.count_rows()
        if self.promote and rows:
            table = self._migrate(name, table)
            self._index_promoted(table)
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
        rows = self._reading(name, table, lambda: self._scan(table, [*graphs.PAYLOAD_COLUMNS, "vector"], None))
        self._state.pop(name, None)
        table_id = (table.schema.metadata or {}).get(_TABLE_ID_KEY, b"").decode()
        return self._graph_store.build(name, table.version, rows, table_id)
