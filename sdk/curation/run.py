"""The curation step: one pass over items, each kept (maybe changed) or dropped with a reason.

An `Item` is a document (one text part) or a fine-tune record (its text parts: prompt and
completion, or each message's content). Steps, in order, on the parts joined by blank lines:

1. exact dedup (normalized hash) against earlier items of this run and the saved state;
2. C4 boilerplate lines removed from each part, then the Gopher/C4 quality rules;
3. language: the document's language (filter or tag), then optionally each paragraph's;
4. near-duplicates: MinHash LSH against items kept so far and the saved state;
5. PII: report, redact (each part), or drop;
6. the kept item joins the dedup state and the bias screen.

Cheap steps run first; a dropped item costs nothing further (its text goes to the exclusions).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .config import CurationConfig
from .dedup import DedupState, exact_hash
from .report import Cluster, CurationReport


@dataclass
class Item:
    """One document or record. `parts` are its texts (one for a document); the others ride along."""

    id: str
    parts: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "\n\n".join(self.parts)


@dataclass(frozen=True)
class Exclusion:
    """A dropped item: what and why (`reason` a key such as `near_duplicate`, `detail` the measure)."""

    id: str
    reason: str
    detail: str
    text: str

    def json_line(self) -> str:
        return json.dumps({"id": self.id, "reason": self.reason, "detail": self.detail, "text": self.text},
                          ensure_ascii=False)


@dataclass
class CurationResult:
    kept: list[Item]
    excluded: list[Exclusion]
    report: CurationReport


class Curator:
    """Runs the configured steps. Reuse one for several batches of one run (state is shared)."""

    def __init__(self, config: CurationConfig, state: DedupState | None = None):
        self.config = config
        dedup = config.dedup
        self.state = state if state is not None else (DedupState(dedup) if dedup.exact or dedup.near else None)
        self.scanner = None
        if config.pii.enabled and config.pii.entities:
            from .pii import PiiScanner

            self.scanner = PiiScanner(config.pii.entities, config.pii.min_score)
        from .screens import BiasScreen

        self.bias = BiasScreen() if config.bias.enabled else None
        self.report = CurationReport()
        self._clusters: dict[str, Cluster] = {}

    # -- one item ------------------------------------------------------------------------------
    def _drop(self, item: Item, reason: str, detail: str, text: str | None = None) -> Exclusion:
        self.report.count("dropped_by_reason", reason)
        if self.state is not None:
            self.state.remove(item.id)  # an earlier version kept before is not kept now
        shown = text if text is not None else item.text
        if self.scanner is not None and self.config.pii.mode != "report":
            from .pii import redact

            shown = redact(shown, self.scanner.scan(shown))  # exclusions never hold PII that redaction hides
        return Exclusion(item.id, reason, detail, shown)

    def _cluster(self, kept: str, dropped: str, similarity: float) -> None:
        cluster = self._clusters.get(kept)
        if cluster is None:
            cluster = self._clusters[kept] = Cluster(kept=kept)
        cluster.duplicates.append(dropped)
        cluster.similarity.append(round(similarity, 3))

    def process(self, item: Item) -> Item | Exclusion:
        """The item as kept (parts and metadata possibly changed), or its exclusion."""
        cfg = self.config
        self.report.documents += 1
        self.report.bytes_in += sum(len(p.encode("utf-8")) for p in item.parts)
        digest = exact_hash(item.text)
        if self.state is not None and cfg.dedup.exact:
            other = self.state.exact_match(item.id, digest)
            if other is not None:
                self._cluster(other, item.id, 1.0)
                return self._drop(item, "exact_duplicate", f"same normalized text as {other}")
        parts = list(item.parts)
        metadata = dict(item.metadata)
        quality = cfg.quality
        if quality.enabled:
            from .quality import quality_failure, remove_boilerplate_lines

            if quality.c4_boilerplate_lines:
                cleaned = [remove_boilerplate_lines(p) for p in parts]
                removed = sum(n for _, n in cleaned)
                if removed:
                    self.report.boilerplate_lines_removed += removed
                    parts = [p for p, _ in cleaned]
            failure = quality_failure("\n\n".join(parts), quality)
            if failure is not None:
                return self._drop(item, failure[0], failure[1])
        language = cfg.language
        if language.enabled:
            from .language import UNKNOWN, filter_paragraphs, identify, paragraph_languages

            lang, prob = identify("\n\n".join(parts), language.min_confidence)
            self.report.count("languages", lang)
            if language.mode == "filter" and lang not in (*language.languages, UNKNOWN):
                return self._drop(item, "language", f"{lang} (p={prob:.2f}) not in {language.languages}")
            if language.mode == "tag":
                metadata["language"] = lang
            if language.paragraphs:
                if language.mode == "filter":
                    new_parts = []
                    for part in parts:
                        kept_text, removed_langs = filter_paragraphs(part, lang, language)
                        for code in removed_langs:
                            self.report.count("paragraphs_removed", code)
                        new_parts.append(kept_text)
                    parts = new_parts
                else:
                    metadata["paragraph_languages"] = sorted(
                        {code for part in parts for code in paragraph_languages(part, lang, language)})
        signature = None
        if self.state is not None and cfg.dedup.near:
            signature = self.state.signature("\n\n".join(parts))
            match = self.state.near_match(item.id, signature)
            if match is not None:
                self._cluster(match[0], item.id, match[1])
                return self._drop(item, "near_duplicate", f"estimated Jaccard {match[1]:.2f} with {match[0]}")
        if self.scanner is not None:
            from .pii import redact

            findings = [self.scanner.scan(p) for p in parts]
            total = sum(len(f) for f in findings)
            if total:
                self.report.pii_documents += 1
                for found in findings:
                    for f in found:
                        self.report.count("pii_found", f.entity)
            if total and cfg.pii.mode == "drop":
                kinds = sorted({f.entity for found in findings for f in found})
                return self._drop(item, "pii", f"{total} PII matches ({', '.join(kinds)})")
            if total and cfg.pii.mode == "redact":
                for found in findings:
                    for f in found:
                        self.report.count("redacted", f.entity)
                parts = [redact(p, found) for p, found in zip(parts, findings)]
        if self.state is not None:
            self.state.add(item.id, digest, signature)
        if self.bias is not None:
            self.bias.add("\n\n".join(parts))
        return Item(item.id, parts, metadata)

    def run(self, items: Iterable[Item]) -> CurationResult:
        """Curate `items` in order; the report covers every item this curator has seen."""
        started = time.perf_counter()
        kept: list[Item] = []
        excluded: list[Exclusion] = []
        for item in items:
            outcome = self.process(item)
            (excluded if isinstance(outcome, Exclusion) else kept).append(outcome)
        report = self.finish(time.perf_counter() - started)
        return CurationResult(kept, excluded, report)

    def finish(self, seconds: float = 0.0) -> CurationReport:
        """The report so far: totals, clusters (the first `max_clusters_reported`), bias summary."""
        report = self.report
        report.dropped = sum(report.dropped_by_reason.values())
        report.kept = report.documents - report.dropped
        report.clusters_total = len(self._clusters)
        report.near_duplicate_clusters = list(self._clusters.values())[: self.config.max_clusters_reported]
        report.bias = self.bias.summary() if self.bias is not None else None
        report.seconds = round(report.seconds + seconds, 3)
        if self.state is not None and self.state.note:
            report.state_note = self.state.note
        return report


def curate(items: Iterable[Item], config: CurationConfig, state_folder: str | None = None,
           state_name: str = "dedup-state", owns: Any = None) -> CurationResult:
    """Curate `items`; with `state_folder` (any fsspec URI) the dedup state is loaded first and saved after.

    `owns(doc_id)` selects the ids this process saves (a shard of an index job); default: all."""
    state = None
    loaded = 0
    if config.dedup.exact or config.dedup.near:
        state = DedupState(config.dedup)
        if state_folder:
            loaded = state.load(state_folder)
    curator = Curator(config, state)
    result = curator.run(items)
    if state is not None and state_folder:
        result.report.state = state.save(state_folder, state_name, owns or (lambda _: True))
        result.report.state_documents = loaded
    return result
