"""`stackwise finetune --spec finetune.yaml` runs as docs/finetune.md documents it: the file is
the whole spec (no --base/--data needed), relative paths are read from its folder, options that
would be ignored are refused, and a bad file is exit code 2 naming it, never a traceback."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from stackwise.specs import FineTuneSpec


class FakeHandle:
    id = "finetune-test"

    def status(self):
        from stackwise.jobs import JobState

        return JobState.PENDING


class FakePlatform:
    def __init__(self) -> None:
        self.submitted: list[tuple[FineTuneSpec, bool, str | None]] = []

    def finetune(self, spec, new=False, run_name=None, preflight=True):  # Platform.finetune's signature
        self.submitted.append((spec, new, run_name))
        return FakeHandle()

    def plan_finetune(self, spec):  # the local stack's placement: no GPU, no price
        from stackwise.governance import Placement

        return spec, Placement(base=spec.base, licence="unknown", cloud="local")


@pytest.fixture
def submitted(monkeypatch, tmp_path):
    """Run `stackwise ARGS` through the console entry point with job submission faked; returns
    (exit code, output, what was submitted)."""
    import stackwise.cli as cli
    import stackwise.cli.finetune as cli_finetune

    platform = FakePlatform()
    monkeypatch.setattr(cli_finetune, "connect", lambda stack: platform)
    monkeypatch.setenv("STACKWISE_HOME", str(tmp_path / "state"))

    def run(capsys, *args: str):
        monkeypatch.setattr(sys, "argv", ["stackwise", *args])
        try:
            cli.main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0
        out, err = capsys.readouterr()
        return code, out + err, platform.submitted

    return run


@pytest.fixture
def project(tmp_path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps({"text": f"line {i} of text"}) + "\n" for i in range(20)))
    (folder / "base-model").mkdir()
    (folder / "base-model" / "config.json").write_text('{"model_type": "llama"}')
    return folder


def test_the_documented_spec_file_submits_the_spec(submitted, capsys, project, tmp_path, monkeypatch):
    (project / "finetune.yaml").write_text(
        "base: base-model\ndata: train.jsonl\nmethod: lora\nlora: {r: 8, alpha: 16}\n"
        "training: {max_steps: 200, learning_rate: 1.0e-3}\n")
    monkeypatch.chdir(tmp_path)  # elsewhere: the data path is the spec file's folder's
    code, output, specs = submitted(capsys, "finetune", "--spec", "project/finetune.yaml", "--detach", "--json")
    assert code == 0, output
    spec, new, run_name = specs[0]
    assert spec.data == str(project / "train.jsonl") and spec.base == str(project / "base-model")
    assert (spec.lora.r, spec.training.max_steps, spec.training.learning_rate) == (8, 200, 1e-3)
    assert json.loads(output)["job"] == "finetune-test"


def test_a_json_spec_file(submitted, capsys, project, monkeypatch):
    (project / "ft.json").write_text(json.dumps({"base": "hf-org/some-model", "data": "train.jsonl"}))
    code, output, specs = submitted(capsys, "finetune", "--spec", str(project / "ft.json"), "--detach")
    assert code == 0, output
    assert specs[0][0].data == str(project / "train.jsonl") and specs[0][0].base == "hf-org/some-model"


@pytest.mark.parametrize("content, message", [
    (b"base: [smollm2\n", "spec file is not valid YAML"),
    (b"base: caf\xe9\n", "spec file is not UTF-8"),
    (b"- base\n- data\n", "must be a mapping of fields"),
    (b"base: smollm2-135m-instruct\ndata: train.jsonl\ntraining: {max_stepz: 3}\n", "training.max_stepz"),
    (b"base: smollm2-135m-instruct\n", "data: Field required"),
])
def test_bad_spec_files_are_clear_errors(submitted, capsys, project, content, message):
    (project / "ft.yaml").write_bytes(content)
    code, output, specs = submitted(capsys, "finetune", "--spec", str(project / "ft.yaml"))
    assert code == 2 and message in output and "ft.yaml" in output, output
    assert "Traceback" not in output and specs == []


def test_spec_and_job_options_together_are_refused(submitted, capsys, project):
    (project / "ft.yaml").write_text("base: smollm2-135m-instruct\ndata: train.jsonl\n")
    code, output, specs = submitted(capsys, "finetune", "--spec", str(project / "ft.yaml"), "--lr", "0.1",
                                    "--base", "other")
    assert code == 2 and "--base, --lr cannot be given with it" in output and specs == []


def test_without_spec_base_and_data_are_needed(submitted, capsys):
    code, output, specs = submitted(capsys, "finetune", "--base", "smollm2-135m-instruct")
    assert code == 2 and "needs --base and --data, or --spec FILE" in output and specs == []


def test_spec_file_errors_through_the_real_entry_point(run_cli, tmp_path):
    (tmp_path / "ft.yaml").write_bytes(b"\xff\xfe")
    proc = run_cli("finetune", "--spec", "ft.yaml")
    assert proc.returncode == 2 and "not UTF-8" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("finetune", "--spec", str(tmp_path))
    assert proc.returncode == 2 and "is a folder" in proc.stderr and "Traceback" not in proc.stderr
