"""Document identity, `--prune` scope, damaged indexes and the one index-name rule (issue 14).

The index workload runs in-process against a real embedded (LanceDB) store; only the embedding
model is replaced by a small deterministic one (the model is not what these tests check), so
every test takes well under a second. Expected values are counted by hand from the corpus:
five short files, one chunk each.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stackwise.adapters.vectors.embedded import EmbeddedStore
from stackwise.documents import canonical_source
from stackwise.errors import StoreError
from stackwise.specs import IndexSpec
from stackwise.vector_copy import copy_index
from stackwise.vectors import IndexInfo, Record, VectorStore
from stackwise.workloads import index as index_workload
from stackwise.workloads.index import Shard, run_index

FILES = {f"doc{i}.txt": f"Document number {i} talks about topic {i} and nothing else." for i in range(5)}
DIM = 8
MODEL = "fake-model"


class FakeEmbedder:
    name, dim, backend = MODEL, DIM, "fake"

    def encode(self, texts, batch_size: int = 64):
        rows = [np.frombuffer(hashlib.sha256(t.encode()).digest()[:DIM], dtype=np.uint8).astype(np.float32) + 1
                for t in texts]
        return np.asarray([r / np.linalg.norm(r) for r in rows], dtype=np.float32)


@pytest.fixture
def fake_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_workload, "load_embedder", lambda model, device="cpu", backend="auto": FakeEmbedder())


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """data/docs with five .txt files (one chunk each), data/docs/x/ empty, data/sub/, and a link to docs."""
    docs = tmp_path / "data" / "docs"
    (docs / "x").mkdir(parents=True)
    (tmp_path / "data" / "sub").mkdir()
    for name, text in FILES.items():
        (docs / name).write_text(text, encoding="utf-8")
    (tmp_path / "link-to-docs").symlink_to(docs, target_is_directory=True)
    return docs


@pytest.fixture
def store(tmp_path: Path) -> EmbeddedStore:
    return EmbeddedStore(str(tmp_path / "vectors"))


def index(store: EmbeddedStore, source: str, prune: bool = False):
    spec = IndexSpec(source=source, index="kb", prune=prune, embedding={"model": MODEL})
    return run_index(spec, store=store, progress=lambda *a, **k: None, shard=Shard())


def doc_ids(store: EmbeddedStore) -> set[str]:
    return set(store.chunk_ids("kb"))


def expected_ids(docs: Path, names=FILES) -> set[str]:
    return {f"file://{os.path.realpath(docs)}/{name}" for name in names}


# -- item 1: one source under every spelling -----------------------------------------------------
def test_every_spelling_of_a_local_folder_is_one_canonical_source(corpus: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    real = f"file://{os.path.realpath(corpus)}"
    spellings = [str(corpus), f"{corpus}/", f"{corpus}/./x/..", f"{corpus}/x/../x/..", f"file://{corpus}",
                 f"file://{corpus}/", str(tmp_path / "link-to-docs"), f"{tmp_path}/link-to-docs/../docs"]
    assert {canonical_source(s) for s in spellings} == {real}
    monkeypatch.chdir(tmp_path / "data" / "sub")
    assert canonical_source("../docs") == canonical_source("file:../docs/.") == real
    assert canonical_source("s3://bucket//kb/") == canonical_source("s3://bucket/kb") == "s3://bucket/kb"
    assert canonical_source("s3://bucket/kb/./a.txt") == "s3://bucket/kb/a.txt"


def test_indexing_one_folder_under_four_spellings_stores_each_document_once(
        corpus: Path, tmp_path: Path, store: EmbeddedStore, fake_model: None, monkeypatch: pytest.MonkeyPatch) -> None:
    first = index(store, str(corpus))
    assert (first.documents, first.added) == (5, 5)
    again = [index(store, f"{corpus}/./x/../x/.."), index(store, str(tmp_path / "link-to-docs"))]
    monkeypatch.chdir(tmp_path / "data" / "sub")
    again.append(index(store, "../docs"))
    assert [(r.added, r.unchanged, r.embedded) for r in again] == [(0, 5, 0)] * 3
    assert store.describe("kb").count == 5
    assert doc_ids(store) == expected_ids(corpus)


# -- item 2: --prune by document identity ----------------------------------------------------------
@pytest.mark.parametrize("first, then", [("glob", "folder"), ("folder", "glob")])
def test_prune_removes_a_deleted_document_whichever_spelling_indexed_it(
        corpus: Path, store: EmbeddedStore, fake_model: None, first: str, then: str) -> None:
    spelled = {"glob": f"{corpus}/*.txt", "folder": str(corpus)}
    index(store, spelled[first])
    (corpus / "doc3.txt").unlink()
    report = index(store, spelled[then], prune=True)
    assert report.pruned == 1
    assert doc_ids(store) == expected_ids(corpus, [n for n in FILES if n != "doc3.txt"])


def test_prune_leaves_documents_outside_the_glob_alone(corpus: Path, store: EmbeddedStore, fake_model: None) -> None:
    (corpus / "notes.md").write_text("# Notes\n\nA markdown file the glob does not match.", encoding="utf-8")
    index(store, str(corpus))
    report = index(store, f"{corpus}/*.txt", prune=True)
    assert report.pruned == 0
    assert doc_ids(store) == expected_ids(corpus, [*FILES, "notes.md"])


# -- item 1: an index built before ids were canonical ---------------------------------------------
def _old_index(store: EmbeddedStore, spellings: list[str]) -> None:
    """Write what the old workload wrote: ids from the path as typed (fsspec made it absolute only).
    Each file is one chunk, its whole text; its id by the documented formula, written out here:
    SHA-256 over the NUL-joined doc id, text, occurrence (0) and sorted-JSON metadata, 32 hex digits."""
    store.create_index("kb", DIM, MODEL)
    embedder = FakeEmbedder()
    for folder in spellings:
        for name, text in FILES.items():
            uri = f"file://{folder}/{name}"
            meta = {"path": uri}
            chunk_id = hashlib.sha256("\x00".join([uri, text, "0", json.dumps(meta)]).encode()).hexdigest()[:32]
            [vector] = embedder.encode([text])
            store.replace_documents("kb", [uri], [
                Record(id=chunk_id, vector=vector, text=text, doc_id=uri, source=f"file://{folder}", chunk=0,
                       metadata=meta)])


def test_an_index_built_from_other_spellings_is_rekeyed_without_embedding(
        corpus: Path, tmp_path: Path, store: EmbeddedStore, fake_model: None) -> None:
    _old_index(store, [f"{corpus}/./x/..", f"{tmp_path}/link-to-docs"])
    assert store.describe("kb").count == 10  # the bug: every document twice
    report = index(store, str(corpus))
    assert (report.migrated, report.added, report.embedded, report.unchanged) == (10, 0, 0, 5)
    assert store.describe("kb").count == 5
    assert doc_ids(store) == expected_ids(corpus)
    rows = store.fetch("kb", sorted(i for ids in store.chunk_ids("kb").values() for i in ids))
    assert {r.metadata["path"] for r in rows} == expected_ids(corpus)


def test_duplicates_of_a_canonical_document_are_dropped(corpus: Path, tmp_path: Path, store: EmbeddedStore,
                                                        fake_model: None) -> None:
    _old_index(store, [os.path.realpath(corpus), f"{tmp_path}/link-to-docs"])
    report = index(store, str(corpus))
    assert (report.migrated, report.added, report.embedded) == (5, 0, 0)
    assert store.describe("kb").count == 5


# -- item 4: a deleted or corrupt data file -----------------------------------------------------------
def _data_files(tmp_path: Path) -> set[Path]:
    return set((tmp_path / "vectors" / "kb.lance" / "data").iterdir())


def test_a_deleted_data_file_is_reported_then_recovered_by_the_next_index(
        corpus: Path, tmp_path: Path, store: EmbeddedStore, fake_model: None) -> None:
    (corpus / "doc4.txt").rename(tmp_path / "doc4.txt")
    index(store, str(corpus))  # 4 documents
    before = _data_files(tmp_path)
    (tmp_path / "doc4.txt").rename(corpus / "doc4.txt")
    index(store, str(corpus))  # + doc4, in a data file of its own
    (_data_files(tmp_path) - before).pop().unlink()

    fresh = EmbeddedStore(str(tmp_path / "vectors"))
    with pytest.raises(StoreError) as info:
        fresh.describe("kb")
    assert "'kb' is damaged" in info.value.what and "4 chunks" in info.value.what
    assert "stackwise indexes rebuild kb" in info.value.fix
    with pytest.raises(StoreError, match="damaged"):
        fresh.query("kb", [1.0] * DIM)

    report = index(fresh, str(corpus))
    assert report.recovered_version is not None
    assert (report.added, report.unchanged) == (1, 4)
    assert fresh.describe("kb").count == 5
    assert doc_ids(fresh) == expected_ids(corpus)


def test_corrupt_data_files_restore_the_last_empty_version_and_reindex(
        corpus: Path, tmp_path: Path, store: EmbeddedStore, fake_model: None) -> None:
    index(store, str(corpus))
    for path in _data_files(tmp_path):
        path.write_bytes(b"not a lance file" * 64)
    fresh = EmbeddedStore(str(tmp_path / "vectors"))
    with pytest.raises(StoreError, match=r"the last good version is \d+ \(0 chunks\)"):
        fresh.count("kb")
    report = index(fresh, str(corpus))
    assert report.recovered_version is not None and report.added == 5
    assert doc_ids(fresh) == expected_ids(corpus)


def test_a_damaged_index_without_an_intact_version_asks_for_a_rebuild(
        corpus: Path, tmp_path: Path, store: EmbeddedStore, fake_model: None) -> None:
    from datetime import timedelta

    import lancedb

    index(store, str(corpus))
    with pytest.warns(UserWarning, match="removes every version"):
        lancedb.connect(str(tmp_path / "vectors")).open_table("kb").optimize(
            cleanup_older_than=timedelta(0), delete_unverified=True)  # no older version left
    for path in _data_files(tmp_path):
        path.unlink()
    fresh = EmbeddedStore(str(tmp_path / "vectors"))
    with pytest.raises(StoreError) as info:
        index(fresh, str(corpus))
    assert "no earlier version is intact" in info.value.what
    assert "stackwise indexes rebuild kb" in info.value.fix


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKWISE_")}
    env.update(STACKWISE_HOME=str(home), NO_COLOR="1", COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "stackwise.cli", *args], env=env, cwd=str(home.parent),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False)


def test_cli_lists_a_damaged_index_and_search_says_how_to_fix_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = EmbeddedStore(str(home / "vectors"))
    store.create_index("kb", DIM, MODEL)
    store.upsert("kb", [Record(id="a", vector=[1.0] * DIM, text="a", doc_id="A")])
    store.create_index("ok", DIM, MODEL)
    for path in (home / "vectors" / "kb.lance" / "data").iterdir():
        path.unlink()
    listed = _cli(home, "indexes", "--json")
    assert listed.returncode == 2, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows["ok"]["count"] == 0 and "error" not in rows["ok"]
    assert rows["kb"]["count"] is None and "damaged" in rows["kb"]["error"]
    assert "indexes rebuild kb" in listed.stderr and "Traceback" not in listed.stderr
    searched = _cli(home, "search", "anything", "--index", "kb")
    assert searched.returncode == 2
    assert "'kb' is damaged" in searched.stderr and "Traceback" not in searched.stderr


def test_cli_drop_needs_yes_and_then_drops(tmp_path: Path) -> None:
    home = tmp_path / "home"
    EmbeddedStore(str(home / "vectors")).create_index("kb", DIM, MODEL)
    refused = _cli(home, "indexes", "drop", "kb")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert EmbeddedStore(str(home / "vectors")).list_indexes() == ["kb"]
    dropped = _cli(home, "indexes", "drop", "kb", "--yes", "--json")
    assert dropped.returncode == 0, dropped.stderr
    assert json.loads(dropped.stdout) == {"dropped": "kb", "stack": "local"}
    assert EmbeddedStore(str(home / "vectors")).list_indexes() == []
    missing = _cli(home, "indexes", "drop", "kb", "--yes")
    assert missing.returncode == 2 and "does not exist" in missing.stderr


# -- item 18: one index-name rule ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["x y", "UPPER", "", "-lead", "a" * 64, "dot.ted"])
def test_every_create_refuses_a_name_index_refuses(name: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        IndexSpec(source="docs", index=name)
    store = EmbeddedStore(str(tmp_path / "vectors"))
    with pytest.raises(StoreError, match="invalid"):
        store.create_index(name, DIM, MODEL)
    assert store.list_indexes() == []

    class Minimal(VectorStore):  # any adapter: the base class checks the name before its create runs
        created: list[str] = []

        def create_index(self, name: str, dim: int, model: str) -> IndexInfo:
            self.created.append(name)
            return IndexInfo(name, dim, model, 0)

    for method in ("list_indexes", "describe", "drop_index", "upsert", "delete", "query", "count", "fetch", "chunk_ids"):
        setattr(Minimal, method, lambda *a, **k: None)
    Minimal.__abstractmethods__ = frozenset()
    with pytest.raises(StoreError, match="invalid"):
        Minimal().create_index(name, DIM, MODEL)
    assert Minimal.created == []


@pytest.mark.parametrize("to_index", ["x y", "UPPER"])
def test_index_copy_refuses_a_bad_target_name_without_recursing(to_index: str, tmp_path: Path) -> None:
    source = EmbeddedStore(str(tmp_path / "a"))
    source.create_index("kb", DIM, MODEL)
    source.upsert("kb", [Record(id="a", vector=[1.0] * DIM, text="a", doc_id="A")])
    target = EmbeddedStore(str(tmp_path / "b"))
    with pytest.raises(StoreError, match="invalid"):
        copy_index(source, target, "kb", to_index)
    assert target.list_indexes() == []
