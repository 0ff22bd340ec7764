"""`stackwise pipeline run` on the local stack, on the shipped example (the quickstart's lifecycle over
gensim's Lee corpus), end to end with real jobs:

1. the first run executes every step (curate, index, fine-tune, evaluate, promote, deploy, serve-check) and
   promotes; the version's lineage records the hash of the data it was trained on;
2. a rerun with nothing changed skips every step (no job submitted) in under 5 s;
3. a changed document reruns curate and index only, and the index embeds only that document's chunks;
4. a worse candidate (learning rate 0.5) stops at the gate: exit 4, champion and endpoint unchanged;
5. a SIGKILL of the pipeline while its fine-tune job runs, then a rerun: the job is followed, not
   submitted again, and the finished steps are not repeated.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import run_cli, stackwise_env, store_rows, wait_for

pytest.importorskip("peft", reason="install stackwise[train]")
pytest.importorskip("datasketch", reason="install stackwise[curate]")

FAST = ("--param", "steps=2")


def states(record: dict) -> dict[str, str]:
    return {name: step["state"] for name, step in record["steps"].items()}


def test_the_example_pipeline_runs_caches_reruns_what_changed_gates_and_resumes(sw_home, sdk_env, tmp_path):
    project = tmp_path / "lee"
    run_cli(sw_home, "pipeline", "example", str(project))

    def pipeline(*args: str, expect: int | None = 0):
        return run_cli(sw_home, "pipeline", "run", "--json", *FAST, *args, cwd=project, expect=expect)

    # 1. everything runs; the fine-tune becomes the first champion and is served
    first = pipeline().json()
    assert set(states(first).values()) == {"succeeded"}, states(first)
    assert first["steps"]["promote"]["outputs"] == {"champion": "models:/lee-smollm2/1", "promoted": True}
    assert first["steps"]["check"]["outputs"]["answer"].strip()
    passages = hashlib.sha256((project / "data" / "lee_passages.jsonl").read_bytes()).hexdigest()
    assert first["steps"]["finetune"]["inputs"]["data"] == f"sha256:{passages}"
    from stackwise import connect

    tags = connect("local").models.version("lee-smollm2", "1").tags
    lineage = json.loads(tags["lineage.pipeline_inputs"])
    assert lineage["data"]["data"] == f"sha256:{passages}" and tags["lineage.pipeline_run"] == first["run"]

    # 2. nothing changed: every step cached, no job submitted
    jobs_before = run_cli(sw_home, "jobs", "list", "--json").json()
    started = time.perf_counter()
    second = pipeline().json()
    seconds = time.perf_counter() - started
    print(f"\nrerun with no change: {seconds:.2f} s")
    assert set(states(second).values()) == {"cached"}
    assert run_cli(sw_home, "jobs", "list", "--json").json() == jobs_before
    assert seconds < 5

    # 3. one document changed: curate and index rerun, nothing else
    docs = project / "data" / "lee_docs.jsonl"
    lines = docs.read_text().splitlines()
    record = json.loads(lines[7])
    record["text"] += " A late paragraph added by the editor about the harbour bridge."
    docs.write_text("\n".join([*lines[:7], json.dumps(record), *lines[8:]]) + "\n")
    third = pipeline().json()
    ran = {name for name, state in states(third).items() if state == "succeeded"}
    assert ran == {"curate", "index"} and {s for n, s in states(third).items() if n not in ran} == {"cached"}
    index_report = third["steps"]["index"]["report"]
    assert 1 <= index_report["embedded"] <= 3 < index_report["chunks"]  # only the edited article's chunks
    assert any("harbour bridge" in text for text, _, _ in store_rows(sw_home, "lee").values())

    # 4. a worse candidate: the gate refuses, nothing is deployed, the champion stays
    worse = pipeline("--param", "learning_rate=0.5", expect=4).json()
    assert states(worse)["promote"] == "gate-failed" and states(worse)["deploy"] == "blocked"
    ev = worse["steps"]["evaluate"]
    assert ev["metrics"]["perplexity"] > ev["baseline_metrics"]["perplexity"]
    assert connect("local").models.alias_version("lee-smollm2", "champion") == "1"
    endpoint = run_cli(sw_home, "endpoints", "--json").json()
    assert [(str(v["version"]), v["traffic"]) for v in endpoint["variants"] if v["traffic"]] == [("1", 100)]

    # 5. SIGKILL while the fine-tune job runs, then rerun: the job is followed, not submitted again
    proc = subprocess.Popen([sys.executable, "-m", "stackwise.cli", "pipeline", "run", "--param", "steps=3"],
                            cwd=str(project), env=stackwise_env(sw_home), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        inflight = wait_for(lambda: next(iter(sw_home.rglob("pipelines/lee/inflight/finetune-*.json")), None),
                            what="the fine-tune job submitted")
        job = json.loads(inflight.read_text())["job"]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    status = run_cli(sw_home, "pipeline", "status", "--json", cwd=project).json()
    assert status["status"].startswith("interrupted") and status["steps"]["finetune"]["state"] == "running"
    resumed = run_cli(sw_home, "pipeline", "run", "--json", "--param", "steps=3", cwd=project, expect=None)
    assert resumed.returncode in (0, 4), str(resumed)  # the gate decides on a 3-step candidate either way
    final = resumed.json()
    assert final["steps"]["finetune"]["job"] == job and job.endswith("-1")  # the first attempt, not a second
    assert states(final)["curate"] == states(final)["index"] == "cached"
    assert not list(sw_home.rglob("pipelines/lee/inflight/*.json"))
    history = run_cli(sw_home, "pipeline", "history", "--json", cwd=project).json()
    assert [h["status"] for h in history][:2] in (["succeeded", "interrupted (its process is gone; `stackwise "
                                                   "pipeline run` continues it)"], ["gate-failed", "interrupted "
                                                   "(its process is gone; `stackwise pipeline run` continues it)"])
    summary = run_cli(sw_home, "pipeline", "show", "latest", "--markdown", cwd=project).stdout
    assert "| finetune | finetune | succeeded |" in summary and "### Evaluation `evaluate`" in summary
