"""Fixtures of the infrastructure tests: the Pulumi program built under mocks, once per stack.

Runs need the `infra` extra (pulumi and the providers); without it these tests are skipped
with the install hint, never silently passed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STACKS = REPO / "stacks"
CLOUD_STACKS = sorted(p.name[len("Pulumi."):-len(".yaml")] for p in STACKS.glob("Pulumi.*.yaml")
                      if p.name != "Pulumi.local.yaml")

_RUNS: dict[str, object] = {}


def stack_config(name: str) -> tuple[dict, str]:
    """The `stackwise:` keys of a stack file (namespace stripped) and the file's path."""
    from stackwise.stack import _read_config

    path = STACKS / f"Pulumi.{name}.yaml"
    return _read_config(path.read_text(encoding="utf-8"), str(path)), str(path)


def load_with(name: str, **changes):
    """The typed config of stack `name` with `changes` to its keys (None removes a key)."""
    import copy

    from stackwise.infra.config import InfraConfig

    raw, source = stack_config(name)
    raw = copy.deepcopy(raw)
    for key, value in changes.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    return InfraConfig.load(raw, source)


@pytest.fixture(autouse=True)
def _repo_stacks(monkeypatch):
    monkeypatch.setenv("STACKWISE_STACKS_DIR", str(STACKS))
    for name in ("STACKWISE_STACK", "STACKWISE_OUTPUTS", "PULUMI_CONFIG"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def offline_run():
    """Build a stack file's program under mocks (cached: each stack is built once per session)."""
    pytest.importorskip("pulumi", reason="pip install 'stackwise[infra]'")

    def run(name: str):
        if name not in _RUNS:
            from stackwise.infra.config import InfraConfig
            from stackwise.infra.offline import run_offline

            raw, source = stack_config(name)
            _RUNS[name] = run_offline(InfraConfig.load(raw, source), name)
        return _RUNS[name]

    return run


def cli_env(tmp_path: Path, stacks_dir: Path = STACKS) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKWISE_")}
    env.update(STACKWISE_HOME=str(tmp_path / ".stackwise"), STACKWISE_STACKS_DIR=str(stacks_dir), COLUMNS="200")
    return env
