"""The Azure training platform as the engine receives it (dev-azure under mocks): identity-based
datastores for a storage account without shared keys, a lifecycle rule that cools training
output only, and a network clients and jobs can use (private endpoints with their DNS zones in
the stack's VNet, FQDN rules for the model hubs in the workspace's managed network). The
installed pulumi_azure_native's enums judge the values."""

from __future__ import annotations

import pytest

pytest.importorskip("pulumi", reason="pip install 'stackwise[infra]'")


def by_type(run, suffix):
    return [r for r in run.resources if r.type.endswith(suffix)]


def workspace(run):
    (found,) = by_type(run, "machinelearningservices:Workspace")
    return found


def test_storage_without_shared_keys_has_identity_datastores(offline_run):
    from pulumi_azure_native import machinelearningservices as ml

    run = offline_run("dev-azure")
    (account,) = by_type(run, "storage:StorageAccount")
    assert account.inputs["allowSharedKeyAccess"] is False
    mode = ml.SystemDatastoresAuthMode(workspace(run).inputs["systemDatastoresAuthMode"])
    assert mode is ml.SystemDatastoresAuthMode.IDENTITY


def lifecycle_actions(run, blob: str) -> dict[str, dict]:
    """The actions Azure's lifecycle policy applies to `blob` (`container/path`): a rule applies
    when the blob type matches and, if it lists prefixes, the name starts with one."""
    (policy,) = by_type(run, "storage:ManagementPolicy")
    applied = {}
    for rule in policy.inputs["policy"]["rules"]:
        filters = rule["definition"]["filters"]
        assert filters["blobTypes"] == ["blockBlob"]
        if rule["enabled"] and (not filters.get("prefixMatch") or blob.startswith(tuple(filters["prefixMatch"]))):
            applied[rule["name"]] = rule["definition"]["actions"]
    return applied


def blob_path(uri: str) -> str:
    """`az://container@account.dfs.core.windows.net/path` -> `container/path`."""
    rest = uri.removeprefix("az://")
    container, _, tail = rest.partition("@")
    return f"{container}/{tail.partition('/')[2]}".rstrip("/")


def test_only_checkpoints_go_cool(offline_run):
    from types import SimpleNamespace

    from stackwise.adapters.compute.azureml import AzureMLCompute
    from stackwise.contract import checkpoint_uri

    run = offline_run("dev-azure")
    store = run.outputs.artifact_store
    # Where an Azure ML fine-tune keeps its checkpoints (the compute adapter's own answer), and the
    # shared top-level checkpoint folder the other clouds use.
    adapter = SimpleNamespace(stack=SimpleNamespace(outputs=run.outputs))
    for folder in (AzureMLCompute.checkpoints_uri(adapter, "chat-1a2b3c4d"), checkpoint_uri(store, "chat-1a2b3c4d")):
        cool = lifecycle_actions(run, blob_path(f"{folder}/checkpoint-100/model.safetensors"))
        assert any(a.get("baseBlob", {}).get("tierToCool", {}).get("daysAfterModificationGreaterThan") == 30
                   for a in cool.values()), folder
    vectors = blob_path(f"{run.outputs.vector_store.uri}/default/index.npy")
    for blob in (vectors, blob_path(f"{store}/jobs/job-1/result.json"), blob_path(f"{store}/mlflow/1/model")):
        actions = lifecycle_actions(run, blob)
        assert not any("baseBlob" in a for a in actions.values()), blob
        # Old versions of every blob still expire.
        assert any(a.get("version", {}).get("delete") for a in actions.values())


def test_clients_reach_every_private_service_through_a_private_endpoint(offline_run):
    from stackwise.infra.azure.platform import PRIVATE_DNS_ZONES

    run = offline_run("dev-azure")
    endpoints = by_type(run, "network:PrivateEndpoint")
    (subnet,) = by_type(run, "network:Subnet")
    targets = {}
    for endpoint in endpoints:
        (connection,) = endpoint.inputs["privateLinkServiceConnections"]
        (group,) = connection["groupIds"]
        targets[group] = connection["privateLinkServiceId"]
        assert f"/{subnet.name}-" in endpoint.inputs["subnet"]["id"]
    kinds = {group: target.split("/providers/")[1].split("/")[0] for group, target in targets.items()}
    assert kinds == {"amlworkspace": "machinelearningservices", "blob": "storage", "dfs": "storage",
                     "registry": "containerregistry", "vault": "keyvault"}
    zones = {z.inputs["privateZoneName"] for z in by_type(run, "privatedns:PrivateZone")}
    assert zones == {z for group in PRIVATE_DNS_ZONES.values() for z in group}
    links = by_type(run, "privatedns:VirtualNetworkLink")
    (vnet,) = by_type(run, "network:VirtualNetwork")
    assert len(links) == len(zones)
    assert all(f"/{vnet.name}-" in link.inputs["virtualNetwork"]["id"] and link.inputs["registrationEnabled"] is False
               for link in links)
    groups = by_type(run, "network:PrivateDnsZoneGroup")
    assert len(groups) == len(endpoints)
    registered = {c["privateDnsZoneId"].rsplit("/", 1)[1].rsplit("-", 1)[0]
                  for g in groups for c in g.inputs["privateDnsZoneConfigs"]}
    assert registered == {z.name for z in by_type(run, "privatedns:PrivateZone")}
    for service in ("StorageAccount", "containerregistry:Registry", "machinelearningservices:Workspace"):
        (found,) = by_type(run, service)
        assert found.inputs["publicNetworkAccess"] == "Disabled"


def test_jobs_reach_the_model_hubs_through_fqdn_rules(offline_run):
    from pulumi_azure_native import machinelearningservices as ml

    from stackwise.infra.azure.platform import HUGGING_FACE_FQDNS

    run = offline_run("dev-azure")
    network = workspace(run).inputs["managedNetwork"]
    assert ml.IsolationMode(network["isolationMode"]) is ml.IsolationMode.ALLOW_ONLY_APPROVED_OUTBOUND
    assert ml.FirewallSku(network["firewallSku"]) is ml.FirewallSku.BASIC
    rules = network["outboundRules"]
    for name, rule in rules.items():
        assert ml.RuleType(rule["type"]) is ml.RuleType.FQDN
        assert ml.RuleCategory(rule["category"]) is ml.RuleCategory.USER_DEFINED
        assert name.startswith("allow-") and len(name) <= 60
    assert {r["destination"] for r in rules.values()} == set(HUGGING_FACE_FQDNS)
    assert {"huggingface.co", "cdn-lfs.huggingface.co"} <= set(HUGGING_FACE_FQDNS)
    # The cluster sits in the managed network (where these rules apply), not in a subnet of ours.
    (cluster,) = by_type(run, "machinelearningservices:Compute")
    assert "subnet" not in cluster.inputs["properties"]["properties"]
    assert cluster.inputs["properties"]["properties"]["enableNodePublicIp"] is False


def test_a_pinecone_stack_also_reaches_pinecone():
    from pulumi_azure_native import machinelearningservices as ml

    from stackwise.infra.azure.platform import PINECONE_FQDNS, TrainingPlatformArgs, outbound_rules

    base = dict(location="eastus", cidr="10.42.0.0/16", tags={}, training=None, training_offer=None)
    assert "*.pinecone.io" not in TrainingPlatformArgs(**base).outbound_fqdns()
    with_key = TrainingPlatformArgs(**base, pinecone_api_key="k", extra_outbound_fqdns=["weaviate.example.com"])
    assert with_key.outbound_fqdns()[-2:] == [*PINECONE_FQDNS, "weaviate.example.com"]
    rules = outbound_rules(with_key.outbound_fqdns(), ml)
    assert rules["allow-pinecone-io"].destination == "*.pinecone.io"
    assert all(isinstance(r, ml.FqdnOutboundRuleArgs) for r in rules.values())
