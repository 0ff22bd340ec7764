"""A local job whose supervisor was killed (the OOM killer, `kill -9`) leaves nothing running.

The supervisor here is a stand-in: a real process in its own session, like the one `submit`
starts, whose workload child carries the job's id in its environment and keeps writing until it
is stopped. It sets no parent-death signal, so these tests check the portable path: whoever
finds the supervisor dead kills what is left of the job (tests/e2e/test_jobs_robust_supervisor.py
checks the Linux kernel path with the real supervisor). No model is loaded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.timeout(120)

# The stand-in supervisor: starts a workload that appends to a file every 50 ms, prints its pid.
SUPERVISOR = r"""
import os, subprocess, sys, time
env = dict(os.environ)
if sys.argv[2] == "tagged":
    env["STACKWISE_JOB_ID"] = sys.argv[1]
child = subprocess.Popen([sys.executable, "-c",
    "import sys, time\nwhile True:\n    open(sys.argv[1], 'a').write('x')\n    time.sleep(0.05)", sys.argv[3]],
    env=env)
print(child.pid, flush=True)
time.sleep(3600)
"""


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class FakeJob:
    """A job row in a real JobDB whose supervisor is a stand-in process."""

    def __init__(self, home: Path, job_id: str, *, state: str = "RUNNING", kind: str = "index",
                 digest: str = "0123456789abcdef", tagged: bool = True):
        from stackwise.adapters.compute.local import JobDB, start_stamp

        self.home, self.id = home, job_id
        self.job_dir = home / "jobs" / job_id
        self.job_dir.mkdir(parents=True)
        self.out = self.job_dir / "writes.txt"
        self.supervisor = subprocess.Popen(
            [sys.executable, "-c", SUPERVISOR, job_id, "tagged" if tagged else "untagged", str(self.out)],
            stdout=subprocess.PIPE, text=True, start_new_session=True)
        self.workload = int(self.supervisor.stdout.readline())
        deadline = time.monotonic() + 60  # the workload has written once: it runs (a loaded machine starts slowly)
        while not self.out.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        self.db = JobDB(home)
        self.db.insert({
            "id": job_id, "kind": kind, "stack": "local", "state": state, "spec": '{"kind": "index"}',
            "digest": digest, "created_at": time.time(), "started_at": time.time(),
            "supervisor_pid": self.supervisor.pid,
            "supervisor_started": start_stamp(self.supervisor.pid),
            "workload_pid": self.workload, "job_dir": str(self.job_dir), "cwd": str(home),
        })

    def kill_supervisor(self) -> None:
        """What the OOM killer does: the supervisor alone, at once."""
        os.kill(self.supervisor.pid, signal.SIGKILL)
        self.supervisor.wait()

    def cleanup(self) -> None:
        for pid in (self.workload, self.supervisor.pid):
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        if self.supervisor.poll() is None:
            self.supervisor.wait()


@pytest.fixture
def jobs(tmp_path: Path):
    made: list[FakeJob] = []

    def make(job_id: str, **kw) -> FakeJob:
        job = FakeJob(tmp_path / "home", job_id, **kw)
        made.append(job)
        return job

    yield make
    for job in made:
        job.cleanup()


def test_a_job_found_without_its_supervisor_is_failed_and_its_processes_are_gone(jobs) -> None:
    from stackwise.adapters.compute.local import LocalCompute
    from stackwise.jobs import JobState

    job = jobs("index-0123456789abcdef-1")
    job.kill_supervisor()
    assert _running(job.workload)  # nothing in the stand-in stops it: it keeps writing

    info = LocalCompute(home=job.home).info(job.id)
    assert info.state is JobState.FAILED
    assert str(job.supervisor.pid) in info.error
    # Recorded FAILED only once the workload was gone: nothing writes after this point.
    assert not _running(job.workload)
    size = job.out.stat().st_size
    time.sleep(0.3)
    assert job.out.stat().st_size == size


def test_cancel_of_a_failed_job_stops_processes_left_behind(jobs) -> None:
    from stackwise.adapters.compute.local import LocalCompute

    job = jobs("index-0123456789abcdef-1", state="FAILED")  # recorded FAILED, yet its workload still runs
    job.kill_supervisor()
    assert _running(job.workload)

    info = LocalCompute(home=job.home).cancel(job.id)
    assert info.state.value == "FAILED"  # its state is kept ...
    assert not _running(job.workload)  # ... and nothing of it runs any more


def test_a_rerun_refuses_to_race_a_live_orphan(jobs, tmp_path: Path) -> None:
    from stackwise.adapters.compute.local import LocalCompute
    from stackwise.jobs import JobConflictError
    from stackwise.specs import IndexSpec

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("one document\n")
    spec = IndexSpec(source=str(docs), index="kb")
    job = jobs(f"{spec.identity}-1", state="FAILED", digest=spec.digest())
    job.kill_supervisor()

    compute = LocalCompute(home=job.home)
    with pytest.raises(JobConflictError) as refused:
        compute.submit(spec)
    assert str(job.workload) in refused.value.what
    assert f"stackwise jobs cancel {job.id}" in refused.value.fix
    assert [r["id"] for r in compute.db.attempts("index", spec.digest())] == [job.id]  # no second attempt
    assert _running(job.workload)  # refused, not killed behind the user's back

    compute.cancel(job.id)
    assert not _running(job.workload)


def test_a_process_without_the_jobs_id_is_never_signalled(jobs) -> None:
    """A pid or process group id is reused once free: only a process carrying the job's id is the job's."""
    from stackwise.adapters.compute.local import LocalCompute

    job = jobs("index-0123456789abcdef-1", tagged=False)
    job.kill_supervisor()
    info = LocalCompute(home=job.home).info(job.id)
    assert info.state.value == "FAILED"
    assert _running(job.workload)


def test_a_container_job_found_without_its_supervisor_has_its_containers_stopped(jobs, tmp_path: Path) -> None:
    """Killing `podman run` leaves its container running: the container is stopped by name."""
    import json

    from stackwise.adapters.compute.container import CONTAINER_FILE
    from stackwise.adapters.compute.local import LocalCompute

    job = jobs("index-0123456789abcdef-1")
    calls = tmp_path / "engine-calls.txt"
    engine = tmp_path / "fake-engine"
    engine.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    engine.chmod(0o755)
    (job.job_dir / CONTAINER_FILE).write_text(json.dumps({"engine": str(engine)}))
    job.kill_supervisor()

    assert LocalCompute(home=job.home).info(job.id).state.value == "FAILED"
    assert calls.read_text().split() == ["stop", "--time", "5", f"sw-{job.id}"]


def test_a_running_job_stays_running_when_the_wall_clock_is_stepped(jobs, monkeypatch) -> None:
    """The boot time the kernel reports (`btime`, read by psutil on every `create_time()`) moves
    with each step of the wall clock; a supervisor's start stamp must not, or a long job whose
    machine corrects its clock is recorded FAILED while it runs (CI, 2026-12-05)."""
    import psutil._pslinux as pslinux

    from stackwise.adapters.compute.local import LocalCompute

    if not sys.platform.startswith("linux"):
        pytest.skip("the start stamp is read from /proc on Linux only")
    job = jobs("index-0123456789abcdef-1")
    real = pslinux.boot_time
    for step in (-1.0, 7.0, -3600.0):  # a btime flip across a whole second, an NTP step, a VM resumed
        monkeypatch.setattr(pslinux, "boot_time", lambda step=step: real() + step)
        assert LocalCompute(home=job.home).info(job.id).state.value == "RUNNING", step
    assert _running(job.supervisor.pid) and _running(job.workload)


def test_a_row_with_a_wall_clock_start_stamp_is_still_followed(jobs) -> None:
    """Job rows written by earlier versions hold the supervisor's wall-clock creation time."""
    from stackwise.adapters.compute.local import LocalCompute

    job = jobs("index-0123456789abcdef-1")
    job.db.update(job.id, supervisor_started=psutil.Process(job.supervisor.pid).create_time())
    assert LocalCompute(home=job.home).info(job.id).state.value == "RUNNING"
    job.db.update(job.id, supervisor_started=psutil.Process(job.supervisor.pid).create_time() - 60)
    assert LocalCompute(home=job.home).info(job.id).state.value == "FAILED"  # another process on a reused pid


def test_a_dead_supervisors_last_words_are_in_the_jobs_error(jobs) -> None:
    from stackwise.adapters.compute.local import LocalCompute

    job = jobs("index-0123456789abcdef-1")
    (job.job_dir / "supervisor.log").write_text(
        "Traceback (most recent call last):\n  ...\nsqlite3.OperationalError: disk I/O error\n\n")
    job.kill_supervisor()
    info = LocalCompute(home=job.home).info(job.id)
    assert info.state.value == "FAILED"
    assert info.error.endswith("(its last words: sqlite3.OperationalError: disk I/O error)"), info.error
