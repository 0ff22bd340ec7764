"""The Weaviate vector store adapter (weaviate-client v4: REST for the schema, gRPC for data).

Layout: one Weaviate **collection per logical index**, one object per chunk; the collection
names, properties and the mapping of records and filters onto them are in weaviate_schema.py,
the connection (client, retries, error messages) in weaviate_client.py.

Writes are gRPC batch imports (`insert_many`) that report per-object errors: the objects that
failed are retried with backoff, and those that still fail raise a StoreError naming their ids;
nothing is dropped silently. Every call is retried with backoff on 408/429/5xx, gRPC
UNAVAILABLE / RESOURCE_EXHAUSTED / DEADLINE_EXCEEDED and connection errors.

Connection: the stack's `vector_store.host` is the REST URL (`http://host:8080`,
`https://cluster.weaviate.cloud`), with optional query parameters `grpc_host`, `grpc_port`,
`grpc_secure` (defaults: the same host, port 50051 over http or 443 over https; Weaviate Cloud
hosts use `grpc-<host>`) and `tenant`. With `tenant=NAME` the collections are multi-tenant and
this store reads and writes only that tenant (one tenant per customer or team, same schema);
dropping an index removes the tenant, and the collection once no tenant is left.
The API key comes from `api_key_secret` (`env://NAME`), else `$WEAVIATE_API_KEY`, else the
connection is anonymous; it is sent only as the bearer token and redacted from every message.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from stackwise.errors import StoreError
from stackwise.registry import require
from stackwise.vectors import Filter, Hit, IndexInfo, Record, VectorStore, check_dimensions, check_same_model

from ._hosted import check_index_name, hit_from_flat, record_from_flat, redact
from .weaviate_client import Connection, parse_host
from .weaviate_schema import (
    ID_PROP,
    VECTOR,
    batches,
    collection_meta,
    collection_name,
    collection_settings,
    id_filters,
    index_name,
    multi_tenant,
    new_properties,
    object_properties,
    object_uuid,
    property_data_type,
    split_properties,
    to_weaviate_filter,
)

if TYPE_CHECKING:
    from stackwise.contract import VectorStoreOutput

# Re-exported: the names tests and callers import from this module.
__all__ = ["WeaviateStore", "collection_name", "index_name", "object_uuid", "parse_host", "to_weaviate_filter"]

PAGE = 1000  # objects per read page; QUERY_MAXIMUM_RESULTS defaults to 10,000


class WeaviateStore(VectorStore):
    """One Weaviate collection per index (see the module docstring)."""

    def __init__(
        self,
        config: "VectorStoreOutput",
        *,
        tenant: str | None = None,
        attempts: int = 5,
        backoff: float = 1.0,
        timeout: float = 60.0,
    ):
        require("weaviate", "weaviate", "the Weaviate vector store")
        if not config.host:
            raise StoreError("the stack's Weaviate vector store has no host", where="stack outputs vector_store.host",
                             fix="export the Weaviate REST URL (e.g. http://weaviate.internal:8080) as vector_store.host")
        settings = parse_host(config.host)
        self.tenant = tenant or settings.pop("tenant")
        settings.pop("tenant", None)
        self.host = config.host.split("?")[0]
        self._attempts = attempts
        self._backoff = backoff
        self._conn = Connection(self.host, settings, config.api_key_secret, attempts=attempts,
                                backoff=backoff, timeout=timeout)
        self._infos: dict[str, IndexInfo] = {}
        self._types: dict[str, dict[str, str]] = {}  # index -> property -> data type

    def __repr__(self) -> str:
        return f"WeaviateStore(host={self.host!r}, tenant={self.tenant!r})"

    def close(self) -> None:
        """Close the REST and gRPC connections (also done when the store is garbage-collected)."""
        self._conn.close()

    def _where(self, name: str) -> str:
        tenant = f", tenant {self.tenant!r}" if self.tenant else ""
        return f"collection {collection_name(name)}{tenant} in Weaviate at {self.host}"

    def _collection(self, name: str):
        coll = self._conn.client().collections.use(collection_name(name))
        return coll.with_tenant(self.tenant) if self.tenant else coll

    # -- indexes -----------------------------------------------------------------------------
    def _configs(self) -> dict[str, Any]:
        """index name -> simple collection config, for the collections stackwise created."""
        configs = self._conn.call("list collections", lambda: self._conn.client().collections.list_all(simple=True))
        found = {}
        for coll_name, config in configs.items():
            index = index_name(coll_name)
            if index is not None and collection_meta(config.description) is not None:
                found[index] = config
        return found

    def _tenants(self, name: str) -> set[str]:
        coll = self._conn.client().collections.use(collection_name(name))
        return set(self._conn.call("list tenants", lambda: coll.tenants.get()))

    def list_indexes(self) -> list[str]:
        configs = self._configs()
        if self.tenant is None:
            return sorted(n for n, c in configs.items() if not multi_tenant(c))
        return sorted(n for n, c in configs.items() if multi_tenant(c) and self.tenant in self._tenants(n))

    def _remember(self, name: str, config: Any) -> IndexInfo:
        meta = collection_meta(config.description)
        if meta is None:
            raise StoreError(f"collection {config.name} was not created by stackwise", where=self._where(name),
                             fix="choose another --index name")
        if multi_tenant(config) != (self.tenant is not None):
            raise StoreError(
                f"collection {config.name} is {'' if multi_tenant(config) else 'not '}multi-tenant, "
                f"this store is {'set to tenant ' + repr(self.tenant) if self.tenant else 'not set to a tenant'}",
                where=self._where(name),
                fix="add ?tenant=NAME to vector_store.host for multi-tenant collections (or remove it), "
                "or choose another --index name",
            )
        info = IndexInfo(name=name, dim=int(meta["dim"]), model=str(meta["model"]), count=0)
        self._infos[name] = info
        self._types[name] = {p.name: property_data_type(p) for p in config.properties}
        return info

    def _config(self, name: str) -> Any | None:
        coll = self._conn.client().collections.use(collection_name(name))
        exists = self._conn.call("collection lookup", lambda: coll.exists())
        if not exists:
            return None
        return self._conn.call("collection lookup", lambda: coll.config.get(simple=True))

    def _info(self, name: str) -> IndexInfo:
        cached = self._infos.get(name)
        if cached is not None:
            return cached
        check_index_name(name, f"Weaviate at {self.host}")
        config = self._config(name)
        if config is None or (self.tenant and multi_tenant(config) and self.tenant not in self._tenants(name)):
            raise StoreError(
                f"index {name!r} does not exist",
                where=self._where(name),
                fix=f"create it with `stackwise index SOURCE --index {name}`; existing: "
                + (", ".join(self.list_indexes()) or "none"),
            )
        return self._remember(name, config)

    def create_index(self, name: str, dim: int, model: str) -> IndexInfo:
        check_index_name(name, f"Weaviate at {self.host}")
        config = self._config(name)
        if config is None:
            config = self._create_collection(name, dim, model)
        info = self._remember(name, config)
        check_same_model(info, dim, model, where=self._where(name))
        if self.tenant and self.tenant not in self._tenants(name):
            from weaviate.classes.tenants import Tenant

            coll = self._conn.client().collections.use(collection_name(name))
            self._conn.call("create tenant", lambda: coll.tenants.create([Tenant(name=self.tenant)]))
        return self.describe(name)

    def _create_collection(self, name: str, dim: int, model: str) -> Any:
        settings = collection_settings(dim, model, tenants=self.tenant is not None)
        client = self._conn.client()
        try:
            self._conn.call("create collection", lambda: client.collections.create(collection_name(name), **settings))
        except StoreError:
            # Another client may have created it at the same moment: use it if it is there.
            config = self._config(name)
            if config is None:
                raise
            return config
        return self._config(name)

    def describe(self, name: str) -> IndexInfo:
        info = self._info(name)
        return IndexInfo(name=name, dim=info.dim, model=info.model, count=self.count(name))

    def drop_index(self, name: str) -> None:
        check_index_name(name, f"Weaviate at {self.host}")
        self._infos.pop(name, None)
        self._types.pop(name, None)
        config = self._config(name)
        if config is None or collection_meta(config.description) is None:
            return
        client = self._conn.client()
        if self.tenant and multi_tenant(config):
            coll = client.collections.use(collection_name(name))
            if self.tenant in self._tenants(name):
                self._conn.call("remove tenant", lambda: coll.tenants.remove([self.tenant]))
            if self._tenants(name):
                return  # other tenants keep their data
        self._conn.call("delete collection", lambda: client.collections.delete(collection_name(name)))

    # -- writes ------------------------------------------------------------------------------
    def _properties_for(self, name: str, records: Sequence[Record]) -> list[dict[str, Any]]:
        """Each record's Weaviate properties; adds properties for metadata keys seen first."""
        from weaviate.classes.config import DataType, Property, Tokenization

        types = self._types[name]
        new = new_properties(records, types)
        if new:
            coll = self._conn.client().collections.use(collection_name(name))
            kinds = {"text": DataType.TEXT, "text[]": DataType.TEXT_ARRAY, "number": DataType.NUMBER,
                     "boolean": DataType.BOOL}
            for key, data_type in new.items():
                prop = Property(name=key, data_type=kinds[data_type],
                                tokenization=Tokenization.FIELD if data_type.startswith("text") else None,
                                index_searchable=False)
                try:
                    self._conn.call("add property", lambda: coll.config.add_property(prop))
                except StoreError:
                    # A concurrent writer may have added it: take the schema as it is now.
                    self._infos.pop(name, None)
                    self._info(name)
                    types = self._types[name]
                    if key not in types:
                        raise
                    continue
                types[key] = data_type
        return object_properties(records, types)

    def _insert(self, coll: Any, objects: list[Any]) -> dict[int, str]:
        """Send one batch; returns position -> error for the objects Weaviate did not store.
        Raises StoreError when the request itself failed (after its retries)."""
        from weaviate.exceptions import WeaviateInsertManyAllFailedError

        def send() -> Any:
            try:
                return coll.data.insert_many(objects)
            except WeaviateInsertManyAllFailedError as exc:  # every object has its own error
                return exc

        result = self._conn.call("batch import", send)
        if isinstance(result, WeaviateInsertManyAllFailedError):
            return {i: redact(str(result), self._conn.key)[:300] for i in range(len(objects))}
        return {i: redact(err.message, self._conn.key) for i, err in result.errors.items()}

    def upsert(self, name: str, records: Sequence[Record]) -> None:
        """Batch import; objects Weaviate reports as failed are sent again (with backoff, up to
        `attempts` times), and any still failing raise a StoreError naming their ids. A batch
        whose request fails outright (after its own retries) counts as failed; the other
        batches are still sent."""
        if not records:
            return
        from weaviate.classes.data import DataObject

        info = self._info(name)
        check_dimensions(records, info.dim, where=self._where(name))
        rows = self._properties_for(name, records)
        objects = [DataObject(properties=row, uuid=object_uuid(r.id), vector={VECTOR: [float(v) for v in r.vector]})
                   for r, row in zip(records, rows)]
        sizes = [len(json.dumps(row, default=str)) + 4 * info.dim + 64 for row in rows]
        coll = self._collection(name)
        failed: dict[int, str] = {}  # record position -> last error
        for positions in batches(sizes):
            pending = positions
            for attempt in range(1, self._attempts + 1):
                try:
                    errors = self._insert(coll, [objects[p] for p in pending])
                except StoreError as exc:
                    failed.update({p: exc.what for p in pending})
                    break
                if not errors:
                    break
                pending_errors = {pending[i]: message for i, message in errors.items()}
                pending = sorted(pending_errors)
                if attempt == self._attempts:
                    failed.update(pending_errors)
                else:
                    time.sleep(random.uniform(0, min(20.0, self._backoff * 2 ** (attempt - 1))))
        if failed:
            ids = [records[p].id for p in sorted(failed)]
            first = failed[min(failed)]
            raise StoreError(
                f"{len(failed)} of {len(records)} records were not written to index {name!r} "
                f"(ids: {', '.join(ids[:5])}{', ...' if len(ids) > 5 else ''}): {first}",
                where=self._where(name),
                fix="rerun the same command: upserts are idempotent and only what is missing changes",
            )

    def _delete_where(self, name: str, where: Any) -> int:
        coll = self._collection(name)
        removed = 0
        while True:  # one request deletes at most QUERY_MAXIMUM_RESULTS objects
            result = self._conn.call("delete", lambda: coll.data.delete_many(where=where))
            if result.failed:
                raise StoreError(f"Weaviate failed to delete {result.failed} of {result.matches} objects",
                                 where=self._where(name), fix="rerun the same command: deletes are idempotent")
            removed += result.successful
            if not result.matches or not result.successful:
                return removed

    def delete(self, name: str, ids: Sequence[str] = (), doc_ids: Sequence[str] = ()) -> int:
        self._info(name)
        return sum(self._delete_where(name, where) for where in id_filters(ids, doc_ids))

    def _doc_chunk_ids(self, name: str, doc_ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        coll = self._collection(name)
        for where in id_filters(doc_ids=doc_ids):
            offset = 0
            while True:
                page = self._conn.call("fetch", lambda: coll.query.fetch_objects(
                    filters=where, limit=PAGE, offset=offset, return_properties=[ID_PROP]))
                found.update(str(o.properties.get(ID_PROP)) for o in page.objects)
                if len(page.objects) < PAGE:
                    break
                offset += PAGE
        return found

    def replace_documents(self, name: str, doc_ids: Sequence[str], records: Sequence[Record]) -> None:
        """Upsert `records`, then delete the other chunks of `doc_ids` (looked up by document).
        Not atomic; repeating the call after a crash converges."""
        self._info(name)
        keep = {r.id for r in records}
        stale = self._doc_chunk_ids(name, doc_ids) - keep if doc_ids else set()
        self.upsert(name, records)
        if stale:
            self.delete(name, ids=sorted(stale))

    # -- reads -------------------------------------------------------------------------------
    def _filter(self, name: str, filter: Filter | None):
        return to_weaviate_filter(filter, self._types.get(name, {}))

    def query(self, name: str, vector: Sequence[float], k: int = 10, filter: Filter | None = None) -> list[Hit]:
        from weaviate.classes.query import MetadataQuery

        info = self._info(name)
        if len(vector) != info.dim:
            raise StoreError(f"query vector has {len(vector)} dimensions, index {name!r} has {info.dim}",
                             where=self._where(name), fix=f"embed the query with {info.model!r}")
        where = self._filter(name, filter)
        if where == "nothing":
            return []
        coll = self._collection(name)
        result = self._conn.call("query", lambda: coll.query.near_vector(
            near_vector=[float(v) for v in vector], limit=max(1, k), filters=where, target_vector=VECTOR,
            return_metadata=MetadataQuery(distance=True)))
        hits = []
        for obj in result.objects:
            record_id, props = split_properties(obj.properties)
            # cosine distance is 1 - cosine similarity
            hits.append(hit_from_flat(record_id, 1.0 - float(obj.metadata.distance or 0.0), props))
        return hits[:k]

    def count(self, name: str, filter: Filter | None = None) -> int:
        self._info(name)
        where = self._filter(name, filter)
        if where == "nothing":
            return 0
        coll = self._collection(name)
        result = self._conn.call("count", lambda: coll.aggregate.over_all(total_count=True, filters=where))
        return int(result.total_count or 0)

    def fetch(self, name: str, ids: Sequence[str]) -> list[Record]:
        from weaviate.classes.query import Filter as WFilter

        self._info(name)
        wanted = list(dict.fromkeys(ids))
        found: dict[str, Record] = {}
        coll = self._collection(name)
        for start in range(0, len(wanted), PAGE):
            uuids = [object_uuid(i) for i in wanted[start:start + PAGE]]
            page = self._conn.call("fetch", lambda: coll.query.fetch_objects(
                filters=WFilter.by_id().contains_any(uuids), limit=len(uuids), include_vector=True))
            for obj in page.objects:
                record_id, props = split_properties(obj.properties)
                vector = obj.vector.get(VECTOR) if isinstance(obj.vector, dict) else obj.vector
                found[record_id] = record_from_flat(record_id, vector or [], props)
        return [found[i] for i in wanted if i in found]

    def chunk_ids(self, name: str, source: str | None = None) -> dict[str, set[str]]:
        """Pages through the whole collection with Weaviate's cursor (which takes no filter) and
        selects `source` here: one pass over the ids, whatever the collection's size."""
        self._info(name)
        coll = self._collection(name)
        result: dict[str, set[str]] = {}
        after = None
        while True:
            page = self._conn.call("list objects", lambda: coll.query.fetch_objects(
                limit=PAGE, after=after, return_properties=[ID_PROP, "doc_id", "source"]))
            for obj in page.objects:
                props = obj.properties
                if source is None or props.get("source") == source:
                    result.setdefault(str(props.get("doc_id", "")), set()).add(str(props.get(ID_PROP)))
            if len(page.objects) < PAGE:
                return result
            after = page.objects[-1].uuid

