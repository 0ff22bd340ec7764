"""Supervisor of one local job: runs the workload, streams its output to the log file and
records the final state. Started detached by `LocalCompute.submit`; not a public entrypoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from stackwise.adapters.compute.local import JobDB
from stackwise.jobs import JobState


def _error_text(job_dir: Path, code: int) -> str:
    error_file = job_dir / "error.json"
    if error_file.is_file():
        try:
            return json.loads(error_file.read_text(encoding="utf-8"))["error"]
        except (ValueError, KeyError):
            pass
    if code < 0:
        return f"the workload was killed by signal {signal.Signals(-code).name}"
    tail = (job_dir / "log.txt").read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
    return f"the workload exited with code {code}" + (": " + " | ".join(tail) if tail else "")


def main(job_id: str) -> int:
    db = JobDB()
    row = db.get(job_id)
    job_dir = Path(row["job_dir"])
    env = dict(os.environ, PYTHONUNBUFFERED="1", STACKWISE_JOB_ID=job_id, STACKWISE_JOB_DIR=str(job_dir))
    with open(job_dir / "log.txt", "ab") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", f"stackwise.workloads.{row['kind']}",
             "--spec", str(job_dir / "spec.json"), "--result", str(job_dir / "result.json")],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=row["cwd"],
        )

    def stop(signum, _frame):
        # Cancellation: pass it on, give the workload time to stop, then leave.
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=8)
        except subprocess.TimeoutExpired:
            child.kill()
        db.update(job_id, only_if_active=True, state=JobState.CANCELLED.value, ended_at=time.time(),
                  error=f"stopped by {signal.Signals(signum).name}")
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    db.update(job_id, only_if_active=True, state=JobState.RUNNING.value, started_at=time.time(),
              workload_pid=child.pid)
    code = child.wait()
    result = job_dir / "result.json"
    if code == 0 and result.is_file():
        db.update(job_id, only_if_active=True, state=JobState.SUCCEEDED.value, ended_at=time.time(),
                  exit_code=0, outputs=result.read_text(encoding="utf-8"))
    else:
        db.update(job_id, only_if_active=True, state=JobState.FAILED.value, ended_at=time.time(),
                  exit_code=code, error=_error_text(job_dir, code))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
