"""The distribution's layout: one `stackwise` namespace over the repository's folders, every
subpackage listed, the default stack shipped, torch pinned, the documented extras present."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
# The extras the README and docs/ promise, plus those CI installs.
DOCUMENTED_EXTRAS = {"aws", "gcp", "azure", "pinecone", "weaviate", "train", "serve", "all", "local", "dev"}


def _python_folders(root: Path) -> list[Path]:
    return [
        folder for folder in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]
        if "__pycache__" not in folder.parts and any(folder.glob("*.py"))
    ]


def _packages_on_disk() -> set[str]:
    found = set()
    for package, folder in SETUPTOOLS["package-dir"].items():
        root = REPO / folder
        for init in root.rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            relative = init.parent.relative_to(root).parts
            found.add(".".join([package, *relative]))
    return found


def test_package_dir_maps_the_three_folders_under_stackwise():
    assert SETUPTOOLS["package-dir"] == {"stackwise": "sdk", "stackwise.adapters": "adapters",
                                         "stackwise.infra": "infra"}


def test_packages_list_equals_the_folders_with_an_init():
    listed = set(SETUPTOOLS["packages"])
    on_disk = _packages_on_disk()
    assert listed == on_disk, (
        f"missing from pyproject packages: {sorted(on_disk - listed)}; "
        f"listed but not on disk: {sorted(listed - on_disk)}"
    )
    assert len(SETUPTOOLS["packages"]) == len(listed), "a package is listed twice"


def test_every_folder_with_python_code_is_a_package():
    # A folder of modules without __init__.py would work in the editable install and be
    # missing from the wheel.
    for folder in SETUPTOOLS["package-dir"].values():
        for python_folder in _python_folders(REPO / folder):
            assert (python_folder / "__init__.py").is_file(), f"{python_folder} has modules but no __init__.py"


def test_bare_folder_names_are_not_importable(tmp_path):
    # Outside the repository root, only `stackwise` is importable, never `sdk` or `adapters`.
    code = (
        "import importlib.util as u\n"
        "for name in ('sdk', 'adapters', 'infra'):\n"
        "    assert u.find_spec(name) is None, (name, u.find_spec(name))\n"
        "for name in ('stackwise', 'stackwise.adapters', 'stackwise.infra', 'stackwise.workloads',"
        " 'stackwise.adapters.vectors', 'stackwise.adapters.compute'):\n"
        "    assert u.find_spec(name) is not None, name\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_default_local_stack_shipped_in_the_package_equals_the_projects():
    shipped = REPO / "sdk" / "defaults" / "Pulumi.local.yaml"
    assert shipped.read_bytes() == (REPO / "stacks" / "Pulumi.local.yaml").read_bytes()
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["stackwise"]
    assert any(shipped.relative_to(REPO / "sdk").match(p) for p in patterns)


def _requirements() -> list[tuple[str, str]]:
    project = PYPROJECT["project"]
    found = [("dependencies", r) for r in project["dependencies"]]
    for extra, reqs in project["optional-dependencies"].items():
        found += [(extra, r) for r in reqs]
    return found


def _name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, requirement
    return match.group(1).lower().replace("_", "-")


def test_torch_is_pinned_wherever_it_appears():
    torch = [(where, r) for where, r in _requirements() if _name(r) == "torch"]
    assert torch, "torch should appear in the local and train extras"
    for where, requirement in torch:
        assert requirement.replace(" ", "") == "torch==2.13.0", f"[{where}] {requirement}"


def test_documented_extras_exist_and_all_includes_every_other():
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert DOCUMENTED_EXTRAS <= set(extras), sorted(DOCUMENTED_EXTRAS - set(extras))
    (everything,) = extras["all"]
    match = re.fullmatch(r"stackwise\[([a-z0-9,_-]+)\]", everything.replace(" ", ""))
    assert match, everything
    assert set(match.group(1).split(",")) == set(extras) - {"all", "dev"}


def test_the_test_install_names_every_extra():
    # `STACKWISE_EXTRAS=test` (README's test command, CI) installs what the whole suite exercises.
    script = (REPO / "scripts" / "install.sh").read_text()
    (listed,) = re.findall(r'^\s*test\) EXTRAS="([a-z,]+)"', script, re.M)
    extras = set(PYPROJECT["project"]["optional-dependencies"]) - {"all"}
    assert set(listed.split(",")) == extras


def test_console_script_points_at_main():
    assert PYPROJECT["project"]["scripts"] == {"stackwise": "stackwise.cli:main"}


@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="setuptools is not installed")
def test_wheel_holds_only_the_stackwise_namespace(tmp_path):
    source = tmp_path / "src"
    ignore = shutil.ignore_patterns(".venv", ".git", "*.egg-info", "build", "dist", ".stackwise", "__pycache__",
                                    "tests", "bench", ".pytest_cache")
    shutil.copytree(REPO, source, ignore=ignore)
    env = {k: v for k, v in os.environ.items() if k != "PIP_REQUIRE_VIRTUALENV"}
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(tmp_path / "out"), str(source)],
        capture_output=True, text=True, timeout=180, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (wheel,) = (tmp_path / "out").glob("stackwise-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"stackwise", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    for expected in ("stackwise/__init__.py", "stackwise/cli/__init__.py", "stackwise/py.typed",
                     "stackwise/defaults/Pulumi.local.yaml", "stackwise/adapters/vectors/embedded.py",
                     "stackwise/infra/__init__.py", "stackwise/workloads/index.py"):
        assert expected in names, expected
    packages = {n.rsplit("/", 1)[0].replace("/", ".") for n in names if n.endswith("/__init__.py")}
    assert packages == set(SETUPTOOLS["packages"])


def test_test_modules_have_unique_basenames_outside_packages():
    """pytest imports test folders without __init__.py by basename: two test_x.py there stop collection."""
    tests = REPO / "tests"
    seen: dict[str, Path] = {}
    for path in sorted(tests.glob("*/test_*.py")):
        if (path.parent / "__init__.py").exists():
            continue
        assert path.name not in seen, f"{path} and {seen[path.name]} share a basename"
        seen[path.name] = path
