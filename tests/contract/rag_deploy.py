"""Shared by the deploy contract tests of RAG app versions (issue 13): the registry with a generator
behind an alias, the environment the deploy adapter computes, and what that environment must hold."""

from __future__ import annotations

import json

import pytest

from stackwise.deploy import DeployTarget

RAG_YAML = "rag:\n  name: lee-rag\n  index: kb\n  k: 2\n  generator: models:/gen@live\n"
SECRET_VALUE = "not-a-real-token-0123456789"  # what $HF_TOKEN holds here: never in a request


def _rag_registry(tmp_path, store: str) -> str:
    """An MLflow registry (SQLite) with generator `gen` v1 and v2 in `store`, alias `live` on v1."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    client.create_registered_model("gen")
    for v in (1, 2):
        client.create_model_version("gen", source=f"{store}/mlflow/gen-{v}/model")
        client.set_model_version_tag("gen", str(v), "lineage.base", f"base-of-gen-{v}")
    client.set_registered_model_alias("gen", "live", "1")
    return uri


def _rag_env(platform, tmp_path) -> dict:
    """What the deploy adapter computes for RAG app lee-rag v1: its rag.yaml (here a folder on this
    machine: the reading is fsspec's, the same for every store) and the stack's registry."""
    from stackwise.serve_targets import rag_deploy_environment

    folder = tmp_path / "lee-rag-1"
    folder.mkdir()
    (folder / "rag.yaml").write_text(RAG_YAML)
    return rag_deploy_environment(platform.stack, DeployTarget(model="lee-rag", version="1",
                                                               artifact_uri=str(folder), kind="rag"))


def _check_rag_env(env: dict, platform, store: str) -> None:
    import base64

    from stackwise.contract import JobContext

    assert env["STACKWISE_RAG_GENERATOR_URI"] == f"{store}/mlflow/gen-1/model"  # pinned, not models:/gen@live
    assert env["STACKWISE_RAG_GENERATOR_BASE"] == "base-of-gen-1"
    context = JobContext.model_validate_json(base64.b64decode(env["STACKWISE_CONTEXT_B64"]))
    assert context == JobContext.from_outputs(platform.stack.name, platform.stack.outputs)
    assert context.secrets == {"hf_token": "env://HF_TOKEN"}
    assert SECRET_VALUE not in json.dumps(env)
