"""The commit lock of the index workload holds from a job's first commit: shards creating an index
in a store folder that does not exist yet must not commit unlocked (LanceDB commits are optimistic:
concurrent ones fail with "Retryable commit conflict")."""

from __future__ import annotations

import fcntl

import pytest


@pytest.mark.parametrize("spelling", ["plain", "file-uri"])
def test_the_lock_holds_for_a_store_folder_not_made_yet(tmp_path, spelling):
    from stackwise.adapters.vectors.embedded import EmbeddedStore
    from stackwise.workloads.index import _CommitLock

    folder = tmp_path / "vectors"
    store = EmbeddedStore(str(folder) if spelling == "plain" else f"file://{folder}")
    lock = _CommitLock(store, "kb")
    assert not folder.exists()
    with lock():
        path = folder / ".kb.stackwise-lock"
        assert path.exists()
        # Another open file description (as another shard's process has) cannot take it meanwhile.
        with open(path, "a+b") as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(folder / ".kb.stackwise-lock", "a+b") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released on exit


def test_a_remote_store_takes_no_file_lock(tmp_path):
    from types import SimpleNamespace

    from stackwise.workloads.index import _CommitLock

    lock = _CommitLock(SimpleNamespace(uri="s3://bucket/vectors"), "kb")
    with lock():
        pass
    assert lock.path is None and not any(tmp_path.iterdir())
