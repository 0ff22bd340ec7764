"""Azure training platform: resource group, Key Vault key, storage, identity, registry, VNet with
private endpoints, Azure ML workspace with a managed network, and a GPU AmlCompute cluster that
idles at zero nodes.

Network (docs/stacks.md, "Azure network"): the workspace, storage, registry and vault accept no
public traffic. Clients reach them through private endpoints in the stack's VNet (`<cidr>`'s first
/20), resolved by private DNS zones linked to it: run the CLI, `pulumi up` and `az acr login`
from that VNet or a network peered or connected to it. Jobs and deployments run in the
workspace's managed network (`AllowOnlyApprovedOutbound`): Azure adds the private endpoints to
the workspace's own storage, registry and vault, and the FQDN rules below (an Azure Firewall the
managed network runs, billed hourly) let them reach Hugging Face and, with a Pinecone store,
Pinecone; nothing else."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pulumi

from stackwise.catalog import Offer
from stackwise.contract import CHECKPOINTS_PREFIX

from ..common import subnets
from ..config import TrainingConfig
from ..images import ImageBuildArgs, RegistryLogin, build_images
from . import names
from ._provider import azure

ml = azure.machinelearningservices  # Azure Machine Learning, used throughout

# Built-in role definition ids (the same in every tenant).
ROLE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
ROLE_KEY_VAULT_CRYPTO_USER = "e147488a-f6f5-4113-8e2d-b22465e65bf6"
ROLE_KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
ROLE_ACR_PULL = "7f951dda-4ed3-4680-a7ca-43fe172d538d"

# What jobs in the managed network may reach besides the workspace's own resources (FQDN rules,
# ports 80 and 443): the Hugging Face Hub, its LFS CDNs and its Xet storage (model and dataset
# downloads).
HUGGING_FACE_FQDNS = ("huggingface.co", "cdn-lfs.huggingface.co", "cdn-lfs-us-1.huggingface.co", "*.xethub.hf.co")
PINECONE_FQDNS = ("*.pinecone.io",)
"""Added when the stack's vector store is Pinecone (its control plane and index hosts)."""
ARTIFACTS_CONTAINER = "artifacts"
CHECKPOINT_PREFIXES = (f"{ARTIFACTS_CONTAINER}/{CHECKPOINTS_PREFIX}", f"{ARTIFACTS_CONTAINER}/finetune/")
"""Blob prefixes (`container/path`) of checkpoint data, the only blobs that go cool: the shared
top-level checkpoint folder (`stackwise.contract.checkpoint_uri`), and `finetune/`, where an Azure
ML fine-tune keeps `<name>-<digest>/checkpoints/` today (the compute adapter's `checkpoints_uri`).
Azure's lifecycle filters match name prefixes only (no wildcard for `*/checkpoints/`), so the
second covers that job's whole output folder. Vector stores (`vectors/`), job folders (`jobs/`)
and the model registry stay hot."""

# Private endpoints of the stack's VNet: group id (sub-resource) -> the private DNS zones it registers in.
PRIVATE_DNS_ZONES = {
    "amlworkspace": ("privatelink.api.azureml.ms", "privatelink.notebooks.azure.net"),
    "blob": ("privatelink.blob.core.windows.net",),
    "dfs": ("privatelink.dfs.core.windows.net",),
    "registry": ("privatelink.azurecr.io",),
    "vault": ("privatelink.vaultcore.azure.net",),
}


@dataclass
class TrainingPlatformArgs:
    location: str
    """Azure region, e.g. eastus."""
    cidr: str
    """The virtual network's range (the first /20 holds the private endpoints)."""
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
    extra_outbound_fqdns: list[str] = field(default_factory=list)
    """Further hosts jobs may reach (e.g. a Weaviate cluster), beside Hugging Face and Pinecone."""

    def outbound_fqdns(self) -> list[str]:
        """Every FQDN the managed network lets jobs and deployments reach, in a stable order."""
        wanted = [*HUGGING_FACE_FQDNS, *(PINECONE_FQDNS if self.pinecone_api_key is not None else ()),
                  *self.extra_outbound_fqdns]
        return list(dict.fromkeys(wanted))


def outbound_rules(fqdns: list[str], ml: Any) -> dict[str, Any]:
    """The managed network's user-defined FQDN rules, named after their host (`allow-<host>`)."""
    rules = {}
    for fqdn in fqdns:
        label = "allow-" + re.sub(r"[^a-z0-9]+", "-", fqdn.lower()).strip("-")
        rules[label[:60]] = ml.FqdnOutboundRuleArgs(type="FQDN", category="UserDefined", destination=fqdn)
    return rules


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
        # Names unique beyond the resource group carry this; see infra/azure/names.py.
        suffix = pulumi.Output.all(client.subscription_id, rg).apply(lambda v: names.stable_suffix(*v))
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
            vault_name=suffix.apply(lambda s: names.vault_name(name, s)),
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
            account_name=suffix.apply(lambda s: names.storage_account_name(name, s)),
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
                                                     account_name=self.storage.name, container_name=ARTIFACTS_CONTAINER,
                                                     public_access="None", opts=child)
        azure.storage.ManagementPolicy(
            f"{name}-lifecycle", resource_group_name=rg, account_name=self.storage.name,
            management_policy_name="default",
            policy=azure.storage.ManagementPolicySchemaArgs(rules=[
                # Versions of every blob (vector stores included) are kept 30 days, then deleted.
                azure.storage.ManagementPolicyRuleArgs(
                    name="old-versions", enabled=True, type="Lifecycle",
                    definition=azure.storage.ManagementPolicyDefinitionArgs(
                        filters=azure.storage.ManagementPolicyFilterArgs(blob_types=["blockBlob"]),
                        actions=azure.storage.ManagementPolicyActionArgs(
                            version=azure.storage.ManagementPolicyVersionArgs(
                                delete=azure.storage.DateAfterCreationArgs(days_after_creation_greater_than=30))))),
                # Only training output goes cool: a vector store read at query time must not.
                azure.storage.ManagementPolicyRuleArgs(
                    name="checkpoints-to-cool", enabled=True, type="Lifecycle",
                    definition=azure.storage.ManagementPolicyDefinitionArgs(
                        filters=azure.storage.ManagementPolicyFilterArgs(
                            blob_types=["blockBlob"], prefix_match=list(CHECKPOINT_PREFIXES)),
                        actions=azure.storage.ManagementPolicyActionArgs(
                            base_blob=azure.storage.ManagementPolicyBaseBlobArgs(
                                tier_to_cool=azure.storage.DateAfterModificationArgs(
                                    days_after_modification_greater_than=30))))),
            ]),
            opts=child)
        role("artifacts", ROLE_BLOB_DATA_CONTRIBUTOR, self.storage.id)

        self.registry = azure.containerregistry.Registry(
            f"{name}acr".replace("-", ""), resource_group_name=rg, location=location, sku={"name": "Premium"},
            registry_name=suffix.apply(lambda s: names.registry_name(name, s)),
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
        # Private endpoints only: jobs run in the workspace's managed network, not here.
        self.subnet = azure.network.Subnet(f"{name}-endpoints-subnet", resource_group_name=rg,
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
            # Storage refuses shared keys, so the workspace's datastores use identities.
            system_datastores_auth_mode=ml.SystemDatastoresAuthMode.IDENTITY,
            managed_network=ml.ManagedNetworkSettingsArgs(
                isolation_mode=ml.IsolationMode.ALLOW_ONLY_APPROVED_OUTBOUND, firewall_sku=ml.FirewallSku.BASIC,
                outbound_rules=outbound_rules(args.outbound_fqdns(), ml)),
            provision_network_now=True,
            encryption=ml.EncryptionPropertyArgs(
                status="Enabled", identity=ml.IdentityForCmkArgs(user_assigned_identity=self.identity.id),
                key_vault_properties=ml.KeyVaultPropertiesArgs(key_vault_arm_id=self.vault.id,
                                                               key_identifier=self.key.key_uri_with_version)),
            tags=tags, opts=after_key)
        self.private_endpoints = self._private_endpoints(name, rg, location, tags, child)
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
                    # No subnet: the nodes join the workspace's managed network and its outbound rules.
                    enable_node_public_ip=False, remote_login_port_public_access="Disabled")),
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

    def _private_endpoints(self, name: str, rg: pulumi.Input[str], location: str, tags: dict[str, str],
                           child: pulumi.ResourceOptions) -> dict[str, Any]:
        """One private endpoint per service the CLI reaches (workspace, blob, dfs, registry, vault) in
        the VNet's subnet, each registered in the private DNS zones linked to the VNet, so the
        public host names resolve to private addresses inside it."""
        zones = {}
        for zone in sorted({z for group in PRIVATE_DNS_ZONES.values() for z in group}):
            label = zone.removeprefix("privatelink.").split(".")[0]
            zones[zone] = azure.privatedns.PrivateZone(f"{name}-dns-{label}", resource_group_name=rg,
                                                       private_zone_name=zone, location="Global", tags=tags,
                                                       opts=child)
            azure.privatedns.VirtualNetworkLink(
                f"{name}-dns-{label}-link", resource_group_name=rg, private_zone_name=zones[zone].name,
                location="Global", registration_enabled=False,
                virtual_network=azure.privatedns.SubResourceArgs(id=self.vnet.id), tags=tags, opts=child)
        targets = {"amlworkspace": self.workspace.id, "blob": self.storage.id, "dfs": self.storage.id,
                   "registry": self.registry.id, "vault": self.vault.id}
        endpoints = {}
        for group, target in targets.items():
            endpoint = azure.network.PrivateEndpoint(
                f"{name}-{group}-pe", resource_group_name=rg, location=location,
                subnet=azure.network.SubnetArgs(id=self.subnet.id),
                private_link_service_connections=[azure.network.PrivateLinkServiceConnectionArgs(
                    name=group, private_link_service_id=target, group_ids=[group])],
                tags=tags, opts=child)
            azure.network.PrivateDnsZoneGroup(
                f"{name}-{group}-pe-dns", resource_group_name=rg, private_endpoint_name=endpoint.name,
                private_dns_zone_group_name="default",
                private_dns_zone_configs=[azure.network.PrivateDnsZoneConfigArgs(
                    name=zone.replace(".", "-"), private_dns_zone_id=zones[zone].id)
                    for zone in PRIVATE_DNS_ZONES[group]],
                opts=child)
            endpoints[group] = endpoint
        return endpoints
