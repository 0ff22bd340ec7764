"""The CLI turns bad input and config into exit code 2 and a what/where/fix message, never a
traceback, and does so before loading the embedding model.

These run the real entry point (`python -m stackwise.cli`) in a subprocess: an in-process
runner would not show the exit status and stderr that a user sees. `-X importtime` lists every
module the process imported, which shows that no error path loaded the model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

# Loading the embedding model imports these; no error below may get that far.
MODEL_MODULES = {"sentence_transformers", "transformers", "torch"}


def imported(stderr: str) -> set[str]:
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def user_stderr(stderr: str) -> str:
    return "\n".join(line for line in stderr.splitlines() if not line.startswith("import time:"))


def setup_project(root: Path, stacks: dict[str, str]) -> None:
    (root / "Pulumi.yaml").write_text("name: demo\nruntime: python\n")
    (root / "stacks").mkdir()
    for name, text in stacks.items():
        (root / "stacks" / f"Pulumi.{name}.yaml").write_text(text)


def _unknown_stack(tmp):
    return ["indexes", "--stack", "prod"], "unknown stack 'prod'"


def _unknown_cloud(tmp):
    setup_project(tmp, {"dev-ibm": "config:\n  stackwise:cloud: ibm\n  stackwise:region: eu\n"})
    return ["indexes", "--stack", "dev-ibm"], "stackwise:cloud"


def _malformed_yaml(tmp):
    setup_project(tmp, {"local": "config:\n  stackwise:cloud: local\n  stackwise:region: [local\n"})
    return ["indexes"], "not valid YAML"


def _missing_source(tmp):
    return ["index", "nope", "--index", "kb"], "source not found"


def _empty_folder(tmp):
    (tmp / "empty").mkdir()
    return ["index", "empty", "--index", "kb"], "no documents to index"


def _binary_file(tmp):
    (tmp / "blob.txt").write_bytes(b"\x00\x01\x02")
    return ["index", "blob.txt", "--index", "kb"], "binary file"


def _bad_index_name(tmp):
    (tmp / "a.txt").write_text("hello")
    return ["index", "a.txt", "--index", "My Index"], "index name 'My Index' is invalid"


def _bad_overlap(tmp):
    (tmp / "a.txt").write_text("hello")
    return ["index", "a.txt", "--index", "kb", "--chunk-size", "100", "--chunk-overlap", "100"], "overlap"


def _unknown_embedding_backend(tmp):
    (tmp / "a.txt").write_text("hello")
    return ["index", "a.txt", "--index", "kb", "--embedding-backend", "tpu"], "--embedding-backend 'tpu' is not one of"


def _malformed_jsonl(tmp):
    (tmp / "data.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    return ["index", "data.jsonl", "--index", "kb"], "line 2"


def _filter_without_equals(tmp):
    return ["search", "hello", "--index", "kb", "--filter", "lang"], "bad filter 'lang'"


def _filter_on_reserved_key(tmp):
    return ["search", "hello", "--index", "kb", "--filter", "text=x"], "not filterable"


def _search_missing_index(tmp):
    return ["search", "hello", "--index", "missing"], "index 'missing' does not exist"


def _unknown_job(tmp):
    return ["jobs", "show", "job-that-never-was"], "job-that-never-was"


CASES = {
    "unknown stack": _unknown_stack,
    "unknown cloud": _unknown_cloud,
    "malformed stack yaml": _malformed_yaml,
    "missing source": _missing_source,
    "empty folder": _empty_folder,
    "binary file": _binary_file,
    "bad index name": _bad_index_name,
    "bad chunk overlap": _bad_overlap,
    "unknown embedding backend": _unknown_embedding_backend,
    "malformed jsonl": _malformed_jsonl,
    "filter without =": _filter_without_equals,
    "filter on a reserved key": _filter_on_reserved_key,
    "search a missing index": _search_missing_index,
    "unknown job": _unknown_job,
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_a_fix_and_no_traceback(case, tmp_path, run_cli):
    args, expected = CASES[case](tmp_path)
    proc = run_cli(*args, python_flags=("-X", "importtime"))
    stderr = user_stderr(proc.stderr)
    assert proc.returncode == 2, (proc.returncode, stderr[-3000:])
    assert "Traceback" not in stderr and "Traceback" not in proc.stdout
    assert stderr.lstrip().startswith("error: "), stderr
    assert expected in stderr, stderr
    assert any(line.strip().startswith("fix: ") for line in stderr.splitlines()), stderr
    assert proc.stdout == ""
    assert not imported(proc.stderr) & MODEL_MODULES, f"{case} loaded the embedding model before failing"


def test_no_job_is_started_by_rejected_input(tmp_path, run_cli):
    (tmp_path / "empty").mkdir()
    assert run_cli("index", "empty", "--index", "kb").returncode == 2
    listed = run_cli("jobs", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []


def test_stacks_json_lists_local(tmp_path, run_cli):
    proc = run_cli("stacks", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [(r["name"], r["cloud"], r["region"], r["active"]) for r in rows] == [("local", "local", "local", True)]


def test_stacks_json_reports_a_broken_stack_without_failing(tmp_path, run_cli):
    setup_project(tmp_path, {
        "dev-aws": "config:\n  stackwise:cloud: aws\n  stackwise:region: us-east-1\n",
        "dev-ibm": "config:\n  stackwise:cloud: ibm\n",
    })
    proc = run_cli("stacks", "--json", env={"STACKWISE_STACK": "dev-aws"})
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert set(rows) == {"local", "dev-aws", "dev-ibm"}
    assert rows["dev-aws"]["cloud"] == "aws" and rows["dev-aws"]["active"]
    assert rows["local"]["cloud"] == "local" and not rows["local"]["active"]
    assert rows["dev-ibm"]["cloud"] is None and "ibm" in rows["dev-ibm"]["error"]


def test_help_exits_0(run_cli):
    proc = run_cli("--help")
    assert proc.returncode == 0, proc.stderr
    for command in ("stacks", "index", "search", "jobs"):
        assert command in proc.stdout


def test_unknown_command_is_a_usage_error(run_cli):
    proc = run_cli("frobnicate")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
