"""Crash safety of the index workload (the issue's requirement):

    Index, SIGKILL the job midway, rerun: chunk ids and texts equal a clean run's;
    a third run writes nothing.

The workload runs as a real process (`python -m stackwise.workloads.index --spec spec.json`)
and is SIGKILLed at a point read from its own progress events: before its first commit, and
after its first committed batch of several (the corpus makes ~700 chunks, more than two
batches of `BATCH_CHUNKS`). A third case kills a job's workload through the local compute
path and checks the job record says so.

Detached supervisors that the SDK starts from this (pytest) process are its children; Python
warns (ResourceWarning) when their Popen objects are dropped while they run: by design here.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from stackwise.workloads.index import BATCH_CHUNKS

from .conftest import (
    JOB_TIMEOUT_S,
    doc_chunks,
    folder_snapshot,
    job_row,
    kill_hard,
    lee_articles,
    stackwise_env,
    store_rows,
    wait_for,
    write_txt_corpus,
)

INDEX = "crash"
# Short chunks keep the embedding cheap on 2 cores while giving ~700 chunks: three batches.
CHUNKING = {"size": 50, "overlap": 0}
ARTICLES = slice(100, 120)
PROGRESS = "@@progress "
RESULT = "@@result "


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The documents and the spec every run in this module indexes (one source path, so doc ids match)."""
    root = tmp_path_factory.mktemp("crash")
    docs = root / "docs"
    write_txt_corpus(docs, lee_articles()[ARTICLES], first=ARTICLES.start)
    spec = {"source": str(docs), "index": INDEX, "chunking": CHUNKING}
    spec_path = root / "spec.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    return {"root": root, "docs": docs, "spec": spec, "spec_path": spec_path}


def _command(spec_path: Path, home: Path) -> list[str]:
    """The workload as a job runs it: its spec and the local stack's job context for `home`."""
    from stackwise.contract import JobContext, VectorStoreOutput

    context = home.parent / f"context-{home.name}.json"
    context.write_text(JobContext(stack="local", cloud="local", region="local", artifact_store=str(home / "artifacts"),
                                  vector_store=VectorStoreOutput(kind="embedded", uri=str(home / "vectors")))
                       .model_dump_json(), encoding="utf-8")
    return [sys.executable, "-m", "stackwise.workloads.index", "--spec", str(spec_path), "--context", str(context)]


def run_workload(home: Path, spec_path: Path) -> dict:
    """Run the index workload to completion; return its report (the `@@result` line)."""
    proc = subprocess.run(_command(spec_path, home), cwd=str(home.parent), env=stackwise_env(home),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    results = [line[len(RESULT):] for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    assert len(results) == 1, proc.stdout[-3000:]
    return json.loads(results[0])


def kill_workload_at(home: Path, spec_path: Path, committed: bool) -> int:
    """Start the workload and SIGKILL it at its first progress event with nothing committed yet
    (`committed=False`) or with at least one batch committed (`committed=True`).

    Returns how many chunks its progress said were committed when it was killed.
    """
    proc = subprocess.Popen(_command(spec_path, home), cwd=str(home.parent), env=stackwise_env(home),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    # Never hang the suite on a workload that stops printing: kill it after the job timeout.
    watchdog = threading.Timer(JOB_TIMEOUT_S, proc.kill)
    watchdog.start()
    seen: list[str] = []
    done = None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if not line.startswith(PROGRESS):
                continue
            event = json.loads(line[len(PROGRESS):])
            assert event["stage"] == "embed"
            # More than two batches to embed: killing after the first commit is killing midway.
            assert event["total"] > 2 * BATCH_CHUNKS, event
            if (event["done"] > 0) == committed:
                done = event["done"]
                kill_hard(proc.pid)
                break
        proc.wait(timeout=60)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            kill_hard(proc.pid)
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert done is not None, "the workload ended before the kill point:\n" + "".join(seen[-30:])
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-30:])
    return done


@pytest.fixture(scope="module")
def clean(corpus: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A clean, uninterrupted run into its own state folder: the reference contents."""
    home = tmp_path_factory.mktemp("clean") / "home"
    home.mkdir()
    report = run_workload(home, corpus["spec_path"])
    rows = store_rows(home, INDEX)
    assert report["chunks"] == report["added"] == report["embedded"] == len(rows) > 2 * BATCH_CHUNKS
    return {"report": report, "rows": rows}


@pytest.mark.parametrize("committed", [False, True], ids=["before-first-commit", "after-first-commit"])
def test_sigkill_then_rerun_equals_clean_run_and_third_run_writes_nothing(
    corpus: dict, clean: dict, sw_home: Path, committed: bool
) -> None:
    total = len(clean["rows"])
    done = kill_workload_at(sw_home, corpus["spec_path"], committed)

    partial = store_rows(sw_home, INDEX)
    if committed:
        assert done > 0
        assert done <= len(partial) < total
    else:
        assert partial == {}
    # What the killed run left is a set of whole documents, each exactly as a clean run stores it.
    assert partial.items() <= clean["rows"].items()
    clean_docs = doc_chunks(clean["rows"])
    for doc_id, ids in doc_chunks(partial).items():
        assert ids == clean_docs[doc_id], doc_id

    # The rerun embeds only what the killed run had not committed and ends equal to a clean run.
    second = run_workload(sw_home, corpus["spec_path"])
    assert second["chunks"] == total
    assert second["unchanged"] == len(partial)
    assert second["embedded"] == total - len(partial)
    assert second["replaced"] == second["removed"] == 0
    assert store_rows(sw_home, INDEX) == clean["rows"]

    # A third run embeds nothing and leaves the index's files as they were.
    table = sw_home / "vectors" / f"{INDEX}.lance"
    assert table.is_dir()
    files_before = folder_snapshot(table)
    third = run_workload(sw_home, corpus["spec_path"])
    assert third["embedded"] == third["added"] == third["replaced"] == third["removed"] == 0
    assert third["unchanged"] == total
    assert folder_snapshot(table) == files_before
    assert store_rows(sw_home, INDEX) == clean["rows"]


def test_sigkill_of_a_local_job_is_recorded_and_a_rerun_recovers(corpus: dict, clean: dict, sdk_env: Path) -> None:
    import stackwise
    from stackwise.jobs import JobState
    from stackwise.specs import IndexSpec

    platform = stackwise.connect()
    spec = IndexSpec.model_validate(corpus["spec"])
    handle = platform.index(spec)
    # Killed as soon as the supervisor has started it (the cases above cover later kill points).
    row = wait_for(lambda: (r := job_row(sdk_env, handle.id))["workload_pid"] and r, what="the workload to start")
    kill_hard(row["workload_pid"])

    info = handle.wait(timeout=JOB_TIMEOUT_S)
    assert info.state is JobState.FAILED, info
    assert "SIGKILL" in (info.error or ""), info.error
    assert info.exit_code == -signal.SIGKILL
    assert not info.outputs
    partial = store_rows(sdk_env, INDEX)
    assert partial.items() <= clean["rows"].items()

    rerun = platform.index(spec)
    info = rerun.wait(timeout=JOB_TIMEOUT_S)
    assert info.state is JobState.SUCCEEDED, info
    assert info.outputs["unchanged"] == len(partial)
    assert info.outputs["embedded"] == len(clean["rows"]) - len(partial)
    assert store_rows(sdk_env, INDEX) == clean["rows"]
