"""The `jobs` commands, `serve` and the local state files against hostile input: SQL wildcards as
job ids, numbers out of range, a corrupt or truncated job table, a full or read-only disk, a
corrupt endpoint state file, a taken port, narrow terminals. Each gets exit code 2 and a message
saying what, where and how to fix it, never a traceback, and no file is changed. No job runs:
rows are written into a real job table.
"""

from __future__ import annotations

import hashlib
import json
import socket
import sqlite3
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)


def _rows(home: Path, *ids: str, state: str = "SUCCEEDED", error: str | None = None) -> None:
    from stackwise.adapters.compute.local import JobDB

    db = JobDB(home)
    for n, job_id in enumerate(ids):
        db.insert({"id": job_id, "kind": job_id.split("-")[0], "stack": "local", "state": state,
                   "spec": '{"kind": "index"}', "digest": job_id.split("-")[1], "created_at": time.time() + n,
                   "ended_at": time.time() + n, "error": error, "job_dir": str(home / "jobs" / job_id),
                   "cwd": str(home)})


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _refused(result, *words: str) -> None:
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


# -- item 11: job id prefixes ------------------------------------------------------------------
def test_sql_wildcards_in_a_job_id_select_no_job(run_cli, tmp_path: Path) -> None:
    home = tmp_path / ".stackwise"
    _rows(home, "index-0123456789abcdef-1")
    for job_id in ("%", "_____", "index%", "index-_123", "%-1", ""):
        for command in ("show", "cancel", "wait"):
            _refused(run_cli("jobs", command, job_id), "no job")
    # A real prefix still names the job.
    shown = run_cli("jobs", "show", "index-0123", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["id"] == "index-0123456789abcdef-1"


def test_an_ambiguous_prefix_is_refused_with_the_candidates(run_cli, tmp_path: Path) -> None:
    home = tmp_path / ".stackwise"
    _rows(home, "index-0123456789abcdef-1", "index-0123456789abcdef-2")
    result = run_cli("jobs", "cancel", "index-0123")
    _refused(result, "more than one job", "index-0123456789abcdef-1", "index-0123456789abcdef-2", "fix:")
    from stackwise.adapters.compute.local import JobDB

    assert {r["state"] for r in JobDB(home).rows(10)} == {"SUCCEEDED"}


# -- item 14: the job table and the endpoint state file ----------------------------------------
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_or_truncated_job_table_is_reported_and_left_as_it_is(run_cli, tmp_path: Path, damage: str) -> None:
    home = tmp_path / ".stackwise"
    db = home / "jobs.db"
    if damage == "garbage":
        home.mkdir()
        db.write_bytes(b"this is not a database, it is a shopping list\n" * 200)
    else:
        _rows(home, *(f"index-{n:016x}-1" for n in range(300)))
        with sqlite3.connect(db) as conn:  # everything in the main file, then cut it in half
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        for extra in ("jobs.db-wal", "jobs.db-shm"):
            (home / extra).unlink(missing_ok=True)
        data = db.read_bytes()
        db.write_bytes(data[: len(data) // 2])
    before = _digest(db)
    for args in (("jobs", "list"), ("jobs", "show", "index-x"), ("jobs", "cancel", "index-x")):
        _refused(run_cli(*args), "corrupt", str(db), "fix:", "move it aside")
        assert _digest(db) == before


@pytest.mark.parametrize("message, words", [
    ("database or disk is full", ("no space", "free space")),
    ("attempt to write a readonly database", ("cannot be written", "STACKWISE_HOME")),
])
def test_a_full_or_read_only_disk_is_a_config_error(tmp_path: Path, monkeypatch, message: str, words) -> None:
    """The disk refuses the job table's write (injected: this test may run as root, whom no mode
    bit stops, on a disk with room)."""
    from stackwise.adapters.compute import local
    from stackwise.errors import ConfigError

    home = tmp_path / "home"
    _rows(home, "index-0123456789abcdef-1", state="RUNNING")

    class Refusing(sqlite3.Connection):
        def execute(self, sql, *args):
            if sql.lstrip().upper().startswith(("UPDATE", "INSERT")):
                raise sqlite3.OperationalError(message)
            return super().execute(sql, *args)

    real = sqlite3.connect
    monkeypatch.setattr(local.sqlite3, "connect", lambda *a, **kw: real(*a, factory=Refusing, **kw))
    with pytest.raises(ConfigError) as refused:
        local.LocalCompute(home=home).cancel("index-0123456789abcdef-1")
    text = str(refused.value)
    assert all(word in text for word in words), text
    assert str(home) in refused.value.where


@pytest.mark.skipif(not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() == 0,
                    reason="root writes through any mode bits")
def test_a_read_only_state_folder_is_a_config_error(run_cli, tmp_path: Path) -> None:
    home = tmp_path / ".stackwise"
    home.mkdir()
    home.chmod(0o555)
    try:
        _refused(run_cli("jobs", "list"), "cannot be written", "STACKWISE_HOME")
    finally:
        home.chmod(0o755)


@pytest.mark.parametrize("text", ["{\"endpoint\": \"local\", \"sta", "[1, 2]",
                                  '{"endpoint": "local", "state": "ready", "variants": [1]}',
                                  '{"endpoint": "local", "state": "ready", "variants": [{"model": "a"}]}'])
def test_a_corrupt_endpoint_state_file_is_reported_and_left_as_it_is(run_cli, tmp_path: Path, text: str) -> None:
    state = tmp_path / ".stackwise" / "endpoints" / "local.json"
    state.parent.mkdir(parents=True)
    state.write_text(text)
    _refused(run_cli("endpoints"), "deploy state", str(state), "fix:")
    assert state.read_text() == text


# -- item 17: numbers out of range -------------------------------------------------------------
def test_numbers_out_of_range_exit_2(run_cli, tmp_path: Path) -> None:
    home = tmp_path / ".stackwise"
    _rows(home, "index-0123456789abcdef-1", state="RUNNING")  # `wait` would block on it: it must not
    listed = run_cli("jobs", "list", "--limit", "99999999999999999999", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [j["id"] for j in json.loads(listed.stdout)] == ["index-0123456789abcdef-1"]
    for bad in ("0", "-1"):
        result = run_cli("jobs", "list", "--limit", bad)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    for bad in ("nan", "-1", "-inf"):
        _refused(run_cli("jobs", "wait", "index-0123456789abcdef-1", "--timeout", bad), "--timeout", "fix:")
    for bad in ("70000", "-1", "0", "99999999999999999999"):
        _refused(run_cli("serve", "--port", bad), "--port", "fix:")


def test_wait_timeout_nan_is_refused_by_the_sdk() -> None:
    from stackwise.errors import SpecError
    from stackwise.jobs import JobHandle

    with pytest.raises(SpecError):
        JobHandle(None, "index-x-1").wait(timeout=float("nan"))  # type: ignore[arg-type]


def test_a_busy_port_exits_2_with_what_where_fix(run_cli) -> None:
    pytest.importorskip("uvicorn")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        _refused(run_cli("serve", "--port", str(port)), f"port {port}", "already in use", "where:", "fix:")


# -- item 22: job ids are never cut -------------------------------------------------------------
def test_jobs_list_prints_whole_ids_in_80_columns(run_cli, tmp_path: Path) -> None:
    home = tmp_path / ".stackwise"
    ids = ["evaluate-0123456789abcdef-12", "finetune-fedcba9876543210-3"]
    _rows(home, *ids, state="FAILED", error="the workload exited with code 1: " + "a long reason " * 20)
    listed = run_cli("jobs", "list", env={"COLUMNS": "80"})
    assert listed.returncode == 0, listed.stderr
    for job_id in ids:
        assert job_id in listed.stdout, listed.stdout


# -- item 20: the CLI shows a workload's what, where and fix as such ----------------------------
def test_jobs_wait_shows_the_workloads_where_and_fix(run_cli, tmp_path: Path) -> None:
    home = tmp_path / ".stackwise"
    error = ("invalid JSON on line 3\n  where: file:///data/records.jsonl line 3\n"
             "  fix: correct the line, or remove it")
    _rows(home, "index-0123456789abcdef-1", state="FAILED", error=error)
    waited = run_cli("jobs", "wait", "index-0123456789abcdef-1")
    assert waited.returncode == 1, waited.stderr
    assert "  error: invalid JSON on line 3" in waited.stdout
    assert "  where: file:///data/records.jsonl line 3" in waited.stdout
    assert "  fix: correct the line, or remove it" in waited.stdout
    assert "(" not in waited.stdout.splitlines()[0]


def test_a_failed_jobs_error_keeps_the_workloads_where_and_fix() -> None:
    from stackwise.jobs import JobInfo, JobState

    info = JobInfo(id="index-x-1", kind="index", stack="local", state=JobState.FAILED, created_at=0.0,
                   error="no such source\n  where: /data/missing\n  fix: give a file or folder that exists",
                   exit_code=2, log_path="/state/jobs/index-x-1/log.txt")
    failure = info.failure()
    assert failure.what == "job index-x-1 ended FAILED: no such source"
    assert failure.where == "/data/missing"
    assert failure.fix == "give a file or folder that exists"
    assert failure.exit_code == 2
    plain = JobInfo(id="index-x-1", kind="index", stack="local", state=JobState.FAILED, created_at=0.0,
                    error="the workload was killed by signal SIGKILL", log_path="/l.txt").failure()
    assert plain.where == "/l.txt" and "stackwise jobs logs index-x-1" in plain.fix and plain.exit_code == 1
