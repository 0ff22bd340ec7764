"""The Milvus vector store adapter (pymilvus `MilvusClient`, gRPC).

The scale-out path for teams that run their own distributed engine (Milvus on Kubernetes):
the stack's `vector_store.host` is the proxy's URI (http://host:19530) and
`api_key_secret`, when set, names the token (`user:password` or an API key).

One collection per logical index, named `sw_<index>` (with '_', '-' and '.' escaped so the
mapping reverses). Fields: `id` (VARCHAR primary key), `vector` (FLOAT_VECTOR, HNSW index,
COSINE metric), `doc_id`, `source`, `chunk`, `text` and `metadata` (JSON). The embedding
model and dimension are the collection's description. Collections are created with Strong
consistency, so a read sees every write acknowledged before it.

The portable filter becomes a Milvus boolean expression (`to_milvus_expr`, i.e.
`milvus_filters.to_milvus`); a metadata key matches a value or a JSON array that contains
it, as in the embedded store.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from stackwise.errors import StoreError
from stackwise.registry import require
from stackwise.filters import Expr, parse_filter
from stackwise.vectors import Filter, Hit, IndexInfo, Record, VectorStore, check_dimensions, check_same_model

from ._hosted import check_index_name, redact, resolve_secret
from .milvus_filters import to_milvus

if TYPE_CHECKING:
    from stackwise.contract import VectorStoreOutput

PREFIX = "sw_"
BATCH = 1000  # rows per insert request: far under Milvus's 64 MB gRPC message limit at 384-d
MAX_TOP_K = 16_384
_ESCAPES = {"_": "_u", "-": "_d", ".": "_p"}
_UNESCAPES = {v: k for k, v in _ESCAPES.items()}


def collection_name(index: str) -> str:
    """Milvus names allow letters, digits and '_': escape the rest reversibly."""
    return PREFIX + "".join(_ESCAPES.get(ch, ch) for ch in index)


def index_name(collection: str) -> str | None:
    if not collection.startswith(PREFIX):
        return None
    return re.sub(r"_[udp]", lambda m: _UNESCAPES[m.group(0)], collection[len(PREFIX):])


def _literal(value: Any) -> str:
    return json.dumps(str(value), ensure_ascii=False)  # a double-quoted string with escapes


def to_milvus_expr(filter: Filter | Expr | None) -> str:
    """Translate a portable filter into a Milvus boolean expression ('' for no filter; pure;
    `milvus_filters.to_milvus`)."""
    return to_milvus(parse_filter(filter))


def _quoted_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(_literal(v) for v in values) + "]"


def _public_uri(uri: str, token: str) -> str:
    """`uri` without user information (`http://root:TOKEN@host` -> `http://***@host`) and with the
    token masked wherever else it appears."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(uri)
        if "@" in parts.netloc:
            uri = urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))
    except ValueError:
        uri = "(the stack's Milvus host)"
    return redact(uri, token)


class MilvusStore(VectorStore):
    """One Milvus collection per index (see the module docstring)."""

    def __init__(self, config: "VectorStoreOutput", *, timeout: float = 60.0):
        pymilvus = require("pymilvus", "milvus", "the Milvus vector store")
        if not config.host:
            raise StoreError("the stack's Milvus vector store has no host", where="stack outputs vector_store.host",
                             fix="export the Milvus proxy URI (http://host:19530) as vector_store.host")
        self.host = config.host
        self._token = (resolve_secret(config.api_key_secret, default_env="MILVUS_TOKEN", what="Milvus store")
                       if config.api_key_secret else "")
        self._shown = _public_uri(self.host, self._token)  # the host as messages show it: no credentials
        self._mod = pymilvus
        try:
            self._client = pymilvus.MilvusClient(uri=self.host, token=self._token, timeout=timeout)
        except Exception as exc:
            raise self._error("connect", exc) from None
        self._infos: dict[str, IndexInfo] = {}

    def __repr__(self) -> str:
        return f"MilvusStore(host={self._shown!r})"

    def _error(self, what: str, exc: BaseException) -> StoreError:
        detail = redact(str(getattr(exc, "message", None) or exc), self._token)[:500]
        unreachable = any(word in f"{type(exc).__name__} {detail}".lower()
                          for word in ("unavailable", "connect", "deadline", "timeout", "timed out"))
        fix = ("check that the Milvus proxy is reachable and healthy" if unreachable else
               "Milvus refused the request: correct what its message names (filter, field or index), "
               "or report it if stackwise built it")
        return StoreError(f"Milvus {what} failed: {detail}", where=f"Milvus at {self._shown}", fix=fix)

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except StoreError:
            raise
        except Exception as exc:
            raise self._error(what, exc) from None

    def _where(self, name: str) -> str:
        return f"collection {collection_name(name)} in Milvus at {self._shown}"

    # -- indexes -----------------------------------------------------------------------------
    def list_indexes(self) -> list[str]:
        names = self._call("list_collections", self._client.list_collections)
        return sorted(n for n in (index_name(c) for c in names) if n)

    def _info(self, name: str) -> IndexInfo:
        cached = self._infos.get(name)
        if cached is not None:
            return cached
        coll = collection_name(check_index_name(name, f"Milvus at {self._shown}"))
        if not self._call("has_collection", self._client.has_collection, coll):
            raise StoreError(
                f"index {name!r} does not exist",
                where=f"Milvus at {self._shown}",
                fix=f"create it with `stackwise index SOURCE --index {name}`; existing: "
                + (", ".join(self.list_indexes()) or "none"),
            )
        desc = self._call("describe_collection", self._client.describe_collection, coll)
        try:
            meta = json.loads(desc.get("description") or "{}")
        except json.JSONDecodeError:
            meta = {}
        if "model" not in meta:
            raise StoreError(f"collection {coll} was not created by stackwise", where=self._where(name),
                             fix="choose another --index name")
        info = IndexInfo(name=name, dim=int(meta["dim"]), model=str(meta["model"]), count=0)
        self._infos[name] = info
        return info

    def create_index(self, name: str, dim: int, model: str) -> IndexInfo:
        check_index_name(name, f"Milvus at {self._shown}")
        if name in self.list_indexes():
            info = self._info(name)
            check_same_model(info, dim, model, where=self._where(name))
            return self.describe(name)
        DataType = self._mod.DataType
        schema = self._mod.MilvusClient.create_schema(
            auto_id=False, enable_dynamic_field=False,
            description=json.dumps({"stackwise": 1, "model": model, "dim": dim}),
        )
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=512)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("doc_id", DataType.VARCHAR, max_length=4096)
        schema.add_field("source", DataType.VARCHAR, max_length=4096)
        schema.add_field("chunk", DataType.INT64)
        schema.add_field("text", DataType.VARCHAR, max_length=65535)
        schema.add_field("metadata", DataType.JSON)
        params = self._client.prepare_index_params()
        params.add_index(field_name="vector", index_type="HNSW", metric_type="COSINE",
                         params={"M": 16, "efConstruction": 200})
        self._call("create_collection", self._client.create_collection, collection_name(name), schema=schema,
                   index_params=params, consistency_level="Strong")
        info = IndexInfo(name=name, dim=dim, model=model, count=0)
        self._infos[name] = info
        return info

    def describe(self, name: str) -> IndexInfo:
        info = self._info(name)
        return IndexInfo(name=name, dim=info.dim, model=info.model, count=self.count(name))

    def drop_index(self, name: str) -> None:
        check_index_name(name, f"Milvus at {self._shown}")
        coll = collection_name(name)
        if self._call("has_collection", self._client.has_collection, coll):
            self._call("drop_collection", self._client.drop_collection, coll)
        self._infos.pop(name, None)

    # -- writes ------------------------------------------------------------------------------
    def upsert(self, name: str, records: Sequence[Record]) -> None:
        if not records:
            return
        info = self._info(name)
        check_dimensions(records, info.dim, where=self._where(name))
        rows = [{"id": r.id, "vector": [float(v) for v in r.vector], "doc_id": r.doc_id, "source": r.source,
                 "chunk": int(r.chunk), "text": r.text, "metadata": dict(r.metadata)} for r in records]
        written = 0
        for start in range(0, len(rows), BATCH):
            try:
                self._call("upsert", self._client.upsert, collection_name(name), rows[start:start + BATCH])
            except StoreError as exc:
                raise StoreError(
                    f"{len(rows) - written} of {len(rows)} records were not written to index {name!r}: {exc.what}",
                    where=self._where(name),
                    fix="rerun the same command: upserts are idempotent and only what is missing changes",
                ) from None
            written += len(rows[start:start + BATCH])

    def _ids(self, name: str, expr: str) -> list[dict[str, Any]]:
        """Every row matching `expr` (id and doc_id), page by page."""
        iterator = self._call("query_iterator", self._client.query_iterator, collection_name(name), batch_size=1000,
                              filter=expr or 'id != ""', output_fields=["id", "doc_id"])
        rows: list[dict[str, Any]] = []
        try:
            while True:
                page = self._call("query_iterator", iterator.next)
                if not page:
                    return rows
                rows.extend(page)
        finally:
            iterator.close()

    def delete(self, name: str, ids: Sequence[str] = (), doc_ids: Sequence[str] = ()) -> int:
        self._info(name)
        clauses = []
        if ids:
            clauses.append(f"id in {_quoted_list(list(dict.fromkeys(ids)))}")
        if doc_ids:
            clauses.append(f"doc_id in {_quoted_list(sorted(set(doc_ids)))}")
        if not clauses:
            return 0
        doomed = [row["id"] for row in self._ids(name, " or ".join(clauses))]
        for start in range(0, len(doomed), BATCH):
            self._call("delete", self._client.delete, collection_name(name), ids=doomed[start:start + BATCH])
        return len(doomed)

    def replace_documents(self, name: str, doc_ids: Sequence[str], records: Sequence[Record]) -> None:
        """Upsert `records`, then delete the other chunks of `doc_ids` (looked up by document).
        Not atomic; repeating the call after a crash converges."""
        self._info(name)
        keep = {r.id for r in records}
        stale = []
        if doc_ids:
            rows = self._ids(name, f"doc_id in {_quoted_list(sorted(set(doc_ids)))}")
            stale = [row["id"] for row in rows if row["id"] not in keep]
        self.upsert(name, records)
        for start in range(0, len(stale), BATCH):
            self._call("delete", self._client.delete, collection_name(name), ids=stale[start:start + BATCH])

    # -- reads -------------------------------------------------------------------------------
    def query(self, name: str, vector: Sequence[float], k: int = 10, filter: Filter | None = None) -> list[Hit]:
        info = self._info(name)
        if len(vector) != info.dim:
            raise StoreError(f"query vector has {len(vector)} dimensions, index {name!r} has {info.dim}",
                             where=self._where(name), fix=f"embed the query with {info.model!r}")
        limit = max(1, min(k, MAX_TOP_K))
        results = self._call(
            "search", self._client.search, collection_name(name), data=[[float(v) for v in vector]],
            filter=to_milvus_expr(filter), limit=limit,
            output_fields=["doc_id", "source", "chunk", "text", "metadata"],
            search_params={"metric_type": "COSINE", "params": {"ef": max(64, limit)}},
        )
        hits = []
        for match in results[0] if results else []:
            entity = match.get("entity", {})
            hits.append(Hit(id=str(match["id"]), score=float(match["distance"]), text=entity.get("text", ""),
                            doc_id=entity.get("doc_id", ""), source=entity.get("source", ""),
                            chunk=int(entity.get("chunk", 0)), metadata=dict(entity.get("metadata") or {})))
        return hits[:k]

    def count(self, name: str, filter: Filter | None = None) -> int:
        self._info(name)
        rows = self._call("count", self._client.query, collection_name(name), filter=to_milvus_expr(filter),
                          output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def fetch(self, name: str, ids: Sequence[str]) -> list[Record]:
        self._info(name)
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return []
        rows: dict[str, dict[str, Any]] = {}
        for start in range(0, len(wanted), BATCH):
            for row in self._call("get", self._client.get, collection_name(name), ids=wanted[start:start + BATCH],
                                  output_fields=["id", "vector", "doc_id", "source", "chunk", "text", "metadata"]):
                rows[row["id"]] = row
        return [
            Record(id=i, vector=[float(v) for v in rows[i]["vector"]], text=rows[i]["text"], doc_id=rows[i]["doc_id"],
                   source=rows[i]["source"], chunk=int(rows[i]["chunk"]), metadata=dict(rows[i]["metadata"] or {}))
            for i in wanted if i in rows
        ]

    def chunk_ids(self, name: str, source: str | None = None) -> dict[str, set[str]]:
        self._info(name)
        expr = f"source == {_literal(source)}" if source is not None else ""
        result: dict[str, set[str]] = {}
        for row in self._ids(name, expr):
            result.setdefault(row["doc_id"], set()).add(row["id"])
        return result

    def optimize(self, name: str) -> None:
        """Seal growing segments so they are indexed (HNSW) rather than brute-force searched."""
        self._info(name)
        self._call("flush", self._client.flush, collection_name(name))
