"""Copy an index between vector stores (e.g. the local stack's embedded store and a cloud
stack's Pinecone) with its stored vectors and metadata: nothing is re-embedded.

Documents are copied whole, a batch at a time, with `replace_documents`, so the target holds
exactly the source's chunks of every copied document; a rerun after an interruption
converges. Documents the target holds and the source does not are left alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pydantic import BaseModel

from .errors import StoreError
from .vectors import VectorStore, check_index_name

BATCH_CHUNKS = 500


class CopyReport(BaseModel):
    index: str
    to_index: str
    model: str
    dim: int
    documents: int
    chunks: int
    seconds: float


def copy_index(
    source: VectorStore,
    target: VectorStore,
    index: str,
    to_index: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CopyReport:
    """Copy `index` of `source` into `to_index` (default: the same name) of `target`."""
    started = time.perf_counter()
    to_index = to_index or index
    check_index_name(to_index, where="the target index (--to-index)")  # the rule `index` applies, before any read
    info = source.describe(index)
    target.create_index(to_index, info.dim, info.model)  # refuses another model or dimension
    docs = source.chunk_ids(index)
    total = sum(len(ids) for ids in docs.values())
    done = 0
    batch_docs: list[str] = []
    batch_ids: list[str] = []

    def flush() -> None:
        nonlocal done, batch_docs, batch_ids
        records = source.fetch(index, batch_ids)
        if len(records) != len(batch_ids):
            raise StoreError(
                f"{len(batch_ids) - len(records)} chunks of index {index!r} vanished while copying",
                where="the source store", fix="stop writers of the source index and rerun the copy",
            )
        target.replace_documents(to_index, batch_docs, records)
        done += len(records)
        if progress:
            progress(done, total)
        batch_docs, batch_ids = [], []

    for doc_id in sorted(docs):
        batch_docs.append(doc_id)
        batch_ids.extend(sorted(docs[doc_id]))
        if len(batch_ids) >= BATCH_CHUNKS:
            flush()
    if batch_ids:
        flush()
    target.optimize(to_index)
    return CopyReport(index=index, to_index=to_index, model=info.model, dim=info.dim, documents=len(docs),
                      chunks=done, seconds=round(time.perf_counter() - started, 3))
