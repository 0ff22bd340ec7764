"""The index job with `curation`: documents are curated before chunking; dropped documents stay out of
the index (and leave it if they were indexed before); a later run drops a new near-duplicate of an
indexed document through the state kept beside the index."""

from __future__ import annotations

import json
import random
from pathlib import Path

from .conftest import lee_articles


def test_index_curates_before_chunking_and_across_runs(tmp_path: Path) -> None:
    import torch

    torch.set_num_threads(1)
    from stackwise.adapters.vectors.embedded import EmbeddedStore
    from stackwise.curation import CurationConfig
    from stackwise.specs import IndexSpec
    from stackwise.workloads.index import run_index

    articles = lee_articles()
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, a in enumerate(articles[:12]):
        (docs / f"a{i:02d}.txt").write_text(a)
    (docs / "copy.txt").write_text(articles[3])
    (docs / "mail.txt").write_text(articles[20] + " Write to jane.roe@example.org for details.")
    store = EmbeddedStore(str(tmp_path / "vectors"))
    config = CurationConfig.model_validate({"quality": {"min_words": 20}})
    spec = IndexSpec(source=str(docs), index="kb", curation=config)
    report = run_index(spec, store=store, progress=lambda *a, **k: None)
    curation = report.curation
    assert curation["dropped_by_reason"] == {"exact_duplicate": 1} and curation["redacted"] == {"EMAIL_ADDRESS": 1}
    assert report.documents == 13 and curation["documents"] == 14  # documents indexed: those kept
    stored = store.chunk_ids("kb")
    assert not [d for d in stored if d.endswith(("a03.txt", "copy.txt"))][1:]  # one of the pair only
    texts = " ".join(r.text for r in store.fetch("kb", [c for ids in stored.values() for c in ids]))
    assert "jane.roe@example.org" not in texts and "<EMAIL>" in texts
    folder = Path(curation["state"]).parent
    assert (folder / "report.json").exists() and (folder / "exclusions.jsonl").exists()
    # Run 2: an edited copy of an indexed article is dropped as its near-duplicate.
    words = articles[5].split()
    rng = random.Random(1)
    words[rng.randrange(len(words))] = "meanwhile"
    (docs / "edited.txt").write_text(" ".join(words))
    second = run_index(spec, store=store, progress=lambda *a, **k: None).curation
    assert second["dropped_by_reason"] == {"exact_duplicate": 1, "near_duplicate": 1}
    assert second["state_documents"] == 13
    assert not [d for d in store.chunk_ids("kb") if d.endswith("edited.txt")]
    excluded = [json.loads(line) for line in (folder / "exclusions.jsonl").read_text().splitlines()]
    assert {e["reason"] for e in excluded} == {"exact_duplicate", "near_duplicate"}
    # A spec without curation indexes as before: nothing curated, no report.
    plain = run_index(IndexSpec(source=str(docs), index="plain"), store=store, progress=lambda *a, **k: None)
    assert plain.curation is None and plain.documents == 15
