"""Local jobs end to end: detached jobs followed from other processes, cancellation, a dead
supervisor, unknown ids and a job that fails on bad input.

Each CLI call is its own process, so every check here crosses a process boundary the way a
user's shell does: the job outlives the command that started it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stackwise.errors import InputError

from .conftest import (
    JOB_TIMEOUT_S,
    gone,
    job_row,
    kill_hard,
    lee_articles,
    run_cli,
    wait_for,
    write_txt_corpus,
)


@pytest.fixture(scope="module")
def small_docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight short articles: a job that loads the model and embeds a few dozen chunks."""
    docs = tmp_path_factory.mktemp("jobs") / "docs"
    write_txt_corpus(docs, lee_articles()[:8])
    return docs


@pytest.fixture(scope="module")
def big_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole Lee corpus as one JSONL file: a job that runs for minutes unless cancelled."""
    path = tmp_path_factory.mktemp("jobs-big") / "lee.jsonl"
    with path.open("w", encoding="utf-8") as out:
        for number, text in enumerate(lee_articles()):
            out.write(json.dumps({"id": f"lee-{number:03d}", "text": text}) + "\n")
    return path


def test_detached_job_is_followed_from_other_processes(sw_home: Path, small_docs: Path) -> None:
    submitted = run_cli(sw_home, "index", str(small_docs), "--index", "detached", "--detach", "--json").json()
    job_id = submitted["job"]
    assert job_id.startswith("index-")
    # The submitting CLI has exited; its job has not ended (it has a model to load first).
    assert submitted["state"] in ("PENDING", "RUNNING")

    listed = run_cli(sw_home, "jobs", "list", "--json").json()
    assert [j["id"] for j in listed] == [job_id]
    assert listed[0]["kind"] == "index" and listed[0]["stack"] == "local"

    shown = run_cli(sw_home, "jobs", "show", job_id, "--json").json()
    assert shown["id"] == job_id
    assert shown["spec"]["index"] == "detached" and shown["spec"]["source"] == str(small_docs)

    waited = run_cli(sw_home, "jobs", "wait", job_id, "--timeout", str(JOB_TIMEOUT_S), "--json").json()
    assert waited["state"] == "SUCCEEDED", waited
    assert waited["exit_code"] == 0 and waited["error"] is None
    report = waited["outputs"]
    assert report["index"] == "detached" and report["documents"] == 8
    assert report["added"] == report["chunks"] == report["embedded"] > 0

    logs = run_cli(sw_home, "jobs", "logs", job_id).stdout.splitlines()
    results = [json.loads(line[len("@@result "):]) for line in logs if line.startswith("@@result ")]
    assert results == [report]
    assert any(line.startswith("@@progress ") for line in logs)

    # A unique prefix of the id names the job too.
    assert run_cli(sw_home, "jobs", "show", job_id[:-2], "--json").json()["id"] == job_id

    # Cancelling a job that has ended leaves it as it was.
    cancelled = run_cli(sw_home, "jobs", "cancel", job_id, "--json").json()
    assert cancelled["state"] == "SUCCEEDED"
    assert cancelled["outputs"] == report
    run_cli(sw_home, "jobs", "wait", job_id, expect=0)


def test_cancel_stops_a_running_job_and_its_processes(sw_home: Path, big_jsonl: Path) -> None:
    job_id = run_cli(sw_home, "index", str(big_jsonl), "--index", "big", "--detach", "--json").json()["job"]
    row = wait_for(lambda: (r := job_row(sw_home, job_id))["state"] == "RUNNING" and r["workload_pid"] and r,
                   what="the job to run")
    supervisor, workload = row["supervisor_pid"], row["workload_pid"]
    assert not gone(supervisor) and not gone(workload)

    cancelled = run_cli(sw_home, "jobs", "cancel", job_id, "--json").json()
    assert cancelled["state"] == "CANCELLED", cancelled
    assert "cancel" in cancelled["error"]

    wait_for(lambda: gone(supervisor) and gone(workload), timeout=60, what="the job's processes to end")
    shown = run_cli(sw_home, "jobs", "show", job_id, "--json").json()
    assert shown["state"] == "CANCELLED"
    assert shown["outputs"] == {}
    waited = run_cli(sw_home, "jobs", "wait", job_id, expect=1)
    assert "CANCELLED" in waited.stdout


def test_job_whose_supervisor_was_killed_is_reported_failed(sdk_env: Path, small_docs: Path) -> None:
    import stackwise
    from stackwise.jobs import JobState

    handle = stackwise.connect().index(source=str(small_docs), index="orphan")
    row = wait_for(lambda: (r := job_row(sdk_env, handle.id))["state"] == "RUNNING" and r["workload_pid"] and r,
                   what="the job to run")
    # The supervisor first, so that it cannot record the workload's death: nobody records an end.
    kill_hard(row["supervisor_pid"])
    wait_for(lambda: gone(row["supervisor_pid"]), timeout=60, what="the supervisor to die")
    kill_hard(row["workload_pid"])
    wait_for(lambda: gone(row["workload_pid"]), timeout=60, what="the workload to die")
    assert job_row(sdk_env, handle.id)["state"] == "RUNNING"  # what the table still says

    assert handle.status() is JobState.FAILED
    info = handle.info()
    assert "supervisor" in (info.error or "") and str(row["supervisor_pid"]) in info.error
    assert info.ended_at is not None
    # Recorded, not only computed: another process sees it too.
    shown = run_cli(sdk_env, "jobs", "show", handle.id, "--json").json()
    assert shown["state"] == "FAILED"
    run_cli(sdk_env, "jobs", "wait", handle.id, expect=1)


def test_unknown_job_id_exits_2_with_a_clear_message(sw_home: Path) -> None:
    for command in (["jobs", "show", "index-nope"], ["jobs", "wait", "index-nope"], ["jobs", "cancel", "index-nope"]):
        result = run_cli(sw_home, *command, expect=2)
        assert "no job 'index-nope'" in result.stderr, result
        assert "stackwise jobs list" in result.stderr, result
        assert "Traceback" not in result.stderr


def test_job_failing_on_a_bad_jsonl_line_reports_where(sdk_env: Path, tmp_path: Path) -> None:
    import stackwise
    from stackwise.errors import JobFailedError
    from stackwise.jobs import JobState

    bad = tmp_path / "records.jsonl"
    bad.write_text('{"id": "a", "text": "first record"}\n'
                   '{"id": "b", "text": "second record"}\n'
                   '{"id": "c", "text": "third record, cut short\n',
                   encoding="utf-8")

    # The CLI refuses it before any job starts ...
    refused = run_cli(sdk_env, "index", str(bad), "--index", "bad", expect=2)
    assert "line 3" in refused.stderr, refused
    assert not (sdk_env / "jobs.db").exists() or run_cli(sdk_env, "jobs", "list", "--json").json() == []

    # ... so does the SDK (Platform.index runs spec.preflight()) ...
    with pytest.raises(InputError, match="line 3"):
        stackwise.connect().index(source=str(bad), index="bad")
    # ... and a job given it anyway (preflight=False) fails with the same location and exit code 2.
    handle = stackwise.connect().index(source=str(bad), index="bad", preflight=False)
    info = handle.wait(timeout=JOB_TIMEOUT_S)
    assert info.state is JobState.FAILED, info
    assert info.exit_code == 2
    assert f"file://{bad} line 3" in info.error, info.error
    assert "invalid JSON on line" in info.error
    with pytest.raises(JobFailedError, match="line 3"):
        handle.result(timeout=10)
    logs = "\n".join(handle.logs())
    assert "line 3" in logs and "@@result" not in logs
    assert info.outputs == {}
