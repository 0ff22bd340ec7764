"""`stackwise plan`: what `pulumi up` would create for a stack, its contract outputs, and an
estimated monthly cost, computed offline (the program runs under mocks, no CLI, no credentials).

The cost counts what runs while the stack is idle: endpoints at their minimum replicas (from
the catalog's on-demand price), clusters at their minimum nodes (0 on Azure), and the standing
monthly price of keys, registries, alarms and the Pinecone plan. Storage, requests and jobs
are usage-based and not in the estimate.
"""

from __future__ import annotations

import re
import time
from typing import Any

from stackwise import catalog
from stackwise.stack import Stack

from .config import InfraConfig
from .offline import OfflineRun, RecordedResource, run_offline

# Inputs worth showing per resource type (the rest is in --json).
_KEY_SETTINGS = (
    "instanceType", "initialInstanceCount", "minCapacity", "maxCapacity", "vmSize", "minNodeCount",
    "maxNodeCount", "machineType", "acceleratorType", "acceleratorCount", "minReplicaCount", "maxReplicaCount",
    "minInstances", "maxInstances", "limitAmount", "amount", "dimension", "metric", "cidrBlock", "location",
    "sku", "kind", "publicAccessPrevention", "publicNetworkAccess", "sseAlgorithm", "enableKeyRotation",
    "target", "push", "schedule", "scheduleExpression",
    "capacityType", "minSize", "maxSize", "totalMinNodeCount", "totalMaxNodeCount", "minCount", "maxCount",
    "scaleSetPriority", "spot", "tier",
)


def config_of(stack: Stack) -> InfraConfig:
    """The stack's typed config (raises ConfigError naming the key and the stack file)."""
    return InfraConfig.load(stack.config, stack.source)


def run(stack: Stack) -> OfflineRun:
    return run_offline(config_of(stack), stack.name)


def plan(stack: Stack) -> dict[str, Any]:
    """The plan as plain data: resources (with their full inputs, secrets masked), the same as
    `pulumi preview --json` steps, outputs, cost, budget, seconds taken."""
    started = time.perf_counter()
    result = run(stack)
    cost = estimate(result.resources, result.config.cloud)
    budget = result.config.monthly_budget_usd
    steps = preview_steps(result)
    return {
        "stack": stack.name,
        "cloud": result.config.cloud,
        "region": result.config.region,
        "resources": [
            {"type": r.type, "name": r.name, "parent": r.parent, "component": not r.custom,
             "urn": r.urn, "settings": key_settings(r.inputs), "inputs": mask_secrets(r.inputs)}
            for r in result.resources
        ],
        "steps": steps,
        "changeSummary": {"create": len(steps)},
        "outputs": result.outputs.model_dump(mode="json"),
        "cost": cost,
        "budget_usd": budget,
        "over_budget": cost["monthly_usd"] > budget,
        "seconds": round(time.perf_counter() - started, 2),
    }


def preview_steps(result: OfflineRun) -> list[dict[str, Any]]:
    """The plan in `pulumi preview --json`'s shape: one "create" step per resource, the root
    stack first, each with its URN and `newState` (type, custom, parent URN, full inputs with
    secrets masked), so a reviewer or a policy tool reads it without running the program."""
    root = f"urn:pulumi:{result.stack}::stackwise::pulumi:pulumi:Stack::stackwise-{result.stack}"
    steps = [{"op": "create", "urn": root,
              "newState": {"urn": root, "custom": False, "type": "pulumi:pulumi:Stack", "inputs": {}}}]
    for r in result.resources:
        steps.append({"op": "create", "urn": r.urn, "newState": {
            "urn": r.urn, "custom": r.custom, "type": r.type, "parent": r.parent_urn or root,
            "inputs": mask_secrets(r.inputs)}})
    return steps


# What the engine sends for a secret (`pulumi.Output.secret`, a `require_secret` config value):
# the value wrapped in a map tagged with this signature.
_SECRET_SIG = "4dabf18193072939515e22adb298388d"
_SECRET_VALUE = "1b47061264138c4ac30d75fd1eb44270"
MASK = "[secret]"
# Key names that hold a credential, not a reference to one (`secretName`, `kmsKeyId` stay shown).
_CREDENTIAL_WORDS = {"password", "passwd", "passphrase", "token", "secret", "secrets", "credential",
                     "credentials", "connectionstring"}
_CREDENTIAL_KEYS = {("key",), ("api", "key"), ("access", "key"), ("secret", "key"), ("private", "key"),
                    ("shared", "key"), ("account", "key"), ("master", "key"), ("primary", "key"),
                    ("secondary", "key"), ("auth", "key"), ("sas", "key"), ("signing", "key")}
_REFERENCE_WORDS = {"id", "ids", "arn", "arns", "name", "names", "ref", "refs", "uri", "url", "version",
                    "versions", "type", "enabled", "rotation", "policy", "count", "length", "ttl", "expiry"}


def _words(key: str) -> tuple[str, ...]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", key).replace("_", " ").replace("-", " ").lower()
    return tuple(spaced.split())


def is_secret_key(key: str) -> bool:
    """Whether an input's name says it holds a credential (password, token, secret, an API key)."""
    words = _words(str(key))
    if not words or words[-1] in _REFERENCE_WORDS:
        return False
    joined = {"".join(words[i:i + 2]) for i in range(len(words))}  # connection string, pass phrase
    return bool(_CREDENTIAL_WORDS & (set(words) | joined)) or words[-2:] in _CREDENTIAL_KEYS or words[-1:] in _CREDENTIAL_KEYS


def mask_secrets(value: Any, key: str | None = None) -> Any:
    """A copy of recorded inputs with every secret replaced by "[secret]": values the engine
    received as secrets (at any depth), and any value under a credential-like key name."""
    if isinstance(value, dict) and value.get(_SECRET_SIG) == _SECRET_VALUE:
        return MASK
    if key is not None and is_secret_key(key) and value not in (None, "", [], {}):
        if not isinstance(value, (dict, list)):
            return MASK
    if isinstance(value, dict):
        return {k: mask_secrets(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(v, key) for v in value]
    return value


def key_settings(inputs: dict[str, Any]) -> dict[str, Any]:
    """The inputs that say what a resource costs or exposes, found at any depth."""
    found: dict[str, Any] = {}

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                if key in _KEY_SETTINGS and not isinstance(inner, (dict, list)) and key not in found:
                    found[key] = inner
                elif key in ("sku",) and isinstance(inner, dict) and "name" in inner:
                    found.setdefault("sku", inner["name"])
                walk(inner)
        elif isinstance(value, list):
            for inner in value:
                walk(inner)

    walk(inputs)
    return found


def estimate(resources: list[RecordedResource], cloud: str) -> dict[str, Any]:
    """Monthly cost line items of the idle stack, priced from the GPU catalog."""
    items: list[dict[str, Any]] = []

    def add(resource: RecordedResource, usd: float, basis: str, part: str | None = None) -> None:
        items.append({"resource": f"{resource.name}/{part}" if part else resource.name, "type": resource.type,
                      "monthly_usd": round(usd, 2), "basis": basis})

    def gpu(resource: RecordedResource, instance: str | None, replicas: float, what: str) -> None:
        offer = catalog.offer_for_instance(cloud, instance or "")
        if offer is None:
            add(resource, 0.0, f"{instance}: not in the GPU catalog, not priced")
            return
        checked = "" if offer.verified else " (price unverified: see stackwise/data/gpu_catalog.yaml)"
        add(resource, offer.monthly(replicas),
            f"{replicas:g} x {offer.instance} ({offer.count} x {offer.gpu}) {what} at ${offer.on_demand_hourly}/h "
            f"on demand, {offer.region} list price of {offer.as_of}{checked}")

    def node_pool(resource: RecordedResource, cloud_: str, instance: str, low: Any, high: Any, spot: bool,
                  part: str | None = None) -> None:
        """A Kubernetes node pool while idle: its minimum nodes all month; the maximum is the ceiling."""
        low_n, high_n = float(low or 0), float(high or low or 0)
        # The GPU catalog names SageMaker's ml.* types on AWS (EKS nodes are the EC2 types behind them).
        offer = catalog.offer_for_instance(cloud_, f"ml.{instance}" if cloud_ == "aws" else instance)
        if offer is not None:
            hourly = offer.hourly(spot)
            checked = "on_demand" if not spot else "spot"
            note = "" if checked in offer.checked else f" ({'spot' if spot else 'on-demand'} price unverified: see " \
                "stackwise/data/gpu_catalog.yaml)"
            aws_note = " (SageMaker's ml.* list price: EC2 bills the node less)" if cloud_ == "aws" else ""
            add(resource, low_n * hourly * catalog.HOURS_PER_MONTH,
                f"{low_n:g} x {instance} ({offer.count} x {offer.gpu}) minimum nodes at ${hourly}/h "
                f"{'spot' if spot else 'on demand'}{aws_note}, {offer.region} list price of {offer.as_of}{note}; "
                f"ceiling {high_n:g} nodes: ${high_n * hourly * catalog.HOURS_PER_MONTH:,.2f}/month", part)
            return
        fixed = catalog.fixed_monthly(f"node#{cloud_}:{instance}")
        if fixed is None:
            add(resource, 0.0, f"{instance}: not in the catalog, not priced", part)
            return
        add(resource, low_n * fixed.usd, f"{low_n:g} x {instance} minimum nodes (system pool) at ${fixed.usd:.2f}/month "
            f"each: {fixed.source}; ceiling {high_n:g} nodes: ${high_n * fixed.usd:,.2f}/month", part)

    for r in resources:
        inputs = r.inputs
        if r.type == "aws:sagemaker/endpointConfiguration:EndpointConfiguration":
            for variant in inputs.get("productionVariants") or []:
                gpu(r, variant.get("instanceType"), float(variant.get("initialInstanceCount") or 0), "minimum replicas")
        elif r.type == "gcp:vertex/aiEndpointWithModelGardenDeployment:AiEndpointWithModelGardenDeployment":
            dedicated = (inputs.get("deployConfig") or {}).get("dedicatedResources") or {}
            spec = dedicated.get("machineSpec") or {}
            gpu(r, spec.get("machineType"), float(dedicated.get("minReplicaCount") or 0), "minimum replicas")
        elif r.type == "azure-native:machinelearningservices:OnlineDeployment":
            props = inputs.get("properties") or {}
            minimum = (props.get("scaleSettings") or {}).get("minInstances") or (inputs.get("sku") or {}).get("capacity")
            gpu(r, props.get("instanceType"), float(minimum or 0), "minimum instances")
        elif r.type == "azure-native:machinelearningservices:Compute":
            props = (inputs.get("properties") or {}).get("properties") or {}
            nodes = float((props.get("scaleSettings") or {}).get("minNodeCount") or 0)
            gpu(r, props.get("vmSize"), nodes, "idle cluster nodes")
        elif r.type == "aws:eks/nodeGroup:NodeGroup":
            scaling = inputs.get("scalingConfig") or {}
            node_pool(r, "aws", (inputs.get("instanceTypes") or [""])[0], scaling.get("minSize"),
                      scaling.get("maxSize"), inputs.get("capacityType") == "SPOT")
        elif r.type == "gcp:container/nodePool:NodePool":
            node = inputs.get("nodeConfig") or {}
            scaling = inputs.get("autoscaling") or {}
            node_pool(r, "gcp", node.get("machineType") or "", scaling.get("totalMinNodeCount"),
                      scaling.get("totalMaxNodeCount"), bool(node.get("spot")))
        elif r.type == "azure-native:containerservice:AgentPool":
            node_pool(r, "azure", inputs.get("vmSize") or "", inputs.get("minCount"), inputs.get("maxCount"),
                      inputs.get("scaleSetPriority") == "Spot")
        elif r.type == "azure-native:containerservice:ManagedCluster":
            tier = (inputs.get("sku") or {}).get("tier") or "Free"
            if fixed := catalog.fixed_monthly(f"{r.type}#{tier}"):
                add(r, fixed.usd, f"AKS {tier} tier control plane: {fixed.source}")
            for profile in inputs.get("agentPoolProfiles") or []:
                node_pool(r, "azure", profile.get("vmSize") or "", profile.get("minCount") or profile.get("count"),
                          profile.get("maxCount"), profile.get("scaleSetPriority") == "Spot", profile.get("name"))
        elif r.type == "aws:ec2/vpcEndpoint:VpcEndpoint":
            if inputs.get("vpcEndpointType") == "Interface" and (fixed := catalog.fixed_monthly(f"{r.type}#Interface")):
                zones = len(inputs.get("subnetIds") or []) or 1  # one network interface per zone's subnet
                add(r, fixed.usd * zones, f"{zones} zone(s) x ${fixed.usd:.2f}: {fixed.source}")
        elif r.type == "azure-native:machinelearningservices:Workspace":
            network = inputs.get("managedNetwork") or {}
            rules = (network.get("outboundRules") or {}).values()
            # FQDN outbound rules run on an Azure Firewall the workspace provisions and bills.
            if any(rule.get("type") == "FQDN" for rule in rules):
                sku = network.get("firewallSku") or "Standard"
                if fixed := catalog.fixed_monthly(f"{r.type}#firewall-{sku}"):
                    add(r, fixed.usd, fixed.source)
        else:
            fixed = catalog.fixed_monthly(r.type)
            if fixed is not None:
                add(r, fixed.usd, fixed.source)
    total = round(sum(i["monthly_usd"] for i in items), 2)
    return {"monthly_usd": total, "items": items,
            "note": "idle stack: endpoints at minimum replicas, clusters at minimum nodes; storage, requests "
                    "and jobs are usage-based and not included"}
