"""Weaviate collections as stackwise lays them out: collection names, object uuids, properties,
the mapping of records onto objects and back, and filters fitted to a collection (pure; used by
adapters/vectors/weaviate.py; imports weaviate only when a filter is built).

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
"""

from __future__ import annotations

import json
import re
import uuid as uuidlib
from collections.abc import Iterable, Sequence
from typing import Any

from stackwise.errors import StoreError
from stackwise.vectors import Filter, Record, check_filter

from ._hosted import EXTRA_KEY

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
FILTER_VALUES = 1000  # values per contains_any filter
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



def new_properties(records: Sequence[Record], types: dict[str, str]) -> dict[str, str]:
    """The metadata keys of `records` that become new properties of a collection whose
    properties have `types`: key -> data type (Weaviate folds case: one key per spelling)."""
    new: dict[str, str] = {}
    for record in records:
        for key, value in record.metadata.items():
            if filterable_key(key) and key not in types and key not in new and _property_type(value):
                if not any(key.lower() == k.lower() for k in [*types, *new]):  # Weaviate folds case
                    new[key] = _property_type(value)  # type: ignore[assignment]
    return new


def object_properties(records: Sequence[Record], types: dict[str, str]) -> list[dict[str, Any]]:
    """Each record's Weaviate properties: metadata that fits a property of `types` as that
    property, the rest JSON-encoded under EXTRA_KEY."""
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


def collection_settings(dim: int, model: str, *, tenants: bool) -> dict[str, Any]:
    """The arguments of `collections.create`, but the name, for a new index: the built-in
    properties, the description stackwise reads back (`collection_meta`), one self-provided
    HNSW cosine vector, and multi-tenancy when `tenants`."""
    from weaviate.classes.config import Configure, DataType, Property, Tokenization, VectorDistances

    def text(prop: str, indexed: bool = True) -> Any:
        return Property(name=prop, data_type=DataType.TEXT, tokenization=Tokenization.FIELD,
                        index_searchable=False, index_filterable=indexed)

    properties = [text(ID_PROP), text("doc_id"), text("source"), Property(name="chunk", data_type=DataType.INT),
                  text("text", indexed=False), text(EXTRA_KEY, indexed=False)]
    return {
        "description": json.dumps({"stackwise": 1, "model": model, "dim": dim, "multi_tenant": tenants}),
        "properties": properties,
        "vector_config": Configure.Vectors.self_provided(
            name=VECTOR,
            vector_index_config=Configure.VectorIndex.hnsw(distance_metric=VectorDistances.COSINE)),
        "multi_tenancy_config": Configure.multi_tenancy(enabled=True) if tenants else None,
        # `is_none` filters (how $ne / $nin skip objects without the key) need it.
        "inverted_index_config": Configure.inverted_index(index_null_state=True),
    }


def id_filters(ids: Sequence[str] = (), doc_ids: Sequence[str] = ()) -> Iterable[Any]:
    """Filters selecting the objects of chunk `ids` and of documents `doc_ids`, FILTER_VALUES at a time."""
    from weaviate.classes.query import Filter as WFilter

    uuids = sorted({object_uuid(i) for i in ids})
    for start in range(0, len(uuids), FILTER_VALUES):
        yield WFilter.by_id().contains_any(uuids[start:start + FILTER_VALUES])
    docs = sorted(set(doc_ids))
    for start in range(0, len(docs), FILTER_VALUES):
        yield WFilter.by_property("doc_id").contains_any(docs[start:start + FILTER_VALUES])


def batches(sizes: list[int]) -> Iterable[list[int]]:
    """Positions of objects of these sizes, grouped into import requests of at most BATCH
    objects and BATCH_BYTES."""
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


def collection_meta(description: str | None) -> dict[str, Any] | None:
    try:
        meta = json.loads(description or "")
    except (json.JSONDecodeError, TypeError):
        return None
    return meta if isinstance(meta, dict) and meta.get("stackwise") and "model" in meta and "dim" in meta else None


def multi_tenant(config: Any) -> bool:
    # Kept in the description stackwise writes: the simple schema view omits multi-tenancy.
    return bool((collection_meta(config.description) or {}).get("multi_tenant"))


def property_data_type(prop: Any) -> str:
    value = getattr(prop.data_type, "value", str(prop.data_type))
    return {"text": "text", "text[]": "text[]", "number": "number", "boolean": "boolean", "int": "int"}.get(value, value)


def split_properties(properties: Any) -> tuple[str, dict[str, Any]]:
    """The chunk id, and the other properties as the flat mapping `_hosted` reads (unset ones dropped)."""
    props = {k: v for k, v in dict(properties).items() if v is not None}
    return str(props.pop(ID_PROP, "")), props
