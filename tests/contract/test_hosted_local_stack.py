"""A local stack (jobs on this machine) may keep its vectors in a hosted store: its outputs
name the store's kind, host and API-key reference, and `open_store` picks the adapter."""

from __future__ import annotations

from pathlib import Path

import pytest

from stackwise.errors import ConfigError
from stackwise.stack import load_stack


def _project(root: Path, vector_store: str, monkeypatch) -> None:
    (root / "Pulumi.yaml").write_text("name: demo\nruntime: python\n")
    (root / "stacks").mkdir()
    (root / "stacks" / "Pulumi.hosted.yaml").write_text(
        "config:\n  stackwise:cloud: local\n  stackwise:vectorStore:\n" + vector_store)
    monkeypatch.chdir(root)
    for name in ("STACKWISE_STACK", "STACKWISE_OUTPUTS", "STACKWISE_STACKS_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STACKWISE_HOME", str(root / ".stackwise"))


@pytest.mark.parametrize("kind", ["pinecone", "milvus", "weaviate"])
def test_a_hosted_store_in_a_local_stack(tmp_path, monkeypatch, kind):
    _project(tmp_path, f"    kind: {kind}\n    host: http://127.0.0.1:1\n    apiKeySecret: env://STORE_KEY\n", monkeypatch)
    outputs = load_stack("hosted").outputs
    assert outputs.cloud == "local"
    assert (outputs.vector_store.kind, outputs.vector_store.host, outputs.vector_store.api_key_secret) == \
           (kind, "http://127.0.0.1:1", "env://STORE_KEY")


@pytest.mark.parametrize(
    ("vector_store", "match"),
    [
        ("    kind: pinecone\n", "hosted one with a host"),
        ("    kind: pinecone\n    host: http://h\n    apiKeySecret: the-key-itself\n", "secret reference"),
        ("    kind: pinecone\n    host: http://h\n    path: x\n", "hosted one with a host"),
        ("    kind: qdrant\n    host: http://h\n", "embedded"),
    ],
)
def test_bad_hosted_store_config_is_explained(tmp_path, monkeypatch, vector_store, match):
    _project(tmp_path, vector_store, monkeypatch)
    with pytest.raises(ConfigError, match=match) as caught:
        load_stack("hosted").outputs
    assert "the-key-itself" not in str(caught.value)


def test_every_store_kind_of_the_contract_has_an_adapter_and_others_are_named():
    import typing

    from stackwise.contract import VectorStoreOutput
    from stackwise.registry import VECTOR_STORES, load

    kinds = set(typing.get_args(VectorStoreOutput.model_fields["kind"].annotation))
    assert kinds == set(VECTOR_STORES)
    with pytest.raises(ConfigError, match="embedded, milvus, pinecone, weaviate"):
        load(VECTOR_STORES, "qdrant", "vector store")
