"""The typed cloud-stack config: every stack file validates; a bad key or value names the key
and the stack file; GPU choices are checked against the catalog and the allow-list."""

from __future__ import annotations

import pytest

from stackwise.errors import ConfigError
from stackwise.infra.config import InfraConfig

from .conftest import CLOUD_STACKS, load_with, stack_config


def test_the_cloud_stacks_exist():
    assert {"dev-aws", "prod-aws", "dev-gcp", "dev-azure"} <= set(CLOUD_STACKS)


@pytest.mark.parametrize("name", CLOUD_STACKS)
def test_every_stack_file_validates(name):
    raw, source = stack_config(name)
    config = InfraConfig.load(raw, source)
    assert config.cloud == raw["cloud"]
    assert set(config.all_tags) >= {"project", "env", "owner", "cost-center"}


def test_unknown_key_names_the_key_and_the_file():
    with pytest.raises(ConfigError) as err:
        load_with("dev-aws", monthlyBudgetUSD=10)
    assert err.value.what == "unknown key stackwise:monthlyBudgetUSD"
    assert err.value.where.endswith("stacks/Pulumi.dev-aws.yaml")
    assert "monthlyBudgetUsd" in err.value.fix


def test_unknown_nested_key_names_its_path():
    raw, _ = stack_config("dev-aws")
    with pytest.raises(ConfigError) as err:
        load_with("dev-aws", endpoint={**raw["endpoint"], "replicas": 3})
    assert err.value.what == "unknown key stackwise:endpoint.replicas"


def test_bad_value_names_the_key():
    with pytest.raises(ConfigError) as err:
        load_with("dev-aws", monthlyBudgetUsd=-5)
    assert "stackwise:monthlyBudgetUsd" in err.value.what and "greater than 0" in err.value.what


def test_missing_budget_is_an_error():
    with pytest.raises(ConfigError) as err:
        load_with("dev-gcp", monthlyBudgetUsd=None)
    assert err.value.what == "missing key stackwise:monthlyBudgetUsd"


def test_json_strings_from_the_engine_are_decoded():
    # Pulumi hands structured config to programs as JSON strings.
    raw, source = stack_config("dev-aws")
    import json

    as_engine = {k: v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()}
    assert InfraConfig.load(as_engine, source) == InfraConfig.load(raw, source)


def test_gpu_outside_the_allow_list_is_refused():
    with pytest.raises(ConfigError) as err:
        load_with("dev-aws", training={"gpu": "H100", "count": 8})
    assert "training.gpu H100 is not in allowedGpus (T4, L4, A10G)" in err.value.what


def test_gpu_the_cloud_does_not_offer_lists_the_offers():
    with pytest.raises(ConfigError) as err:
        load_with("dev-gcp", allowedGpus=["A10G", "L4"], training={"gpu": "A10G"})
    assert "gcp does not offer the GPU A10G" in err.value.what
    assert "L4 x 1/4/8" in err.value.what


def test_unknown_gpu_in_the_allow_list_lists_the_catalog():
    with pytest.raises(ConfigError) as err:
        load_with("dev-aws", allowedGpus=["T4", "RTX9090"])
    assert "unknown GPU 'RTX9090'" in err.value.what and "A100-80GB" in err.value.what


def test_unknown_cloud_is_refused():
    with pytest.raises(ConfigError) as err:
        load_with("dev-aws", cloud="mars")
    assert "stackwise:cloud" in err.value.what and "'aws', 'gcp' or 'azure'" in err.value.what


def test_required_tags_are_enforced():
    with pytest.raises(ConfigError) as err:
        load_with("dev-aws", tags={"project": "stackwise", "owner": "me"})
    assert "missing required tags: cost-center" in err.value.what


def test_replica_bounds_are_checked():
    raw, _ = stack_config("dev-aws")
    with pytest.raises(ConfigError) as err:
        load_with("dev-aws", endpoint={**raw["endpoint"], "minReplicas": 3, "maxReplicas": 2})
    assert "maxReplicas (2) is below minReplicas (3)" in err.value.what
    with pytest.raises(ConfigError) as err:
        load_with("dev-aws", endpoint={**raw["endpoint"], "maxReplicas": 50})
    assert "exceeds maxEndpointReplicas 10" in err.value.what


def test_gcp_needs_its_project():
    with pytest.raises(ConfigError) as err:
        load_with("dev-gcp", gcpProject=None)
    assert "gcp stacks need gcpProject and gcpBillingAccount" in err.value.what


@pytest.mark.parametrize("kind", ["weaviate", "milvus"])
def test_an_existing_weaviate_or_milvus_cluster_is_configured_by_host_and_secret(kind):
    config = load_with("dev-gcp", vectorStore={"kind": kind, "host": "https://vectors.internal:8080",
                                               "apiKeySecret": "gcp-sm://projects/p/secrets/vector-key"})
    assert (config.vector_store.kind, config.vector_store.host) == (kind, "https://vectors.internal:8080")


@pytest.mark.parametrize(("store", "match"), [
    ({"kind": "weaviate"}, "needs host"),
    ({"kind": "milvus", "host": "vectors:19530"}, "needs host"),
    ({"kind": "weaviate", "host": "https://w", "apiKeySecret": "sk-the-key-itself"}, "secret reference"),
    ({"kind": "embedded", "host": "https://w"}, "not kind embedded"),
    ({"kind": "qdrant", "host": "https://q"}, "vectorStore.kind"),
])
def test_bad_vector_store_config_names_the_key(store, match):
    with pytest.raises(ConfigError, match=match) as err:
        load_with("dev-aws", vectorStore=store)
    assert "stackwise:vectorStore" in err.value.what
    assert "sk-the-key-itself" not in f"{err.value.what} {err.value.fix}"
