"""Jobs are self-contained: what runs inside a job (workloads, training, evaluation, the
bootstrap) reads its stack from the job context `submit` sent, never by resolving a stack name.

Two guards. Statically, none of those modules imports the stack resolution (`stackwise.stack`,
`stackwise.platform`). Dynamically, the index and evaluate workloads run to success in a folder
with no stacks/, no outputs file, no STACKWISE_* variable and the stack modules made
unimportable, as in a container, with only `--spec` and `--context`.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import lee_articles, write_txt_corpus

ROOT = Path(__file__).resolve().parents[2]
JOB_CODE = [*sorted((ROOT / "sdk" / "workloads").glob("*.py")), *sorted((ROOT / "sdk" / "training").glob("*.py")),
            *sorted((ROOT / "sdk" / "evaluation").glob("*.py")), ROOT / "adapters" / "compute" / "bootstrap.py"]
FORBIDDEN = {"stackwise.stack", "stackwise.platform"}


def _imports(path: Path) -> set[str]:
    """Absolute names of the stackwise modules `path` imports (relative imports resolved)."""
    package = "stackwise." + ".".join(path.relative_to(ROOT / "sdk").parts[:-1]) if path.is_relative_to(ROOT / "sdk") \
        else "stackwise.adapters.compute"
    package = package.rstrip(".")
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}
    return found


def test_job_code_never_imports_the_stack_resolution():
    assert len(JOB_CODE) > 20
    offenders = {str(p.relative_to(ROOT)): sorted(_imports(p) & FORBIDDEN) for p in JOB_CODE}
    assert not {k: v for k, v in offenders.items() if v}, "job code must read the JobContext, not resolve a stack"


def test_the_import_scan_sees_a_relative_stack_import(tmp_path):
    """The guard above would notice `from ..stack import load_stack` in a workload."""
    planted = ROOT / "sdk" / "workloads" / "_planted_for_test.py"
    planted.write_text("from ..stack import load_stack\n", encoding="utf-8")
    try:
        assert "stackwise.stack" in _imports(planted)
    finally:
        planted.unlink()


_BLOCKED_RUN = """
import runpy, sys
for name in ("stackwise.stack", "stackwise.platform"):
    sys.modules[name] = None  # `import stackwise.stack` now raises ImportError, as if it did not exist
sys.argv = [sys.argv[1]] + sys.argv[2:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def _run_blocked(module: str, spec: Path, context: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKWISE_")}
    env.update(STACKWISE_THREADS="2", OMP_NUM_THREADS="2", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               STACKWISE_HOME=str(cwd / "scratch-state"))
    return subprocess.run([sys.executable, "-c", _BLOCKED_RUN, module, "--spec", str(spec), "--context", str(context),
                           "--result", str(cwd / f"{module.rsplit('.', 1)[1]}-result.json")],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)


@pytest.mark.slow
def test_index_and_evaluate_run_from_the_context_alone(tmp_path):
    pytest.importorskip("lancedb", reason="install stackwise[local]")
    pytest.importorskip("mlflow", reason="install stackwise[train]")
    from stackwise.contract import JobContext, VectorStoreOutput
    from stackwise.specs import EvaluateSpec, IndexSpec

    job = tmp_path / "job"  # no stacks/, no Pulumi.yaml, no outputs anywhere
    job.mkdir()
    docs = tmp_path / "docs"
    files = write_txt_corpus(docs, lee_articles()[:6])
    context = JobContext(stack="elsewhere", cloud="local", region="local", artifact_store=str(tmp_path / "store"),
                         vector_store=VectorStoreOutput(kind="embedded", uri=str(tmp_path / "store" / "vectors")),
                         tracking_uri=f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}", job_id="index-1", attempt=1)
    (job / "context.json").write_text(context.model_dump_json(), encoding="utf-8")
    (job / "index.json").write_text(IndexSpec(source=str(docs), index="kb").model_dump_json(), encoding="utf-8")
    proc = _run_blocked("stackwise.workloads.index", job / "index.json", job / "context.json", job)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((job / "index-result.json").read_text())
    assert report["documents"] == 6 and report["added"] == report["chunks"] > 0
    assert (tmp_path / "store" / "vectors").is_dir(), "the index goes where the context says"

    first = lee_articles()[0].split(".")[0]
    records = tmp_path / "eval.jsonl"
    records.write_text(json.dumps({"query": first, "relevant": [str(files[0])]}) + "\n", encoding="utf-8")
    (job / "evaluate.json").write_text(EvaluateSpec(suites=["retrieval"], data=str(records), index="kb", k=3)
                                       .model_dump_json(), encoding="utf-8")
    proc = _run_blocked("stackwise.workloads.evaluate", job / "evaluate.json", job / "context.json", job)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((job / "evaluate-result.json").read_text())
    assert report["output"].startswith(str(tmp_path / "store" / "evaluations"))
    assert report["tracking_error"] is None and (tmp_path / "store" / "mlflow.db").is_file()
    metrics = report["candidate"]["metrics"]
    assert metrics["retrieval.recall_at_3"] == 1.0, metrics  # the article's own first sentence finds it


def test_a_workload_without_a_context_exits_2_and_says_how_to_fix(tmp_path):
    from stackwise.specs import IndexSpec

    (tmp_path / "spec.json").write_text(IndexSpec(source=str(tmp_path), index="kb").model_dump_json())
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKWISE_")}
    proc = subprocess.run([sys.executable, "-m", "stackwise.workloads.index", "--spec", str(tmp_path / "spec.json"),
                           "--result", str(tmp_path / "result.json")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert "no job context" in proc.stderr and "fix:" in proc.stderr and "Traceback" not in proc.stderr
    assert "no job context" in json.loads((tmp_path / "error.json").read_text())["error"]
