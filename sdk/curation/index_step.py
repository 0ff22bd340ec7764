"""Curation inside the index job: documents are curated before chunking, with dedup state per index.

Where things go (under the stack's artifact store, else beside an embedded store's folder):
`<root>/curation/<index>/dedup-state[-shard-I-of-N].npz` (kept documents' hashes and MinHash
signatures: a later run drops a new document that duplicates an indexed one),
`exclusions[...].jsonl` (dropped documents: id, reason, detail, text) and `report[...].json|.html`.
A shard saves the documents it owns and reads every shard's state, so runs with several workers
see what earlier runs kept; duplicates split across two shards of the same run are not compared.
"""

from __future__ import annotations

from typing import Any

from ..documents import Document, Source
from .io import exclusions_text, write_report, write_text
from .report import log_to_mlflow, render_html
from .run import Curator, Item


def curation_folder(index: str, context: Any, store: Any) -> str | None:
    """The folder of an index's curation files: in the artifact store, else beside a local store."""
    if context is not None and getattr(context, "artifact_store", None):
        return f"{context.artifact_store.rstrip('/')}/curation/{index}"
    uri = getattr(store, "uri", None)
    if isinstance(uri, str) and ("://" not in uri or uri.startswith("file://")):
        return f"{uri.rstrip('/')}/.curation/{index}"
    return None


def curate_documents(spec: Any, context: Any, store: Any, source: Source, documents: list[Document],
                     shard: Any) -> tuple[list[Document], dict[str, Any], list[str]]:
    """(kept documents as curated, the curation report as JSON, ids of dropped documents)."""
    from .dedup import DedupState

    config = spec.curation
    folder = curation_folder(spec.index, context, store)
    suffix = "" if shard.count == 1 else f"-shard-{shard.index}-of-{shard.count}"
    state = DedupState(config.dedup) if config.dedup.exact or config.dedup.near else None
    loaded = state.load(folder) if state is not None and folder else 0
    curator = Curator(config, state)
    by_id = {d.doc_id: d for d in documents}
    result = curator.run(Item(d.doc_id, [d.text], dict(d.metadata)) for d in documents)
    report = result.report
    report.shards = 1
    if state is not None:
        if spec.prune:  # documents gone from the source leave the index: they no longer count as kept
            seen = set(by_id)
            for doc_id in [i for i in state.hashes if i not in seen and shard.owns(i) and source.covers(i)]:
                state.remove(doc_id)
        if folder:
            report.state = state.save(folder, f"dedup-state{suffix}", shard.owns)
            report.state_documents = loaded
    kept = [Document(i.id, i.parts[0], i.metadata, by_id[i.id].markdown) for i in result.kept]
    if folder:
        report.exclusions = f"{folder}/exclusions{suffix}.jsonl"
        write_text(report.exclusions, exclusions_text(result.excluded))
    html = render_html(report, f"Curation of {source.uri} into index {spec.index}")
    if context is not None and getattr(context, "tracking_uri", None):
        try:
            report.mlflow_run_id = log_to_mlflow(report, context.tracking_uri, f"index-{spec.index}{suffix}", html,
                                                 {"index": spec.index, "source": source.uri})
        except Exception as exc:  # noqa: BLE001 - a tracking outage must not fail the index job
            report.tracking_error = f"{type(exc).__name__}: {exc}"[:500]
    if folder:
        write_report(report, f"{folder}/report{suffix}.json", f"{folder}/report{suffix}.html",
                     f"Curation of {source.uri} into index {spec.index}")
    return kept, report.model_dump(mode="json"), [e.id for e in result.excluded]
