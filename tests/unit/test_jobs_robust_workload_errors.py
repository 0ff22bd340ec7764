"""A job that fails inside its workload is recorded as the CLI would say it: a StackwiseError with
its what, where and fix; a bug as one line naming the log that holds its traceback; a workload
that dies before it can say anything as one line with its last output and its log. Never the
last lines of a traceback glued together with `|`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(180)

WORKLOAD = """
import sys
from pydantic import BaseModel
from stackwise.errors import InputError
from stackwise.workloads._runtime import main

class Spec(BaseModel):
    mode: str

class Report(BaseModel):
    ok: bool

def run(spec, context):
    if spec.mode == "bug":
        return {}["no-such-key"]
    raise InputError("no such source", where="/data/missing", fix="give a file or folder that exists")

main("demo", Spec, run)
"""


def _context(tmp_path: Path) -> Path:
    from stackwise.contract import JobContext
    from stackwise.stack import load_stack

    path = tmp_path / "context.json"
    context = JobContext.from_outputs("local", load_stack("local").outputs, job_id="demo-0123456789abcdef-1", attempt=1)
    path.write_text(context.model_dump_json())
    return path


def _run_workload(tmp_path: Path, mode: str) -> tuple[subprocess.CompletedProcess, dict]:
    job_dir = tmp_path / "job"
    job_dir.mkdir(exist_ok=True)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"mode": mode}))
    env = dict(os.environ, STACKWISE_JOB_DIR=str(job_dir), STACKWISE_JOB_ID="demo-0123456789abcdef-1")
    proc = subprocess.run([sys.executable, "-c", WORKLOAD, "--spec", str(spec), "--context", str(_context(tmp_path)),
                           "--result", str(job_dir / "result.json")], env=env, capture_output=True, text=True,
                          timeout=120)
    return proc, json.loads((job_dir / "error.json").read_text())


def test_a_bug_in_a_workload_is_one_line_naming_the_log_with_its_traceback(tmp_path: Path) -> None:
    proc, error = _run_workload(tmp_path, "bug")
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "no-such-key" in proc.stderr  # the whole traceback, in the log
    message = error["error"]
    assert "\n" not in message and " | " not in message
    assert message.startswith("unexpected KeyError in the demo workload")
    assert str(tmp_path / "job" / "log.txt") in message


def test_a_stackwise_error_in_a_workload_is_recorded_with_what_where_fix(tmp_path: Path) -> None:
    proc, error = _run_workload(tmp_path, "refuse")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert (error["what"], error["where"], error["fix"]) == ("no such source", "/data/missing",
                                                           "give a file or folder that exists")
    assert error["error"] == "no such source\n  where: /data/missing\n  fix: give a file or folder that exists"


def test_a_workload_that_dies_unheard_is_one_line_with_its_log(tmp_path: Path) -> None:
    """No error.json (the workload could not even start): the supervisor says how it ended."""
    from stackwise.adapters.compute.local import JobDB, LocalCompute

    home = tmp_path / "home"
    job_id = "nosuchkind-0123456789abcdef-1"
    job_dir = home / "jobs" / job_id
    job_dir.mkdir(parents=True)
    (job_dir / "log.txt").write_text("an earlier line of output\nanother one\n")
    JobDB(home).insert({"id": job_id, "kind": "nosuchkind", "stack": "local", "state": "PENDING", "spec": "{}",
                        "digest": "0123456789abcdef", "created_at": time.time(), "job_dir": str(job_dir),
                        "cwd": str(tmp_path)})
    subprocess.run([sys.executable, "-m", "stackwise.adapters.compute.local_supervisor", job_id],
                   env=dict(os.environ, STACKWISE_HOME=str(home)), check=True, timeout=120)

    info = LocalCompute(home=home).info(job_id)
    assert info.state.value == "FAILED" and info.exit_code == 1
    assert "\n" not in info.error and " | " not in info.error
    assert info.error.startswith("the workload exited with code 1: ")
    assert "No module named stackwise.workloads.nosuchkind" in info.error
    assert str(job_dir / "log.txt") in info.error
