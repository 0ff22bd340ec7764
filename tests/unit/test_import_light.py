"""`import stackwise` and `stackwise --help` load no cloud SDK, ML library or vector engine.

Each check runs in a fresh interpreter: within pytest, other tests have long since imported
everything. Timings are not asserted (they depend on the machine); which modules load does not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HEAVY = {
    "boto3", "botocore", "google", "azure", "torch", "transformers", "sentence_transformers",
    "pulumi", "lancedb", "pyarrow", "numpy",
    "pinecone", "weaviate", "pymilvus", "milvus", "grpc",
    "peft", "mlflow", "bitsandbytes", "accelerate", "gguf",
    "rouge_score", "sacrebleu", "matplotlib", "fairlearn", "sklearn", "pandas",
}


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKWISE_")}
    env["STACKWISE_HOME"] = str(tmp_path / ".stackwise")
    return env


def loaded_heavy(body: str, tmp_path: Path) -> set[str]:
    """Run `body` in a fresh interpreter; return the heavy top-level modules it left in sys.modules."""
    # Modules the interpreter loads before any code runs do not count: google-cloud-aiplatform
    # installs a namespace-package .pth that imports `google` at every start-up.
    script = "import sys as _sys0\n_base = set(_sys0.modules)\n" + textwrap.dedent(body) + textwrap.dedent(
        f"""
        import sys as _sys, json as _json
        _top = {{name.split(".")[0] for name in set(_sys.modules) - _base}}
        _sys.stderr.write("LOADED=" + _json.dumps(sorted(_top & set({sorted(HEAVY)!r}))) + "\\n")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    line = [x for x in proc.stderr.splitlines() if x.startswith("LOADED=")][-1]
    return set(json.loads(line[len("LOADED="):]))


def test_probe_detects_heavy_imports(tmp_path):
    # The probe itself must be able to see a heavy import, or the tests below prove nothing.
    assert {"lancedb", "pyarrow"} <= loaded_heavy("import stackwise.adapters.vectors.embedded\n", tmp_path)


def test_hosted_vector_store_adapters_import_their_sdk_only_when_used(tmp_path):
    body = """
    import stackwise.adapters.vectors.pinecone
    import stackwise.adapters.vectors.milvus
    from stackwise.registry import VECTOR_STORES
    assert {"pinecone", "milvus"} <= set(VECTOR_STORES)
    """
    assert loaded_heavy(body, tmp_path) == set()


def test_import_stackwise_and_public_names_stay_light(tmp_path):
    body = """
    import stackwise
    stackwise.connect
    stackwise.Platform
    stackwise.IndexSpec
    stackwise.StackOutputs
    stackwise.load_stack
    stackwise.ConfigError
    import stackwise.cli
    """
    assert loaded_heavy(body, tmp_path) == set()


def test_connect_to_local_stack_stays_light(tmp_path):
    # Backends (compute, vector store, embedder) load on first use, not on connect.
    body = """
    import stackwise
    platform = stackwise.connect()
    assert platform.stack.name == "local"
    platform.stack.outputs
    stackwise.IndexSpec(source="docs", index="kb").digest()
    stackwise.FineTuneSpec(base="smollm2-135m-instruct", data="train.jsonl").digest()
    import stackwise.workloads.finetune, stackwise.training.launch, stackwise.training.data
    stackwise.EvaluateSpec(model="m", suites=["rouge", "mmlu"], data="eval.jsonl").digest()
    import stackwise.workloads.evaluate, stackwise.model_registry, stackwise.evaluation.runner
    import stackwise.evaluation.report, stackwise.evaluation.gate, stackwise.evaluation.leakage
    """
    assert loaded_heavy(body, tmp_path) == set()


def test_help_code_path_stays_light(tmp_path):
    body = """
    from stackwise.cli import app
    code = app(["--help"], standalone_mode=False)
    assert code in (0, None), code
    """
    assert loaded_heavy(body, tmp_path) == set()


def _imported_by(args: list[str], tmp_path: Path) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run the real entry point under `-X importtime`, which lists every module it imports."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "stackwise.cli", *args],
                          cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    names = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "package":  # the header line
                names.add(name.split(".")[0])
    return proc, names


@pytest.mark.parametrize("args", [["--help"], ["index", "--help"], ["stacks", "--json"], ["finetune", "--help"],
                                  ["eval", "--help"], ["promote", "--help"], ["models", "--help"]])
def test_cli_entry_point_stays_light(args, tmp_path):
    proc, names = _imported_by(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "stackwise" in names  # the listing worked
    assert names & HEAVY == set()
    if args[-1] == "--help":
        assert "Usage" in proc.stdout
