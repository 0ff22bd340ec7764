"""Local compute: each job is a process on this machine, its record a row in SQLite (local_jobs.py).

`submit` writes the spec to the job's folder and starts a detached supervisor
(`python -m stackwise.adapters.compute.local_supervisor JOB_ID`) in its own session. The
supervisor runs `python -m stackwise.workloads.<kind> --spec spec.json`, sends its output to
the job's log file and records the final state, so a job outlives the CLI that started it and
can be listed, followed, waited on and cancelled from any other process.

An index job with `workers: N` runs N workload processes at once under the one supervisor,
one per shard (see local_supervisor.py): one job, one handle, one log with each line prefixed
by its shard; `cancel` stops them all (they share the supervisor's process group).

A job's processes never outlive its supervisor for long. On Linux the kernel SIGKILLs each
workload the moment its supervisor dies (`PR_SET_PDEATHSIG`, what an OOM kill or `kill -9` of the
supervisor needs). Everywhere, whoever first finds the supervisor dead (`status`, `wait`, `list`,
`submit`, `cancel`) SIGKILLs what is left in the job's process group (and stops its containers)
and waits until it is gone before recording FAILED; `cancel` of a job that has already ended
does the same, and a new attempt of a spec is refused while a process of an earlier one still
runs. A process is taken for the job's only if its environment names the job
(`STACKWISE_JOB_ID`), so a reused pid or group id is never signalled.

State lives under the state folder (`.stackwise/` or `$STACKWISE_HOME`): `jobs.db` and
`jobs/<id>/{spec.json, log.txt, result.json, error.json}` (sharded: also `shards/<i>/result.json`).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from stackwise.errors import ConfigError
from stackwise.jobs import JobConflictError, JobHandle, JobInfo, JobState

# The job records (JobDB, state_error) live in local_jobs.py; callers also import them from here.
from .local_jobs import ACTIVE, JobDB, state_error

# The job's processes (start stamps, liveness, leftovers) live in local_procs.py.
from .local_procs import KILL_WAIT_S, alive as _alive, last_line as _last_line
from .local_procs import leftovers as _leftovers, start_stamp, stop_leftovers

CANCEL_GRACE_S = 10.0


class LocalCompute:
    """Runs jobs as local processes; see the module docstring."""

    def __init__(self, stack: Any = None, home: Path | None = None):
        self.stack_name = getattr(stack, "name", None) or "local"
        self._stack_obj = stack
        self.db = JobDB(home)

    # -- submit --------------------------------------------------------------------------------
    def submit(self, spec: Any, *, new: bool = False, run_name: str | None = None) -> JobHandle:
        """Run `spec` as job `<kind>-<digest>-<attempt>`. While the spec's latest job is PENDING or
        RUNNING it is returned instead; once it ended, the next attempt starts (the same guarantee
        as the cloud adapters). `new` (or another `run_name`) starts a fresh identity."""
        from .checks import with_run

        spec = with_run(spec, new, run_name)
        self._preflight(spec)
        kind = spec.kind
        stack = self._stack()
        context_outputs = stack.outputs  # resolved here, once: the job never looks its stack up
        while True:
            rows = self.db.attempts(kind, spec.digest())
            if rows:
                latest = self._reconcile(rows[-1])
                if latest["state"] in ACTIVE:
                    return JobHandle(self, latest["id"])
                self._refuse_leftovers([*rows[:-1], latest])
            attempt = len(rows) + 1
            job_id = f"{spec.identity}-{attempt}"
            spec_json = spec.model_dump_json(indent=2)
            try:
                self.db.insert(
                    {
                        "id": job_id,
                        "kind": kind,
                        "stack": self.stack_name,
                        "state": JobState.PENDING.value,
                        "spec": spec_json,
                        "digest": spec.digest(),
                        "created_at": time.time(),
                        "job_dir": str(self.db.home / "jobs" / job_id),
                        "cwd": os.getcwd(),
                    }
                )
                break
            except sqlite3.IntegrityError:
                continue  # another process submitted the same attempt meanwhile: look again
        try:
            proc = self._start(job_id, attempt, spec, spec_json, context_outputs)
        except BaseException as exc:
            # Never leave a PENDING record that no supervisor will ever run: later submits would
            # return it instead of starting the spec.
            error = state_error(exc, self.db.home / "jobs" / job_id, self.db.home) if isinstance(exc, OSError) else exc
            try:
                self.db.update(job_id, only_if_active=True, state=JobState.FAILED.value, ended_at=time.time(),
                               error=f"the job could not be started: {error}")
            except ConfigError:
                pass  # the table cannot be written either: the first error is the one to show
            if error is not exc:
                raise error from None
            raise
        # The supervisor stays our child while this process lives (a service, a notebook): reap it
        # when it ends, so it never lingers as a zombie. A daemon thread never delays our exit.
        threading.Thread(target=proc.wait, name=f"reap-{job_id}", daemon=True).start()
        try:
            started = start_stamp(proc.pid)
        except psutil.Error:
            started = None
        self.db.update(job_id, supervisor_pid=proc.pid, supervisor_started=started)
        return JobHandle(self, job_id)

    def _start(self, job_id: str, attempt: int, spec: Any, spec_json: str, context_outputs: Any) -> subprocess.Popen:
        """Write the job's folder and start its supervisor."""
        from stackwise.contract import JobContext

        job_dir = self.db.home / "jobs" / job_id
        if job_dir.exists():  # a folder left by a job record since deleted: start clean
            import shutil

            shutil.rmtree(job_dir)
        job_dir.mkdir(parents=True)
        context = JobContext.from_outputs(self.stack_name, context_outputs, job_id=job_id, attempt=attempt)
        (job_dir / "spec.json").write_text(spec_json, encoding="utf-8")
        (job_dir / "context.json").write_text(context.model_dump_json(indent=2), encoding="utf-8")
        (job_dir / "log.txt").touch()
        self._prepare_job(job_dir, spec, context)
        env = dict(os.environ, STACKWISE_HOME=str(self.db.home))
        with open(job_dir / "supervisor.log", "ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "stackwise.adapters.compute.local_supervisor", job_id],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: survives the CLI, cancellable as a group
                close_fds=True,
            )

    def _preflight(self, spec: Any) -> None:
        """Refuse, before any job record exists, what a subclass cannot run (default: nothing)."""

    def _prepare_job(self, job_dir: Path, spec: Any, context: Any) -> None:
        """What a subclass writes into the job's folder before its supervisor starts (default: nothing)."""

    def _stack(self) -> Any:
        if self._stack_obj is None:
            from stackwise.stack import load_stack

            self._stack_obj = load_stack(self.stack_name)
        return self._stack_obj

    def handle(self, job_id: str) -> JobHandle:
        return JobHandle(self, self.db.get(job_id)["id"])

    # -- follow --------------------------------------------------------------------------------
    def _reconcile(self, row: sqlite3.Row) -> sqlite3.Row:
        """A job whose supervisor died without recording an end is FAILED, not RUNNING forever;
        what is left of its processes is stopped first, so a FAILED job writes nothing more."""
        if row["state"] in ACTIVE and row["supervisor_pid"] and not _alive(
            row["supervisor_pid"], row["supervisor_started"]
        ):
            survivors = stop_leftovers(row)
            error = f"the job's supervisor process (pid {row['supervisor_pid']}) ended without recording a result"
            last = _last_line(Path(row["job_dir"]) / "supervisor.log")
            if last:
                error += f" (its last words: {last})"
            if survivors:
                error += (f"; processes {', '.join(map(str, survivors))} of the job still run after SIGKILL "
                          f"(`stackwise jobs cancel {row['id']}` tries again)")
            self.db.update(row["id"], only_if_active=True, state=JobState.FAILED.value, ended_at=time.time(),
                           error=error)
            return self.db.get(row["id"])
        return row

    def _refuse_leftovers(self, rows: list[sqlite3.Row]) -> None:
        """A new attempt must not race an earlier one that still runs without its supervisor."""
        ended = [row for row in rows if row["state"] not in ACTIVE]
        for job_id, procs in _leftovers(ended).items():
            pids = ", ".join(str(p.pid) for p in procs)
            raise JobConflictError(
                f"job {job_id} has ended, but its processes ({pids}) still run: a new attempt would write "
                "alongside them",
                where=f"job {job_id}",
                fix=f"stop them with `stackwise jobs cancel {job_id}`, then submit again",
            )

    def _info(self, row: sqlite3.Row) -> JobInfo:
        row = self._reconcile(row)
        return JobInfo(
            id=row["id"],
            kind=row["kind"],
            stack=row["stack"],
            state=JobState(row["state"]),
            created_at=row["created_at"],
            started_at=row["started_at"],
            ended_at=row["ended_at"],
            error=row["error"],
            outputs=json.loads(row["outputs"]) if row["outputs"] else {},
            spec=json.loads(row["spec"]),
            log_path=str(Path(row["job_dir"]) / "log.txt"),
            exit_code=row["exit_code"],
            identity=f"{row['kind']}-{row['digest']}",
            attempt=int(row["id"].rsplit("-", 1)[1]) if row["id"].rsplit("-", 1)[-1].isdigit() else None,
        )

    def info(self, job_id: str) -> JobInfo:
        return self._info(self.db.get(job_id))

    def list(self, limit: int = 50) -> list[JobInfo]:
        if limit < 0:
            from stackwise.errors import SpecError

            raise SpecError(f"limit {limit} is negative", where="list(limit=...)", fix="give 0 or more jobs to list")
        return [self._info(row) for row in self.db.rows(limit)]

    def logs(self, job_id: str, follow: bool = False) -> Iterator[str]:
        row = self.db.get(job_id)
        path = Path(row["job_dir"]) / "log.txt"
        with open(path, encoding="utf-8", errors="replace") as handle:
            pending = ""
            while True:
                data = handle.read()
                if data:
                    pending += data
                    *lines, pending = pending.split("\n")
                    yield from lines
                    continue
                if not follow or self.info(row["id"]).state.terminal:
                    # One last read: the job may have written its final lines just before ending.
                    pending += handle.read()
                    yield from (line for line in pending.split("\n") if line)
                    return
                time.sleep(0.2)

    # -- cancel --------------------------------------------------------------------------------
    def cancel(self, job_id: str) -> JobInfo:
        """Stop the job. A job that has ended keeps its state, but any process of it still
        running (its supervisor was killed) is stopped too: when this returns, none runs."""
        row = self.db.get(job_id)
        pid, started = row["supervisor_pid"], row["supervisor_started"]
        if row["state"] not in ACTIVE:
            self._stop_or_raise(row)
            return self._info(row)
        self.db.update(
            row["id"], only_if_active=True, state=JobState.CANCELLED.value, ended_at=time.time(),
            error="cancelled by user",
        )
        if _alive(pid, started):
            try:
                os.killpg(pid, signal.SIGTERM)  # the supervisor leads its own process group
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + CANCEL_GRACE_S
            while time.monotonic() < deadline and _alive(pid, started):
                time.sleep(0.1)
            if _alive(pid, started):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                deadline = time.monotonic() + KILL_WAIT_S
                while time.monotonic() < deadline and _alive(pid, started):
                    time.sleep(0.05)
        self._stop_or_raise(row)
        return self.info(row["id"])

    def _stop_or_raise(self, row: sqlite3.Row) -> None:
        if _alive(row["supervisor_pid"], row["supervisor_started"]):
            return
        survivors = stop_leftovers(row)
        if survivors:
            raise JobConflictError(
                f"processes {', '.join(map(str, survivors))} of job {row['id']} still run after SIGKILL",
                where=f"job {row['id']}",
                fix="the kernel has not let them end yet (a process stuck in a disk or network wait): "
                    "check them with `ps`, then cancel again",
            )
