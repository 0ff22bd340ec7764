"""Index and search end to end on the local stack: the CLI in subprocesses, then the SDK.

One module-scoped corpus (40 articles of gensim's Lee corpus as .txt files, plus a binary file
and a non-UTF-8 file) is indexed once through `stackwise index`; the tests after it search it,
rerun the index (incremental: nothing to do), edit one file and delete one (`--prune`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from .conftest import (
    JOB_TIMEOUT_S,
    doc_chunks,
    file_uri,
    kill_leftover_jobs,
    lee_articles,
    run_cli,
    store_rows,
    vectors_uri,
    write_txt_corpus,
)

INDEX = "kb"
N_ARTICLES = 40
# Articles among the first 40 of the Lee corpus about the New South Wales bushfires of 2001.
BUSHFIRE_ARTICLES = {0, 8, 9, 19, 33}
PRUNED = 12  # the article the prune test deletes
BUSHFIRE_QUERY = "bushfires burning homes, firefighters battle the blazes in New South Wales"


class KB:
    """The shared state folder, corpus and first index report of this module."""

    def __init__(self, root: Path):
        self.home = root / "home"
        self.home.mkdir()
        self.docs = root / "docs"
        self.files = write_txt_corpus(self.docs, lee_articles()[:N_ARTICLES])
        # Two files the job must skip, with reasons, while indexing the others.
        self.binary = self.docs / "scan.txt"
        self.binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
        self.latin1 = self.docs / "legacy.txt"
        self.latin1.write_bytes("Caf\u00e9 cr\u00e8me: une nouvelle en Latin-1.\n".encode("latin-1"))

    def cli(self, *args: str, expect: int | None = 0):
        return run_cli(self.home, *args, expect=expect)

    def index(self, *extra: str) -> dict:
        return self.cli("index", str(self.docs), "--index", INDEX, "--json", *extra).json()

    def search(self, query: str, *extra: str) -> list[dict]:
        return self.cli("search", query, "--index", INDEX, "--json", *extra).json()

    def rows(self) -> dict[str, tuple[str, str, int]]:
        return store_rows(self.home, INDEX)

    def vectors(self) -> dict[str, np.ndarray]:
        """Every stored chunk's vector, by chunk id."""
        from stackwise.adapters.vectors.embedded import EmbeddedStore

        store = EmbeddedStore(vectors_uri(self.home))
        ids = sorted(i for chunk_ids in store.chunk_ids(INDEX).values() for i in chunk_ids)
        return {r.id: np.asarray(r.vector, dtype=np.float64) for r in store.fetch(INDEX, ids)}


def assert_same_vectors(after: dict[str, np.ndarray], before: dict[str, np.ndarray], ids) -> None:
    """The chunks `ids` have the same vectors after as before, by value (float32 storage)."""
    for chunk_id in sorted(ids):
        np.testing.assert_allclose(after[chunk_id], before[chunk_id], rtol=0, atol=1e-6,
                                   err_msg=f"the vector of chunk {chunk_id} changed")


@pytest.fixture(scope="module")
def kb(tmp_path_factory: pytest.TempPathFactory):
    state = KB(tmp_path_factory.mktemp("index-search"))
    state.first = state.index()
    yield state
    kill_leftover_jobs(state.home)


def _expected_chunk_ids(path: Path) -> set[str]:
    """The chunk ids of one file by the documented rule, without stackwise's chunker: the texts
    from semantic-text-splitter itself (default chunking: 1000 characters, 150 overlap, trimmed),
    each id the first 32 hex digits of SHA-256 over the NUL-joined doc id, chunk text, how many
    times that text occurred before, and the metadata's sorted JSON (`{"path": doc id}`)."""
    import hashlib

    from semantic_text_splitter import TextSplitter

    uri = file_uri(path)
    meta = json.dumps({"path": uri}, sort_keys=True)
    seen: dict[str, int] = {}
    ids = set()
    for text in TextSplitter(capacity=1000, overlap=150, trim=True).chunks(path.read_text(encoding="utf-8")):
        if text.strip():
            ids.add(hashlib.sha256("\x00".join([uri, text, str(seen.get(text, 0)), meta]).encode()).hexdigest()[:32])
            seen[text] = seen.get(text, 0) + 1
    return ids


# -- the first run -----------------------------------------------------------------------------
def test_first_index_adds_every_chunk_and_skips_unreadable_files(kb: KB) -> None:
    report = kb.first
    assert report["index"] == INDEX
    assert report["model"] == "all-MiniLM-L6-v2"
    assert report["documents"] == N_ARTICLES
    assert report["chunks"] >= N_ARTICLES
    assert report["added"] == report["chunks"] == report["embedded"]
    assert report["replaced"] == report["removed"] == report["unchanged"] == report["pruned"] == 0
    assert report["embedding_backend"] == "onnx"  # `auto` on CPU: the checked ONNX export

    rows = kb.rows()
    assert len(rows) == report["chunks"]
    # Exactly the chunks of every good file are stored, under their file's URI.
    assert doc_chunks(rows) == {file_uri(p): _expected_chunk_ids(p) for p in kb.files.values()}

    skipped = {item["path"]: item["reason"] for item in report["skipped"]}
    assert set(skipped) == {file_uri(kb.binary), file_uri(kb.latin1)}
    assert "binary" in skipped[file_uri(kb.binary)]
    assert "UTF-8" in skipped[file_uri(kb.latin1)]


# -- search ------------------------------------------------------------------------------------
def test_search_returns_relevant_hits(kb: KB) -> None:
    hits = kb.search(BUSHFIRE_QUERY, "-k", "3")
    assert len(hits) == 3
    for hit in hits:
        assert set(hit) >= {"id", "score", "doc_id", "chunk", "text", "metadata"}
        assert -1.0 <= hit["score"] <= 1.0
        assert hit["metadata"]["path"] == hit["doc_id"]
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    wanted = {file_uri(kb.files[n]) for n in BUSHFIRE_ARTICLES}
    assert hits[0]["doc_id"] in wanted, json.dumps(hits, indent=2)
    assert sum(h["doc_id"] in wanted for h in hits) >= 2, json.dumps(hits, indent=2)


def test_search_filter_narrows_to_the_named_documents(kb: KB) -> None:
    # A bushfire article and a cricket article: the filter applies before ranking, so both
    # documents' chunks come back (and nothing else) although other articles match better.
    chosen = {file_uri(kb.files[19]), file_uri(kb.files[37])}
    per_doc = doc_chunks(kb.rows())
    hits = kb.search(BUSHFIRE_QUERY, "-k", "50", "--filter", "doc_id=" + ",".join(sorted(chosen)))
    assert {h["doc_id"] for h in hits} == chosen
    assert len(hits) == sum(len(per_doc[d]) for d in chosen)
    # (Filters on metadata fields: see the SDK test below, which searches in-process.)


# -- incremental reruns ------------------------------------------------------------------------
def test_rerun_embeds_and_writes_nothing(kb: KB) -> None:
    before, vectors_before = kb.rows(), kb.vectors()
    report = kb.index()
    assert report["chunks"] == len(before)
    assert report["unchanged"] == report["chunks"]
    assert report["added"] == report["replaced"] == report["removed"] == report["embedded"] == 0
    assert kb.rows() == before
    assert_same_vectors(kb.vectors(), vectors_before, before)


def test_modified_file_replaces_only_its_own_chunks(kb: KB) -> None:
    before, vectors_before = kb.rows(), kb.vectors()
    per_doc = doc_chunks(before)
    # The article with the most chunks (not the one the prune test deletes).
    number = max((n for n in kb.files if n != PRUNED and kb.files[n].exists()),
                 key=lambda n: (len(per_doc[file_uri(kb.files[n])]), -n))
    path = kb.files[number]
    old_ids = per_doc[file_uri(path)]
    assert len(old_ids) >= 2
    path.write_text(path.read_text(encoding="utf-8").rstrip() + " The correspondent added one more sentence.\n",
                    encoding="utf-8")

    report = kb.index()
    assert report["replaced"] > 0
    assert report["embedded"] == report["replaced"]
    assert report["added"] == 0
    assert report["unchanged"] == report["chunks"] - report["replaced"]

    after = kb.rows()
    new_ids = doc_chunks(after)[file_uri(path)]
    assert new_ids == _expected_chunk_ids(path)
    assert len(new_ids - old_ids) == report["replaced"]
    assert len(old_ids - new_ids) == report["removed"]
    # Every other document's chunks are untouched: same ids, same texts.
    others_before = {k: v for k, v in before.items() if v[1] != file_uri(path)}
    others_after = {k: v for k, v in after.items() if v[1] != file_uri(path)}
    assert others_after == others_before
    # By value: the chunks the edited document keeps reuse their own stored vectors (each its
    # own, not another's), and no other document's vector moved.
    vectors_after = kb.vectors()
    kept = old_ids & new_ids
    assert len(kept) >= 1
    assert_same_vectors(vectors_after, vectors_before, kept | set(others_before))
    # The new chunks got fresh vectors of their own, unlike any the document had before.
    for chunk_id in new_ids - old_ids:
        assert all(np.abs(vectors_after[chunk_id] - vectors_before[k]).max() > 1e-3 for k in old_ids)


def test_deleted_file_is_pruned(kb: KB) -> None:
    before = kb.rows()
    path = kb.files[PRUNED]
    doomed = doc_chunks(before)[file_uri(path)]
    path.unlink()

    report = kb.index("--prune")
    assert report["pruned"] == len(doomed)
    assert report["embedded"] == report["added"] == report["replaced"] == 0
    assert report["documents"] == len(kb.files) - 1

    after = kb.rows()
    assert not doomed & set(after)
    assert file_uri(path) not in {doc for _, doc, _ in after.values()}
    assert after == {k: v for k, v in before.items() if k not in doomed}


# -- the same through the SDK ------------------------------------------------------------------
def test_sdk_index_and_search(sdk_env: Path, tmp_path: Path) -> None:
    import stackwise
    from stackwise.jobs import JobHandle, JobState
    from stackwise.vectors import Hit

    corpus = tmp_path / "lee.jsonl"
    with corpus.open("w", encoding="utf-8") as out:
        for number, text in enumerate(lee_articles()[:30]):
            record = {"id": f"lee-{number:03d}", "text": text, "article": number,
                      "parity": "even" if number % 2 == 0 else "odd"}
            out.write(json.dumps(record) + "\n")

    platform = stackwise.connect()
    handle = platform.index(source=str(corpus), index="news")
    assert isinstance(handle, JobHandle)
    info = handle.wait(timeout=JOB_TIMEOUT_S)
    assert info.state is JobState.SUCCEEDED, info
    report = handle.outputs
    assert report == info.outputs
    assert report["index"] == "news" and report["documents"] == 30
    assert report["added"] == report["chunks"] == report["embedded"] > 0
    assert [(i.name, i.count) for i in platform.indexes()] == [("news", report["chunks"])]

    uri = file_uri(corpus)
    hits = platform.search("news", BUSHFIRE_QUERY, k=3)
    assert len(hits) == 3 and all(isinstance(h, Hit) for h in hits)
    assert hits[0].doc_id in {f"{uri}#lee-{n:03d}" for n in BUSHFIRE_ARTICLES}
    assert hits[0].metadata["article"] in BUSHFIRE_ARTICLES

    odd = platform.search("news", BUSHFIRE_QUERY, k=10, filter={"parity": "odd"})
    assert len(odd) == 10 and {h.metadata["parity"] for h in odd} == {"odd"}
    one = platform.search("news", BUSHFIRE_QUERY, k=10, filter={"article": 7})
    assert one and {h.doc_id for h in one} == {f"{uri}#lee-007"}
    both = platform.search("news", BUSHFIRE_QUERY, k=10, filter={"article": [7, 8], "parity": "even"})
    assert both and {h.doc_id for h in both} == {f"{uri}#lee-008"}
