"""The pipeline file is checked before anything runs (stackwise.pipeline.spec / kinds): cycles, unknown kinds,
missing outputs, type mismatches between steps, bad `with` keys and a missing stack exit 2 naming the step and
key; cache keys follow the content of the inputs (local files, DVC's lock, objects on S3 served by moto)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

GATE = "metrics:\n  perplexity: {min_delta: 0.5}\n"


def pipeline_yaml(steps: dict, params: dict | None = None) -> str:
    return yaml.safe_dump({"version": 1, "name": "demo", "params": params or {}, "steps": steps}, sort_keys=False)


BASE = {
    "cur": {"kind": "curate", "with": {"source": "${params.docs}"}},
    "idx": {"kind": "index", "with": {"source": "${steps.cur.outputs.data}", "index": "demo"}},
    "ft": {"kind": "finetune", "with": {"base": "smollm2-135m-instruct", "data": "${params.train}", "name": "demo"}},
    "ev": {"kind": "evaluate", "with": {"model": "${steps.ft.outputs.model}", "baseline": "champion",
                                       "suites": ["perplexity"], "data": "${params.train}"}},
    "gate": {"kind": "promote", "with": {"model": "${steps.ft.outputs.model}", "gate": "gates.yaml"},
             "deps": ["steps.ev"]},
    "ship": {"kind": "deploy", "with": {"model": "${steps.gate.outputs.champion}"}},
}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "docs.jsonl").write_text('{"id": "a", "text": "one"}\n')
    (tmp_path / "train.jsonl").write_text('{"text": "hello"}\n')
    (tmp_path / "gates.yaml").write_text(GATE)
    return tmp_path


def write(project: Path, steps: dict) -> Path:
    path = project / "stackwise.yaml"
    path.write_text(pipeline_yaml(steps, {"docs": "docs.jsonl", "train": "train.jsonl"}))
    return path


def with_change(path: tuple[str, ...], value) -> dict:
    steps = json.loads(json.dumps(BASE))
    target = steps
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return steps


def test_the_example_and_a_valid_file_load_in_dependency_order(project):
    from stackwise.pipeline.spec import load

    pipeline = load(write(project, BASE))
    order = pipeline.order
    assert order.index("cur") < order.index("idx") and order.index("ev") < order.index("gate") < order.index("ship")
    assert pipeline.upstream["gate"] == {"ft", "ev"} and pipeline.downstream("ft") == {"ev", "gate", "ship"}


@pytest.mark.parametrize("change, words", [
    ((("cur", "with", "source"), "${steps.idx.outputs.index}"), ["cycle", "cur", "idx"]),
    ((("ft", "kind"), "fintune"), ["unknown kind 'fintune'", "did you mean finetune", "steps.ft.kind"]),
    ((("ev", "with", "model"), "${steps.ft.outputs.modle}"), ["no such output", "finetune steps output: model, adapter",
                                                              "steps.ev.with.model"]),
    ((("ev", "with", "data"), "${steps.ft.outputs.model}"), ["type mismatch", "ev.with.data takes data",
                                                             "steps.ft.outputs.model is model"]),
    ((("idx", "with", "source"), "${steps.nope.outputs.data}"), ["step 'nope'", "steps.idx.with.source"]),
    ((("ft", "with", "training"), {"lerning_rate": 0.1}), ["with.training.lerning_rate: unknown key",
                                                          "steps.ft.with.training.lerning_rate"]),
    ((("ft", "with", "data"), "${params.trian}"), ["unknown param 'trian'", "did you mean train"]),
    ((("gate", "with", "gate"), "missing-gates.yaml"), ["missing-gates.yaml"]),
])
def test_bad_pipelines_exit_2_naming_the_step_and_key_before_any_job(project, run_cli, change, words):
    write(project, with_change(*change))
    result = run_cli("pipeline", "run", cwd=project)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)
    assert not (project / ".stackwise").exists() or not list((project / ".stackwise").rglob("runs/*.json"))


def test_a_missing_stack_and_a_missing_data_input_exit_2(project, run_cli):
    write(project, BASE)
    result = run_cli("pipeline", "run", "--stack", "dev-nowhere", cwd=project)
    assert result.returncode == 2 and "dev-nowhere" in result.stderr and "Traceback" not in result.stderr
    (project / "docs.jsonl").unlink()
    result = run_cli("pipeline", "run", "--dry-run", cwd=project)
    assert result.returncode == 2 and "docs.jsonl does not exist" in result.stderr
    assert "steps.cur.with.source" in result.stderr


def keys_of(project: Path) -> dict[str, str]:
    from stackwise.pipeline.hashing import Hasher
    from stackwise.pipeline.runner import cache_keys
    from stackwise.pipeline.spec import load

    return cache_keys(load(project / "stackwise.yaml"), "local", Hasher(project))[0]


def test_a_changed_document_changes_the_keys_of_its_readers_and_downstream_only(project):
    write(project, BASE)
    before = keys_of(project)
    assert keys_of(project) == before  # stable
    (project / "docs.jsonl").write_text('{"id": "a", "text": "one, edited"}\n')
    after = keys_of(project)
    assert {n for n in before if before[n] != after[n]} == {"cur", "idx"}
    (project / "train.jsonl").write_text('{"text": "hello again"}\n')
    again = keys_of(project)
    assert {n for n in after if after[n] != again[n]} == {"ft", "ev", "gate", "ship"}


def test_dvc_lock_hashes_are_used_for_the_files_it_tracks(project):
    from stackwise.pipeline.hashing import Hasher

    data = (project / "train.jsonl").read_bytes()
    md5 = hashlib.md5(data).hexdigest()  # noqa: S324 - DVC's own content hash
    lock = {"schema": "2.0", "stages": {"prepare": {"cmd": "python prep.py", "outs": [
        {"path": "train.jsonl", "md5": md5, "size": len(data)}]}}}
    (project / "dvc.lock").write_text(yaml.safe_dump(lock))
    assert Hasher(project).hash("train.jsonl", "w") == f"dvc:md5:{md5}"
    (project / "train.jsonl").write_text('{"text": "changed since dvc repro"}\n')  # size differs: hashed here
    assert Hasher(project).hash("train.jsonl", "w").startswith("sha256:")
    digest = hashlib.sha256((project / "train.jsonl").read_bytes()).hexdigest()
    assert Hasher(project).hash("train.jsonl", "w") == f"sha256:{digest}"
    # `dvc add docs.jsonl` writes docs.jsonl.dvc beside it
    docs = (project / "docs.jsonl").read_bytes()
    docs_md5 = hashlib.md5(docs).hexdigest()  # noqa: S324 - DVC's own content hash
    (project / "docs.jsonl.dvc").write_text(yaml.safe_dump({"outs": [{"md5": docs_md5, "size": len(docs),
                                                                      "hash": "md5", "path": "docs.jsonl"}]}))
    assert Hasher(project).hash("docs.jsonl", "w") == f"dvc:md5:{docs_md5}"


def test_object_store_inputs_are_hashed_by_their_etags_over_real_http(tmp_path, monkeypatch):
    pytest.importorskip("s3fs")
    from moto.server import ThreadedMotoServer

    from stackwise.errors import InputError
    from stackwise.pipeline.hashing import Hasher
    from tests.emulators.cloud_fixtures import aws_moto_env

    import fsspec

    # An S3 filesystem an earlier caller made (another test's endpoint, long gone) sits in fsspec's instance
    # cache; hashing must not reuse it.
    aws_moto_env("http://127.0.0.1:9", tmp_path, monkeypatch)
    fsspec.filesystem("s3").connect()  # its client is bound to that endpoint now
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        aws_moto_env(f"http://127.0.0.1:{server._server.server_port}", tmp_path, monkeypatch)
        import boto3

        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="data")
        s3.put_object(Bucket="data", Key="docs/a.jsonl", Body=b'{"text": "a"}\n')
        s3.put_object(Bucket="data", Key="docs/b.jsonl", Body=b'{"text": "b"}\n')
        hasher = Hasher(tmp_path)  # one hasher, as `pipeline watch` keeps: it must still see each change

        def fresh() -> Hasher:
            return hasher

        first = fresh().hash("s3://data/docs", "w")
        assert fresh().hash("s3://data/docs", "w") == first
        s3.put_object(Bucket="data", Key="docs/b.jsonl", Body=b'{"text": "b, edited"}\n')
        assert fresh().hash("s3://data/docs", "w") != first
        with pytest.raises(InputError, match="does not exist or holds no objects"):
            fresh().hash("s3://data/nothing-here", "w")
    finally:
        server.stop()


def test_run_steps_and_watch_run_again_only_when_an_input_changes(tmp_path, run_cli):
    (tmp_path / "raw.txt").write_text("alpha\nbeta\n")
    steps = {
        "count": {"kind": "run", "with": {"command": "mkdir -p out && wc -l < raw.txt > out/lines.txt"},
                  "deps": ["raw.txt"], "outs": {"lines": "out/lines.txt"}},
        "copy": {"kind": "run", "with": {"command": ["cp", "${steps.count.outputs.lines}", "out/copy.txt"]},
                 "outs": {"copy": "out/copy.txt"}},
    }
    (tmp_path / "stackwise.yaml").write_text(pipeline_yaml(steps))

    def watch_once() -> list[dict]:
        result = run_cli("pipeline", "watch", "--max-checks", "1", "--interval", "1", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        return json.loads(run_cli("pipeline", "history", "--json", cwd=tmp_path).stdout)

    assert [h["ran"] for h in watch_once()] == [["count", "copy"]]
    assert (tmp_path / "out" / "copy.txt").read_text().strip() == "2"
    assert len(watch_once()) == 1  # nothing changed: no run
    (tmp_path / "raw.txt").write_text("alpha\nbeta\ngamma\n")
    history = watch_once()
    assert len(history) == 2 and history[0]["ran"] == ["count", "copy"]
    assert (tmp_path / "out" / "copy.txt").read_text().strip() == "3"
    (tmp_path / "stackwise.yaml").write_text(pipeline_yaml({**steps, "count": {**steps["count"], "with": {
        "command": "exit 3"}}}))
    failed = run_cli("pipeline", "run", "--json", cwd=tmp_path)
    assert failed.returncode == 1 and "exited 3" in failed.stdout
    record = json.loads(failed.stdout)
    assert record["steps"]["count"]["state"] == "failed" and record["steps"]["copy"]["state"] == "blocked"


def test_ctrl_c_stops_the_run_at_once_records_it_interrupted_and_a_rerun_finishes(tmp_path, run_cli):
    import os
    import signal
    import subprocess
    import sys
    import time

    steps = {"slow": {"kind": "run", "with": {"command": "sleep 60 && mkdir -p out && echo done > out/slow.txt"},
                      "outs": {"done": "out/slow.txt"}},
             "fast": {"kind": "run", "with": {"command": "mkdir -p out && echo ok > out/fast.txt"},
                      "outs": {"ok": "out/fast.txt"}}}
    (tmp_path / "stackwise.yaml").write_text(pipeline_yaml(steps))
    env = {**os.environ, "STACKWISE_HOME": str(tmp_path / ".stackwise")}
    proc = subprocess.Popen([sys.executable, "-m", "stackwise.cli", "pipeline", "run"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "out" / "fast.txt").exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    time.sleep(0.5)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 130
    print(f"\nCtrl-C to exit: {time.monotonic() - sent:.2f} s")
    status = json.loads(run_cli("pipeline", "status", "--json", cwd=tmp_path).stdout)
    assert status["status"] == "interrupted"
    assert status["steps"]["slow"]["state"] == "interrupted" and status["steps"]["fast"]["state"] == "succeeded"
    steps["slow"]["with"]["command"] = "mkdir -p out && echo done > out/slow.txt"
    (tmp_path / "stackwise.yaml").write_text(pipeline_yaml(steps))
    rerun = json.loads(run_cli("pipeline", "run", "--json", cwd=tmp_path).stdout)
    assert rerun["steps"]["fast"]["state"] == "cached" and rerun["steps"]["slow"]["state"] == "succeeded"
