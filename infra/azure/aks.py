"""The stack's Kubernetes cluster on Azure: a private AKS cluster with the OIDC issuer and workload
identity, Entra ID authentication (local accounts off), a system pool and the GPU agent pool in a
subnet of the platform's VNet (`createCluster: true`), and, created or existing, the federated
credential that lets the stack's service account sign in as the platform's job identity."""

from __future__ import annotations

import base64
from dataclasses import dataclass

import pulumi

from stackwise.catalog import Offer

from ..config import NodePoolConfig
from ..kubernetes import manifests
from ._provider import azure

SYSTEM_VM = "Standard_D2s_v5"
SYSTEM_NODES = (1, 2)
TOKEN_AUDIENCE = "api://AzureADTokenExchange"
POD_CIDR = "192.168.0.0/16"
"""Azure CNI overlay: pod addresses outside the VNet."""


@dataclass
class AksClusterArgs:
    create: bool
    location: str
    resource_group: pulumi.Input[str]
    namespace: str
    service_account: str
    identity_name: pulumi.Input[str]
    """The platform's user-assigned job identity (its client id annotates the service account)."""
    tags: dict[str, str]
    oidc_issuer: str | None = None
    """The existing cluster's OIDC issuer URL (create=False)."""
    node_pool: NodePoolConfig | None = None
    offer: Offer | None = None
    tier: str = "free"
    vnet_name: pulumi.Input[str] | None = None
    subnet_cidr: str | None = None
    """The nodes' subnet, carved from the platform's VNet range (after the private endpoints' /20)."""


class AksCluster(pulumi.ComponentResource):
    """`name`, `kubeconfig` (exec kubelogin, Azure CLI login) and `ready` (what installs wait for)."""

    def __init__(self, name: str, args: AksClusterArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("stackwise:azure:AksCluster", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        rg, tags = args.resource_group, args.tags
        self.kubeconfig: pulumi.Output[str] | None = None
        self.name: pulumi.Output[str] | None = None
        issuer: pulumi.Input[str]
        self.ready: list[pulumi.Resource] = []
        if args.create:
            assert args.node_pool is not None and args.offer is not None and args.subnet_cidr
            pool, offer = args.node_pool, args.offer
            subnet = azure.network.Subnet(f"{name}-nodes-subnet", resource_group_name=rg,
                                          virtual_network_name=args.vnet_name, address_prefix=args.subnet_cidr,
                                          opts=child)
            low, high = SYSTEM_NODES
            self.cluster = azure.containerservice.ManagedCluster(
                f"{name}-aks", resource_group_name=rg, location=args.location, resource_name_=name, dns_prefix=name,
                identity={"type": "SystemAssigned"},
                sku={"name": "Base", "tier": "Standard" if args.tier == "standard" else "Free"},
                enable_rbac=True, disable_local_accounts=True, aad_profile={"managed": True, "enable_azure_rbac": False},
                oidc_issuer_profile={"enabled": True}, security_profile={"workload_identity": {"enabled": True}},
                api_server_access_profile={"enable_private_cluster": True},
                network_profile={"network_plugin": "azure", "network_plugin_mode": "overlay", "pod_cidr": POD_CIDR},
                agent_pool_profiles=[{
                    "name": "system", "mode": "System", "vm_size": SYSTEM_VM, "count": low, "min_count": low,
                    "max_count": high, "enable_auto_scaling": True, "os_type": "Linux",
                    "type": "VirtualMachineScaleSets", "vnet_subnet_id": subnet.id,
                    "node_labels": {"stackwise.dev/pool": "system"}}],
                tags=tags, opts=pulumi.ResourceOptions(parent=self, ignore_changes=["agentPoolProfiles"]))
            self.name = self.cluster.name
            labels, taints = manifests.pool_labels_and_taints(offer.gpu, pool.spot)
            spot = {"scale_set_priority": "Spot", "scale_set_eviction_policy": "Delete", "spot_max_price": -1} \
                if pool.spot else {"scale_set_priority": "Regular"}
            gpu = azure.containerservice.AgentPool(
                f"{name}-gpu", resource_group_name=rg, resource_name_=self.cluster.name, agent_pool_name="gpu",
                mode="User", vm_size=offer.instance, os_type="Linux", type="VirtualMachineScaleSets",
                enable_auto_scaling=True, count=pool.min_nodes, min_count=pool.min_nodes, max_count=pool.max_nodes,
                node_labels=labels, node_taints=[f"{t['key']}={t['value']}:{t['effect']}" for t in taints],
                vnet_subnet_id=subnet.id, tags=tags, **spot,
                opts=pulumi.ResourceOptions(parent=self, ignore_changes=["count"]))
            self.ready.append(gpu)
            issuer = self.cluster.oidc_issuer_profile.apply(lambda p: p.issuer_url if p else None)
            credentials = azure.containerservice.list_managed_cluster_user_credentials_output(
                resource_group_name=rg, resource_name=self.cluster.name, format="exec",
                opts=pulumi.InvokeOutputOptions(parent=self))
            self.kubeconfig = pulumi.Output.all(self.cluster.name, credentials.kubeconfigs).apply(
                lambda v: _kubeconfig(v[0], v[1]))
        else:
            assert args.oidc_issuer
            issuer = args.oidc_issuer
        self.ready.append(azure.managedidentity.FederatedIdentityCredential(
            f"{name}-jobs-federation", resource_group_name=rg, resource_name_=args.identity_name,
            federated_identity_credential_resource_name=f"{name}-jobs", issuer=issuer, audiences=[TOKEN_AUDIENCE],
            subject=manifests.identity_subject(args.namespace, args.service_account), opts=child))
        self.register_outputs({"name": self.name})


def _kubeconfig(name: str, kubeconfigs) -> str:
    """Our own exec kubeconfig (kubelogin with the Azure CLI login, no device code prompt) for the
    server and CA of the user credential AKS returns (an Entra ID cluster's holds no secret)."""
    import yaml

    value = kubeconfigs[0]["value"] if isinstance(kubeconfigs[0], dict) else kubeconfigs[0].value
    listed = yaml.safe_load(base64.b64decode(value))
    cluster = listed["clusters"][0]["cluster"]
    return manifests.aks_kubeconfig(name, cluster["server"], cluster["certificate-authority-data"])
