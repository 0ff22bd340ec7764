"""The index workload: read documents, chunk, embed what changed, upsert into the vector store.

Incremental and crash-safe. Chunk ids derive from document id, chunk text and metadata, so a
rerun on unchanged input embeds and writes nothing. Each document is written whole in one
store commit (`replace_documents`), so after a SIGKILL at any moment every document is either
in its old or its new state, and a rerun ends with exactly the contents of a clean run.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pydantic import BaseModel, Field

from ..documents import Source, chunk_document, read_documents
from ..embeddings import canonical_name, load_embedder
from ..errors import StoreError
from ..specs import IndexSpec
from ..vectors import Record, VectorStore, open_store
from ._runtime import emit_progress, main

# Chunks embedded and committed together: one commit per batch keeps the number of store
# versions small while bounding the work lost to a crash.
BATCH_CHUNKS = 256


class SkippedFile(BaseModel):
    path: str
    reason: str


class IndexReport(BaseModel):
    """What an index run did. `added` counts chunks of documents new to the index, `replaced`
    new chunks of changed documents, `removed` the stale chunks those replaced, `unchanged`
    chunks already stored, `pruned` chunks of documents gone from the source (with --prune),
    `embedded` chunks whose vectors were computed (the chunks a changed document keeps reuse
    their stored vectors)."""

    index: str
    source: str
    model: str
    documents: int
    chunks: int
    added: int = 0
    replaced: int = 0
    removed: int = 0
    unchanged: int = 0
    pruned: int = 0
    embedded: int = 0
    skipped: list[SkippedFile] = Field(default_factory=list)
    seconds: float = 0.0


def run_index(
    spec: IndexSpec,
    store: VectorStore | None = None,
    progress: Callable[..., None] = emit_progress,
) -> IndexReport:
    started = time.perf_counter()
    if store is None:
        from ..stack import load_stack

        store = open_store(load_stack().outputs.vector_store)
    source = Source(spec.source)
    documents, skipped = read_documents(source)
    model_name = canonical_name(spec.embedding.model)

    exists = spec.index in store.list_indexes()
    embedder = None
    if exists:
        info = store.describe(spec.index)
        if info.model != model_name:
            raise StoreError(
                f"index {spec.index!r} was built with {info.model!r}, not {model_name!r}",
                where=f"index {spec.index}",
                fix="index with the same embedding model, or choose another --index name",
            )
        stored = store.chunk_ids(spec.index)
    else:
        embedder = load_embedder(spec.embedding.model, spec.embedding.device)
        store.create_index(spec.index, embedder.dim, model_name)
        stored = {}

    report = IndexReport(
        index=spec.index,
        source=source.uri,
        model=model_name,
        documents=len(documents),
        chunks=0,
        skipped=[SkippedFile(path=s.path, reason=s.reason) for s in skipped],
    )
    # Plan: compare each document's chunk ids with what the store holds.
    pending = []  # (doc_id, chunks) of documents to (re)write
    for doc in documents:
        chunks = chunk_document(doc, spec.chunking.size, spec.chunking.overlap)
        report.chunks += len(chunks)
        new_ids = {c.id for c in chunks}
        old_ids = stored.get(doc.doc_id)
        if old_ids == new_ids:
            report.unchanged += len(chunks)
            continue
        if old_ids is None:
            report.added += len(chunks)
        else:
            report.unchanged += len(new_ids & old_ids)
            report.replaced += len(new_ids - old_ids)
            report.removed += len(old_ids - new_ids)
        pending.append((doc.doc_id, chunks))

    total = sum(len(chunks) for _, chunks in pending)
    # Chunks a changed document keeps are stored already: their vectors are reused, not re-embedded.
    fresh_total = sum(1 for doc_id, chunks in pending for c in chunks if c.id not in stored.get(doc_id, ()))
    if fresh_total and embedder is None:
        embedder = load_embedder(spec.embedding.model, spec.embedding.device)
    progress("embed", 0, total, documents=len(pending))
    done = 0
    batch: list[tuple[str, list]] = []

    def flush() -> None:
        nonlocal done, batch, embedder
        kept = [c.id for doc_id, chunks in batch for c in chunks if c.id in stored.get(doc_id, ())]
        vectors = {r.id: r.vector for r in store.fetch(spec.index, kept)} if kept else {}
        fresh = [c for _, chunks in batch for c in chunks if c.id not in vectors]
        if fresh:
            if embedder is None:  # a kept chunk vanished meanwhile (another writer): embed it
                embedder = load_embedder(spec.embedding.model, spec.embedding.device)
            encoded = embedder.encode([c.text for c in fresh], batch_size=spec.embedding.batch_size)
            vectors.update(zip((c.id for c in fresh), encoded))
        records = [
            Record(id=c.id, vector=vectors[c.id], text=c.text, doc_id=c.doc_id, source=source.uri,
                   chunk=c.chunk, metadata=c.metadata)
            for _, chunks in batch
            for c in chunks
        ]
        store.replace_documents(spec.index, [doc_id for doc_id, _ in batch], records)
        done += len(records)
        report.embedded += len(fresh)
        progress("embed", done, total, documents=len(pending))
        batch = []

    for item in pending:
        batch.append(item)
        if sum(len(chunks) for _, chunks in batch) >= BATCH_CHUNKS:
            flush()
    if batch:
        flush()

    if spec.prune:
        seen = {doc.doc_id for doc in documents}
        gone = sorted(doc for doc in store.chunk_ids(spec.index, source=source.uri) if doc not in seen)
        if gone:
            report.pruned = store.delete(spec.index, doc_ids=gone)
    if total or report.pruned:
        store.optimize(spec.index)
    report.seconds = round(time.perf_counter() - started, 3)
    return report


if __name__ == "__main__":
    main("index", IndexSpec, run_index)
