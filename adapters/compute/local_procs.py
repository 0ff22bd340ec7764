"""The processes of local jobs: when a supervisor started (a stamp no clock change moves), whether
it still runs, and what is left of a job whose supervisor is gone (found by the job id each of its
processes carries in `STACKWISE_JOB_ID`, stopped with SIGKILL). Used by local.py, which records
and follows the jobs, and by the supervisor (local_supervisor.py)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import psutil

KILL_WAIT_S = 10.0  # how long a SIGKILLed process may take to be gone (it only has to be scheduled)
ENV_JOB_ID = "STACKWISE_JOB_ID"  # in every process of a job: how its leftovers are recognised
_WALL_CLOCK = 1e9  # a start stamp above this is seconds since the epoch (rows of older versions, non-Linux)


def start_stamp(pid: int) -> float:
    """When the process started, as recorded in its job row and compared by `alive`.

    On Linux: seconds since boot, from /proc/<pid>/stat's `starttime` (clock ticks since boot,
    proc(5)), which no change of the wall clock moves. psutil's `create_time()` adds the boot time
    the kernel reports at the moment of the call (`btime`, whole seconds, moved by every step of the
    clock), so the same process could read a second or more apart over a long job and a running
    supervisor was taken for dead. Elsewhere: psutil's wall-clock creation time.
    Raises psutil.NoSuchProcess when the process is gone."""
    if sys.platform.startswith("linux"):
        try:
            stat = Path(f"/proc/{pid}/stat").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            raise psutil.NoSuchProcess(pid) from None
        # Fields after the command name (which may hold spaces or parentheses): state is field 3,
        # starttime field 22.
        return int(stat[stat.rindex(b")") + 2:].split()[19]) / os.sysconf("SC_CLK_TCK")
    return psutil.Process(pid).create_time()


def alive(pid: int | None, started: float | None) -> bool:
    """Is the process with this pid and start stamp still running (not a zombie, not a reused pid)?"""
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if started is not None:
            now = proc.create_time() if started > _WALL_CLOCK else start_stamp(pid)
            if abs(now - started) > 1.0:
                return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def last_line(path: Path) -> str:
    """The last non-empty line of a file (at most 200 characters), or "" when there is none."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = f.read().decode("utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    last = lines[-1].strip() if lines else ""
    return last if len(last) <= 200 else last[:197] + "..."


def leftovers(rows: Iterable[sqlite3.Row]) -> dict[str, list[psutil.Process]]:
    """The processes still running of jobs whose supervisor is gone, by job id: members of the
    process group the supervisor led, and the recorded workload. Each must carry the job's id
    in its environment: a pid or group id whose processes all ended may be reused."""
    wanted: dict[int, sqlite3.Row] = {}
    workloads: dict[int, sqlite3.Row] = {}
    for row in rows:
        if alive(row["supervisor_pid"], row["supervisor_started"]):
            continue  # still supervised: cancel is how to stop it
        if row["supervisor_pid"]:
            wanted[row["supervisor_pid"]] = row
        if row["workload_pid"]:
            workloads[row["workload_pid"]] = row
    found: dict[str, list[psutil.Process]] = {}
    if not wanted and not workloads:
        return found
    for proc in psutil.process_iter():
        try:
            row = workloads.get(proc.pid) or wanted.get(os.getpgid(proc.pid))
            if row is None or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get(ENV_JOB_ID) != row["id"]:
                continue
        except (psutil.Error, OSError):
            continue
        found.setdefault(row["id"], []).append(proc)
    return found


def workers(row: sqlite3.Row) -> int:
    if row["kind"] != "index":
        return 1
    try:
        return max(1, int(json.loads(row["spec"]).get("workers") or 1))
    except (ValueError, TypeError, AttributeError):
        return 1


def stop_leftovers(row: sqlite3.Row) -> list[int]:
    """SIGKILL what still runs of a job whose supervisor is gone (and stop its containers); wait
    until it is gone. Returns the pids that outlived the wait (none, unless the kernel holds them)."""
    procs = leftovers([row]).get(row["id"], [])
    group = row["supervisor_pid"]
    if procs and group and any(_pgid(p) == group for p in procs):
        try:
            # The group is the job's: it holds a process carrying the job's id, and a group id
            # is not reused while the group has a member. One signal reaches every member.
            os.killpg(group, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    _stop_job_containers(row)
    deadline = time.monotonic() + KILL_WAIT_S
    while procs and time.monotonic() < deadline:
        procs = [p for p in procs if _running(p)]
        if procs:
            time.sleep(0.05)
    return [p.pid for p in procs]


def _pgid(proc: psutil.Process) -> int | None:
    try:
        return os.getpgid(proc.pid)
    except OSError:
        return None


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _stop_job_containers(row: sqlite3.Row) -> None:
    """A container job's containers outlive the engine client the workload runs (killing
    `podman run` leaves its container running): stop them by name."""
    job_dir = Path(row["job_dir"])
    from .container import CONTAINER_FILE, stop_containers

    if not (job_dir / CONTAINER_FILE).is_file():
        return
    try:
        stop_containers(job_dir, row["id"], workers(row))
    except (OSError, ValueError, KeyError, subprocess.SubprocessError):
        pass  # no engine, or it refused: nothing more can be done here
