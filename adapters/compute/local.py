"""Local compute: each job is a process on this machine, its record a row in SQLite.

`submit` writes the spec to the job's folder and starts a detached supervisor
(`python -m stackwise.adapters.compute.local_supervisor JOB_ID`) in its own session. The
supervisor runs `python -m stackwise.workloads.<kind> --spec spec.json`, sends its output to
the job's log file and records the final state, so a job outlives the CLI that started it and
can be listed, followed, waited on and cancelled from any other process.

An index job with `workers: N` runs N workload processes at once under the one supervisor,
one per shard (see local_supervisor.py): one job, one handle, one log with each line prefixed
by its shard; `cancel` stops them all (they share the supervisor's process group).

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
from contextlib import closing
from pathlib import Path
from typing import Any

import psutil

from stackwise.errors import JobNotFoundError
from stackwise.jobs import JobHandle, JobInfo, JobState
from stackwise.paths import state_dir

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    stack TEXT NOT NULL,
    state TEXT NOT NULL,
    spec TEXT NOT NULL,
    digest TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL,
    supervisor_pid INTEGER,
    supervisor_started REAL,
    workload_pid INTEGER,
    exit_code INTEGER,
    error TEXT,
    outputs TEXT,
    job_dir TEXT NOT NULL,
    cwd TEXT NOT NULL
)
"""
_ACTIVE = (JobState.PENDING.value, JobState.RUNNING.value)
CANCEL_GRACE_S = 10.0


class JobDB:
    """The SQLite job table. Each call opens its own connection: safe across processes."""

    def __init__(self, home: Path | None = None):
        self.home = home or state_dir()
        self.home.mkdir(parents=True, exist_ok=True)
        self.path = self.home / "jobs.db"
        with closing(self._connect()) as db, db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30.0)
        db.row_factory = sqlite3.Row
        return db

    def insert(self, row: dict[str, Any]) -> None:
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with closing(self._connect()) as db, db:
            db.execute(f"INSERT INTO jobs ({columns}) VALUES ({marks})", tuple(row.values()))

    def update(self, job_id: str, only_if_active: bool = False, **values: Any) -> bool:
        """Update a job; with `only_if_active`, only while it is PENDING or RUNNING (no lost races)."""
        sets = ", ".join(f"{k} = ?" for k in values)
        sql = f"UPDATE jobs SET {sets} WHERE id = ?"
        params: tuple[Any, ...] = (*values.values(), job_id)
        if only_if_active:
            sql += " AND state IN (?, ?)"
            params += _ACTIVE
        with closing(self._connect()) as db, db:
            return db.execute(sql, params).rowcount == 1

    def get(self, job_id: str) -> sqlite3.Row:
        with closing(self._connect()) as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                # Accept a unique prefix, as `docker` and `git` do.
                rows = db.execute("SELECT * FROM jobs WHERE id LIKE ?", (job_id + "%",)).fetchall()
                row = rows[0] if len(rows) == 1 else None
        if row is None:
            raise JobNotFoundError(
                f"no job {job_id!r}",
                where=str(self.path),
                fix="list jobs with `stackwise jobs list` (jobs are kept per state folder: check STACKWISE_HOME)",
            )
        return row

    def attempts(self, kind: str, digest: str) -> list[sqlite3.Row]:
        """Every job of one identity, oldest first."""
        with closing(self._connect()) as db:
            return db.execute("SELECT * FROM jobs WHERE kind = ? AND digest = ? ORDER BY created_at, id",
                              (kind, digest)).fetchall()

    def rows(self, limit: int) -> list[sqlite3.Row]:
        with closing(self._connect()) as db:
            return db.execute("SELECT * FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,)).fetchall()


def _alive(pid: int | None, started: float | None) -> bool:
    """Is the process with this pid and start time still running (not a zombie, not a reused pid)?"""
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if started is not None and abs(proc.create_time() - started) > 1.0:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


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
        import sqlite3

        from stackwise.contract import JobContext

        from ._cloud import with_run

        spec = with_run(spec, new, run_name)
        self._preflight(spec)
        kind = spec.kind
        stack = self._stack()
        context_outputs = stack.outputs  # resolved here, once: the job never looks its stack up
        while True:
            rows = self.db.attempts(kind, spec.digest())
            if rows:
                latest = self._reconcile(rows[-1])
                if latest["state"] in _ACTIVE:
                    return JobHandle(self, latest["id"])
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
            proc = subprocess.Popen(
                [sys.executable, "-m", "stackwise.adapters.compute.local_supervisor", job_id],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: survives the CLI, cancellable as a group
                close_fds=True,
            )
        # The supervisor stays our child while this process lives (a service, a notebook): reap it
        # when it ends, so it never lingers as a zombie. A daemon thread never delays our exit.
        threading.Thread(target=proc.wait, name=f"reap-{job_id}", daemon=True).start()
        try:
            started = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            started = None
        self.db.update(job_id, supervisor_pid=proc.pid, supervisor_started=started)
        return JobHandle(self, job_id)

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
        """A job whose supervisor died without recording an end is FAILED, not RUNNING forever."""
        if row["state"] in _ACTIVE and row["supervisor_pid"] and not _alive(
            row["supervisor_pid"], row["supervisor_started"]
        ):
            self.db.update(
                row["id"],
                only_if_active=True,
                state=JobState.FAILED.value,
                ended_at=time.time(),
                error=f"the job's supervisor process (pid {row['supervisor_pid']}) ended without recording a result",
            )
            return self.db.get(row["id"])
        return row

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
        row = self.db.get(job_id)
        if row["state"] not in _ACTIVE:
            return self._info(row)
        self.db.update(
            row["id"], only_if_active=True, state=JobState.CANCELLED.value, ended_at=time.time(),
            error="cancelled by user",
        )
        pid, started = row["supervisor_pid"], row["supervisor_started"]
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
        return self.info(row["id"])
