"""The index workload: read documents, chunk, embed what changed, upsert into the vector store.

Incremental and crash-safe. Chunk ids derive from document id, chunk text and metadata, so a
rerun on unchanged input embeds and writes nothing. Each document is written whole in one
store commit (`replace_documents`), so after a SIGKILL at any moment every document is either
in its old or its new state, and a rerun ends with exactly the contents of a clean run.

Sharded (`workers: N`). Each of the N processes of a job reads its shard from
`STACKWISE_SHARD_INDEX` / `STACKWISE_SHARD_COUNT` (the local supervisor and the cloud bootstrap
set them) and handles only the documents whose id hashes to it (`shard_of`: SHA-256, the same
in every process, unlike Python's salted `hash`). A worker reads only the files of its shard
(a file's document id is its URI) and every JSONL file (whose records are documents of their
own), writes only its documents, and prunes only gone documents of its shard, so N workers
together do exactly what one does. Each worker reports its shard; `merge_reports` sums them
into the job's report. Without the variables one process indexes every document.

Writers of an embedded store on local disk take an exclusive file lock around each commit
(`_CommitLock`): LanceDB commits are optimistic, and concurrent deletes in the same fragment
conflict. Reading, chunking and embedding (the slow part) run outside the lock.
"""

from __future__ import annotations

import copy
import hashlib
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..contract import JobContext
from ..documents import Document, Source, canonical_doc_id, canonical_source, chunk_document, chunk_id, read_documents
from ..embeddings import canonical_name, load_embedder
from ..errors import InputError, SpecError, StoreError
from ..progress import emit as emit_progress
from ..reports import IndexReport, SkippedFile
from ..specs import IndexSpec
from ..vectors import Record, VectorStore, open_store
from ._runtime import main

ENV_SHARD_INDEX = "STACKWISE_SHARD_INDEX"
ENV_SHARD_COUNT = "STACKWISE_SHARD_COUNT"

# Chunks embedded and committed together: one commit per batch keeps the number of store
# versions small while bounding the work lost to a crash.
BATCH_CHUNKS = 256


# -- shards ------------------------------------------------------------------------------------
def shard_of(doc_id: str, count: int) -> int:
    """The shard of a document: stable across processes, machines and Python versions."""
    return int.from_bytes(hashlib.sha256(doc_id.encode("utf-8")).digest()[:8], "big") % count


@dataclass(frozen=True)
class Shard:
    """Which part of the documents this worker owns: those with `shard_of(id, count) == index`."""

    index: int = 0
    count: int = 1

    def owns(self, doc_id: str) -> bool:
        return self.count == 1 or shard_of(doc_id, self.count) == self.index

    @classmethod
    def from_env(cls, spec: IndexSpec, env: Mapping[str, str] = os.environ) -> "Shard":
        """The shard the job's launcher assigned; one shard of one without the variables.

        A count other than the spec's `workers` is refused: workers that disagree on the split
        would leave documents unindexed.
        """
        raw_index, raw_count = env.get(ENV_SHARD_INDEX), env.get(ENV_SHARD_COUNT)
        if raw_index is None and raw_count is None:
            return cls()
        where = f"{ENV_SHARD_INDEX}={raw_index!r}, {ENV_SHARD_COUNT}={raw_count!r}"
        try:
            index, count = int(raw_index or "0"), int(raw_count or "1")
        except ValueError:
            raise SpecError("shard variables are not integers", where=where,
                            fix="let the job's launcher set them (or unset both to index everything)") from None
        if count != spec.workers or not 0 <= index < count:
            raise SpecError(
                f"this worker was launched as shard {index} of {count}, but the spec asks for {spec.workers} "
                "workers", where=where,
                fix="launch one worker per shard with the spec's workers as the count (the local backend and "
                "the cloud adapters do), or unset both variables to index everything in one process")
        return cls(index, count)


def _read_shard(source: Source, shard: Shard) -> tuple[list[Document], list[SkippedFile]]:
    """The documents of `shard` under `source`, and the files skipped (each reported by one shard).

    A file's documents are itself (id: its URI), so files of other shards are not even opened;
    a JSONL file holds records with ids of their own and is read by every shard.
    """
    if shard.count == 1:
        documents, skipped = read_documents(source)
        return documents, [SkippedFile(path=s.path, reason=s.reason) for s in skipped]
    documents: list[Document] = []
    skipped: list[SkippedFile] = []
    for path in source.files:
        uri = source.file_uri(path)
        if not path.lower().endswith(".jsonl") and not shard.owns(uri):
            continue
        one = copy.copy(source)
        one.files, one.direct = [path], True  # read_documents raises this file's own error
        try:
            docs, _ = read_documents(one)
        except InputError as exc:
            if source.direct:
                raise
            if shard.owns(uri):
                reason = exc.what if exc.where in (None, uri) else f"{exc.what} at {exc.where.removeprefix(uri).strip()}"
                skipped.append(SkippedFile(path=uri, reason=reason))
            continue
        documents.extend(d for d in docs if shard.owns(d.doc_id))
    return documents, skipped


def merge_reports(reports: list[Mapping[str, Any]]) -> dict[str, Any]:
    """One job's report from its shards' reports: counts summed, skipped files joined, the
    slowest shard's time (the shards ran in parallel)."""
    if not reports:
        raise ValueError("no shard reports to merge")
    merged = IndexReport.model_validate(reports[0]).model_dump(mode="json")
    for raw in reports[1:]:
        report = IndexReport.model_validate(raw)
        for name in ("documents", "chunks", "added", "replaced", "removed", "unchanged", "pruned", "embedded",
                     "migrated", "shards"):
            merged[name] += getattr(report, name)
        if report.recovered_version is not None:  # the shard that restored it (under the commit lock)
            merged["recovered_version"] = report.recovered_version
        if report.embedding_backend and report.embedding_backend != merged["embedding_backend"]:
            merged["embedding_backend"] = ",".join(sorted({*filter(None, [merged["embedding_backend"]]),
                                                           report.embedding_backend}))
        merged["skipped"] += [s.model_dump() for s in report.skipped]
        if report.curation is not None:
            from ..curation.report import merge_reports as merge_curation

            merged["curation"] = merge_curation([c for c in (merged["curation"], report.curation) if c])
        merged["seconds"] = max(merged["seconds"], report.seconds)
    merged["skipped"].sort(key=lambda s: s["path"])
    return merged


class _CommitLock:
    """An exclusive lock around each commit to an embedded store on local disk (a no-op for
    other stores): several processes of one job write the same table."""

    def __init__(self, store: VectorStore, index: str):
        uri = getattr(store, "uri", None)
        local = isinstance(uri, str) and ("://" not in uri or uri.startswith("file://"))
        self.folder = uri.removeprefix("file://") if local else None
        self.path = os.path.join(self.folder, f".{index}.stackwise-lock") if self.folder else None

    @contextmanager
    def __call__(self) -> Iterator[None]:
        if self.path is None:
            yield
            return
        import fcntl

        # The store's folder may not exist yet (a first index): the shards of one job all create
        # it and lock there, rather than each finding no folder and committing unlocked.
        os.makedirs(self.folder, exist_ok=True)
        with open(self.path, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released by the kernel if this process dies
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _migrate_ids(store: VectorStore, index: str, stored: dict[str, set[str]], shard: Shard, commit: "_CommitLock") -> int:
    """Re-key the documents of `index` whose ids came from another spelling of their file (an
    index built before ids were canonical: `D/./x/../x/a.txt`, a symlinked folder, `s3://b//k`).

    Each such document gets its canonical id, with chunk ids and `path` metadata recomputed as
    `chunk_document` computes them and its stored vectors kept (nothing re-embedded); where the
    canonical document is stored too, the other spellings are duplicates and are deleted. Each
    batch is one `replace_documents` commit. Returns how many stored documents were migrated.
    """
    moves: dict[str, list[str]] = {}
    for doc_id in stored:
        canonical = canonical_doc_id(doc_id)
        if canonical != doc_id and shard.owns(canonical):
            moves.setdefault(canonical, []).append(doc_id)
    duplicates = sorted(old for canonical, olds in moves.items() if canonical in stored for old in olds)
    if duplicates:
        with commit():
            store.delete(index, doc_ids=duplicates)
    batch_docs: list[str] = []
    batch: list[Record] = []
    for canonical, olds in sorted(moves.items()):
        if canonical in stored:
            continue
        # Several old spellings of one file: one copy is kept (they were cut from the same file; the
        # plan below replaces it if the file changed since), the others are deleted with it.
        old = sorted(olds)[0]
        batch_docs += [*olds, canonical]
        batch += _rekeyed(store.fetch(index, sorted(stored[old])), canonical)
        if len(batch) >= BATCH_CHUNKS:
            with commit():
                store.replace_documents(index, batch_docs, batch)
            batch_docs, batch = [], []
    if batch_docs:
        with commit():
            store.replace_documents(index, batch_docs, batch)
    return sum(len(olds) for olds in moves.values())


def _rekeyed(records: list[Record], doc_id: str) -> list[Record]:
    """`records` (one document's chunks) under the canonical `doc_id`: ids as `chunk_document` gives them."""
    out, seen = [], {}
    for record in sorted(records, key=lambda r: r.chunk):
        metadata = dict(record.metadata)
        if isinstance(metadata.get("path"), str):
            metadata["path"] = canonical_doc_id(metadata["path"])
        occurrence = seen.get(record.text, 0)
        seen[record.text] = occurrence + 1
        out.append(Record(id=chunk_id(doc_id, record.text, occurrence, metadata), vector=record.vector,
                          text=record.text, doc_id=doc_id, source=canonical_source(record.source) if record.source
                          else record.source, chunk=record.chunk, metadata=metadata))
    return out


def run_index(
    spec: IndexSpec,
    context: JobContext | None = None,
    store: VectorStore | None = None,
    progress: Callable[..., None] = emit_progress,
    shard: Shard | None = None,
) -> IndexReport:
    """Index the documents of `shard` (default: from the environment, else all) of `spec.source`
    into `store`, or else the job context's vector store."""
    started = time.perf_counter()
    shard = shard or Shard.from_env(spec)
    if store is None:
        if context is None:
            raise SpecError("no vector store to index into", where="run_index(spec, context, store)",
                            fix="pass the job's context (its vector store) or a store")
        store = open_store(context.vector_store)
    commit = _CommitLock(store, spec.index)
    source = Source(spec.source, follow_links=spec.follow_links)
    documents, skipped = _read_shard(source, shard)
    curation, dropped = None, []
    if spec.curation is not None:
        from ..curation.index_step import curate_documents

        documents, curation, dropped = curate_documents(spec, context, store, source, documents, shard)
    model_name = canonical_name(spec.embedding.model)

    exists = spec.index in store.list_indexes()
    embedder = None
    recovered = None
    if exists:
        with commit():  # a damaged index goes back to its last good version (StoreError if none)
            recovered = store.recover(spec.index)
        info = store.describe(spec.index)
        if info.model != model_name:
            raise StoreError(
                f"index {spec.index!r} was built with {info.model!r}, not {model_name!r}",
                where=f"index {spec.index}",
                fix="index with the same embedding model, or choose another --index name",
            )
        stored = store.chunk_ids(spec.index)
        migrated = _migrate_ids(store, spec.index, stored, shard, commit)
        if migrated:
            stored = store.chunk_ids(spec.index)
        gone = sorted(doc_id for doc_id in dropped if doc_id in stored)
        if gone and curation is not None:  # curation dropped them now: the index must not serve them
            with commit():
                curation["removed_from_index"] = store.delete(spec.index, doc_ids=gone)
            stored = {k: v for k, v in stored.items() if k not in set(gone)}
    else:
        migrated = 0
        embedder = load_embedder(spec.embedding.model, spec.embedding.device, spec.embedding.backend)
        with commit():  # another worker may be creating it too: create_index then checks its model
            store.create_index(spec.index, embedder.dim, model_name)
        stored = {}

    report = IndexReport(
        index=spec.index,
        source=source.uri,
        model=model_name,
        documents=len(documents),
        chunks=0,
        skipped=skipped,
        migrated=migrated,
        recovered_version=recovered,
        curation=curation,
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
        embedder = load_embedder(spec.embedding.model, spec.embedding.device, spec.embedding.backend)
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
                embedder = load_embedder(spec.embedding.model, spec.embedding.device, spec.embedding.backend)
            encoded = embedder.encode([c.text for c in fresh], batch_size=spec.embedding.batch_size)
            report.embedding_backend = embedder.backend
            vectors.update(zip((c.id for c in fresh), encoded))
        records = [
            Record(id=c.id, vector=vectors[c.id], text=c.text, doc_id=c.doc_id, source=source.uri,
                   chunk=c.chunk, metadata=c.metadata)
            for _, chunks in batch
            for c in chunks
        ]
        with commit():
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
        # By document identity, not by the `source` string a run recorded: every stored document
        # whose file this source covers (however it was spelled when indexed), and this shard's only.
        seen = {doc.doc_id for doc in documents}
        gone = sorted(doc for doc in store.chunk_ids(spec.index)
                      if doc not in seen and shard.owns(doc) and source.covers(doc))
        if gone:
            with commit():
                report.pruned = store.delete(spec.index, doc_ids=gone)
    # A run killed before or inside `optimize` left work for it that a rerun with nothing to
    # write must still do (compaction, scalar and vector indexes).
    if total or report.pruned or report.migrated or store.needs_optimize(spec.index):
        with commit():
            store.optimize(spec.index)
    report.seconds = round(time.perf_counter() - started, 3)
    return report


if __name__ == "__main__":
    main("index", IndexSpec, run_index)
