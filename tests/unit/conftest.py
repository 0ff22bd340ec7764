"""Fixtures for the unit tests: every test runs in its own empty working directory with no
stackwise environment variables set, so nothing leaks in from the repository or the shell."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_ENV = ("STACKWISE_STACK", "STACKWISE_OUTPUTS", "STACKWISE_STACKS_DIR", "STACKWISE_HOME")


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty working directory, no STACKWISE_* variables; returns the directory."""
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def write_project() -> Callable[..., Path]:
    """Write a Pulumi project (Pulumi.yaml + stacks/Pulumi.<name>.yaml) under `root`."""

    def write(root: Path, stacks: dict[str, str]) -> Path:
        root.mkdir(parents=True, exist_ok=True)
        (root / "Pulumi.yaml").write_text("name: demo\nruntime: python\nstackConfigDir: stacks/\n")
        folder = root / "stacks"
        folder.mkdir(exist_ok=True)
        for name, text in stacks.items():
            (folder / f"Pulumi.{name}.yaml").write_text(text)
        return root

    return write


def stack_yaml(cloud: str, region: str = "us-east-1", **extra: str) -> str:
    lines = ["config:", f"  stackwise:cloud: {cloud}", f"  stackwise:region: {region}"]
    lines += [f"  stackwise:{key}: {value}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture
def make_stack_yaml() -> Callable[..., str]:
    return stack_yaml


@pytest.fixture
def run_cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    """Run `python -m stackwise.cli ARGS` in a fresh process (the real entry point: exit codes,
    stderr, no traceback), with state under tmp_path/.stackwise."""

    def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            python_flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        full_env = {k: v for k, v in os.environ.items() if k not in _ENV}
        full_env.update(
            STACKWISE_HOME=str(tmp_path / ".stackwise"),
            HF_HUB_OFFLINE="1",
            COLUMNS="200",
        )
        full_env.update(env or {})
        return subprocess.run(
            [sys.executable, *python_flags, "-m", "stackwise.cli", *args],
            cwd=cwd or tmp_path,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    return run
