"""Helpers the cloud compute tests share: stack outputs written to a file, and specs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

GOLDEN = Path(__file__).resolve().parents[1] / "golden"

OUTPUTS: dict[str, dict[str, Any]] = {
    "dev-aws": {
        "cloud": "aws", "region": "us-east-1", "artifact_store": "s3://sw-dev-artifacts",
        "job_role": "arn:aws:iam::123456789012:role/sw-dev-jobs-role",
        "training_image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/sw-dev-images:latest",
        "default_gpu": "A10G", "vector_store": {"kind": "embedded", "uri": "s3://sw-dev-artifacts/vectors"},
    },
    "dev-gcp": {
        "cloud": "gcp", "region": "us-central1", "artifact_store": "gs://sw-dev-artifacts",
        "job_role": "sw-dev-jobs@my-project.iam.gserviceaccount.com",
        "training_image": "us-central1-docker.pkg.dev/my-project/sw-dev-images/train:latest",
        "default_gpu": "L4", "vector_store": {"kind": "embedded", "uri": "gs://sw-dev-artifacts/vectors"},
        "gcp_project": "my-project",
    },
    "dev-azure": {
        "cloud": "azure", "region": "eastus", "artifact_store": "az://artifacts",
        "job_role": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/sw-dev/providers/"
                    "Microsoft.ManagedIdentity/userAssignedIdentities/sw-dev-jobs",
        "training_image": "swdevimages.azurecr.io/train:latest",
        "default_gpu": "T4", "vector_store": {"kind": "embedded", "uri": "az://artifacts/vectors"},
        "azure_subscription_id": "00000000-0000-0000-0000-000000000000",
        "azure_resource_group": "sw-dev", "azure_workspace": "sw-dev-ws",
    },
}


def use_stack(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """`connect(name)` with the stack's outputs from a file, state under tmp_path."""
    import stackwise

    path = tmp_path / f"{name}-outputs.json"
    path.write_text(json.dumps(OUTPUTS[name]), encoding="utf-8")
    monkeypatch.setenv("STACKWISE_OUTPUTS", str(path))
    monkeypatch.setenv("STACKWISE_HOME", str(tmp_path / ".stackwise"))
    monkeypatch.delenv("STACKWISE_STACK", raising=False)
    return stackwise.connect(name)


def finetune_spec(**compute: Any) -> Any:
    from stackwise.specs import FineTuneSpec

    return FineTuneSpec(base="HuggingFaceTB/SmolLM2-135M-Instruct", data="hf://datasets/acme/support/train.jsonl",
                        name="support-bot", training={"max_steps": 200},
                        compute={"gpu": "A100", "count": 8, "nodes": 2, "spot": True, "strategy": "fsdp",
                                 "max_runtime_s": 6 * 3600, **compute})


def index_spec(n: int = 0, **compute: Any) -> Any:
    from stackwise.specs import IndexSpec

    return IndexSpec(source=f"corpus://docs-{n}/", index=f"kb{n}", compute=compute)


def check_golden(name: str, request: Any) -> None:
    """Compare a request with tests/golden/<name>.json; STACKWISE_UPDATE_GOLDEN=1 rewrites it."""
    path = GOLDEN / f"{name}.json"
    text = json.dumps(request, indent=2, sort_keys=True) + "\n"
    if os.environ.get("STACKWISE_UPDATE_GOLDEN") == "1":
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"no golden file {path}: write it with STACKWISE_UPDATE_GOLDEN=1 and review it"
    assert json.loads(path.read_text(encoding="utf-8")) == json.loads(text), f"request differs from {path}"
