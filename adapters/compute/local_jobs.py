"""The job records of local compute: one SQLite table, `jobs.db` in the state folder
(`.stackwise/` or `$STACKWISE_HOME`), one row per job (adapters/compute/local.py runs the jobs).

Each call opens its own connection, so any process may read and write it; a table that cannot
be used is a `ConfigError` that says why and how to fix it, and is never recreated.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from stackwise.errors import ConfigError, JobNotFoundError
from stackwise.jobs import JobState
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
# The states of a job that has not ended yet.
ACTIVE = (JobState.PENDING.value, JobState.RUNNING.value)
_SQLITE_MAX = 2**63 - 1


def state_error(exc: BaseException, path: Path, home: Path) -> ConfigError:
    """What a failed read or write of the state folder means, and how to fix it (never a raw
    sqlite3 or OS error). Nothing is deleted or rewritten to get past it."""
    text = str(exc)
    low = text.lower()
    code = getattr(exc, "errno", None)
    move = f"mv {path} {path}.corrupt"
    if "not a database" in low or "malformed" in low or "corrupt" in low:
        return ConfigError(
            f"the job table is corrupt or truncated ({text}); stackwise leaves it as it is",
            where=str(path),
            fix=f"move it aside (`{move}`) and run the command again: a new, empty job table is made "
                "(the jobs' folders and logs under jobs/ are kept), or restore it from a backup",
        )
    if code == errno.ENOSPC or "disk is full" in low or "disk full" in low or code == errno.EFBIG:
        return ConfigError(
            f"no space left to write the state folder ({text})",
            where=str(home),
            fix="free space on its disk, or point STACKWISE_HOME at a folder on a disk with room",
        )
    if (code in (errno.EROFS, errno.EACCES, errno.EPERM) or "readonly" in low or "read-only" in low
            or "unable to open database" in low or (home.is_dir() and not os.access(home, os.W_OK))):
        return ConfigError(
            f"the state folder cannot be written ({text})",
            where=str(home),
            fix="make it writable (a read-only mount or another user's folder cannot hold job state), "
                "or point STACKWISE_HOME at a writable folder",
        )
    if "locked" in low or "busy" in low:
        return ConfigError(
            f"the job table stayed locked by another process ({text})",
            where=str(path),
            fix="wait for the other stackwise command to finish, then run this one again",
        )
    return ConfigError(f"the job table cannot be used ({text})", where=str(path),
                       fix=f"check the state folder's disk; if the table is damaged, move it aside (`{move}`)")


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class JobDB:
    """The SQLite job table. Each call opens its own connection: safe across processes.

    A table that cannot be read or written (corrupt or truncated, a read-only or full disk)
    raises `ConfigError` saying so; it is never recreated or overwritten."""

    def __init__(self, home: Path | None = None):
        self.home = home or state_dir()
        self.path = self.home / "jobs.db"
        try:
            self.home.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise state_error(exc, self.path, self.home) from None
        with self._db(write=True) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30.0)
        db.row_factory = sqlite3.Row
        return db

    @contextmanager
    def _db(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """One connection (one transaction when `write`), its failures said as `ConfigError`.
        IntegrityError passes through: `submit` relies on it."""
        try:
            with closing(self._connect()) as db:
                if write:
                    with db:
                        yield db
                else:
                    yield db
        except sqlite3.IntegrityError:
            raise
        except (sqlite3.Error, OSError) as exc:
            raise state_error(exc, self.path, self.home) from None

    def insert(self, row: dict[str, Any]) -> None:
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self._db(write=True) as db:
            db.execute(f"INSERT INTO jobs ({columns}) VALUES ({marks})", tuple(row.values()))

    def update(self, job_id: str, only_if_active: bool = False, **values: Any) -> bool:
        """Update a job; with `only_if_active`, only while it is PENDING or RUNNING (no lost races)."""
        sets = ", ".join(f"{k} = ?" for k in values)
        sql = f"UPDATE jobs SET {sets} WHERE id = ?"
        params: tuple[Any, ...] = (*values.values(), job_id)
        if only_if_active:
            sql += " AND state IN (?, ?)"
            params += ACTIVE
        with self._db(write=True) as db:
            return db.execute(sql, params).rowcount == 1

    def get(self, job_id: str) -> sqlite3.Row:
        """The job with this id, or the one job whose id starts with it (as `docker` and `git` do).
        The prefix is matched literally (`%` and `_` are no wildcards); one shared by several jobs
        is refused with their ids."""
        rows: list[sqlite3.Row] = []
        with self._db() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None and job_id.strip():
                rows = db.execute("SELECT * FROM jobs WHERE id LIKE ? ESCAPE '\\' ORDER BY created_at DESC, id "
                                  "LIMIT 6", (_like_escape(job_id) + "%",)).fetchall()
                row = rows[0] if len(rows) == 1 else None
        if row is None and len(rows) > 1:
            shown = ", ".join(r["id"] for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
            raise JobNotFoundError(
                f"{job_id!r} is the start of more than one job id ({shown})",
                where=str(self.path),
                fix="give more of the id (or all of it: `stackwise jobs list` shows them whole)",
            )
        if row is None:
            raise JobNotFoundError(
                f"no job {job_id!r}",
                where=str(self.path),
                fix="list jobs with `stackwise jobs list` (jobs are kept per state folder: check STACKWISE_HOME)",
            )
        return row

    def attempts(self, kind: str, digest: str) -> list[sqlite3.Row]:
        """Every job of one identity, oldest first."""
        with self._db() as db:
            return db.execute("SELECT * FROM jobs WHERE kind = ? AND digest = ? ORDER BY created_at, id",
                              (kind, digest)).fetchall()

    def rows(self, limit: int) -> list[sqlite3.Row]:
        """The `limit` newest jobs (any larger limit than SQLite can hold means all of them)."""
        with self._db() as db:
            return db.execute("SELECT * FROM jobs ORDER BY created_at DESC LIMIT ?",
                              (max(0, min(int(limit), _SQLITE_MAX)),)).fetchall()
