"""Sharded indexing (`workers: N`) on the local stack, run for real.

The same corpus (45 articles of gensim's Lee corpus as .txt files, 15 more as records of one
JSONL file, and one binary file to skip) is indexed into two state folders: with workers=1 and
with workers=3 (three workload processes writing one embedded LanceDB table at once). The two
indexes must hold exactly the same chunks: ids, texts, metadata and vectors (embedded one text
per batch, so that the vectors do not depend on which texts shared a batch). A rerun with one
file and one record removed and `--prune`, through the CLI, removes exactly their chunks.
Also: each shard handles exactly the documents `shard_of` gives it, one failed shard fails the
job, and cancel stops every shard.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import psutil
import pytest

from .conftest import (
    JOB_TIMEOUT_S,
    doc_chunks,
    file_uri,
    gone,
    job_row,
    kill_hard,
    kill_leftover_jobs,
    lee_articles,
    run_cli,
    vectors_uri,
    wait_for,
    write_txt_corpus,
)

INDEX = "kb"
N_FILES, N_RECORDS = 45, 15
REMOVED_FILE, REMOVED_RECORD = 7, "r3"


def _all_rows(home: Path) -> dict[str, tuple[str, str, int, str, tuple[float, ...]]]:
    from stackwise.adapters.vectors.embedded import EmbeddedStore

    store = EmbeddedStore(vectors_uri(home))
    ids = sorted(i for chunk_ids in store.chunk_ids(INDEX).values() for i in chunk_ids)
    records = store.fetch(INDEX, ids)
    assert len(records) == len(ids) == len({r.id for r in records}), "duplicate or missing chunk ids"
    return {r.id: (r.text, r.doc_id, r.chunk, json.dumps(r.metadata, sort_keys=True),
                   tuple(np.asarray(r.vector, dtype=np.float32).tolist())) for r in records}


class Corpus:
    def __init__(self, root: Path):
        self.root = root
        self.docs = root / "docs"
        articles = lee_articles()
        self.files = write_txt_corpus(self.docs, articles[:N_FILES])
        self.jsonl = self.docs / "more.jsonl"
        self.records = {f"r{i}": text for i, text in enumerate(articles[N_FILES:N_FILES + N_RECORDS])}
        self._write_jsonl()
        (self.docs / "scan.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00" + bytes(range(256)))
        self.homes = {n: root / f"home-{n}" for n in (1, 3)}
        for home in self.homes.values():
            home.mkdir()

    def _write_jsonl(self) -> None:
        self.jsonl.write_text("".join(json.dumps({"id": k, "text": v, "lang": "en"}) + "\n"
                                      for k, v in self.records.items()), encoding="utf-8")

    def index_sdk(self, workers: int) -> dict:
        """Index with the SDK from this process: a real local job (supervisor + workload processes)."""
        import os

        from .conftest import stackwise_env

        old = dict(os.environ)
        os.environ.update(stackwise_env(self.homes[workers]))
        try:
            import stackwise
            from stackwise.specs import IndexSpec

            platform = stackwise.connect("local")
            spec = IndexSpec(source=str(self.docs), index=INDEX, workers=workers, embedding={"batch_size": 1})
            handle = platform.index(spec)
            info = handle.wait(timeout=JOB_TIMEOUT_S)
            self.job_ids = getattr(self, "job_ids", {}) | {workers: handle.id}
            assert info.state.value == "SUCCEEDED", f"{info.error}\n" + "\n".join(list(handle.logs())[-20:])
            return info.outputs
        finally:
            os.environ.clear()
            os.environ.update(old)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    state = Corpus(tmp_path_factory.mktemp("sharding"))
    state.reports = {n: state.index_sdk(n) for n in (1, 3)}
    yield state
    for home in state.homes.values():
        kill_leftover_jobs(home)


# -- the pure parts ----------------------------------------------------------------------------
def test_shard_of_is_stable_and_spreads_documents():
    from stackwise.workloads.index import shard_of

    # Fixed values: a salted or platform-dependent hash would change them between processes.
    assert [shard_of(f"file:///docs/{i}.txt", 3) for i in range(6)] == \
        [shard_of(f"file:///docs/{i}.txt", 3) for i in range(6)]
    assert shard_of("file:///docs/a.txt", 1) == 0
    counts = np.bincount([shard_of(f"file:///docs/{i}.txt", 4) for i in range(4000)], minlength=4)
    assert counts.min() > 900, counts  # about 1000 each


def test_shard_from_env_refuses_a_split_other_than_the_specs():
    from stackwise.errors import SpecError
    from stackwise.specs import IndexSpec
    from stackwise.workloads.index import Shard

    spec = IndexSpec(source="docs", index="kb", workers=3)
    assert Shard.from_env(spec, {}) == Shard(0, 1)
    assert Shard.from_env(spec, {"STACKWISE_SHARD_INDEX": "2", "STACKWISE_SHARD_COUNT": "3"}) == Shard(2, 3)
    for bad in ({"STACKWISE_SHARD_INDEX": "0", "STACKWISE_SHARD_COUNT": "2"},
                {"STACKWISE_SHARD_INDEX": "3", "STACKWISE_SHARD_COUNT": "3"},
                {"STACKWISE_SHARD_INDEX": "x", "STACKWISE_SHARD_COUNT": "3"}):
        with pytest.raises(SpecError, match="shard"):
            Shard.from_env(spec, bad)


def test_workers_are_validated():
    from pydantic import ValidationError

    from stackwise.specs import IndexSpec

    for bad in ({"workers": 0}, {"workers": 257}, {"workers": 2, "compute": {"nodes": 3}}):
        with pytest.raises(ValidationError):
            IndexSpec(source="docs", index="kb", **bad)
    assert IndexSpec(source="docs", index="kb", workers=4, compute={"nodes": 4}).workers == 4


# A writer as the index workload commits: replace_documents per batch, optimize now and then.
_WRITER = """
import json, sys
import numpy as np
from stackwise.adapters.vectors.embedded import EmbeddedStore
from stackwise.vectors import Record
from stackwise.workloads.index import _CommitLock
root, shard = sys.argv[1], int(sys.argv[2])
store, errors = EmbeddedStore(root), []
commit = _CommitLock(store, "t")
rng = np.random.default_rng(shard)
for batch in range(16):
    docs = [f"d{shard}-{i}" for i in range(5)]
    records = [Record(id=f"{d}-{batch}-{c}", vector=rng.random(8).tolist(), text="x", doc_id=d, source="s",
                      chunk=c, metadata={}) for d in docs for c in range(2)]
    try:
        with commit():
            store.replace_documents("t", docs, records)
            if batch % 4 == 3:
                store.optimize("t")
    except Exception as exc:
        errors.append(str(exc)[:200])
print(json.dumps(errors))
"""


def test_concurrent_writers_commit_one_at_a_time(tmp_path):
    """Three processes replacing documents and compacting one table at once: without the lock,
    LanceDB 0.40 failed 5 of these 12 compactions in one run here ("Retryable commit conflict ...
    This Rewrite transaction was preempted by concurrent transaction Update"); with it, none fails."""
    import subprocess
    import sys

    from stackwise.adapters.vectors.embedded import EmbeddedStore
    from stackwise.vectors import Record

    from .conftest import stackwise_env

    root = str(tmp_path / "vectors")
    store = EmbeddedStore(root)
    store.create_index("t", 8, "m")
    store.upsert("t", [Record(id=f"d{s}-{i}-seed", vector=[0.1] * 8, text="x", doc_id=f"d{s}-{i}", source="s",
                              chunk=0, metadata={}) for s in range(3) for i in range(5)])
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, root, str(s)], stdout=subprocess.PIPE, text=True,
                              env=stackwise_env(tmp_path)) for s in range(3)]
    errors = [json.loads(p.communicate(timeout=JOB_TIMEOUT_S)[0].strip().splitlines()[-1]) for p in procs]
    assert errors == [[], [], []]
    # The last batch of every writer replaced its documents' earlier chunks: 3 x 5 docs x 2 chunks.
    assert sorted(i for ids in store.chunk_ids("t").values() for i in ids) == sorted(
        f"d{s}-{i}-15-{c}" for s in range(3) for i in range(5) for c in range(2))


# -- workers=3 against workers=1 ---------------------------------------------------------------
def test_three_workers_build_exactly_the_index_one_worker_builds(corpus: Corpus):
    one, three = _all_rows(corpus.homes[1]), _all_rows(corpus.homes[3])
    assert len(one) == corpus.reports[1]["chunks"] > N_FILES + N_RECORDS - 1
    assert one == three  # ids, texts, doc ids, chunk numbers, metadata and float32 vectors
    # ... and those vectors are the chunks' own embeddings, by value (not merely equal to each
    # other: a store that returned every vector altered would pass the comparison above).
    from stackwise.embeddings import load_embedder

    embedder = load_embedder(corpus.reports[1]["model"])
    sample = sorted(one)[:: max(1, len(one) // 12)]
    for chunk_id in sample:
        [fresh] = embedder.encode([one[chunk_id][0]], batch_size=1)
        np.testing.assert_allclose(np.asarray(three[chunk_id][4]), fresh, rtol=0, atol=1e-4,
                                   err_msg=f"stored vector of chunk {chunk_id} is not its text's embedding")
    expected_docs = {file_uri(p) for p in corpus.files.values()} | {
        f"{file_uri(corpus.jsonl)}#{k}" for k in corpus.records}
    assert set(doc_chunks({k: v[:3] for k, v in three.items()})) == expected_docs

    r1, r3 = corpus.reports[1], corpus.reports[3]
    assert r3["shards"] == 3 and r1["shards"] == 1
    for key in ("index", "source", "model", "documents", "chunks", "added", "embedded", "skipped"):
        assert r1[key] == r3[key], key
    assert r3["added"] == r3["chunks"] == len(three)
    assert [s["path"] for s in r3["skipped"]] == [file_uri(corpus.docs / "scan.txt")]


def test_each_shard_indexed_exactly_its_documents_and_logged_with_its_prefix(corpus: Corpus):
    from stackwise.workloads.index import shard_of

    job_dir = Path(job_row(corpus.homes[3], corpus.job_ids[3])["job_dir"])
    rows = _all_rows(corpus.homes[3])
    per_doc = doc_chunks({k: v[:3] for k, v in rows.items()})
    log = (job_dir / "log.txt").read_text(encoding="utf-8")
    for shard in range(3):
        report = json.loads((job_dir / "shards" / str(shard) / "result.json").read_text(encoding="utf-8"))
        mine = [d for d in per_doc if shard_of(d, 3) == shard]
        assert report["documents"] == len(mine) > 0
        assert report["added"] == sum(len(per_doc[d]) for d in mine)
        assert f"[shard {shard}] @@result " in log
    # One summed progress line per event: its total ends at every chunk of the job.
    progress = [json.loads(line.removeprefix("@@progress ")) for line in log.splitlines()
                if line.startswith("@@progress ")]
    assert progress[-1]["shards"] == 3 and progress[-1]["done"] == progress[-1]["total"] == len(rows)


def test_prune_rerun_with_three_workers_removes_exactly_the_deleted_documents(corpus: Corpus):
    home = corpus.homes[3]
    before = _all_rows(home)
    per_doc = doc_chunks({k: v[:3] for k, v in before.items()})
    gone_file = file_uri(corpus.files[REMOVED_FILE])
    gone_record = f"{file_uri(corpus.jsonl)}#{REMOVED_RECORD}"
    doomed = per_doc[gone_file] | per_doc[gone_record]

    corpus.files[REMOVED_FILE].unlink()
    del corpus.records[REMOVED_RECORD]
    corpus._write_jsonl()
    report = run_cli(home, "index", str(corpus.docs), "--index", INDEX, "--workers", "3", "--prune",
                     "--json").json()
    assert report["shards"] == 3
    assert report["pruned"] == len(doomed)
    assert report["added"] == report["embedded"] == report["replaced"] == report["removed"] == 0
    assert report["documents"] == N_FILES + N_RECORDS - 2
    after = _all_rows(home)
    assert after == {k: v for k, v in before.items() if k not in doomed}

    # One worker pruning the other index ends at the same contents.
    one = run_cli(corpus.homes[1], "index", str(corpus.docs), "--index", INDEX, "--prune", "--json").json()
    assert one["pruned"] == report["pruned"]
    assert _all_rows(corpus.homes[1]) == after


# -- failure and cancel ------------------------------------------------------------------------
def _shard_pids(home: Path, job_id: str, count: int) -> list[int]:
    def children():
        row = job_row(home, job_id)
        try:
            kids = psutil.Process(row["supervisor_pid"]).children()
        except psutil.Error:
            return None
        pids = [k.pid for k in kids if any("stackwise.workloads.index" in part for part in k.cmdline())]
        return pids if len(pids) == count else None

    return wait_for(children, timeout=60, what=f"{count} shard processes")


def _submit(home: Path, docs: Path, workers: int) -> str:
    result = run_cli(home, "index", str(docs), "--index", "other", "--workers", str(workers), "--detach", "--json")
    return result.json()["job"]


def test_one_failed_shard_fails_the_job(corpus: Corpus, sw_home: Path):
    docs = corpus.root / "small"
    write_txt_corpus(docs, lee_articles()[:6])
    job_id = _submit(sw_home, docs, 3)
    victim = _shard_pids(sw_home, job_id, 3)[1]
    kill_hard(victim)
    row = wait_for(lambda: (r := job_row(sw_home, job_id))["state"] not in ("PENDING", "RUNNING") and r,
                   what="the job to end")
    assert row["state"] == "FAILED"
    assert "of 3: the workload was killed by signal SIGKILL" in row["error"]
    shown = run_cli(sw_home, "jobs", "show", job_id, "--json", expect=None)
    assert "SIGKILL" in shown.stdout


def test_cancel_stops_every_shard(corpus: Corpus, sw_home: Path):
    job_id = _submit(sw_home, corpus.docs, 3)
    pids = _shard_pids(sw_home, job_id, 3)
    run_cli(sw_home, "jobs", "cancel", job_id)
    wait_for(lambda: all(gone(pid) for pid in pids), timeout=30, what="every shard to stop")
    assert job_row(sw_home, job_id)["state"] == "CANCELLED"
