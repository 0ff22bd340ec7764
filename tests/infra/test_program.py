"""The Pulumi program under mocks (preview=False), for every stack file in stacks/: it builds,
exports exactly the SDK's stack contract, and creates what each cloud's platform needs."""

from __future__ import annotations

import pytest

from stackwise.contract import StackOutputs

from .conftest import CLOUD_STACKS, stack_config

pytest.importorskip("pulumi", reason="pip install 'stackwise[infra]'")
# The providers warn about their own deprecated aliases on import; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def by_type(run, suffix: str):
    return [r for r in run.resources if r.type.endswith(suffix)]


@pytest.mark.parametrize("name", CLOUD_STACKS)
def test_outputs_are_exactly_the_contract(name, offline_run):
    run = offline_run(name)
    assert set(run.exported) == set(StackOutputs.model_fields)
    outputs = StackOutputs.model_validate(run.exported)
    raw, _ = stack_config(name)
    assert outputs.cloud == raw["cloud"] and outputs.region == raw["region"]
    assert outputs.artifact_store.split("://")[0] == {"aws": "s3", "gcp": "gs", "azure": "az"}[outputs.cloud]
    assert outputs.job_role and outputs.training_image and outputs.default_gpu
    assert outputs.vector_store.kind == raw.get("vectorStore", {}).get("kind", "embedded")
    if outputs.vector_store.kind == "pinecone":
        assert outputs.vector_store.host.startswith("https://")
        assert outputs.vector_store.api_key_secret == outputs.secrets["pinecone_api_key"]
    else:
        assert outputs.vector_store.uri == outputs.artifact_store + "/vectors"
    assert len(outputs.endpoints) == (1 if "endpoint" in raw else 0)
    coordinates = {"gcp_project": "gcp", "azure_subscription_id": "azure", "azure_resource_group": "azure",
                   "azure_workspace": "azure", "azure_identity_client_id": "azure"}
    for field, cloud in coordinates.items():
        assert (getattr(outputs, field) is not None) == (outputs.cloud == cloud), field


@pytest.mark.parametrize("name", CLOUD_STACKS)
def test_components_are_typed_and_own_their_children(name, offline_run):
    run = offline_run(name)
    components = {r.name: r for r in run.resources if not r.custom}
    assert components, "no component resources"
    for component in components.values():
        assert component.type.startswith("stackwise:"), component.type
        assert len(component.type.split(":")) == 3
    for resource in run.resources:
        if resource.custom and not resource.type.startswith("pulumi:providers:"):
            assert resource.parent in components, f"{resource.type} {resource.name} has no component parent"
            # Storage account and registry names allow no '-': the prefix appears without it.
            assert resource.name.replace("-", "").startswith(resource.parent.replace("-", "")), resource.name


@pytest.mark.parametrize("name", CLOUD_STACKS)
def test_budget_matches_the_stack(name, offline_run):
    run = offline_run(name)
    budgets = [r for r in run.resources if r.type in (
        "aws:budgets/budget:Budget", "gcp:billing/budget:Budget", "azure-native:consumption:Budget")]
    assert len(budgets) == 1
    inputs = budgets[0].inputs
    amount = (inputs.get("limitAmount") or inputs.get("amount")
              or inputs.get("amount", {}).get("specifiedAmount", {}).get("units"))
    if isinstance(amount, dict):
        amount = amount["specifiedAmount"]["units"]
    assert float(amount) == run.config.monthly_budget_usd


def test_aws_platform(offline_run):
    run = offline_run("dev-aws")
    (sse,) = by_type(run, "BucketServerSideEncryptionConfiguration")
    rule = sse.inputs["rules"][0]["applyServerSideEncryptionByDefault"]
    assert rule["sseAlgorithm"] == "aws:kms" and rule["kmsMasterKeyId"].startswith("arn:aws:kms")
    (block,) = by_type(run, "BucketPublicAccessBlock")
    assert all(block.inputs[k] for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls",
                                         "restrictPublicBuckets"))
    (versioning,) = by_type(run, "BucketVersioning")
    assert versioning.inputs["versioningConfiguration"]["status"] == "Enabled"
    assert by_type(run, "BucketLifecycleConfiguration")
    (target,) = by_type(run, "appautoscaling/target:Target")
    assert (target.inputs["minCapacity"], target.inputs["maxCapacity"]) == (1, 2)
    (config,) = by_type(run, "EndpointConfiguration")
    assert config.inputs["productionVariants"][0]["instanceType"] == "ml.g5.xlarge"
    assert len(by_type(run, "MetricAlarm")) == 2
    (policy,) = by_type(run, "RolePolicy")
    import json

    statements = json.loads(policy.inputs["policy"])["Statement"]
    artifacts = next(s for s in statements if s["Sid"] == "Artifacts")
    bucket = run.outputs.artifact_store.removeprefix("s3://")
    assert all(bucket in arn for arn in artifacts["Resource"])  # scoped to the stack's bucket


def test_prod_aws_uses_pinecone_with_the_key_in_secrets_manager(offline_run):
    run = offline_run("prod-aws")
    (index,) = by_type(run, "pinecone:index/index:Index")
    assert index.inputs["spec"]["serverless"] == {"cloud": "aws", "region": "us-east-1"}
    assert index.inputs["dimension"] == 384
    (version,) = by_type(run, "secretsmanager/secretVersion:SecretVersion")
    assert run.outputs.vector_store.api_key_secret.startswith("aws-sm://arn:aws:secretsmanager")
    assert "offline-placeholder" not in run.outputs.model_dump_json()  # the key itself is never an output


def test_gcp_platform(offline_run):
    run = offline_run("dev-gcp")
    (bucket,) = by_type(run, "storage/bucket:Bucket")
    assert bucket.inputs["publicAccessPrevention"] == "enforced"
    assert bucket.inputs["encryption"]["defaultKmsKeyName"]
    assert bucket.inputs["versioning"] == {"enabled": True}
    (deployment,) = by_type(run, "AiEndpointWithModelGardenDeployment")
    spec = deployment.inputs["deployConfig"]["dedicatedResources"]
    assert spec["machineSpec"] == {"machineType": "g2-standard-8", "acceleratorType": "NVIDIA_L4",
                                   "acceleratorCount": 1}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 2)
    assert deployment.inputs["endpointConfig"]["privateServiceConnectConfig"]["enablePrivateServiceConnect"]
    assert len(by_type(run, "monitoring/alertPolicy:AlertPolicy")) == 2


def test_azure_platform(offline_run):
    run = offline_run("dev-azure")
    (cluster,) = by_type(run, "machinelearningservices:Compute")
    props = cluster.inputs["properties"]
    assert props["computeType"] == "AmlCompute"
    scale = props["properties"]["scaleSettings"]
    assert (scale["minNodeCount"], scale["maxNodeCount"]) == (0, 2)
    assert props["properties"]["vmSize"] == "Standard_NC4as_T4_v3"
    (account,) = by_type(run, "storage:StorageAccount")
    assert account.inputs["encryption"]["keySource"] == "Microsoft.Keyvault"
    assert account.inputs["allowBlobPublicAccess"] is False
    (endpoint,) = by_type(run, "OnlineEndpoint")
    assert endpoint.inputs["properties"]["publicNetworkAccess"] == "Disabled"
    assert run.outputs.azure_workspace and run.outputs.endpoints[0].url.endswith("/score")
    (identity,) = by_type(run, "UserAssignedIdentity")
    assert run.outputs.azure_identity_client_id == identity.state["clientId"]


def test_the_pulumi_entry_point_reads_the_stack_file(offline_run):
    # infra/__main__.py itself, with config handed over the way the engine does (JSON strings).
    from stackwise.infra.offline import run_entrypoint

    raw, _ = stack_config("prod-aws")
    run = run_entrypoint("prod-aws", raw, {"pinecone:apiKey": "test-key"})
    assert run.outputs == offline_run("prod-aws").outputs.model_copy(update={})


def test_the_entry_point_fails_on_a_bad_key_naming_the_file():
    import pulumi

    from stackwise.errors import ConfigError
    from stackwise.infra.offline import run_entrypoint

    raw, _ = stack_config("dev-aws")
    with pytest.raises((ConfigError, pulumi.RunError)) as err:
        run_entrypoint("dev-aws", {**raw, "gpuu": "A10G"})
    assert "stackwise:gpuu" in str(err.value) and "Pulumi.dev-aws.yaml" in str(err.value)


@pytest.mark.parametrize("name", CLOUD_STACKS)
def test_endpoints_export_what_deploy_needs(name, offline_run):
    from stackwise import catalog

    run = offline_run(name)
    raw, _ = stack_config(name)
    if "endpoint" not in raw:
        assert run.outputs.endpoints == []
        return
    (endpoint,) = run.outputs.endpoints
    config = raw["endpoint"]
    assert endpoint.gpu == catalog.canonical_gpu(config["gpu"])
    assert (endpoint.gpu_count, endpoint.min_replicas) == (config.get("count", 1), config.get("minReplicas", 1))
    if config.get("image"):
        assert endpoint.serving_image == config["image"]
    else:  # the stack registry's serve image, next to the training image
        assert endpoint.serving_image.split("/")[0] == run.outputs.training_image.split("/")[0]
        if run.config.images.build:  # built by `pulumi up`: pinned to the digest it pushed
            assert "@sha256:" in endpoint.serving_image and endpoint.serving_image != run.outputs.training_image
        else:
            assert endpoint.serving_image.endswith((":serve", "/serve:latest")), endpoint.serving_image


def test_an_existing_weaviate_cluster_is_exported_not_created():
    pytest.importorskip("pulumi_gcp")
    from stackwise.infra.config import InfraConfig
    from stackwise.infra.offline import run_offline

    raw, source = stack_config("dev-gcp")
    raw = {**raw, "vectorStore": {"kind": "weaviate", "host": "https://weaviate.internal",
                                  "apiKeySecret": "gcp-sm://projects/p/secrets/weaviate-key"}}
    run = run_offline(InfraConfig.load(raw, source), "dev-gcp")
    store = run.outputs.vector_store
    assert (store.kind, store.host, store.api_key_secret) == \
        ("weaviate", "https://weaviate.internal", "gcp-sm://projects/p/secrets/weaviate-key")
    assert not [r for r in run.resources if "pinecone" in r.type or "weaviate" in r.type.lower()]


def test_the_aws_job_role_may_read_an_existing_clusters_key():
    import json

    from stackwise.infra.config import InfraConfig
    from stackwise.infra.offline import run_offline

    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:milvus-token-AbCdEf"
    raw, source = stack_config("dev-aws")
    raw = {**raw, "vectorStore": {"kind": "milvus", "host": "https://milvus.internal:19530",
                                  "apiKeySecret": f"aws-sm://{arn}"}}
    run = run_offline(InfraConfig.load(raw, source), "dev-aws")
    assert run.outputs.vector_store.kind == "milvus"
    (policy,) = by_type(run, "iam/rolePolicy:RolePolicy")
    statements = json.loads(policy.inputs["policy"])["Statement"]
    assert {"Sid": "VectorStoreKey", "Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
            "Resource": arn} in statements
