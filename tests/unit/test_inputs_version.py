"""`stackwise --version`: the installed version, plus the short git commit only when the package
is imported from a git checkout; fast, and fine without git."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import version as dist_version

import pytest

import stackwise.version as sv


def test_version_flag_prints_the_version(run_cli):
    proc = run_cli("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"stackwise {dist_version('stackwise')}")
    if sv.checkout_root() is not None and shutil.which("git"):
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=sv.checkout_root(),
                             capture_output=True, text=True).stdout.strip()
        assert proc.stdout.strip().endswith(f"(commit {sha})")


def test_version_without_git_on_the_path(run_cli, tmp_path):
    proc = run_cli("--version", env={"PATH": str(tmp_path)})  # no git to run
    assert proc.returncode == 0 and re.fullmatch(r"stackwise \S+\n", proc.stdout), proc.stdout + proc.stderr


def test_version_loads_nothing_heavy(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKWISE_")}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "stackwise.cli", "--version"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    loaded = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
    assert not loaded & {"pydantic", "mlflow", "torch", "yaml", "rich"}


def test_no_commit_outside_a_checkout(monkeypatch, tmp_path):
    """A wheel in a virtualenv inside some other git repository must not report that commit."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=False, capture_output=True)
    package = tmp_path / "venv" / "site-packages" / "stackwise"
    package.mkdir(parents=True)
    monkeypatch.setattr(sv, "_PACKAGE_DIR", package)
    sv.commit.cache_clear()
    try:
        assert sv.checkout_root() is None and sv.commit() is None
        assert sv.version_string() == f"stackwise {sv.version()}"
    finally:
        sv.commit.cache_clear()


@pytest.mark.parametrize("failure", [OSError("no git"), subprocess.TimeoutExpired("git", 5)])
def test_git_failures_leave_the_version_alone(monkeypatch, failure):
    def broken(*args, **kwargs):
        raise failure

    monkeypatch.setattr(sv, "checkout_root", lambda: sv._PACKAGE_DIR.parent)
    monkeypatch.setattr(subprocess, "run", broken)
    sv.commit.cache_clear()
    try:
        assert sv.version_string() == f"stackwise {sv.version()}"
    finally:
        sv.commit.cache_clear()
