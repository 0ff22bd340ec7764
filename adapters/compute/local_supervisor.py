"""Supervisor of one local job: runs the workload, streams its output to the log file and
records the final state. Started detached by `LocalCompute.submit`; not a public entrypoint.

An index job with `workers: N` (N > 1) runs N workload processes at once, one per shard
(`STACKWISE_SHARD_INDEX` / `STACKWISE_SHARD_COUNT`), each writing its report to
`shards/<i>/result.json`. Their output goes to the one log, each line prefixed `[shard i]`,
and their progress events are summed into one `@@progress` line per event. The job SUCCEEDS
when every shard does, its result being the shards' reports summed (`merge_reports`); it FAILS
when any shard fails (the others run to the end: what they committed is kept, and a rerun
does only what is left), with the first failed shard's error and exit code.

Each workload dies with its supervisor: on Linux the kernel SIGKILLs it the moment the
supervisor dies (`PR_SET_PDEATHSIG`, set between fork and exec), so an OOM kill or `kill -9` of
the supervisor leaves no workload writing behind it. Elsewhere, and for anything a workload
started itself, the process group the supervisor leads is killed by whoever finds the supervisor
dead (see local.py).

A failed job's error is what its workload recorded (error.json: a StackwiseError's what, where
and fix, or one line for a bug), else one line: how it ended, its last line of output and the
log that holds the rest.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from stackwise.adapters.compute.local_procs import ENV_JOB_ID, workers as _workers
from stackwise.adapters.compute.local_jobs import JobDB
from stackwise.jobs import JobState
from stackwise.progress import parse as parse_progress, progress_line


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that has the kernel SIGKILL the child when this process dies (Linux), or
    None where the kernel offers no such thing (then the process group is killed on detection)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
        prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        prctl.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:  # runs in the child between fork and exec: nothing but two system calls
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the supervisor died before the request took effect
            os._exit(137)

    return hook


def _error_text(error_dir: Path, code: int, log_path: Path, tail: list[str] | None = None) -> str:
    """The job's error: what the workload recorded in error.json, else one line saying how it
    ended, with its last line of output and where the whole log is."""
    error_file = error_dir / "error.json"
    if error_file.is_file():
        try:
            return json.loads(error_file.read_text(encoding="utf-8"))["error"]
        except (ValueError, KeyError, TypeError, OSError):
            pass
    if code < 0:
        return f"the workload was killed by signal {signal.Signals(-code).name} (its log: {log_path})"
    if tail is None:
        try:
            tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        except OSError:
            tail = []
    last = next((line.strip() for line in reversed(tail) if line.strip()), "")
    if len(last) > 200:
        last = last[:197] + "..."
    return f"the workload exited with code {code}" + (f": {last}" if last else "") + f" (its log: {log_path})"


class _ShardLog:
    """Copies each shard's output into the job's log, prefixed with its shard, and sums the
    shards' progress events into one."""

    def __init__(self, log: IO[bytes], count: int):
        self.log, self.count = log, count
        self.lock = threading.Lock()
        self.progress: dict[int, dict[str, Any]] = {}
        self.tails = {i: collections.deque(maxlen=3) for i in range(count)}

    def _write(self, line: str) -> None:
        self.log.write(line.encode("utf-8") + b"\n")
        self.log.flush()

    def pump(self, shard: int, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            with self.lock:
                event = parse_progress(line)
                if event is not None:
                    self.progress[shard] = event
                    self._write(progress_line(self._summed(event)))
                    continue
                if line.strip():
                    self.tails[shard].append(line)
                self._write(f"[shard {shard}] {line}")
        stream.close()

    def _summed(self, event: dict[str, Any]) -> dict[str, Any]:
        """The event's stage summed over the shards whose latest event is in that stage."""
        same = [e for e in self.progress.values() if e.get("stage") == event["stage"]]
        summed = dict(event, done=sum(int(e.get("done") or 0) for e in same),
                      total=sum(int(e.get("total") or 0) for e in same), shards=self.count)
        if all("documents" in e for e in same):
            summed["documents"] = sum(int(e["documents"]) for e in same)
        return summed


def _in_container(job_dir: Path) -> bool:
    from stackwise.adapters.compute.container import CONTAINER_FILE

    return (job_dir / CONTAINER_FILE).is_file()


def _workload(row: Any, job_dir: Path, result: Path, shard: int | None = None, count: int = 1) -> list[str]:
    """The workload process of a job (or of one shard): Python here, or the image's bootstrap."""
    if _in_container(job_dir):
        from stackwise.adapters.compute.container import container_command

        return container_command(job_dir, row["id"], shard, count)
    return [sys.executable, "-m", f"stackwise.workloads.{row['kind']}", "--spec", str(job_dir / "spec.json"),
            "--context", str(job_dir / "context.json"), "--result", str(result)]


def _run_one(db: JobDB, job_id: str, row: Any, job_dir: Path, env: dict[str, str]) -> tuple[int, str | None, Path]:
    with open(job_dir / "log.txt", "ab") as log:
        child = subprocess.Popen(
            _workload(row, job_dir, job_dir / "result.json"),
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=row["cwd"],
            preexec_fn=die_with_parent(),
        )
    _on_stop(db, job_id, [child], job_dir, 1)
    db.update(job_id, only_if_active=True, state=JobState.RUNNING.value, started_at=time.time(),
              workload_pid=child.pid)
    code = child.wait()
    result = job_dir / "result.json"
    if code == 0 and result.is_file():
        return 0, None, result
    return code, _error_text(job_dir, code, job_dir / "log.txt"), result


def _run_shards(db: JobDB, job_id: str, row: Any, job_dir: Path, env: dict[str, str],
                count: int) -> tuple[int, str | None, Path]:
    from stackwise.workloads.index import ENV_SHARD_COUNT, ENV_SHARD_INDEX, merge_reports

    children: list[subprocess.Popen] = []
    pumps: list[threading.Thread] = []
    with open(job_dir / "log.txt", "ab") as log:
        shard_log = _ShardLog(log, count)
        for shard in range(count):
            shard_dir = job_dir / "shards" / str(shard)
            shard_dir.mkdir(parents=True, exist_ok=True)
            child = subprocess.Popen(
                _workload(row, job_dir, shard_dir / "result.json", shard, count),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=row["cwd"],
                env=dict(env, **{ENV_SHARD_INDEX: str(shard), ENV_SHARD_COUNT: str(count)}),
                preexec_fn=die_with_parent(),
            )
            children.append(child)
        # The pumps start once every child is forked: a preexec_fn is only safe with no other thread.
        for shard, child in enumerate(children):
            pump = threading.Thread(target=shard_log.pump, args=(shard, child.stdout), daemon=True)
            pump.start()
            pumps.append(pump)
        _on_stop(db, job_id, children, job_dir, count)
        db.update(job_id, only_if_active=True, state=JobState.RUNNING.value, started_at=time.time(),
                  workload_pid=children[0].pid)
        codes = [child.wait() for child in children]
        for pump in pumps:
            pump.join()
    for shard, code in enumerate(codes):
        shard_dir = job_dir / "shards" / str(shard)
        if code != 0 or not (shard_dir / "result.json").is_file():
            error = _error_text(shard_dir, code, job_dir / "log.txt", list(shard_log.tails[shard]))
            return code or 1, f"shard {shard} of {count}: {error}", job_dir / "result.json"
    reports = [json.loads((job_dir / "shards" / str(s) / "result.json").read_text(encoding="utf-8"))
               for s in range(count)]
    result = job_dir / "result.json"
    tmp = result.with_name("result.json.tmp")
    tmp.write_text(json.dumps(merge_reports(reports), indent=2), encoding="utf-8")
    os.replace(tmp, result)
    return 0, None, result


def _on_stop(db: JobDB, job_id: str, children: list[subprocess.Popen], job_dir: Path, count: int) -> None:
    def stop(signum, _frame):
        # Cancellation: pass it on, give the workloads time to stop, then leave.
        if _in_container(job_dir):
            from stackwise.adapters.compute.container import stop_containers

            stop_containers(job_dir, job_id, count)
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 8
        for child in children:
            try:
                child.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
        db.update(job_id, only_if_active=True, state=JobState.CANCELLED.value, ended_at=time.time(),
                  error=f"stopped by {signal.Signals(signum).name}")
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def main(job_id: str) -> int:
    db = JobDB()
    row = db.get(job_id)
    job_dir = Path(row["job_dir"])
    env = dict(os.environ, PYTHONUNBUFFERED="1", STACKWISE_JOB_DIR=str(job_dir), **{ENV_JOB_ID: job_id})
    workers = _workers(row)
    if workers > 1:
        code, error, result = _run_shards(db, job_id, row, job_dir, env, workers)
    else:
        code, error, result = _run_one(db, job_id, row, job_dir, env)
    if error is None:
        db.update(job_id, only_if_active=True, state=JobState.SUCCEEDED.value, ended_at=time.time(),
                  exit_code=0, outputs=result.read_text(encoding="utf-8"))
    else:
        db.update(job_id, only_if_active=True, state=JobState.FAILED.value, ended_at=time.time(),
                  exit_code=code, error=error)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
