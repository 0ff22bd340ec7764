"""The `VectorStore` interface every vector store adapter implements.

Behaviour every implementation guarantees (checked by `stackwise.testing.vector_store`):
- an index is created with a dimension and an embedding model name, and refuses vectors of
  another dimension (`StoreError`), so an index never mixes embedding models;
- `upsert` is idempotent: writing the same records again changes nothing;
- `replace_documents(name, doc_ids, records)` leaves, for each listed document, exactly the
  given chunks; a store that can do it atomically does (the embedded store commits it as one
  version), others converge when the same call is repeated after a crash;
- queries return at most `k` hits, best first, with scores in [-1, 1] (cosine similarity),
  and apply the filter before ranking, never after;
- deletes are idempotent; data persists across processes;
- index names follow one rule everywhere (`check_index_name`, the rule of `IndexSpec.index`):
  every adapter's `create_index` refuses another name before the store sees it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    from .contract import VectorStoreOutput

Scalar = Union[str, int, float, bool]
FilterValue = Union[Scalar, Sequence[Scalar]]
# A portable filter: {key: value} means equality, {key: [v1, v2]} means "in", and
# {key: {"$gte": 1, "$lt": 5}}, {"$and": [...]}, {"$or": [...]} the rest (`stackwise.filters`).
# Keys are `doc_id`, `source` or a metadata field.
Filter = Mapping[str, Any]

RESERVED_FIELDS = ("id", "doc_id", "source", "chunk", "text", "vector")


@dataclass(frozen=True)
class Record:
    """One chunk: its id, vector, text, the document it came from, and metadata."""

    id: str
    vector: Sequence[float]
    text: str
    doc_id: str
    source: str = ""
    chunk: int = 0
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    """A query result: similarity score (cosine, higher is closer) and the stored chunk."""

    id: str
    score: float
    text: str
    doc_id: str
    source: str
    chunk: int
    metadata: Mapping[str, Any]


@dataclass(frozen=True)
class IndexInfo:
    name: str
    dim: int
    model: str
    count: int


def check_filter(filter: Filter | None) -> dict[str, Any]:
    """Validate a portable filter (`stackwise.filters`); returns it as a plain dict, any-of
    values as lists. Raises SpecError naming the bad key, operator or value."""
    from .filters import parse_filter

    if not filter:
        return {}
    parse_filter(filter)
    return {k: list(v) if isinstance(v, (list, tuple, set, frozenset)) else v for k, v in filter.items()}


def check_index_name(name: str, where: str) -> str:
    """Refuse an index name that breaks the one rule of index names (StoreError): 1-63 lowercase
    letters, digits, '-' or '_', starting with a letter or digit (`stackwise.specs.INDEX_NAME`).

    `index`, `index copy`, `search`, `indexes drop`/`rebuild` and every adapter's `create_index`
    check it, so a name one command accepts is a name every command accepts."""
    from .errors import StoreError
    from .specs import INDEX_NAME
    from .userinput import shorten

    if not isinstance(name, str) or not INDEX_NAME.fullmatch(name):
        raise StoreError(
            f"index name {shorten(name)} is invalid",
            where=where,
            fix="use 1-63 lowercase letters, digits, '-' or '_', starting with a letter or digit (e.g. 'kb-2024')",
        )
    return name


def check_same_model(info: IndexInfo, dim: int, model: str, where: str) -> None:
    """Refuse to reuse an index built for another dimension or embedding model (StoreError)."""
    from .errors import StoreError

    if info.dim != dim or info.model != model:
        raise StoreError(
            f"index {info.name!r} holds {info.dim}-dimensional vectors of {info.model!r}, "
            f"not {dim}-dimensional vectors of {model!r}",
            where=where,
            fix="index with the same embedding model, or choose another --index name",
        )


def check_dimensions(records: Iterable[Record], dim: int, where: str) -> None:
    """Refuse records whose vectors do not have the index's dimension (StoreError)."""
    from .errors import StoreError

    for record in records:
        if len(record.vector) != dim:
            raise StoreError(
                f"vector of chunk {record.id!r} has {len(record.vector)} dimensions, the index has {dim}",
                where=where,
                fix="index with the embedding model the index was created with",
            )


def parse_filter_args(items: Iterable[str]) -> dict[str, Any]:
    """Parse CLI `--filter` items (`key=v`, `key=a,b`, `key!=v`, `key>v`, `key>=v`, `key<v`,
    `key<=v`; ANDed) into a portable filter; numbers and booleans are typed."""
    from .filters import parse_filter_args as parse

    return parse(items)


class VectorStore(ABC):
    """A vector store holding named indexes (tables, namespaces or collections)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Every adapter's create_index checks the one name rule first, whatever the store accepts.
        super().__init_subclass__(**kwargs)
        create = cls.__dict__.get("create_index")
        if create is not None and not getattr(create, "_checks_name", False):
            import functools

            @functools.wraps(create)
            def create_index(self: "VectorStore", name: str, *args: Any, **kwargs: Any) -> IndexInfo:
                check_index_name(name, where=f"{type(self).__name__}.create_index")
                return create(self, name, *args, **kwargs)

            create_index._checks_name = True  # type: ignore[attr-defined]
            cls.create_index = create_index  # type: ignore[method-assign]

    @abstractmethod
    def list_indexes(self) -> list[str]: ...

    @abstractmethod
    def create_index(self, name: str, dim: int, model: str) -> IndexInfo:
        """Create the index, or return it if it exists with the same dim and model (else StoreError)."""

    @abstractmethod
    def describe(self, name: str) -> IndexInfo:
        """Dimension, model and row count; StoreError if the index does not exist."""

    def model_of(self, name: str) -> str:
        """The embedding model the index records (what `search` embeds queries with); StoreError
        if the index does not exist. Stores may answer it more cheaply than `describe`."""
        return self.describe(name).model

    @abstractmethod
    def drop_index(self, name: str) -> None:
        """Remove the index and all its data; no error if it does not exist."""

    @abstractmethod
    def upsert(self, name: str, records: Sequence[Record]) -> None: ...

    @abstractmethod
    def delete(self, name: str, ids: Sequence[str] = (), doc_ids: Sequence[str] = ()) -> int:
        """Delete chunks by id and by document; returns how many were removed."""

    @abstractmethod
    def query(self, name: str, vector: Sequence[float], k: int = 10, filter: Filter | None = None) -> list[Hit]: ...

    @abstractmethod
    def count(self, name: str, filter: Filter | None = None) -> int: ...

    @abstractmethod
    def fetch(self, name: str, ids: Sequence[str]) -> list[Record]:
        """The stored records with these ids (missing ids are skipped), vectors included."""

    @abstractmethod
    def chunk_ids(self, name: str, source: str | None = None) -> dict[str, set[str]]:
        """doc_id -> ids of its stored chunks, for all documents or those indexed from `source`."""

    def replace_documents(self, name: str, doc_ids: Sequence[str], records: Sequence[Record]) -> None:
        """Make the stored chunks of `doc_ids` exactly `records`.

        Default: upsert, then delete the chunks no longer present. Not atomic, but repeating the
        call after a crash converges; stores that can commit both at once override this.
        """
        keep = {r.id for r in records}
        wanted = set(doc_ids)
        stale = [i for doc, ids in self.chunk_ids(name).items() if doc in wanted for i in ids if i not in keep]
        if records:
            self.upsert(name, records)
        if stale:
            self.delete(name, ids=stale)

    def optimize(self, name: str) -> None:
        """Compact and (re)build search indexes where the engine needs it; a no-op by default."""

    def needs_optimize(self, name: str) -> bool:
        """Whether `optimize` has work left on `name` (a run killed before or inside it left
        small commits uncompacted or indexes unbuilt): the index workload then optimizes even
        when it has nothing to write. Read-only; False by default (stores that index themselves)."""
        return False

    def recover(self, name: str) -> int | None:
        """Bring a damaged index (a data file deleted or corrupt) back to its last good version;
        return that version, or None when the index was not damaged. StoreError naming the index
        and `stackwise indexes rebuild` when no good version is left.

        Default: None. Hosted stores keep their own replicas; only stores whose files stackwise
        writes (the embedded store) can be damaged under it."""
        return None


def open_store(config: "VectorStoreOutput") -> VectorStore:
    """The adapter for a stack's vector store output (imported lazily)."""
    from .registry import VECTOR_STORES, load

    cls = load(VECTOR_STORES, config.kind, "vector store")
    if VECTOR_STORES[config.kind].hosted:
        return cls(config)
    return cls(config.uri)
