"""Stack config for the container backend, image naming, and the errors of `stackwise image build`
and container jobs when the engine or the image is missing (exit 2, what/where/fix, no job)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def _local_stack(tmp_path: Path, compute: str) -> Path:
    (tmp_path / "stacks").mkdir(parents=True, exist_ok=True)
    (tmp_path / "Pulumi.yaml").write_text("name: t\nruntime: python\n")
    (tmp_path / "stacks" / "Pulumi.box.yaml").write_text(
        "config:\n  stackwise:cloud: local\n  stackwise:region: local\n" + compute)
    return tmp_path / "stacks"


@pytest.mark.parametrize("compute, message", [
    ("  stackwise:compute:\n    kind: slurm\n", "unknown compute kind 'slurm'"),
    ("  stackwise:compute:\n    kind: container\n", "names no image"),
    ("  stackwise:compute:\n    kind: container\n    image: x\n    engine: lxc\n", "unknown container engine 'lxc'"),
    ("  stackwise:compute:\n    kind: container\n    image: x\n    gpus: 2\n", "must be a mapping with kind, image"),
])
def test_bad_container_compute_config_is_a_config_error(tmp_path, monkeypatch, compute, message):
    from stackwise.errors import ConfigError
    from stackwise.stack import load_stack

    monkeypatch.setenv("STACKWISE_STACKS_DIR", str(_local_stack(tmp_path, compute)))
    with pytest.raises(ConfigError) as caught:
        load_stack("box")
    assert message in caught.value.what and "Pulumi.box.yaml" in caught.value.where
    assert "stackwise image build" in caught.value.fix


def test_a_container_stack_chooses_the_container_backend_and_exports_its_image(tmp_path, monkeypatch):
    from stackwise.stack import load_stack

    monkeypatch.setenv("STACKWISE_STACKS_DIR", str(_local_stack(
        tmp_path, "  stackwise:compute:\n    kind: container\n    image: localhost/stackwise/train:abc\n")))
    monkeypatch.setenv("STACKWISE_HOME", str(tmp_path / ".stackwise"))
    stack = load_stack("box")
    assert stack.compute_kind == "container"
    assert stack.outputs.training_image == "localhost/stackwise/train:abc"
    assert load_stack("local").compute_kind == "local"


@pytest.mark.parametrize("image, repository", [
    ("123456789012.dkr.ecr.us-east-1.amazonaws.com/sw-dev-images:latest",
     "123456789012.dkr.ecr.us-east-1.amazonaws.com/sw-dev-images"),
    ("us-central1-docker.pkg.dev/p/sw-dev-images/train:latest", "us-central1-docker.pkg.dev/p/sw-dev-images"),
    ("swdevimages.azurecr.io/train:latest", "swdevimages.azurecr.io"),
    ("localhost:5000/team/train@sha256:" + "a" * 64, "localhost:5000/team"),
])
def test_image_repository_follows_the_stacks_training_image(image, repository):
    from types import SimpleNamespace

    from stackwise.images import image_repository

    stack = SimpleNamespace(name="s", is_local=False, outputs=SimpleNamespace(training_image=image))
    assert image_repository(stack) == repository
    assert image_repository(None) == "localhost/stackwise"


def test_a_cloud_stack_without_a_training_image_cannot_name_a_registry():
    from types import SimpleNamespace

    from stackwise.errors import ConfigError
    from stackwise.images import image_repository

    with pytest.raises(ConfigError, match="no training_image"):
        image_repository(SimpleNamespace(name="dev-aws", is_local=False, outputs=SimpleNamespace(training_image=None)))


def _cli(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stackwise.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_no_container_engine_is_exit_2_for_image_build_and_for_container_jobs(tmp_path):
    """PATH without podman or docker: both commands name both engines and how to install one."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "git"):
        found = subprocess.run(["which", tool], capture_output=True, text=True).stdout.strip()
        if found:
            os.symlink(found, bin_dir / tool)
    stacks = _local_stack(tmp_path, "  stackwise:compute:\n    kind: container\n    image: localhost/x/train:1\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKWISE_")}
    env.update(PATH=str(bin_dir), STACKWISE_HOME=str(tmp_path / ".stackwise"), STACKWISE_STACKS_DIR=str(stacks))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("hello\n")
    for args in (["image", "build", "--wheelhouse", str(tmp_path)],
                 ["index", str(tmp_path / "docs"), "--index", "kb", "--stack", "box"]):
        proc = _cli(args, tmp_path, env)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert "neither podman nor docker" in proc.stderr and "apt-get install" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    jobs = tmp_path / ".stackwise" / "jobs"
    assert not jobs.exists() or not any(jobs.iterdir()), "no job was created"
    db = tmp_path / ".stackwise" / "jobs.db"
    if db.exists():
        import sqlite3

        assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 0


@pytest.mark.parametrize("repository, target, tag, expected", [
    ("123456789012.dkr.ecr.us-east-1.amazonaws.com/sw-dev-images", "train", "abc",
     "123456789012.dkr.ecr.us-east-1.amazonaws.com/sw-dev-images:train-abc"),
    ("123456789012.dkr.ecr.us-east-1.amazonaws.com/sw-dev-images", "serve", None,
     "123456789012.dkr.ecr.us-east-1.amazonaws.com/sw-dev-images:serve"),
    ("us-central1-docker.pkg.dev/p/sw-dev-images", "train", "abc", "us-central1-docker.pkg.dev/p/sw-dev-images/train:abc"),
    ("swdevimages.azurecr.io", "serve", None, "swdevimages.azurecr.io/serve:latest"),
    ("localhost/stackwise", "train", "abc", "localhost/stackwise/train:abc"),
])
def test_image_references_fit_each_registry(repository, target, tag, expected):
    """ECR has one repository per stack (infra/aws/platform.py): the target goes into the tag there."""
    from stackwise.images import image_reference

    assert image_reference(repository, target, tag) == expected
