"""stackwise.images without a container engine: engine discovery (a docker client without a daemon
counts as absent), the content digest, and build_images against a fake engine (tags, build
arguments, cache hits, the tail of a failed build)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

FAKE_ENGINE = r'''#!PYTHON
"""A fake podman/docker: records each call; `build` fails when the Containerfile says FAIL."""
import json, os, sys
from pathlib import Path
state = Path(os.environ["FAKE_ENGINE_STATE"])
images = json.loads(state.read_text()) if state.exists() else {}
args = sys.argv[1:]
with open(state.with_suffix(".calls"), "a") as log:
    log.write(json.dumps(args) + "\n")
if args[:1] == ["info"]:
    if os.environ.get("FAKE_DAEMON") == "up":
        print("27.0.1")
        sys.exit(0)
    print("Cannot connect to the Docker daemon at unix:///var/run/docker.sock.", file=sys.stderr)
    sys.exit(1)
if args[:2] == ["image", "inspect"]:
    name = args[-1]
    if name not in images:
        print(f"Error: {name}: image not known", file=sys.stderr)
        sys.exit(125)
    if "--format" in args:
        print(f"sha256:{images[name]} 123456")
    sys.exit(0)
if args[:1] == ["build"]:
    file = Path(args[args.index("--file") + 1])
    if "FAIL" in file.read_text():
        for n in range(40):
            print(f"build line {n}")
        sys.exit(1)
    for i, a in enumerate(args):
        if a == "--tag":
            images[args[i + 1]] = "%064d" % len(images)
    state.write_text(json.dumps(images))
    sys.exit(0)
if args[:1] == ["push"]:
    if "--digestfile" in args:  # podman writes the pushed manifest's digest
        Path(args[args.index("--digestfile") + 1]).write_text("sha256:" + "ab" * 32)
    else:  # docker prints it
        print(f"{args[-1].rsplit(':', 1)[1]}: digest: sha256:{'cd' * 32} size: 529")
    sys.exit(0)
sys.exit(0)
'''


def _fake_engine(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(FAKE_ENGINE.replace("#!PYTHON", "#!" + sys.executable))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def _checkout(tmp_path: Path, containerfile: str = "FROM x\n") -> Path:
    root = tmp_path / "repo"
    (root / "sdk").mkdir(parents=True)
    (root / "sdk" / "__init__.py").write_text("x = 1\n")
    (root / "sdk" / "__pycache__").mkdir()
    (root / "sdk" / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"junk")
    (root / "adapters").mkdir()
    (root / "adapters" / "a.py").write_text("a = 1\n")
    (root / "Containerfile").write_text(containerfile)
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (root / "README.md").write_text("readme\n")
    (root / "tests").mkdir()
    (root / "tests" / "t.py").write_text("not in the context\n")
    return root


def _wheelhouse(tmp_path: Path) -> Path:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "requirements.txt").write_text("torch==2.13.0+cpu\n")
    (wheels / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"0" * 10)
    (wheels / "stackwise-0.1.0-py3-none-any.whl").write_bytes(b"1")
    return wheels


@pytest.fixture
def fake_path(tmp_path, monkeypatch):
    """PATH with only a folder of fake engines (and the tools the fakes need)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("FAKE_ENGINE_STATE", str(tmp_path / "engine.json"))
    monkeypatch.delenv("STACKWISE_CONTAINER_ENGINE", raising=False)
    return bin_dir


def test_no_engine_names_both_and_how_to_install(fake_path):
    from stackwise.errors import ConfigError
    from stackwise.images import find_engine

    with pytest.raises(ConfigError) as caught:
        find_engine()
    message = str(caught.value)
    assert "neither podman nor docker" in message and "apt-get install -y podman" in message
    assert "docs.docker.com" in message


def test_a_docker_client_without_a_daemon_is_no_engine(fake_path, monkeypatch):
    from stackwise.errors import ConfigError
    from stackwise.images import find_engine

    _fake_engine(fake_path, "docker")
    with pytest.raises(ConfigError) as caught:
        find_engine()
    assert "daemon is not reachable" in caught.value.what and "Cannot connect" in caught.value.what
    monkeypatch.setenv("FAKE_DAEMON", "up")
    assert find_engine() == "docker"
    _fake_engine(fake_path, "podman")
    assert find_engine() == "podman"  # preferred
    monkeypatch.setenv("STACKWISE_CONTAINER_ENGINE", "docker")
    assert find_engine() == "docker"
    monkeypatch.setenv("STACKWISE_CONTAINER_ENGINE", "lxc")
    with pytest.raises(ConfigError, match="unknown container engine 'lxc'"):
        find_engine()


def test_the_digest_follows_sources_wheels_and_arguments_only(tmp_path):
    from stackwise.images import content_digest, context_files

    root, wheels = _checkout(tmp_path), _wheelhouse(tmp_path)
    files = context_files(root, wheels)
    assert "context/sdk/__init__.py" in files and "context/Containerfile" in files
    assert not any("__pycache__" in name or name.startswith("context/tests") for name in files)
    assert "wheels/stackwise-0.1.0-py3-none-any.whl" not in files  # the image builds stackwise from source
    digest = content_digest(files, {"BASE_IMAGE": "b"})
    assert len(digest) == 16 and int(digest, 16) >= 0
    assert content_digest(context_files(root, wheels), {"BASE_IMAGE": "b"}) == digest
    (root / "sdk" / "__pycache__" / "other.pyc").write_bytes(b"more junk")
    (root / "tests" / "t.py").write_text("changed\n")
    assert content_digest(context_files(root, wheels), {"BASE_IMAGE": "b"}) == digest
    assert content_digest(context_files(root, wheels), {"BASE_IMAGE": "c"}) != digest
    (wheels / "numpy-2.4.6-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"n")
    with_numpy = content_digest(context_files(root, wheels), {"BASE_IMAGE": "b"})
    assert with_numpy != digest
    (root / "sdk" / "__init__.py").write_text("x = 2\n")
    assert content_digest(context_files(root, wheels), {"BASE_IMAGE": "b"}) not in (digest, with_numpy)


def test_build_images_tags_by_digest_and_a_second_build_is_a_cache_hit(tmp_path, fake_path):
    from stackwise.images import build_images

    _fake_engine(fake_path, "podman")
    root, wheels = _checkout(tmp_path), _wheelhouse(tmp_path)
    first = build_images("localhost/sw", "localhost/base:1", wheels, "local,serve", root=root,
                         build_args={"HF_HUB_OFFLINE": "1"})
    assert set(first) == {"train", "serve"}
    digest = first["train"]["digest"]
    for target, info in first.items():
        assert info["image"] == f"localhost/sw/{target}:{digest}" and not info["cached"]
        assert info["size_bytes"] == 123456 and len(info["id"]) == 64
    json.dumps(first)
    calls = [json.loads(x) for x in (tmp_path / "engine.calls").read_text().splitlines()]
    builds = [c for c in calls if c[0] == "build"]
    assert [b[b.index("--target") + 1] for b in builds] == ["train", "serve"]
    build = builds[0]
    assert f"wheels={wheels.resolve()}" in build and "--format" in build
    assert {"BASE_IMAGE=localhost/base:1", "EXTRAS=local,serve", "HF_HUB_OFFLINE=1",
            f"STACKWISE_DIGEST={digest}"} <= {build[i + 1] for i, a in enumerate(build) if a == "--build-arg"}
    assert {"localhost/sw/train:latest", f"localhost/sw/train:{digest}"} <= set(build)
    # The build ran on a staged copy of the context, not on the checkout.
    assert Path(build[-1]) != root and not Path(build[-1]).exists()

    again = build_images("localhost/sw", "localhost/base:1", wheels, "local,serve", root=root,
                         build_args={"HF_HUB_OFFLINE": "1"})
    assert all(info["cached"] for info in again.values()) and again["train"]["id"] == first["train"]["id"]
    calls = (tmp_path / "engine.calls").read_text().splitlines()
    assert sum(json.loads(c)[0] == "build" for c in calls) == 2


def test_a_failed_build_says_the_last_20_lines_and_where_the_log_is(tmp_path, fake_path):
    from stackwise.errors import StackwiseError
    from stackwise.images import build_images

    _fake_engine(fake_path, "podman")
    root, wheels = _checkout(tmp_path, "FROM x\nRUN FAIL\n"), _wheelhouse(tmp_path)
    with pytest.raises(StackwiseError) as caught:
        build_images("localhost/sw", "b", wheels, "local", root=root)
    message = str(caught.value)
    assert "podman build of the train image" in message and "build line 39" in message
    assert "build line 20" in message and "build line 19" not in message
    assert "full log:" in message


def test_a_folder_without_requirements_is_no_wheelhouse(tmp_path, fake_path):
    from stackwise.errors import ConfigError
    from stackwise.images import build_images

    _fake_engine(fake_path, "podman")
    with pytest.raises(ConfigError, match="is not a wheelhouse") as caught:
        build_images("localhost/sw", "b", tmp_path, "local", root=_checkout(tmp_path))
    assert "scripts/wheelhouse.sh" in caught.value.fix


def test_importing_stackwise_images_loads_only_the_standard_library():
    """Beyond what `import stackwise` loads."""
    code = ("import sys, stackwise; before = set(sys.modules); import stackwise.images; "
            "print('\\n'.join(sorted(set(sys.modules) - before)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
                         env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}).stdout.split()
    foreign = [m for m in out if m.split(".")[0] not in sys.stdlib_module_names and m.split(".")[0] != "stackwise"]
    assert not foreign, foreign


def test_push_pushes_both_digest_tags(tmp_path, fake_path):
    from stackwise.images import build_images

    _fake_engine(fake_path, "podman")
    root, wheels = _checkout(tmp_path), _wheelhouse(tmp_path)
    result = build_images("registry.example/team", "b", wheels, "local", root=root, push=True)
    calls = [json.loads(x) for x in (tmp_path / "engine.calls").read_text().splitlines()]
    pushes = [[a for a in c if not a.startswith("/")] for c in calls if c[0] == "push"]
    assert pushes == [["push", "--digestfile", result["train"]["image"]],
                      ["push", "--digestfile", result["serve"]["image"]]]
    assert result["train"]["pushed"] and result["serve"]["pushed"]
    # The digest-pinned reference in the registry; registry.example is no cloud's: no login.
    assert result["train"]["pushed_image"] == "registry.example/team/train@sha256:" + "ab" * 32
    assert not [c for c in calls if c[0] == "login"]


def test_docker_push_reports_the_digest_it_prints(tmp_path, fake_path, monkeypatch):
    from stackwise.images import push_image

    _fake_engine(fake_path, "docker")
    assert push_image("docker", "registry.example:5000/team/serve:abc") == \
        "registry.example:5000/team/serve@sha256:" + "cd" * 32


def test_cli_push_prints_the_digest_pinned_references(tmp_path, fake_path):
    _fake_engine(fake_path, "podman")
    wheels = _wheelhouse(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "stackwise.cli", "image", "build", "--push", "--repository",
                           "registry.example/team", "--wheelhouse", str(wheels), "--base-image", "b"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, stdin=subprocess.DEVNULL,
                          env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    pinned = [line.split("pushed: ", 1)[1] for line in proc.stdout.splitlines() if "pushed: " in line]
    assert pinned == ["registry.example/team/train@sha256:" + "ab" * 32, "registry.example/team/serve@sha256:" + "ab" * 32]
