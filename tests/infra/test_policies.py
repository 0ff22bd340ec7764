"""The policy pack on the resources each stack file's program registers under mocks: every
stack passes; a public bucket, a disallowed GPU, unbounded replicas, a missing tag, an
unencrypted store or a missing budget are each caught with a clear message."""

from __future__ import annotations

import copy

import pytest

from .conftest import CLOUD_STACKS

pytest.importorskip("pulumi_policy", reason="pip install 'stackwise[infra]'")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def violations(run, resources=None, allowed=None):
    from stackwise.infra.policy import check

    config = {"gpu-allow-list": {"allowedGpus": allowed or run.config.allowed_gpus},
              "bounded-replicas": {"maxReplicas": run.config.max_endpoint_replicas}}
    return check(run.resources if resources is None else resources, config)


def mutated(run, type_suffix: str, change) -> list:
    resources = copy.deepcopy(run.resources)
    hits = [r for r in resources if r.type.endswith(type_suffix)]
    assert hits, type_suffix
    for r in hits:
        change(r)
    return resources


def test_the_pack_has_every_guardrail():
    from stackwise.infra.policy import POLICIES

    assert {p.name for p in POLICIES} == {"encryption-at-rest", "buckets-encrypted-and-closed", "no-public-access",
                                          "required-tags", "gpu-allow-list", "bounded-replicas", "budget-present",
                                          "kubernetes-names"}


@pytest.mark.parametrize("name", CLOUD_STACKS)
def test_every_stack_passes_the_policies(name, offline_run):
    assert violations(offline_run(name)) == []


def test_public_bucket_is_caught(offline_run):
    run = offline_run("dev-aws")
    resources = mutated(run, "BucketPublicAccessBlock", lambda r: r.inputs.update(blockPublicPolicy=False))
    assert violations(run, resources) == [
        ("no-public-access", "sw-dev-artifacts-public-access",
         "the bucket's public access block must set blockPublicPolicy to true")]


def test_bucket_without_public_access_block_is_caught(offline_run):
    run = offline_run("dev-aws")
    resources = [r for r in run.resources if not r.type.endswith("BucketPublicAccessBlock")]
    assert violations(run, resources) == [
        ("buckets-encrypted-and-closed", "", "S3 bucket sw-dev-artifacts has no public access block")]


def test_public_gcs_bucket_and_member_are_caught(offline_run):
    run = offline_run("dev-gcp")
    resources = mutated(run, "storage/bucket:Bucket", lambda r: r.inputs.update(publicAccessPrevention="inherited"))
    resources = mutated(type("R", (), {"resources": resources})(), "BucketIAMMember",
                        lambda r: r.inputs.update(member="allUsers"))
    messages = {m for _, _, m in violations(run, resources)}
    assert messages == {"GCS buckets must enforce public access prevention",
                        "bucket IAM must not grant allUsers or allAuthenticatedUsers"}


def test_public_azure_endpoint_is_caught(offline_run):
    run = offline_run("dev-azure")
    resources = mutated(run, "OnlineEndpoint", lambda r: r.inputs["properties"].update(publicNetworkAccess="Enabled"))
    assert [v[0] for v in violations(run, resources)] == ["no-public-access"]


def test_unencrypted_store_is_caught(offline_run):
    run = offline_run("dev-azure")
    resources = mutated(run, "storage:StorageAccount", lambda r: r.inputs["encryption"].update(keySource="Microsoft.Storage"))
    assert violations(run, resources) == [("encryption-at-rest", "swdevsa", "storage accounts must be encrypted with "
                                           "the stack's Key Vault key (keySource Microsoft.Keyvault)")]


def test_disallowed_gpu_is_caught(offline_run):
    run = offline_run("dev-aws")
    resources = mutated(run, "EndpointConfiguration",
                        lambda r: r.inputs["productionVariants"][0].update(instanceType="ml.p5.48xlarge"))
    assert violations(run, resources) == [("gpu-allow-list", "sw-dev-chat-config",
                                           "GPU H100 (ml.p5.48xlarge) is not on the allow-list: T4, L4, A10G")]


def test_gpu_outside_the_catalog_is_caught(offline_run):
    run = offline_run("dev-azure")
    resources = mutated(run, "machinelearningservices:Compute",
                        lambda r: r.inputs["properties"]["properties"].update(vmSize="Standard_NC6"))
    assert [v[2] for v in violations(run, resources)] == [
        "instance type 'Standard_NC6' is not in the GPU catalog; use a catalog GPU"]


def test_unbounded_replicas_are_caught(offline_run):
    run = offline_run("dev-gcp")
    resources = mutated(run, "AiEndpointWithModelGardenDeployment",
                        lambda r: r.inputs["deployConfig"]["dedicatedResources"].update(maxReplicaCount=40))
    assert [v[2] for v in violations(run, resources)] == ["maximum replicas 40 exceeds the bound 10"]


def test_missing_tag_is_caught(offline_run):
    run = offline_run("prod-aws")
    resources = mutated(run, "aws:kms/key:Key",
                        lambda r: r.inputs["tags"].pop("cost-center") if r.name == "sw-prod-key" else None)
    assert violations(run, resources) == [("required-tags", "sw-prod-key", "missing required tags: cost-center")]


@pytest.mark.parametrize("name", CLOUD_STACKS)
def test_missing_budget_is_caught(name, offline_run):
    from stackwise.infra.policy import BUDGET_TYPES

    run = offline_run(name)
    resources = [r for r in run.resources if r.type not in BUDGET_TYPES]
    assert violations(run, resources) == [("budget-present", "", "the stack has no monthly budget (AWS Budgets, "
                                           "GCP billing budget or Azure consumption budget)")]


def test_policy_pack_entry_point_builds_the_pack(monkeypatch):
    # `pulumi preview --policy-pack infra/policy` runs infra/policy/__main__.py; it must build
    # the pack from the same POLICIES (the serving part needs the engine, so it is stubbed).
    import runpy
    from pathlib import Path

    import pulumi_policy

    import stackwise.infra.policy as pack

    built = {}

    class FakePack:
        def __init__(self, name, policies, enforcement_level=None, **_):
            built.update(name=name, policies=policies, level=enforcement_level)

    monkeypatch.setattr(pulumi_policy, "PolicyPack", FakePack)
    runpy.run_path(str(Path(pack.__file__).with_name("__main__.py")), run_name="__main__")
    assert built["name"] == "stackwise" and built["policies"] is pack.POLICIES


@pytest.mark.parametrize("name", CLOUD_STACKS)
def test_policy_config_file_matches_the_stack(name, offline_run):
    # README: `pulumi preview --policy-pack infra/policy --policy-pack-config infra/policy/config.<stack>.json`
    import json
    from pathlib import Path

    import stackwise.infra.policy as pack

    path = Path(pack.__file__).with_name(f"config.{name}.json")
    assert path.is_file(), f"add {path} for the stack {name}"
    config = json.loads(path.read_text())
    run = offline_run(name)
    assert config["gpu-allow-list"]["allowedGpus"] == run.config.allowed_gpus
    assert config["bounded-replicas"]["maxReplicas"] == run.config.max_endpoint_replicas
    from stackwise.infra.policy import check

    assert check(run.resources, config) == []
