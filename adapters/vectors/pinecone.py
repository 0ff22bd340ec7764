"""The Pinecone vector store adapter (the `pinecone` SDK, data-plane REST).

Layout in one Pinecone index (the stack's `vector_store.host`, provisioned by infra/):
- each logical stackwise index is a **namespace** of that index;
- a reserved catalog namespace, `__stackwise_catalog__`, holds one record per logical index
  (id = the index name, metadata = its dimension and embedding model). A catalog record, not
  a marker record inside the namespace, because Pinecone namespaces exist only while they
  hold vectors (an empty index must still be listed and described), and a marker inside the
  namespace would take part in every query, count and delete. The index-wide dimension from
  `describe_index_stats` is checked too: a Pinecone index holds one dimension only.

Each chunk is one vector; its doc_id, source, chunk number, text and the user's metadata are
flat Pinecone metadata, so the portable filter translates to Pinecone's filter language
(`to_pinecone_filter`, i.e. `pinecone_filters.to_pinecone`). Upserts are split under Pinecone's request limits (1,000 vectors,
2 MB) and sent in parallel; every request is retried with backoff on 429, 5xx and connection
errors (the SDK retries each request a few times itself; this adapter retries again
across longer outages). A batch that still fails raises a StoreError that says how many
records were not written; upserts are idempotent, so rerunning the same call completes it.

The API key comes from the stack's secret reference (`env://NAME`) or `$PINECONE_API_KEY`;
it is sent only in the `Api-Key` header and is redacted from every message this module raises.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from stackwise.errors import SpecError, StoreError
from stackwise.registry import require
from stackwise.filters import Expr, parse_filter
from stackwise.vectors import Filter, Hit, IndexInfo, Record, VectorStore, check_dimensions, check_same_model

from ._hosted import (
    check_index_name,
    flat_metadata,
    hit_from_flat,
    record_from_flat,
    redact,
    resolve_secret,
    with_retries,
)
from .pinecone_filters import to_pinecone

if TYPE_CHECKING:
    from stackwise.contract import VectorStoreOutput

log = logging.getLogger(__name__)

CATALOG = "__stackwise_catalog__"
# Pinecone's data-plane limits (docs.pinecone.io, "Operation limits"): per upsert request at
# most 1,000 vectors and 2 MB; ids per fetch are bounded by the URL length; 10,000 per page of
# fetch_by_metadata; top_k at most 10,000 and a query response of at most 4 MB; 1,000 ids per
# delete request; 40 KB of metadata per record.
MAX_UPSERT_VECTORS = 1000
MAX_UPSERT_BYTES = 2 * 1024 * 1024
FETCH_IDS = 100
DELETE_IDS = 1000
PAGE = 1000
MAX_TOP_K = 10_000
MAX_QUERY_RESPONSE_BYTES = 4 * 1024 * 1024
# Every query includes metadata (the chunk text), so each match carries up to a few KB: 1,000
# matches of 4 KB chunks already fill the 4 MB response. Larger k is refused before any request
# (a clear error, not Pinecone's 400 or a silent clamp); a response that still exceeds 4 MB
# (chunks of tens of KB) is reported with the same fix.
MAX_TOP_K_WITH_METADATA = 1000
PARALLEL_UPSERTS = 4
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}
_TOO_LARGE = re.compile(r"4\s*MB|response size|too large|exceeds", re.IGNORECASE)


def to_pinecone_filter(filter: Filter | Expr | None) -> dict[str, Any] | None:
    """Translate a portable filter into Pinecone's metadata filter language (pure;
    `pinecone_filters.to_pinecone`). Pinecone matches a list-valued field when the list
    contains the value, as the embedded store does; string ranges are refused (SpecError)."""
    return to_pinecone(parse_filter(filter))


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def _retryable(exc: BaseException) -> bool:
    from pinecone.errors.exceptions import PineconeConnectionError, PineconeTimeoutError

    return isinstance(exc, (PineconeConnectionError, PineconeTimeoutError)) or _status(exc) in _RETRY_STATUS


class PineconeStore(VectorStore):
    """Logical indexes as namespaces of one Pinecone index (see the module docstring)."""

    def __init__(
        self,
        config: "VectorStoreOutput",
        *,
        attempts: int = 5,
        backoff: float = 1.0,
        parallel: int = PARALLEL_UPSERTS,
        timeout: float = 30.0,
    ):
        pinecone = require("pinecone", "pinecone", "the Pinecone vector store")
        if not config.host:
            raise StoreError(
                "the stack's Pinecone vector store has no host",
                where="stack outputs vector_store.host",
                fix="export the index host (e.g. https://kb-abc123.svc.pinecone.io) as vector_store.host",
            )
        self.host = config.host
        self._secret_ref = config.api_key_secret or "$PINECONE_API_KEY"
        self._key = resolve_secret(config.api_key_secret, default_env="PINECONE_API_KEY", what="Pinecone store")
        self._attempts = attempts
        self._backoff = backoff
        self._parallel = parallel
        self._index = pinecone.Index(host=self.host, api_key=self._key, timeout=timeout)
        self._infos: dict[str, IndexInfo] = {}

    def __repr__(self) -> str:
        return f"PineconeStore(host={self.host!r})"

    # -- calls -------------------------------------------------------------------------------
    def _call(self, what: str, fn, *args, **kwargs):
        """One data-plane call, retried on throttling and server errors; errors made clear."""
        try:
            return with_retries(lambda: fn(*args, **kwargs), retryable=_retryable,
                                attempts=self._attempts, backoff=self._backoff)
        except StoreError:
            raise
        except Exception as exc:
            raise self._error(what, exc) from None

    def _error(self, what: str, exc: BaseException) -> StoreError:
        status = _status(exc)
        detail = redact(str(getattr(exc, "message", None) or exc), self._key)[:500]
        where = f"Pinecone index at {self.host}"
        if status in (401, 403):
            return StoreError(f"Pinecone rejected the API key ({status}) during {what}", where=where,
                              fix=f"check the key in {self._secret_ref} belongs to the project of this index")
        if status == 404:
            return StoreError(f"Pinecone index not found at {self.host} during {what}: {detail}", where=where,
                              fix="check vector_store.host in the stack outputs (re-run `stackwise sync`)")
        if status is not None and status in _RETRY_STATUS:
            return StoreError(
                f"Pinecone kept failing with HTTP {status} during {what} after {self._attempts} attempts: {detail}",
                where=where,
                fix="Pinecone is throttling or unavailable: retry later (upserts are idempotent, "
                "so rerunning the same command completes the work)",
            )
        if status is not None:
            return StoreError(f"Pinecone refused {what} (HTTP {status}): {detail}", where=where)
        return StoreError(f"Pinecone {what} failed: {type(exc).__name__}: {detail}", where=where,
                          fix="check that the host is reachable from this machine")

    # -- catalog -----------------------------------------------------------------------------
    def _stats(self):
        return self._call("describe_index_stats", self._index.describe_index_stats)

    def _catalog_entry(self, name: str) -> IndexInfo | None:
        fetched = self._call("fetch", self._index.fetch, ids=[name], namespace=CATALOG)
        vector = fetched.vectors.get(name)
        if vector is None:
            return None
        meta = vector.metadata or {}
        return IndexInfo(name=name, dim=int(meta.get("dim", 0)), model=str(meta.get("model", "")), count=0)

    def _info(self, name: str) -> IndexInfo:
        cached = self._infos.get(name)
        if cached is None:
            cached = self._catalog_entry(check_index_name(name, self._where(name)))
            if cached is None:
                raise StoreError(
                    f"index {name!r} does not exist",
                    where=self._where(name),
                    fix=f"create it with `stackwise index SOURCE --index {name}`; existing: "
                    + (", ".join(self.list_indexes()) or "none"),
                )
            self._infos[name] = cached
        return cached

    def _where(self, name: str) -> str:
        return f"namespace {name!r} of the Pinecone index at {self.host}"

    def list_indexes(self) -> list[str]:
        names: list[str] = []
        token = None
        while True:
            page = self._call("list", self._index.list_paginated, namespace=CATALOG, limit=100,
                              pagination_token=token)
            names.extend(item.id for item in page.vectors if item.id)
            token = page.pagination.next if page.pagination else None
            if not token:
                return sorted(names)

    def create_index(self, name: str, dim: int, model: str) -> IndexInfo:
        check_index_name(name, self._where(name))
        existing = self._catalog_entry(name)
        if existing is not None:
            check_same_model(existing, dim, model, where=self._where(name))
            self._infos[name] = existing
            return self.describe(name)
        physical = self._stats().dimension
        if physical and physical != dim:
            raise StoreError(
                f"the Pinecone index holds {physical}-dimensional vectors; {model!r} makes {dim}-dimensional ones",
                where=f"Pinecone index at {self.host}",
                fix=f"use an embedding model with {physical} dimensions, or provision a Pinecone index "
                f"of dimension {dim} (metric cosine) for this stack",
            )
        # The catalog record needs a valid (non-zero) vector of the index's dimension.
        marker = [1.0] + [0.0] * (dim - 1)
        self._call("create_index", self._index.upsert,
                   vectors=[{"id": name, "values": marker, "metadata": {"dim": dim, "model": model}}],
                   namespace=CATALOG)
        info = IndexInfo(name=name, dim=dim, model=model, count=0)
        self._infos[name] = info
        return info

    def describe(self, name: str) -> IndexInfo:
        info = self._info(name)
        summary = self._stats().namespaces.get(name)
        return IndexInfo(name=name, dim=info.dim, model=info.model, count=summary.vector_count if summary else 0)

    def drop_index(self, name: str) -> None:
        check_index_name(name, self._where(name))
        for namespace, ids in ((name, None), (CATALOG, [name])):
            try:
                if ids is None:
                    self._call("drop_index", self._index.delete, delete_all=True, namespace=namespace)
                else:
                    self._call("drop_index", self._index.delete, ids=ids, namespace=namespace)
            except StoreError as exc:
                if "not found" not in exc.what:  # deleting what is not there is not an error
                    raise
        self._infos.pop(name, None)

    # -- writes ------------------------------------------------------------------------------
    def _batches(self, items: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        """Split upsert items so each request stays under Pinecone's count and size limits."""
        batches: list[list[dict[str, Any]]] = []
        current: list[dict[str, Any]] = []
        size = 0
        budget = int(MAX_UPSERT_BYTES * 0.9)  # room for the envelope and number formatting
        for item in items:
            item_size = len(json.dumps(item, separators=(",", ":"))) + 1
            if current and (len(current) >= MAX_UPSERT_VECTORS or size + item_size > budget):
                batches.append(current)
                current, size = [], 0
            current.append(item)
            size += item_size
        if current:
            batches.append(current)
        return batches

    def upsert(self, name: str, records: Sequence[Record]) -> None:
        if not records:
            return
        info = self._info(name)
        check_dimensions(records, info.dim, where=self._where(name))
        items = [{"id": r.id, "values": [float(v) for v in r.vector], "metadata": flat_metadata(r)} for r in records]
        batches = self._batches(items)

        def send(batch: list[dict[str, Any]]) -> StoreError | None:
            try:
                self._call("upsert", self._index.upsert, vectors=batch, namespace=name)
                return None
            except StoreError as exc:
                return exc

        if len(batches) == 1:
            errors = [send(batches[0])]
        else:
            with ThreadPoolExecutor(max_workers=min(self._parallel, len(batches))) as pool:
                errors = list(pool.map(send, batches))
        failed = [(b, e) for b, e in zip(batches, errors) if e is not None]
        if failed:
            lost = sum(len(b) for b, _ in failed)
            first = failed[0][1]
            raise StoreError(
                f"{lost} of {len(items)} records were not written to index {name!r} "
                f"({len(failed)} of {len(batches)} batches failed; first ids: "
                f"{', '.join(i['id'] for i in failed[0][0][:3])}): {first.what}",
                where=self._where(name),
                fix="rerun the same command: upserts are idempotent and only what is missing changes",
            )

    def _ids_matching(self, name: str, pinecone_filter: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """id -> metadata of every vector in the namespace that matches the filter."""
        found: dict[str, dict[str, Any]] = {}
        token = None
        while True:
            page = self._call("fetch_by_metadata", self._index.fetch_by_metadata, filter=pinecone_filter,
                              namespace=name, limit=PAGE, pagination_token=token)
            for vid, vector in page.vectors.items():
                found[vid] = dict(vector.metadata or {})
            token = page.pagination.next if page.pagination else None
            if not token:
                return found

    def _existing(self, name: str, ids: Sequence[str]) -> set[str]:
        present: set[str] = set()
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), FETCH_IDS):
            page = self._call("fetch", self._index.fetch, ids=unique[start:start + FETCH_IDS], namespace=name)
            present.update(page.vectors)
        return present

    def _doc_chunk_ids(self, name: str, doc_ids: Sequence[str]) -> set[str]:
        wanted = sorted(set(doc_ids))
        found: set[str] = set()
        for start in range(0, len(wanted), DELETE_IDS):  # keeps each $in list well under Pinecone's cap
            found |= set(self._ids_matching(name, {"doc_id": {"$in": wanted[start:start + DELETE_IDS]}}))
        return found

    def _delete_ids(self, name: str, ids: Sequence[str]) -> None:
        ordered = sorted(ids)
        for start in range(0, len(ordered), DELETE_IDS):
            self._call("delete", self._index.delete, ids=ordered[start:start + DELETE_IDS], namespace=name)

    def delete(self, name: str, ids: Sequence[str] = (), doc_ids: Sequence[str] = ()) -> int:
        self._info(name)
        doomed: set[str] = set()
        if ids:
            doomed |= self._existing(name, ids)
        if doc_ids:
            doomed |= self._doc_chunk_ids(name, doc_ids)
        self._delete_ids(name, doomed)
        return len(doomed)

    def replace_documents(self, name: str, doc_ids: Sequence[str], records: Sequence[Record]) -> None:
        """Upsert `records`, then delete the other chunks of `doc_ids` (looked up by document,
        not by listing the whole index). Not atomic; repeating the call after a crash converges."""
        self._info(name)
        keep = {r.id for r in records}
        stale = self._doc_chunk_ids(name, doc_ids) - keep if doc_ids else set()
        self.upsert(name, records)
        self._delete_ids(name, stale)

    # -- reads -------------------------------------------------------------------------------
    def query(self, name: str, vector: Sequence[float], k: int = 10, filter: Filter | None = None) -> list[Hit]:
        info = self._info(name)
        if len(vector) != info.dim:
            raise StoreError(
                f"query vector has {len(vector)} dimensions, index {name!r} has {info.dim}",
                where=self._where(name),
                fix=f"embed the query with {info.model!r}",
            )
        if k > MAX_TOP_K_WITH_METADATA:
            raise SpecError(
                f"k={k} hits asked of Pinecone index {name!r}: every hit carries its chunk text (metadata), "
                f"so at most {MAX_TOP_K_WITH_METADATA:,} are asked for, to stay within Pinecone's "
                f"{MAX_QUERY_RESPONSE_BYTES // (1024 * 1024)} MB query response limit",
                where=self._where(name),
                fix=f"ask for k <= {MAX_TOP_K_WITH_METADATA:,}, or narrow the query with a filter")
        try:
            result = self._call(
                "query", self._index.query, top_k=max(1, k), vector=[float(v) for v in vector],
                namespace=name, filter=to_pinecone_filter(filter), include_metadata=True,
            )
        except StoreError as exc:
            if "HTTP 400" in str(exc) and _TOO_LARGE.search(str(exc)):
                raise StoreError(
                    f"Pinecone's answer to a k={k} query of index {name!r} exceeds its "
                    f"{MAX_QUERY_RESPONSE_BYTES // (1024 * 1024)} MB query response limit (the chunk text of "
                    f"every hit is included)", where=self._where(name),
                    fix="ask for fewer hits (a smaller k), or index smaller chunks") from None
            raise
        return [hit_from_flat(m.id, m.score, m.metadata or {}) for m in result.matches[:k]]

    def count(self, name: str, filter: Filter | None = None) -> int:
        flt = to_pinecone_filter(filter)
        if flt is None:
            return self.describe(name).count
        self._info(name)
        # describe_index_stats takes no filter on serverless indexes: page through the matches.
        return len(self._ids_matching(name, flt))

    def fetch(self, name: str, ids: Sequence[str]) -> list[Record]:
        self._info(name)
        records: list[Record] = []
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), FETCH_IDS):
            page = self._call("fetch", self._index.fetch, ids=unique[start:start + FETCH_IDS], namespace=name)
            for vid in unique[start:start + FETCH_IDS]:
                vector = page.vectors.get(vid)
                if vector is not None:
                    records.append(record_from_flat(vid, vector.values, vector.metadata or {}))
        return records

    def chunk_ids(self, name: str, source: str | None = None) -> dict[str, set[str]]:
        self._info(name)
        flt = {"source": {"$eq": source}} if source is not None else {"doc_id": {"$exists": True}}
        result: dict[str, set[str]] = {}
        for vid, meta in self._ids_matching(name, flt).items():
            result.setdefault(str(meta.get("doc_id", "")), set()).add(vid)
        return result
