"""Azure training platform: resource group, Key Vault key, storage, identity, registry, VNet,
Azure ML workspace and a GPU AmlCompute cluster that idles at zero nodes."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from stackwise.catalog import Offer

from ..common import subnets
from ..config import TrainingConfig
from ..images import ImageBuildArgs, RegistryLogin, build_images
from ._provider import azure

ml = azure.machinelearningservices  # Azure Machine Learning, used throughout

# Built-in role definition ids (the same in every tenant).
ROLE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
ROLE_KEY_VAULT_CRYPTO_USER = "e147488a-f6f5-4113-8e2d-b22465e65bf6"
ROLE_KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
ROLE_ACR_PULL = "7f951dda-4ed3-4680-a7ca-43fe172d538d"


@dataclass
class TrainingPlatformArgs:
    location: str
    """Azure region, e.g. eastus."""
    cidr: str
    """The virtual network's range (the first /20 is the jobs subnet)."""
    tags: dict[str, str]
    training: TrainingConfig
    """Cluster bounds and spot choice."""
    training_offer: Offer
    """The catalog entry: the cluster's VM size."""
    pinecone_api_key: pulumi.Input[str] | None = None
    """When set, stored in the stack's Key Vault for jobs to read."""
    images: ImageBuildArgs | None = None
    """When set, the training and serving images are built and pushed to the registry
    (`<login server>/train:latest`, `/serve:latest`) and exported digest-pinned. ACR's admin user
    stays off, so the push uses the docker login of the machine running `pulumi up` (`az acr login`
    or `stackwise image build --push`), which must reach the registry's private endpoint."""


class TrainingPlatform(pulumi.ComponentResource):
    """An Azure ML workspace whose storage, registry and workspace are encrypted with the stack's
    Key Vault key, closed to public networks, with one managed identity for jobs and a GPU
    cluster that scales 0..maxNodes."""

    def __init__(self, name: str, args: TrainingPlatformArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("stackwise:azure:TrainingPlatform", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        location, tags = args.location, args.tags
        client = azure.authorization.get_client_config_output()
        self.subscription_id = client.subscription_id

        self.resource_group = azure.resources.ResourceGroup(f"{name}-rg", location=location, tags=tags, opts=child)
        rg = self.resource_group.name
        self.identity = azure.managedidentity.UserAssignedIdentity(f"{name}-jobs", resource_group_name=rg,
                                                                   location=location, tags=tags, opts=child)

        def role(label: str, role_id: str, scope: pulumi.Input[str]) -> azure.authorization.RoleAssignment:
            return azure.authorization.RoleAssignment(
                f"{name}-{label}", principal_id=self.identity.principal_id, principal_type="ServicePrincipal",
                scope=scope,
                role_definition_id=client.subscription_id.apply(
                    lambda s: f"/subscriptions/{s}/providers/Microsoft.Authorization/roleDefinitions/{role_id}"),
                opts=child)

        self.vault = azure.keyvault.Vault(
            f"{name}-kv", resource_group_name=rg, location=location, tags=tags,
            properties={"tenant_id": client.tenant_id, "sku": {"family": "A", "name": "standard"},
                        "enable_rbac_authorization": True, "enable_purge_protection": True,
                        "enable_soft_delete": True, "soft_delete_retention_in_days": 90,
                        "public_network_access": "Disabled",
                        "network_acls": {"default_action": "Deny", "bypass": "AzureServices"}},
            opts=child)
        self.key = azure.keyvault.Key(f"{name}-key", resource_group_name=rg, vault_name=self.vault.name,
                                      properties={"kty": "RSA", "key_size": 3072}, tags=tags, opts=child)
        key_access = role("key-user", ROLE_KEY_VAULT_CRYPTO_USER, self.vault.id)
        after_key = pulumi.ResourceOptions(parent=self, depends_on=[key_access])
        cmk_identity = {"type": "UserAssigned", "user_assigned_identities": [self.identity.id]}

        self.storage = azure.storage.StorageAccount(
            f"{name}sa".replace("-", ""), resource_group_name=rg, location=location, kind="StorageV2",
            sku={"name": "Standard_ZRS"}, allow_blob_public_access=False, allow_shared_key_access=False,
            minimum_tls_version="TLS1_2", enable_https_traffic_only=True, public_network_access="Disabled",
            network_rule_set={"default_action": "Deny", "bypass": "AzureServices"}, identity=cmk_identity,
            encryption={"key_source": "Microsoft.Keyvault", "require_infrastructure_encryption": True,
                        "key_vault_properties": {"key_name": self.key.name,
                                                 "key_vault_uri": self.vault.properties.vault_uri},
                        "encryption_identity": {"encryption_user_assigned_identity": self.identity.id},
                        "services": {"blob": {"enabled": True, "key_type": "Account"}}},
            tags=tags, opts=after_key)
        azure.storage.BlobServiceProperties(
            f"{name}-blob-service", resource_group_name=rg, account_name=self.storage.name, blob_services_name="default",
            is_versioning_enabled=True, delete_retention_policy={"enabled": True, "days": 30}, opts=child)
        self.container = azure.storage.BlobContainer(f"{name}-artifacts", resource_group_name=rg,
                                                     account_name=self.storage.name, container_name="artifacts",
                                                     public_access="None", opts=child)
        azure.storage.ManagementPolicy(
            f"{name}-lifecycle", resource_group_name=rg, account_name=self.storage.name,
            management_policy_name="default",
            policy={"rules": [{"name": "old-versions-and-checkpoints", "enabled": True, "type": "Lifecycle",
                               "definition": {
                                   "filters": {"blob_types": ["blockBlob"]},
                                   "actions": {"version": {"delete": {"days_after_creation_greater_than": 30}},
                                               "base_blob": {"tier_to_cool": {
                                                   "days_after_modification_greater_than": 30}}}}}]},
            opts=child)
        role("artifacts", ROLE_BLOB_DATA_CONTRIBUTOR, self.storage.id)

        self.registry = azure.containerregistry.Registry(
            f"{name}acr".replace("-", ""), resource_group_name=rg, location=location, sku={"name": "Premium"},
            admin_user_enabled=False, anonymous_pull_enabled=False, public_network_access="Disabled",
            # The registry API keys user identities by id (a map), unlike storage and Azure ML (a list).
            identity=self.identity.id.apply(lambda i: {"type": "UserAssigned", "user_assigned_identities": {i: {}}}),
            encryption={"status": "enabled", "key_vault_properties": {
                "key_identifier": self.key.key_uri, "identity": self.identity.client_id}},
            tags=tags, opts=after_key)
        role("images", ROLE_ACR_PULL, self.registry.id)

        self.vnet = azure.network.VirtualNetwork(f"{name}-vnet", resource_group_name=rg, location=location,
                                                 address_space={"address_prefixes": [args.cidr]}, tags=tags,
                                                 opts=pulumi.ResourceOptions(parent=self, ignore_changes=["subnets"]))
        self.subnet = azure.network.Subnet(f"{name}-jobs-subnet", resource_group_name=rg,
                                           virtual_network_name=self.vnet.name, address_prefix=subnets(args.cidr, 1)[0],
                                           default_outbound_access=False,
                                           private_endpoint_network_policies="Disabled", opts=child)

        logs = azure.operationalinsights.Workspace(f"{name}-logs", resource_group_name=rg, location=location,
                                                   sku={"name": "PerGB2018"}, retention_in_days=30, tags=tags,
                                                   opts=child)
        insights = azure.applicationinsights.Component(f"{name}-insights", resource_group_name=rg, location=location,
                                                       kind="web", application_type="web",
                                                       workspace_resource_id=logs.id, tags=tags, opts=child)

        self.workspace = ml.Workspace(
            f"{name}-mlw", resource_group_name=rg, location=location, sku={"name": "Basic", "tier": "Basic"},
            identity={"type": "UserAssigned", "user_assigned_identities": [self.identity.id]},
            primary_user_assigned_identity=self.identity.id,
            storage_account=self.storage.id, key_vault=self.vault.id, application_insights=insights.id,
            container_registry=self.registry.id, public_network_access="Disabled",
            managed_network=ml.ManagedNetworkSettingsArgs(isolation_mode="AllowOnlyApprovedOutbound"),
            encryption=ml.EncryptionPropertyArgs(
                status="Enabled", identity=ml.IdentityForCmkArgs(user_assigned_identity=self.identity.id),
                key_vault_properties=ml.KeyVaultPropertiesArgs(key_vault_arm_id=self.vault.id,
                                                               key_identifier=self.key.key_uri_with_version)),
            tags=tags, opts=after_key)
        self.cluster = ml.Compute(
            f"{name}-gpu", resource_group_name=rg, workspace_name=self.workspace.name, location=location,
            compute_name="gpu",
            identity={"type": "UserAssigned", "user_assigned_identities": [self.identity.id]},
            properties=ml.AmlComputeArgs(
                compute_type="AmlCompute", disable_local_auth=True,
                properties=ml.AmlComputePropertiesArgs(
                    vm_size=args.training_offer.instance,
                    vm_priority="LowPriority" if args.training.spot else "Dedicated",
                    scale_settings=ml.ScaleSettingsArgs(min_node_count=0, max_node_count=args.training.max_nodes,
                                                        node_idle_time_before_scale_down="PT5M"),
                    subnet=ml.ResourceIdArgs(id=self.subnet.id), enable_node_public_ip=False,
                    remote_login_port_public_access="Disabled")),
            tags=tags, opts=child)

        self.secret_refs: dict[str, pulumi.Output[str]] = {}
        if args.pinecone_api_key is not None:
            secret = azure.keyvault.Secret(f"{name}-pinecone-api-key", resource_group_name=rg,
                                           vault_name=self.vault.name, secret_name="pinecone-api-key",
                                           properties={"value": args.pinecone_api_key}, tags=tags, opts=child)
            role("secrets", ROLE_KEY_VAULT_SECRETS_USER, self.vault.id)
            self.secret_refs["pinecone_api_key"] = pulumi.Output.all(self.vault.name, secret.name).apply(
                lambda v: f"azure-kv://{v[0]}/{v[1]}")

        self.artifact_store = pulumi.Output.all(self.storage.name, self.container.name).apply(
            lambda v: f"az://{v[1]}@{v[0]}.dfs.core.windows.net")
        self.training_image = self.registry.login_server.apply(lambda s: f"{s}/train:latest")
        self.serving_image: pulumi.Output[str] | None = None
        self.images: dict[str, pulumi.Resource] = {}
        if args.images is not None:
            self.images, pinned = build_images(
                name, args.images,
                {t: self.registry.login_server.apply(lambda s, t=t: f"{s}/{t}:latest") for t in ("train", "serve")},
                RegistryLogin(address=self.registry.login_server), parent=self)
            self.training_image, self.serving_image = pinned["train"], pinned["serve"]
        self.register_outputs({"artifact_store": self.artifact_store, "job_role": self.identity.id,
                               "training_image": self.training_image})
