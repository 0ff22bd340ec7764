"""Workloads never reach the control plane (issue 18, item 6): the code that runs inside a job
(sdk/workloads, sdk/training, sdk/evaluation, sdk/curation) imports no stack resolution, no Platform, no CLI
and no pipeline runner, directly (read from the source) or through what it imports (a fresh interpreter's
sys.modules after importing every workload entry point)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

SDK = Path(__file__).resolve().parents[2] / "sdk"
JOB_SIDE = ("workloads", "training", "evaluation", "curation")
FORBIDDEN = ("stackwise.stack", "stackwise.platform", "stackwise.cli", "stackwise.pipeline", "stackwise.quickstart")


def forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") or (f == "stackwise.cli" and name.startswith("stackwise.cli_"))
               for f in FORBIDDEN)


def imports_of(path: Path, root: Path = SDK) -> list[tuple[int, str]]:
    """(line, module) of every import in `path`, relative ones resolved as `root` installs as `stackwise`."""
    package = ["stackwise", *path.relative_to(root).parent.parts]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found += [(node.lineno, module)]
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def test_job_side_sources_import_nothing_of_the_control_plane():
    bad = [f"{path.relative_to(SDK.parent)}:{line}: {name}"
           for folder in JOB_SIDE for path in sorted((SDK / folder).rglob("*.py"))
           for line, name in imports_of(path) if forbidden(name)]
    assert not bad, "job-side code imports the control plane:\n" + "\n".join(bad)


def test_the_rule_sees_a_planted_import(tmp_path):
    source = (SDK / "workloads" / "index.py").read_text(encoding="utf-8")
    copy = tmp_path / "sdk" / "workloads" / "index.py"
    copy.parent.mkdir(parents=True)
    copy.write_text(source + "\n\ndef _planted():\n    from ..platform import connect\n", encoding="utf-8")
    assert not any(forbidden(n) for _, n in imports_of(SDK / "workloads" / "index.py"))
    assert any(forbidden(n) for _, n in imports_of(copy, tmp_path / "sdk"))


def test_importing_every_workload_loads_no_control_plane_module():
    entry = [f"stackwise.workloads.{p.stem}" for p in sorted((SDK / "workloads").glob("*.py")) if p.stem != "__init__"]
    code = ("import importlib, json, sys\n"
            f"for name in {entry!r}:\n    importlib.import_module(name)\n"
            "print(json.dumps(sorted(sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = [m for m in json.loads(proc.stdout.strip().splitlines()[-1]) if forbidden(m)]
    assert not loaded, f"importing the workloads loads {loaded}"
