"""The Weaviate vector store adapter (weaviate-client v4: REST for the schema, gRPC for data).

Layout: one Weaviate **collection per logical index**. Collection names must start with an
uppercase letter and Weaviate refuses two names that differ only in case, so the index name is
mapped reversibly and case-safely: `Stackwise_` + the name with lowercase letters and digits
kept, and `_` -> `_0`, `-` -> `_1`, `.` -> `_2`, an uppercase letter X -> `_3x`
(`kb` -> `Stackwise_kb`, `docs-v2` -> `Stackwise_docs_1v2`). The collection's description holds
`{"stackwise": 1, "model", "dim", "multi_tenant"}`, so `check_same_model` works across clients.

Vectors are brought by stackwise (one self-provided named vector `default`, HNSW, cosine).
Each chunk is one object whose uuid is uuid5 of the chunk id; properties: `record_id` (the
chunk id), `doc_id`, `source` (text, field tokenization, so equality is exact), `chunk`
(int), `text` (stored, not indexed) and the user's metadata. A metadata key becomes its own
property when it is a valid Weaviate property name (letters, digits, '_'; not a built-in name):
strings are text (field tokenization), lists of strings text[], numbers number, booleans
boolean; properties are added to the collection when a key is first written. Values that do
not fit (nested objects, null, keys with '.' or '-', a value of another type than the key's
property) are kept JSON-encoded under `stackwise_extra`: returned intact, not filterable.
The portable filter is translated by `weaviate_filters.to_weaviate` after `to_weaviate_filter`
fits it to the collection's property types (see there).

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
import os
import random
import re
import threading
import time
import uuid as uuidlib
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from stackwise.errors import ConfigError, StoreError
from stackwise.registry import require
from stackwise.vectors import Filter, Hit, IndexInfo, Record, VectorStore, check_dimensions, check_filter, check_same_model

from ._hosted import (
    EXTRA_KEY,
    check_index_name,
    hit_from_flat,
    record_from_flat,
    redact,
    resolve_secret,
    with_retries,
)

if TYPE_CHECKING:
    from stackwise.contract import VectorStoreOutput

PREFIX = "Stackwise_"
VECTOR = "default"
ID_PROP = "record_id"
BUILTIN_PROPS = (ID_PROP, "doc_id", "source", "chunk", "text", EXTRA_KEY)
# Weaviate's reserved property names and its property name rule.
_RESERVED = {"id", "_id", "_additional", "vector", "vectors"}
_PROP = re.compile(r"^[_A-Za-z][_0-9A-Za-z]{0,230}$")
# A fixed namespace: the same chunk id maps to the same object uuid in every client.
_NAMESPACE = uuidlib.UUID("6f1c1c3e-0c7a-5d2a-9b1e-5374636b7769")
BATCH = 500  # objects per BatchObjects request (Weaviate suggests 100-1000)
BATCH_BYTES = 8 * 1024 * 1024  # under the default 10 MB gRPC message limit
PAGE = 1000  # objects per read page; QUERY_MAXIMUM_RESULTS defaults to 10,000
FILTER_VALUES = 1000  # values per contains_any filter
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}
_RETRY_GRPC = {"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}
_ESCAPES = {"_": "_0", "-": "_1", ".": "_2"}


def collection_name(index: str) -> str:
    """The Weaviate collection of a stackwise index (reversible, unique under case folding)."""
    out = []
    for ch in index:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch.isupper():
            out.append("_3" + ch.lower())
        else:
            out.append(ch)
    return PREFIX + "".join(out)


def index_name(collection: str) -> str | None:
    """The stackwise index of a collection name, or None for collections stackwise did not name."""
    if not collection.startswith(PREFIX):
        return None
    body, out, i = collection[len(PREFIX):], [], 0
    while i < len(body):
        if body[i] != "_":
            out.append(body[i])
            i += 1
        elif body[i + 1:i + 2] == "3" and i + 2 < len(body):
            out.append(body[i + 2].upper())
            i += 3
        elif body[i + 1:i + 2] in ("0", "1", "2"):
            out.append("_-."[int(body[i + 1])])
            i += 2
        else:
            return None
    return "".join(out)


def object_uuid(record_id: str) -> str:
    """Weaviate objects need uuids: uuid5 of the chunk id (stable, so re-upserts overwrite)."""
    return str(uuidlib.uuid5(_NAMESPACE, record_id))


def _property_type(value: Any) -> str | None:
    """The Weaviate data type a metadata value is stored as, or None if it goes to the extra."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return "text[]"
    return None


def _fits(data_type: str, value: Any) -> bool:
    return _property_type(value) == data_type


def filterable_key(key: str) -> bool:
    return bool(_PROP.fullmatch(key)) and key not in BUILTIN_PROPS and key.lower() not in _RESERVED


def _typed(expr: Any, types: dict[str, str]) -> Any:
    """The filter tree with values fitted to the collection's property types (pure).

    Weaviate refuses a value of another type than the property's (valueInt on a number
    property), so: numbers become floats on number properties; a value of another type than
    the property's can match nothing, so it is dropped (an `eq`/`in`/range left with nothing is
    False, a `ne`/`nin` left with nothing is "has the key"); a key with no property matches
    nothing. Returns a tree, True (no constraint) or False (matches nothing)."""
    from stackwise.filters import And, Cond, Or

    if isinstance(expr, (And, Or)):
        parts = [_typed(e, types) for e in expr.items]
        if isinstance(expr, And):
            if any(p is False for p in parts):
                return False
            parts = [p for p in parts if p is not True]
            return True if not parts else parts[0] if len(parts) == 1 else And(tuple(parts))
        if any(p is True for p in parts):
            return True
        parts = [p for p in parts if p is not False]
        return False if not parts else parts[0] if len(parts) == 1 else Or(tuple(parts))
    key, op, value = expr.key, expr.op, expr.value
    if key not in ("doc_id", "source") and not filterable_key(key):
        raise StoreError(
            f"metadata key {key!r} cannot be filtered in Weaviate",
            where="filter",
            fix="filter on keys made of letters, digits and '_' (Weaviate property names); "
            "other keys are stored but not filterable",
        )
    data_type = "text" if key in ("doc_id", "source") else types.get(key)
    if data_type is None:
        twin = next((k for k in types if k.lower() == key.lower()), None)
        if twin is not None:
            raise StoreError(
                f"metadata key {key!r} cannot be filtered in Weaviate: the collection has the property "
                f"{twin!r}, and Weaviate property names ignore case",
                where="filter", fix=f"filter on {twin!r}, or keep metadata keys distinct beyond case",
            )
        return False  # no object holds the key
    element = "text" if data_type == "text[]" else data_type
    if op in ("gt", "gte", "lt", "lte") and data_type not in ("text", "number"):
        return False  # ranges never match lists or booleans
    values = list(value) if op in ("in", "nin") else [value]
    fitted = [float(v) if element == "number" else v for v in values if _property_type(v) == element]
    if not fitted:
        return Cond(key, "exists", True) if op in ("ne", "nin") else False
    return Cond(key, op, tuple(fitted) if op in ("in", "nin") else fitted[0])


def to_weaviate_filter(filter: Filter | None, types: dict[str, str]) -> Any:
    """A `weaviate.classes.query.Filter` for a portable filter over a collection whose
    properties have `types` (pure). None for no filter; the string "nothing" when no object
    can match (callers skip the request).

    Leaves are translated by `weaviate_filters.to_weaviate`; this adds what depends on the
    collection: values fitted to the property types (`_typed`), and `$ne`/`$nin` on metadata
    keys ANDed with "the property is set" (`is_none(False)`, which needs the collection's
    `indexNullState`), so a record without the key never matches, as the portable filter says.
    """
    from weaviate.classes.query import Filter as WFilter

    from stackwise.filters import And, Cond, parse_filter

    from .weaviate_filters import to_weaviate

    check_filter(filter)
    expr = parse_filter(filter)
    if expr is None:
        return None
    typed = _typed(expr, types)
    if typed is True:
        return None
    if typed is False:
        return "nothing"

    def build(node: Any) -> Any:
        if isinstance(node, Cond):
            if node.op == "exists":
                return WFilter.by_property(node.key).is_none(False)
            leaf = to_weaviate(node)
            if node.op in ("ne", "nin") and node.key not in ("doc_id", "source"):
                return WFilter.all_of([WFilter.by_property(node.key).is_none(False), leaf])
            return leaf
        parts = [build(e) for e in node.items]
        return WFilter.all_of(parts) if isinstance(node, And) else WFilter.any_of(parts)

    return build(typed)


def _grpc_code(exc: BaseException) -> str | None:
    """The gRPC status name behind a client exception (the client wraps RpcError)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        code = getattr(current, "code", None)
        if callable(code):
            try:
                value = code()
                return getattr(value, "name", None)
            except Exception:
                pass
        current = current.__cause__ or current.__context__
    return None


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def _retryable(exc: BaseException) -> bool:
    from weaviate.exceptions import (
        WeaviateConnectionError,
        WeaviateRetryError,
        WeaviateStartUpError,
        WeaviateTimeoutError,
    )

    if isinstance(exc, (WeaviateConnectionError, WeaviateTimeoutError, WeaviateRetryError)):
        return True
    if isinstance(exc, WeaviateStartUpError):  # /v1/meta unreachable (not: a version too old)
        return exc.__cause__ is not None
    status = _status(exc)
    if status is not None and not _grpc_code(exc):
        return status in _RETRY_STATUS
    return _grpc_code(exc) in _RETRY_GRPC


def parse_host(host: str) -> dict[str, Any]:
    """Connection settings from `vector_store.host` (see the module docstring); ConfigError if bad."""
    where = f"stack outputs vector_store.host = {host}"
    parts = urlsplit(host)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("the Weaviate host must be an http:// or https:// URL", where=where,
                          fix="set vectorStore.host to e.g. http://weaviate.internal:8080")
    secure = parts.scheme == "https"
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    unknown = set(query) - {"grpc_host", "grpc_port", "grpc_secure", "tenant"}
    if unknown:
        raise ConfigError(f"unknown Weaviate host parameter(s): {', '.join(sorted(unknown))}", where=where,
                          fix="use grpc_host, grpc_port, grpc_secure or tenant")
    cloud = parts.hostname.endswith((".weaviate.cloud", ".weaviate.network"))
    try:
        grpc_port = int(query.get("grpc_port") or (443 if secure else 50051))
    except ValueError:
        raise ConfigError(f"grpc_port {query['grpc_port']!r} is not a port number", where=where) from None
    grpc_secure = query.get("grpc_secure", "true" if secure else "false").lower()
    if grpc_secure not in ("true", "false"):
        raise ConfigError(f"grpc_secure must be true or false, not {grpc_secure!r}", where=where)
    tenant = query.get("tenant") or None
    if tenant is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", tenant):
        raise ConfigError(f"invalid Weaviate tenant name {tenant!r}", where=where,
                          fix="tenant names use letters, digits, '_' and '-' (at most 64)")
    return {
        "http_host": parts.hostname,
        "http_port": parts.port or (443 if secure else 80),
        "http_secure": secure,
        "grpc_host": query.get("grpc_host") or (f"grpc-{parts.hostname}" if cloud else parts.hostname),
        "grpc_port": grpc_port,
        "grpc_secure": grpc_secure == "true",
        "tenant": tenant,
    }


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
        self._settings = parse_host(config.host)
        self.tenant = tenant or self._settings.pop("tenant")
        self._settings.pop("tenant", None)
        self.host = config.host.split("?")[0]
        if config.api_key_secret:
            self._secret_ref = config.api_key_secret
            self._key: str | None = resolve_secret(config.api_key_secret, default_env="WEAVIATE_API_KEY",
                                                   what="Weaviate store")
        else:
            self._secret_ref = "$WEAVIATE_API_KEY"
            self._key = os.environ.get("WEAVIATE_API_KEY") or None
        self._attempts = attempts
        self._backoff = backoff
        self._timeout = timeout
        self._client = None
        self._lock = threading.Lock()
        self._infos: dict[str, IndexInfo] = {}
        self._types: dict[str, dict[str, str]] = {}  # index -> property -> data type

    def __repr__(self) -> str:
        return f"WeaviateStore(host={self.host!r}, tenant={self.tenant!r})"

    def close(self) -> None:
        """Close the REST and gRPC connections (also done when the store is garbage-collected)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- calls -------------------------------------------------------------------------------
    def _connect(self):
        """The client, connected on first use (`GET /v1/meta`); StoreError if that fails."""
        with self._lock:
            if self._client is None:
                import weaviate
                from weaviate.classes.init import AdditionalConfig, Auth, Timeout

                def connect():
                    return weaviate.connect_to_custom(
                        **self._settings,
                        auth_credentials=Auth.api_key(self._key) if self._key else None,
                        additional_config=AdditionalConfig(
                            timeout=Timeout(init=10, query=self._timeout, insert=self._timeout)),
                        skip_init_checks=True,  # no gRPC health probe, no PyPI version lookup
                    )

                try:
                    client = with_retries(connect, retryable=_retryable, attempts=self._attempts,
                                          backoff=self._backoff)
                except Exception as exc:
                    raise self._error("connect", exc) from None
                weakref.finalize(self, client.close)
                self._client = client
            return self._client

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        """One request, retried on throttling, server and connection errors; errors made clear."""
        def attempt():
            self._connect()
            return fn()

        try:
            return with_retries(attempt, retryable=_retryable, attempts=self._attempts, backoff=self._backoff)
        except StoreError:
            raise
        except Exception as exc:
            raise self._error(what, exc) from None

    def _error(self, what: str, exc: BaseException) -> StoreError:
        status, code = _status(exc), _grpc_code(exc)
        detail = redact(str(getattr(exc, "message", None) or exc), self._key)[:500]
        where = f"Weaviate at {self.host}"
        if status in (401, 403) or code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
            return StoreError(f"Weaviate rejected the API key ({status or code}) during {what}", where=where,
                              fix=f"check the key in {self._secret_ref} is valid for this Weaviate cluster")
        if _retryable(exc):
            return StoreError(
                f"Weaviate kept failing ({status or code or type(exc).__name__}) during {what} "
                f"after {self._attempts} attempts: {detail}",
                where=where,
                fix="Weaviate is throttling or unavailable: retry later (writes are idempotent, "
                "so rerunning the same command completes the work)",
            )
        return StoreError(f"Weaviate {what} failed ({status or code or type(exc).__name__}): {detail}", where=where,
                          fix="check that the host and gRPC port are reachable and the cluster is healthy")

    def _where(self, name: str) -> str:
        tenant = f", tenant {self.tenant!r}" if self.tenant else ""
        return f"collection {collection_name(name)}{tenant} in Weaviate at {self.host}"

    def _collection(self, name: str):
        coll = self._connect().collections.use(collection_name(name))
        return coll.with_tenant(self.tenant) if self.tenant else coll

    # -- indexes -----------------------------------------------------------------------------
    def _configs(self) -> dict[str, Any]:
        """index name -> simple collection config, for the collections stackwise created."""
        configs = self._call("list collections", lambda: self._connect().collections.list_all(simple=True))
        found = {}
        for coll_name, config in configs.items():
            index = index_name(coll_name)
            if index is not None and _meta(config.description) is not None:
                found[index] = config
        return found

    def _tenants(self, name: str) -> set[str]:
        coll = self._connect().collections.use(collection_name(name))
        return set(self._call("list tenants", lambda: coll.tenants.get()))

    def list_indexes(self) -> list[str]:
        configs = self._configs()
        if self.tenant is None:
            return sorted(n for n, c in configs.items() if not _multi_tenant(c))
        return sorted(n for n, c in configs.items() if _multi_tenant(c) and self.tenant in self._tenants(n))

    def _remember(self, name: str, config: Any) -> IndexInfo:
        meta = _meta(config.description)
        if meta is None:
            raise StoreError(f"collection {config.name} was not created by stackwise", where=self._where(name),
                             fix="choose another --index name")
        if _multi_tenant(config) != (self.tenant is not None):
            raise StoreError(
                f"collection {config.name} is {'' if _multi_tenant(config) else 'not '}multi-tenant, "
                f"this store is {'set to tenant ' + repr(self.tenant) if self.tenant else 'not set to a tenant'}",
                where=self._where(name),
                fix="add ?tenant=NAME to vector_store.host for multi-tenant collections (or remove it), "
                "or choose another --index name",
            )
        info = IndexInfo(name=name, dim=int(meta["dim"]), model=str(meta["model"]), count=0)
        self._infos[name] = info
        self._types[name] = {p.name: _data_type(p) for p in config.properties}
        return info

    def _config(self, name: str) -> Any | None:
        coll = self._connect().collections.use(collection_name(name))
        exists = self._call("collection lookup", lambda: coll.exists())
        if not exists:
            return None
        return self._call("collection lookup", lambda: coll.config.get(simple=True))

    def _info(self, name: str) -> IndexInfo:
        cached = self._infos.get(name)
        if cached is not None:
            return cached
        check_index_name(name, f"Weaviate at {self.host}")
        config = self._config(name)
        if config is None or (self.tenant and _multi_tenant(config) and self.tenant not in self._tenants(name)):
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

            coll = self._connect().collections.use(collection_name(name))
            self._call("create tenant", lambda: coll.tenants.create([Tenant(name=self.tenant)]))
        return self.describe(name)

    def _create_collection(self, name: str, dim: int, model: str) -> Any:
        from weaviate.classes.config import Configure, DataType, Property, Tokenization, VectorDistances

        def text(prop: str, indexed: bool = True) -> Any:
            return Property(name=prop, data_type=DataType.TEXT, tokenization=Tokenization.FIELD,
                            index_searchable=False, index_filterable=indexed)

        properties = [text(ID_PROP), text("doc_id"), text("source"), Property(name="chunk", data_type=DataType.INT),
                      text("text", indexed=False), text(EXTRA_KEY, indexed=False)]
        client = self._connect()
        try:
            self._call("create collection", lambda: client.collections.create(
                collection_name(name),
                description=json.dumps({"stackwise": 1, "model": model, "dim": dim,
                                        "multi_tenant": self.tenant is not None}),
                properties=properties,
                vector_config=Configure.Vectors.self_provided(
                    name=VECTOR,
                    vector_index_config=Configure.VectorIndex.hnsw(distance_metric=VectorDistances.COSINE)),
                multi_tenancy_config=Configure.multi_tenancy(enabled=True) if self.tenant else None,
                # `is_none` filters (how $ne / $nin skip objects without the key) need it.
                inverted_index_config=Configure.inverted_index(index_null_state=True),
            ))
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
        if config is None or _meta(config.description) is None:
            return
        client = self._connect()
        if self.tenant and _multi_tenant(config):
            coll = client.collections.use(collection_name(name))
            if self.tenant in self._tenants(name):
                self._call("remove tenant", lambda: coll.tenants.remove([self.tenant]))
            if self._tenants(name):
                return  # other tenants keep their data
        self._call("delete collection", lambda: client.collections.delete(collection_name(name)))

    # -- writes ------------------------------------------------------------------------------
    def _properties_for(self, name: str, records: Sequence[Record]) -> list[dict[str, Any]]:
        """Each record's Weaviate properties; adds properties for metadata keys seen first."""
        from weaviate.classes.config import DataType, Property, Tokenization

        types = self._types[name]
        new: dict[str, str] = {}
        for record in records:
            for key, value in record.metadata.items():
                if filterable_key(key) and key not in types and key not in new and _property_type(value):
                    if not any(key.lower() == k.lower() for k in [*types, *new]):  # Weaviate folds case
                        new[key] = _property_type(value)  # type: ignore[assignment]
        if new:
            coll = self._connect().collections.use(collection_name(name))
            kinds = {"text": DataType.TEXT, "text[]": DataType.TEXT_ARRAY, "number": DataType.NUMBER,
                     "boolean": DataType.BOOL}
            for key, data_type in new.items():
                prop = Property(name=key, data_type=kinds[data_type],
                                tokenization=Tokenization.FIELD if data_type.startswith("text") else None,
                                index_searchable=False)
                try:
                    self._call("add property", lambda: coll.config.add_property(prop))
                except StoreError:
                    # A concurrent writer may have added it: take the schema as it is now.
                    self._infos.pop(name, None)
                    self._info(name)
                    types = self._types[name]
                    if key not in types:
                        raise
                    continue
                types[key] = data_type
        rows = []
        for record in records:
            extra = {}
            props: dict[str, Any] = {ID_PROP: record.id, "doc_id": record.doc_id, "source": record.source,
                                     "chunk": int(record.chunk), "text": record.text}
            for key, value in record.metadata.items():
                if filterable_key(key) and key in types and _fits(types[key], value):
                    props[key] = float(value) if types[key] == "number" else value
                else:
                    extra[key] = value
            if extra:
                props[EXTRA_KEY] = json.dumps(extra, sort_keys=True, default=str)
            rows.append(props)
        return rows

    def _batches(self, items: list[Any], sizes: list[int]) -> Iterable[list[int]]:
        current: list[int] = []
        size = 0
        for i, item_size in enumerate(sizes):
            if current and (len(current) >= BATCH or size + item_size > BATCH_BYTES):
                yield current
                current, size = [], 0
            current.append(i)
            size += item_size
        if current:
            yield current

    def _insert(self, coll: Any, objects: list[Any]) -> dict[int, str]:
        """Send one batch; returns position -> error for the objects Weaviate did not store.
        Raises StoreError when the request itself failed (after its retries)."""
        from weaviate.exceptions import WeaviateInsertManyAllFailedError

        def send() -> Any:
            try:
                return coll.data.insert_many(objects)
            except WeaviateInsertManyAllFailedError as exc:  # every object has its own error
                return exc

        result = self._call("batch import", send)
        if isinstance(result, WeaviateInsertManyAllFailedError):
            return {i: redact(str(result), self._key)[:300] for i in range(len(objects))}
        return {i: redact(err.message, self._key) for i, err in result.errors.items()}

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
        for positions in self._batches(objects, sizes):
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
            result = self._call("delete", lambda: coll.data.delete_many(where=where))
            if result.failed:
                raise StoreError(f"Weaviate failed to delete {result.failed} of {result.matches} objects",
                                 where=self._where(name), fix="rerun the same command: deletes are idempotent")
            removed += result.successful
            if not result.matches or not result.successful:
                return removed

    def _ids_filters(self, ids: Sequence[str] = (), doc_ids: Sequence[str] = ()) -> Iterable[Any]:
        from weaviate.classes.query import Filter as WFilter

        uuids = sorted({object_uuid(i) for i in ids})
        for start in range(0, len(uuids), FILTER_VALUES):
            yield WFilter.by_id().contains_any(uuids[start:start + FILTER_VALUES])
        docs = sorted(set(doc_ids))
        for start in range(0, len(docs), FILTER_VALUES):
            yield WFilter.by_property("doc_id").contains_any(docs[start:start + FILTER_VALUES])

    def delete(self, name: str, ids: Sequence[str] = (), doc_ids: Sequence[str] = ()) -> int:
        self._info(name)
        return sum(self._delete_where(name, where) for where in self._ids_filters(ids, doc_ids))

    def _doc_chunk_ids(self, name: str, doc_ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        coll = self._collection(name)
        for where in self._ids_filters(doc_ids=doc_ids):
            offset = 0
            while True:
                page = self._call("fetch", lambda: coll.query.fetch_objects(
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
        result = self._call("query", lambda: coll.query.near_vector(
            near_vector=[float(v) for v in vector], limit=max(1, k), filters=where, target_vector=VECTOR,
            return_metadata=MetadataQuery(distance=True)))
        hits = []
        for obj in result.objects:
            record_id, props = _clean(obj.properties)
            # cosine distance is 1 - cosine similarity
            hits.append(hit_from_flat(record_id, 1.0 - float(obj.metadata.distance or 0.0), props))
        return hits[:k]

    def count(self, name: str, filter: Filter | None = None) -> int:
        self._info(name)
        where = self._filter(name, filter)
        if where == "nothing":
            return 0
        coll = self._collection(name)
        result = self._call("count", lambda: coll.aggregate.over_all(total_count=True, filters=where))
        return int(result.total_count or 0)

    def fetch(self, name: str, ids: Sequence[str]) -> list[Record]:
        from weaviate.classes.query import Filter as WFilter

        self._info(name)
        wanted = list(dict.fromkeys(ids))
        found: dict[str, Record] = {}
        coll = self._collection(name)
        for start in range(0, len(wanted), PAGE):
            uuids = [object_uuid(i) for i in wanted[start:start + PAGE]]
            page = self._call("fetch", lambda: coll.query.fetch_objects(
                filters=WFilter.by_id().contains_any(uuids), limit=len(uuids), include_vector=True))
            for obj in page.objects:
                record_id, props = _clean(obj.properties)
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
            page = self._call("list objects", lambda: coll.query.fetch_objects(
                limit=PAGE, after=after, return_properties=[ID_PROP, "doc_id", "source"]))
            for obj in page.objects:
                props = obj.properties
                if source is None or props.get("source") == source:
                    result.setdefault(str(props.get("doc_id", "")), set()).add(str(props.get(ID_PROP)))
            if len(page.objects) < PAGE:
                return result
            after = page.objects[-1].uuid


def _meta(description: str | None) -> dict[str, Any] | None:
    try:
        meta = json.loads(description or "")
    except (json.JSONDecodeError, TypeError):
        return None
    return meta if isinstance(meta, dict) and meta.get("stackwise") and "model" in meta and "dim" in meta else None


def _multi_tenant(config: Any) -> bool:
    # Kept in the description stackwise writes: the simple schema view omits multi-tenancy.
    return bool((_meta(config.description) or {}).get("multi_tenant"))


def _data_type(prop: Any) -> str:
    value = getattr(prop.data_type, "value", str(prop.data_type))
    return {"text": "text", "text[]": "text[]", "number": "number", "boolean": "boolean", "int": "int"}.get(value, value)


def _clean(properties: Any) -> tuple[str, dict[str, Any]]:
    """The chunk id, and the other properties as the flat mapping `_hosted` reads (unset ones dropped)."""
    props = {k: v for k, v in dict(properties).items() if v is not None}
    return str(props.pop(ID_PROP, "")), props
