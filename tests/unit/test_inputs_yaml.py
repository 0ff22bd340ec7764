"""Every user YAML file (stack, gate, finetune spec) goes through one bounded loader: an alias
bomb is refused at once, with a what/where/fix message, instead of exhausting memory; and no
user value of any size is formatted whole into a message.

The bomb tests run in a subprocess capped at 1 GiB of address space and 60 s, so that without
the bound they fail fast (MemoryError or timeout) rather than eating the machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stackwise.errors import ConfigError, SpecError
from stackwise.userinput import MAX_YAML_DEPTH, MAX_YAML_NODES, load_yaml, read_yaml, shorten

# The classic "billion laughs": 9 levels of 9 aliases expand to 9**9 (387 million) strings.
LAUGHS = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
LAUGHS += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 10)]


def bomb(key_line: str) -> str:
    """The laughs under `x-bombs:`, then `key_line` using *l9."""
    return "x-bombs:\n" + "\n".join("  " + line for line in LAUGHS) + "\n" + key_line + "\n"


def run_bounded(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    import resource

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKWISE_")}
    env.update(STACKWISE_HOME=str(cwd / ".stackwise"), HF_HUB_OFFLINE="1", COLUMNS="200")
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=60, preexec_fn=cap)


@pytest.mark.timeout(120)
def test_stack_file_alias_bomb_is_refused_fast(tmp_path):
    (tmp_path / "Pulumi.yaml").write_text("name: demo\nruntime: python\n")
    (tmp_path / "stacks").mkdir()
    (tmp_path / "stacks" / "Pulumi.bomb.yaml").write_text(bomb("config:\n  stackwise:cloud: *l9"))
    started = time.monotonic()
    proc = run_bounded(["-m", "stackwise.cli", "sync", "--stack", "bomb"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "stack file is refused" in proc.stderr and "aliases" in proc.stderr
    assert "Pulumi.bomb.yaml line" in proc.stderr
    assert len(proc.stderr) < 2000
    assert time.monotonic() - started < 30


@pytest.mark.timeout(120)
def test_gate_file_alias_bomb_is_refused_fast(tmp_path):
    (tmp_path / "gate.yaml").write_text(bomb("data: *l9\nmetrics: {perplexity: {min_delta: 0.5}}"))
    script = ("from stackwise.evaluation.gate import read_gate\n"
              "from stackwise.errors import SpecError\n"
              "try:\n    read_gate('gate.yaml')\nexcept SpecError as exc:\n    print('REFUSED', exc.what)\n")
    proc = run_bounded(["-c", script], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("REFUSED gate file is refused")


@pytest.mark.timeout(120)
def test_finetune_spec_alias_bomb_is_refused_fast(tmp_path):
    (tmp_path / "ft.yaml").write_text(bomb("base: smollm2-135m-instruct\ndata: *l9"))
    proc = run_bounded(["-m", "stackwise.cli", "finetune", "--spec", "ft.yaml"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "spec file is refused" in proc.stderr and "Traceback" not in proc.stderr


def test_anchors_aliases_and_merges_of_ordinary_size_still_work():
    text = "defaults: &d {region: us-east-1, gpu: A100}\nprod:\n  <<: *d\n  gpu: H100\nsame: *d\n"
    assert load_yaml(text, "f.yaml") == {
        "defaults": {"region": "us-east-1", "gpu": "A100"},
        "prod": {"region": "us-east-1", "gpu": "H100"},
        "same": {"region": "us-east-1", "gpu": "A100"},
    }


@pytest.mark.parametrize("text, message", [
    ("a: &a [1, *a]\n", "refers to a node that contains it"),
    ("x: " + "[" * (MAX_YAML_DEPTH + 5) + "]" * (MAX_YAML_DEPTH + 5) + "\n", f"more than {MAX_YAML_DEPTH} levels"),
    ("x: [" + ", ".join(["1"] * (MAX_YAML_NODES + 1)) + "]\n", "more than 100,000 values"),
    ("x: " + "7" * 5000 + "\n", "cannot read"),
    ("x: [1,\n", "not valid YAML"),
    ("x: !!python/object/apply:os.system ['true']\n", "not valid YAML"),
])
def test_hostile_yaml_is_a_clear_error(text, message):
    with pytest.raises(SpecError) as info:
        load_yaml(text, "spec.yaml", SpecError, what="spec file")
    assert message in info.value.what and info.value.where.startswith("spec.yaml")
    assert len(str(info.value)) < 600


def test_read_yaml_refuses_folders_and_non_utf8(tmp_path):
    (tmp_path / "latin1.yaml").write_bytes("cloud: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_yaml(tmp_path / "latin1.yaml")
    with pytest.raises(ConfigError, match="is a folder"):
        read_yaml(tmp_path)


@pytest.mark.timeout(10)
def test_shorten_is_bounded_for_shared_and_huge_values():
    shared: list = ["lol"] * 9
    for _ in range(12):  # 9**13 items if walked whole
        shared = [shared] * 9
    started = time.monotonic()
    for value in (shared, "x" * 10_000_000, {"k" * 1000: list(range(10**6))}, 10**5000):
        assert len(shorten(value)) <= 80
    assert time.monotonic() - started < 1
    assert shorten("aws") == "'aws'"


def test_a_huge_stack_value_is_not_formatted_whole(tmp_path, write_project, make_stack_yaml):
    from stackwise import load_stack

    write_project(tmp_path, {"big": make_stack_yaml("x" * 200_000)})
    with pytest.raises(ConfigError) as info:
        load_stack("big")
    assert "unknown cloud 'xxx" in info.value.what and len(str(info.value)) < 600


def test_gate_data_must_be_a_path(tmp_path):
    from stackwise.evaluation.gate import read_gate

    (tmp_path / "gate.yaml").write_text("data: [a, b]\nmetrics: {perplexity: {}}\n")
    with pytest.raises(SpecError, match="gate `data` must be a path"):
        read_gate(str(tmp_path / "gate.yaml"))
