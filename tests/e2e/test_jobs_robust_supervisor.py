"""Killing only a real job's supervisor (what the OOM killer does) leaves no workload behind.

On Linux the kernel kills the workload with its supervisor (PR_SET_PDEATHSIG): it is gone
before any stackwise command looks at the job. Then the job reads FAILED from another process,
and `jobs cancel` answers at once with nothing left to stop. (The portable path, where the one
who finds the supervisor dead kills the job's process group, is tests/unit/test_jobs_robust_orphans.py.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from .conftest import gone, job_row, kill_hard, lee_articles, run_cli, wait_for, write_txt_corpus

pytestmark = pytest.mark.timeout(600)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workload_dies_with_its_killed_supervisor(sw_home: Path, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    write_txt_corpus(docs, lee_articles())  # minutes of work: it cannot end by itself during this test
    job_id = run_cli(sw_home, "index", str(docs), "--index", "orphan", "--detach", "--json").json()["job"]
    row = wait_for(lambda: (r := job_row(sw_home, job_id))["workload_pid"] and r, what="the workload to start")

    kill_hard(row["supervisor_pid"])
    # Nothing of stackwise runs between the kill and this check: the kernel alone ended the workload.
    wait_for(lambda: gone(row["workload_pid"]), timeout=60, what="the workload to die with its supervisor")

    waited = run_cli(sw_home, "jobs", "wait", job_id, "--timeout", "60", expect=1)
    assert "FAILED" in waited.stdout and str(row["supervisor_pid"]) in waited.stdout
    cancelled = run_cli(sw_home, "jobs", "cancel", job_id, "--json").json()
    assert cancelled["state"] == "FAILED"
    # A rerun starts a new attempt: nothing of the first one is left to race.
    rerun = run_cli(sw_home, "index", str(docs), "--index", "orphan", "--detach", "--json").json()["job"]
    assert rerun.endswith("-2")
    run_cli(sw_home, "jobs", "cancel", rerun)
