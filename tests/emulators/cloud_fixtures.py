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
        "azure_identity_client_id": "11111111-2222-3333-4444-555555555555",
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


def aws_moto_env(endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point boto3 at moto on `endpoint` with test credentials, one attempt per call, and no
    profile, config file, session token or instance metadata of this machine."""
    for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_MAX_ATTEMPTS": "1", "AWS_EC2_METADATA_DISABLED": "true",
                       "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)


def azure_cli_login(server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, logged_in: bool = True,
                    resource: str | None = None, token: str = "test-arm-token") -> None:
    """Point MLClient at the local ARM server (`STACKWISE_AZURE_ARM_ENDPOINT`, its TLS certificate)
    and sign in the way `az login` would: DefaultAzureCredential, limited to AzureCliCredential,
    runs `az account get-access-token --output json --resource <resource>` from a stub `az` on PATH
    (none on PATH when `logged_in` is False). `resource` defaults to the server's endpoint (ARM);
    the stub answers `token` for it and fails for any other resource."""
    bin_dir = tmp_path / "az-bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    if logged_in:
        az = bin_dir / "az"
        resource = (resource or server.endpoint).rstrip("/")
        az.write_text('#!/bin/sh\n'
                      'case "$*" in *"get-access-token"*"--resource ' + resource + '"*) ;;\n'
                      '  *) echo "ERROR: unexpected az call: $*" >&2; exit 1;; esac\n'
                      'echo \'{"accessToken": "' + token + '", "expires_on": 4102444800, '
                      '"tokenType": "Bearer"}\'\n', encoding="utf-8")
        az.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin")
    monkeypatch.setenv("AZURE_TOKEN_CREDENTIALS", "AzureCliCredential")
    monkeypatch.setenv("STACKWISE_AZURE_ARM_ENDPOINT", server.endpoint)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", server.ca_file)
    monkeypatch.setenv("AZURE_CONFIG_DIR", str(tmp_path / "azure-config"))
    for key in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_USERNAME",
                "AZURE_FEDERATED_TOKEN_FILE", "IDENTITY_ENDPOINT", "MSI_ENDPOINT",
                "AZUREML_CURRENT_CLOUD"):  # azure-ai-ml writes the custom cloud's name into os.environ
        monkeypatch.delenv(key, raising=False)


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
