"""Azure's part of the policy pack (infra/policy): its encrypted, private, tagged, bounded and
budgeted resource types, and the names AKS accepts. Needs nothing beyond the standard library."""

from __future__ import annotations

import re
from typing import Any

from ..cloud import PolicyRules, Report, get, name_check


def _storage_encryption(p: dict, report: Report) -> None:
    if get(p, "encryption", "keySource") != "Microsoft.Keyvault":
        report("storage accounts must be encrypted with the stack's Key Vault key (keySource Microsoft.Keyvault)")


def _registry_encryption(p: dict, report: Report) -> None:
    if str(get(p, "encryption", "status") or "").lower() != "enabled":
        report("container registries must be encrypted with the stack's Key Vault key")


def _workspace_encryption(p: dict, report: Report) -> None:
    if get(p, "encryption", "status") != "Enabled":
        report("Azure ML workspaces must be encrypted with the stack's Key Vault key")


def _storage_closed(p: dict, report: Report) -> None:
    if p.get("allowBlobPublicAccess") is not False or p.get("publicNetworkAccess") != "Disabled":
        report("storage accounts must disallow public blob access and public network access")


def _container_closed(p: dict, report: Report) -> None:
    if p.get("publicAccess") not in (None, "None"):
        report(f"blob container public access {p.get('publicAccess')} makes it public")


def _registry_closed(p: dict, report: Report) -> None:
    if p.get("anonymousPullEnabled") or p.get("publicNetworkAccess") != "Disabled":
        report("container registries must disallow anonymous pull and public network access")


def _endpoint_closed(p: dict, report: Report) -> None:
    if get(p, "properties", "publicNetworkAccess") != "Disabled":
        report("online endpoints must disable public network access")


def _aks_private(p: dict, report: Report) -> None:
    if not get(p, "apiServerAccessProfile", "enablePrivateCluster"):
        report("AKS clusters must be private (apiServerAccessProfile.enablePrivateCluster)")


def _workspace_closed(p: dict, report: Report) -> None:
    if p.get("publicNetworkAccess") != "Disabled":
        report("Azure ML workspaces must disable public network access")


def _is_gpu(size: Any) -> bool:
    """Azure's GPU sizes are the N-series (Standard_NC..., Standard_ND..., Standard_NV...)."""
    return str(size or "").startswith("Standard_N")


def _deployment_bounds(p: dict) -> tuple[Any, Any]:
    s = get(p, "properties", "scaleSettings") or {}
    if s.get("scaleType") == "Default":
        # A managed deployment: a fixed count (sku.capacity), moved only by an autoscale setting.
        capacity = get(p, "sku", "capacity")
        return capacity, capacity
    return s.get("minInstances"), s.get("maxInstances")


def _autoscale_bounds(p: dict) -> tuple[Any, Any]:
    capacities = [profile.get("capacity") or {} for profile in p.get("profiles") or []]
    lows = [float(c["minimum"]) for c in capacities if c.get("minimum") is not None]
    highs = [float(c["maximum"]) for c in capacities if c.get("maximum") is not None]
    return min(lows) if lows else None, max(highs) if highs else None


_POOL_NAME = re.compile(r"^[a-z][a-z0-9]{0,11}$")
_POOL_RULE = "1-12 lower-case letters or digits, starting with a letter"


def _cluster_name(p: dict, report: Report) -> None:
    name_check("resourceName", re.compile(r"^[a-zA-Z0-9]$|^[a-zA-Z0-9][-_a-zA-Z0-9]{0,61}[a-zA-Z0-9]$"),
               "1-63 letters, digits, - or _")(p, report)
    for profile in p.get("agentPoolProfiles") or []:
        if not _POOL_NAME.fullmatch(str(profile.get("name") or "")):
            report(f"agent pool name {profile.get('name')!r} is not a name AKS accepts: {_POOL_RULE}")


_TAGGED = (
    "azure-native:resources:ResourceGroup", "azure-native:managedidentity:UserAssignedIdentity",
    "azure-native:keyvault:Vault", "azure-native:keyvault:Key", "azure-native:storage:StorageAccount",
    "azure-native:containerregistry:Registry", "azure-native:network:VirtualNetwork",
    "azure-native:operationalinsights:Workspace", "azure-native:applicationinsights:Component",
    "azure-native:machinelearningservices:Workspace", "azure-native:machinelearningservices:Compute",
    "azure-native:machinelearningservices:OnlineEndpoint", "azure-native:machinelearningservices:OnlineDeployment",
    "azure-native:monitor:ActionGroup", "azure-native:monitor:MetricAlert",
    "azure-native:monitor:AutoscaleSetting", "azure-native:network:PrivateEndpoint",
    "azure-native:privatedns:PrivateZone", "azure-native:privatedns:VirtualNetworkLink",
    # The pipeline trigger's (stackwise:pipelineTrigger).
    "azure-native:logic:Workflow", "azure-native:eventgrid:SystemTopic",
    # A kubernetes stack's cluster (stackwise:kubernetes.createCluster).
    "azure-native:containerservice:ManagedCluster", "azure-native:containerservice:AgentPool",
)

RULES = PolicyRules(
    encryption={
        "azure-native:storage:StorageAccount": _storage_encryption,
        "azure-native:containerregistry:Registry": _registry_encryption,
        "azure-native:machinelearningservices:Workspace": _workspace_encryption,
    },
    not_public={
        "azure-native:storage:StorageAccount": _storage_closed,
        "azure-native:storage:BlobContainer": _container_closed,
        "azure-native:containerregistry:Registry": _registry_closed,
        "azure-native:machinelearningservices:OnlineEndpoint": _endpoint_closed,
        "azure-native:containerservice:ManagedCluster": _aks_private,
        "azure-native:machinelearningservices:Workspace": _workspace_closed,
    },
    tags=dict.fromkeys(_TAGGED, "tags"),
    instances={
        "azure-native:machinelearningservices:OnlineDeployment": lambda p: [get(p, "properties", "instanceType") or ""],
        "azure-native:machinelearningservices:Compute": lambda p: [get(p, "properties", "properties", "vmSize") or ""],
        "azure-native:containerservice:AgentPool": lambda p: [p.get("vmSize") or ""] if _is_gpu(p.get("vmSize")) else [],
        "azure-native:containerservice:ManagedCluster": lambda p: [
            q.get("vmSize") or "" for q in p.get("agentPoolProfiles") or [] if _is_gpu(q.get("vmSize"))],
    },
    replicas={
        "azure-native:machinelearningservices:OnlineDeployment": _deployment_bounds,
        "azure-native:monitor:AutoscaleSetting": _autoscale_bounds,
        "azure-native:machinelearningservices:Compute": lambda p: (
            get(p, "properties", "properties", "scaleSettings", "minNodeCount"),
            get(p, "properties", "properties", "scaleSettings", "maxNodeCount")),
        "azure-native:containerservice:AgentPool": lambda p: (
            p.get("minCount"), p.get("maxCount") if p.get("enableAutoScaling") else p.get("count")),
    },
    budgets=("azure-native:consumption:Budget",),
    budget_label="Azure consumption budget",
    names={
        "azure-native:containerservice:ManagedCluster": _cluster_name,
        "azure-native:containerservice:AgentPool": name_check("agentPoolName", _POOL_NAME, _POOL_RULE),
    },
)
