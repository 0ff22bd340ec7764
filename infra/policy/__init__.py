"""The stackwise policy pack (pulumi-policy): guardrails every stack must pass.

- encryption at rest with a customer-managed key everywhere data rests;
- no public bucket, container, registry or endpoint;
- required tags (project, env, owner, cost-center) on every taggable resource;
- GPU types on the stack's allow-list (policy config `allowedGpus`);
- endpoint replicas bounded (policy config `maxReplicas`);
- a monthly budget with alerts;
- Kubernetes names the API server and the clouds accept (objects, clusters, node pools).

Real use: `pulumi preview --policy-pack infra/policy --policy-pack-config policy-config.json`.
Tests call each policy's `validate` on the resources the program registers under mocks.
Properties are the engine's camelCase names, as both the engine and the mocks send them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from pulumi_policy import (PolicyConfigSchema, ResourceValidationArgs, ResourceValidationPolicy, StackValidationArgs,
                           StackValidationPolicy)

from stackwise import catalog

from ..common import has_local_nvme
from ..config import REQUIRED_TAGS

Report = Callable[..., None]
DEFAULT_ALLOWED_GPUS = ["T4", "L4", "A10G"]
DEFAULT_MAX_REPLICAS = 10


def _get(props: Any, *path: str | int) -> Any:
    for step in path:
        if isinstance(step, int):
            props = props[step] if isinstance(props, list) and len(props) > step else None
        else:
            props = props.get(step) if isinstance(props, dict) else None
    return props


# -- encryption at rest ---------------------------------------------------------------------------
def _encryption(args: ResourceValidationArgs, report: Report) -> None:
    t, p = args.resource_type, args.props
    if t == "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration":
        rule = _get(p, "rules", 0, "applyServerSideEncryptionByDefault") or {}
        if rule.get("sseAlgorithm") not in ("aws:kms", "aws:kms:dsse") or not rule.get("kmsMasterKeyId"):
            report("S3 encryption must use the stack's KMS key (sseAlgorithm aws:kms with kmsMasterKeyId)")
    elif t == "aws:ecr/repository:Repository":
        if _get(p, "encryptionConfigurations", 0, "encryptionType") != "KMS":
            report("ECR repositories must be encrypted with KMS")
    elif t == "aws:sagemaker/endpointConfiguration:EndpointConfiguration":
        # Local NVMe storage is encrypted in hardware and SageMaker refuses a key for it.
        local = [has_local_nvme(str(v.get("instanceType") or "")) for v in p.get("productionVariants") or []]
        if not p.get("kmsKeyArn") and not (local and all(local)):
            report("SageMaker endpoint volumes must be encrypted with the stack's KMS key (kmsKeyArn)")
        if p.get("kmsKeyArn") and any(local):
            report("SageMaker refuses a KMS key for instance types with local NVMe storage (encrypted in "
                   "hardware): drop kmsKeyArn or choose an EBS-backed instance type")
    elif t == "aws:sns/topic:Topic":
        key = str(p.get("kmsMasterKeyId") or "")
        if not key or key.endswith("alias/aws/sns"):
            report("SNS topics must be encrypted with a customer-managed KMS key whose policy lets the "
                   "publishers (CloudWatch alarms) use it; with alias/aws/sns alarm notifications are lost")
    elif t == "aws:secretsmanager/secret:Secret":
        if not p.get("kmsKeyId"):
            report("secrets must be encrypted with the stack's KMS key (kmsKeyId)")
    elif t == "gcp:storage/bucket:Bucket":
        if not _get(p, "encryption", "defaultKmsKeyName"):
            report("GCS buckets must use a customer-managed key (encryption.defaultKmsKeyName)")
    elif t == "gcp:artifactregistry/repository:Repository":
        if not p.get("kmsKeyName"):
            report("Artifact Registry repositories must use a customer-managed key (kmsKeyName)")
    elif t == "gcp:workflows/workflow:Workflow":
        # A pipeline trigger's workflow carries the pipeline's request; its executions, their data.
        if not p.get("cryptoKeyName"):
            report("workflows must use a customer-managed key (cryptoKeyName)")
    elif t == "gcp:vertex/aiEndpoint:AiEndpoint":
        if not _get(p, "encryptionSpec", "kmsKeyName"):
            report("Vertex AI endpoints must use a customer-managed key (encryptionSpec.kmsKeyName)")
    elif t == "azure-native:storage:StorageAccount":
        if _get(p, "encryption", "keySource") != "Microsoft.Keyvault":
            report("storage accounts must be encrypted with the stack's Key Vault key (keySource Microsoft.Keyvault)")
    elif t == "azure-native:containerregistry:Registry":
        if str(_get(p, "encryption", "status") or "").lower() != "enabled":
            report("container registries must be encrypted with the stack's Key Vault key")
    elif t == "aws:eks/cluster:Cluster":
        configs = p.get("encryptionConfig")
        configs = configs if isinstance(configs, list) else [configs] if configs else []
        if not any("secrets" in (c.get("resources") or []) and _get(c, "provider", "keyArn") for c in configs):
            report("EKS clusters must encrypt Kubernetes secrets with the stack's KMS key (encryptionConfig)")
    elif t == "gcp:container/cluster:Cluster":
        if _get(p, "databaseEncryption", "state") != "ENCRYPTED" or not _get(p, "databaseEncryption", "keyName"):
            report("GKE clusters must encrypt Kubernetes secrets with the stack's key (databaseEncryption)")
    elif t == "azure-native:machinelearningservices:Workspace":
        if _get(p, "encryption", "status") != "Enabled":
            report("Azure ML workspaces must be encrypted with the stack's Key Vault key")


def _buckets_covered(args: StackValidationArgs, report: Report) -> None:
    """Every S3 bucket has its own encryption configuration and public access block."""
    buckets = {r.props.get("bucket") or r.name: r.name for r in args.resources if r.resource_type == "aws:s3/bucket:Bucket"}
    for kind, label in (("BucketServerSideEncryptionConfiguration", "KMS encryption configuration"),
                        ("BucketPublicAccessBlock", "public access block")):
        covered = {r.props.get("bucket") for r in args.resources if r.resource_type.endswith(f":{kind}")}
        for bucket, name in buckets.items():
            if bucket not in covered:
                report(f"S3 bucket {name} has no {label}")


# -- nothing public --------------------------------------------------------------------------------
_PUBLIC_MEMBERS = ("allUsers", "allAuthenticatedUsers")


def _not_public(args: ResourceValidationArgs, report: Report) -> None:
    t, p = args.resource_type, args.props
    if t == "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock":
        off = [k for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
               if p.get(k) is not True]
        if off:
            report(f"the bucket's public access block must set {', '.join(off)} to true")
    elif t == "aws:s3/bucket:Bucket":
        if str(p.get("acl") or "private").startswith("public"):
            report(f"S3 bucket ACL {p.get('acl')} makes it public")
    elif t == "aws:sagemaker/model:Model":
        if not _get(p, "vpcConfig", "subnets"):
            report("SageMaker models must run in the stack's private subnets (vpcConfig)")
    elif t == "gcp:storage/bucket:Bucket":
        if p.get("publicAccessPrevention") != "enforced":
            report("GCS buckets must enforce public access prevention")
    elif t in ("gcp:storage/bucketIAMMember:BucketIAMMember", "gcp:storage/bucketIAMBinding:BucketIAMBinding"):
        members = [p.get("member")] + list(p.get("members") or [])
        if any(m in _PUBLIC_MEMBERS for m in members):
            report("bucket IAM must not grant allUsers or allAuthenticatedUsers")
    elif t == "gcp:vertex/aiEndpoint:AiEndpoint":
        if not (p.get("network") or _get(p, "privateServiceConnectConfig", "enablePrivateServiceConnect")):
            report("Vertex AI endpoints must be private (Private Service Connect or a VPC network)")
    elif t == "gcp:vertex/aiEndpointWithModelGardenDeployment:AiEndpointWithModelGardenDeployment":
        if not _get(p, "endpointConfig", "privateServiceConnectConfig", "enablePrivateServiceConnect"):
            report("Vertex AI endpoints must be private (Private Service Connect)")
    elif t == "azure-native:storage:StorageAccount":
        if p.get("allowBlobPublicAccess") is not False or p.get("publicNetworkAccess") != "Disabled":
            report("storage accounts must disallow public blob access and public network access")
    elif t == "azure-native:storage:BlobContainer":
        if p.get("publicAccess") not in (None, "None"):
            report(f"blob container public access {p.get('publicAccess')} makes it public")
    elif t == "azure-native:containerregistry:Registry":
        if p.get("anonymousPullEnabled") or p.get("publicNetworkAccess") != "Disabled":
            report("container registries must disallow anonymous pull and public network access")
    elif t == "azure-native:machinelearningservices:OnlineEndpoint":
        if _get(p, "properties", "publicNetworkAccess") != "Disabled":
            report("online endpoints must disable public network access")
    elif t == "aws:eks/cluster:Cluster":
        if _get(p, "vpcConfig", "endpointPublicAccess") is not False:
            report("EKS clusters must keep their API endpoint private (vpcConfig.endpointPublicAccess false)")
    elif t == "gcp:container/cluster:Cluster":
        private = p.get("privateClusterConfig") or {}
        if not (private.get("enablePrivateNodes") and private.get("enablePrivateEndpoint")):
            report("GKE clusters must have private nodes and a private endpoint (privateClusterConfig)")
    elif t == "azure-native:containerservice:ManagedCluster":
        if not _get(p, "apiServerAccessProfile", "enablePrivateCluster"):
            report("AKS clusters must be private (apiServerAccessProfile.enablePrivateCluster)")
    elif t == "azure-native:machinelearningservices:Workspace":
        if p.get("publicNetworkAccess") != "Disabled":
            report("Azure ML workspaces must disable public network access")


# -- required tags ---------------------------------------------------------------------------------
# Types the program creates that carry tags (AWS, Azure) or labels (GCP).
TAGGABLE = {
    "aws:kms/key:Key", "aws:s3/bucket:Bucket", "aws:ecr/repository:Repository", "aws:ec2/vpc:Vpc",
    "aws:ec2/subnet:Subnet", "aws:ec2/routeTable:RouteTable", "aws:ec2/vpcEndpoint:VpcEndpoint",
    "aws:ec2/securityGroup:SecurityGroup", "aws:iam/role:Role", "aws:secretsmanager/secret:Secret",
    "aws:sagemaker/model:Model", "aws:sagemaker/endpointConfiguration:EndpointConfiguration",
    "aws:sagemaker/endpoint:Endpoint", "aws:appautoscaling/target:Target", "aws:sns/topic:Topic",
    "aws:cloudwatch/metricAlarm:MetricAlarm", "aws:budgets/budget:Budget",
    "gcp:kms/cryptoKey:CryptoKey", "gcp:storage/bucket:Bucket", "gcp:artifactregistry/repository:Repository",
    "gcp:secretmanager/secret:Secret", "gcp:vertex/aiEndpoint:AiEndpoint",
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
    "aws:sagemaker/pipeline:Pipeline", "aws:cloudwatch/eventRule:EventRule", "gcp:workflows/workflow:Workflow",
    "gcp:eventarc/trigger:Trigger", "azure-native:logic:Workflow", "azure-native:eventgrid:SystemTopic",
    # A kubernetes stack's cluster (stackwise:kubernetes.createCluster) and identity binding.
    "aws:eks/cluster:Cluster", "aws:eks/nodeGroup:NodeGroup", "aws:eks/addon:Addon",
    "aws:eks/podIdentityAssociation:PodIdentityAssociation", "gcp:container/cluster:Cluster",
    "azure-native:containerservice:ManagedCluster", "azure-native:containerservice:AgentPool",
}
# Where a type keeps its tags when not under `tags` (AWS, Azure) or `labels` (GCP).
_TAG_KEYS = {"gcp:container/cluster:Cluster": "resourceLabels"}


def _tags(args: ResourceValidationArgs, report: Report) -> None:
    if args.resource_type not in TAGGABLE:
        return
    key = _TAG_KEYS.get(args.resource_type) or ("labels" if args.resource_type.startswith("gcp:") else "tags")
    tags = args.props.get(key) or {}
    missing = [t for t in REQUIRED_TAGS if not tags.get(t)]
    if missing:
        report(f"missing required tags: {', '.join(missing)}")


# -- GPUs on the allow-list ------------------------------------------------------------------------
def _instances(t: str, p: dict) -> list[tuple[str, str]]:
    """(cloud, instance type) pairs a resource provisions."""
    if t == "aws:sagemaker/endpointConfiguration:EndpointConfiguration":
        return [("aws", v.get("instanceType", "")) for v in p.get("productionVariants") or []]
    if t == "gcp:vertex/aiEndpointWithModelGardenDeployment:AiEndpointWithModelGardenDeployment":
        return [("gcp", _get(p, "deployConfig", "dedicatedResources", "machineSpec", "machineType") or "")]
    if t == "azure-native:machinelearningservices:OnlineDeployment":
        return [("azure", _get(p, "properties", "instanceType") or "")]
    if t == "azure-native:machinelearningservices:Compute":
        return [("azure", _get(p, "properties", "properties", "vmSize") or "")]
    # Kubernetes node pools with GPUs (a GPU AMI, guest accelerators, an N-series size); the GPU
    # catalog names SageMaker's ml.* types on AWS, EKS the EC2 types behind them.
    if t == "aws:eks/nodeGroup:NodeGroup" and any(g in str(p.get("amiType") or "") for g in ("NVIDIA", "GPU")):
        return [("aws", f"ml.{i}") for i in p.get("instanceTypes") or [""]]
    if t == "gcp:container/nodePool:NodePool" and _get(p, "nodeConfig", "guestAccelerators"):
        return [("gcp", _get(p, "nodeConfig", "machineType") or "")]
    if t == "azure-native:containerservice:AgentPool" and _is_azure_gpu(p.get("vmSize")):
        return [("azure", p.get("vmSize") or "")]
    if t == "azure-native:containerservice:ManagedCluster":
        return [("azure", q.get("vmSize") or "") for q in p.get("agentPoolProfiles") or [] if _is_azure_gpu(q.get("vmSize"))]
    return []


def _is_azure_gpu(size: Any) -> bool:
    """Azure's GPU sizes are the N-series (Standard_NC..., Standard_ND..., Standard_NV...)."""
    return str(size or "").startswith("Standard_N")


def _gpus(args: ResourceValidationArgs, report: Report) -> None:
    allowed = list((args.get_config() or {}).get("allowedGpus") or DEFAULT_ALLOWED_GPUS)
    for cloud, instance in _instances(args.resource_type, args.props):
        offer = catalog.offer_for_instance(cloud, instance)
        if offer is None:
            report(f"instance type {instance!r} is not in the GPU catalog; use a catalog GPU")
        elif offer.gpu not in allowed:
            report(f"GPU {offer.gpu} ({instance}) is not on the allow-list: {', '.join(allowed)}")


# -- bounded replicas ------------------------------------------------------------------------------
def _replicas(args: ResourceValidationArgs, report: Report) -> None:
    t, p = args.resource_type, args.props
    limit = int((args.get_config() or {}).get("maxReplicas") or DEFAULT_MAX_REPLICAS)
    bounds: tuple[Any, Any] | None = None
    if t == "aws:appautoscaling/target:Target":
        bounds = (p.get("minCapacity"), p.get("maxCapacity"))
    elif t == "gcp:vertex/aiEndpointWithModelGardenDeployment:AiEndpointWithModelGardenDeployment":
        d = _get(p, "deployConfig", "dedicatedResources") or {}
        bounds = (d.get("minReplicaCount"), d.get("maxReplicaCount"))
    elif t == "azure-native:machinelearningservices:OnlineDeployment":
        s = _get(p, "properties", "scaleSettings") or {}
        if s.get("scaleType") == "Default":
            # A managed deployment: a fixed count (sku.capacity), moved only by an autoscale setting.
            capacity = _get(p, "sku", "capacity")
            bounds = (capacity, capacity)
        else:
            bounds = (s.get("minInstances"), s.get("maxInstances"))
    elif t == "azure-native:monitor:AutoscaleSetting":
        capacities = [profile.get("capacity") or {} for profile in p.get("profiles") or []]
        lows = [float(c["minimum"]) for c in capacities if c.get("minimum") is not None]
        highs = [float(c["maximum"]) for c in capacities if c.get("maximum") is not None]
        bounds = (min(lows) if lows else None, max(highs) if highs else None)
    elif t == "azure-native:machinelearningservices:Compute":
        s = _get(p, "properties", "properties", "scaleSettings") or {}
        bounds = (s.get("minNodeCount"), s.get("maxNodeCount"))
    elif t == "aws:eks/nodeGroup:NodeGroup":
        bounds = (_get(p, "scalingConfig", "minSize"), _get(p, "scalingConfig", "maxSize"))
    elif t == "gcp:container/nodePool:NodePool":
        a = p.get("autoscaling") or {}
        bounds = (a.get("totalMinNodeCount", a.get("minNodeCount")), a.get("totalMaxNodeCount", a.get("maxNodeCount")))
    elif t == "azure-native:containerservice:AgentPool":
        bounds = (p.get("minCount"), p.get("maxCount") if p.get("enableAutoScaling") else p.get("count"))
    if bounds is None:
        return
    low, high = bounds
    if high is None:
        report(f"no maximum replica count: set one of at most {limit}")
    elif float(high) > limit:
        report(f"maximum replicas {high:g} exceeds the bound {limit}")
    elif low is not None and float(low) > float(high):
        report(f"minimum replicas {low:g} exceeds maximum {high:g}")


# -- a budget --------------------------------------------------------------------------------------
BUDGET_TYPES = ("aws:budgets/budget:Budget", "gcp:billing/budget:Budget", "azure-native:consumption:Budget")


def _budget(args: StackValidationArgs, report: Report) -> None:
    budgets = [r for r in args.resources if r.resource_type in BUDGET_TYPES]
    if not budgets:
        report("the stack has no monthly budget (AWS Budgets, GCP billing budget or Azure consumption budget)")
        return
    for r in budgets:
        alerts = (r.props.get("notifications") or r.props.get("thresholdRules")
                  or {}) if isinstance(r.props, dict) else None
        if not alerts:
            report(f"budget {r.name} sends no alerts")


# -- Kubernetes names -------------------------------------------------------------------------------
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# Kinds whose names end up in DNS names or label values, so must be RFC 1123 labels.
_LABEL_KINDS = {"Namespace", "Service", "LocalQueue", "ClusterQueue"}
# What each cloud accepts for a cluster's or a node pool's name (their API references).
_CLOUD_NAMES = {
    "aws:eks/cluster:Cluster": ("name", re.compile(r"^[0-9A-Za-z][A-Za-z0-9_-]{0,99}$"), "1-100 letters, digits, - or _"),
    "aws:eks/nodeGroup:NodeGroup": ("nodeGroupName", re.compile(r"^[0-9A-Za-z][A-Za-z0-9_-]{0,62}$"),
                                    "1-63 letters, digits, - or _"),
    "gcp:container/cluster:Cluster": ("name", re.compile(r"^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$"),
                                      "1-40 lower-case letters, digits or -, starting with a letter"),
    "gcp:container/nodePool:NodePool": ("name", re.compile(r"^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$"),
                                        "1-40 lower-case letters, digits or -, starting with a letter"),
    "azure-native:containerservice:ManagedCluster": (
        "resourceName", re.compile(r"^[a-zA-Z0-9]$|^[a-zA-Z0-9][-_a-zA-Z0-9]{0,61}[a-zA-Z0-9]$"),
        "1-63 letters, digits, - or _"),
    "azure-native:containerservice:AgentPool": ("agentPoolName", re.compile(r"^[a-z][a-z0-9]{0,11}$"),
                                                "1-12 lower-case letters or digits, starting with a letter"),
}


def _names(args: ResourceValidationArgs, report: Report) -> None:
    t, p = args.resource_type, args.props
    if t.startswith("kubernetes:") and isinstance(p.get("metadata"), dict):
        name, kind = str(p["metadata"].get("name") or ""), str(p.get("kind") or t.rsplit(":", 1)[-1])
        pattern = _DNS_LABEL if kind in _LABEL_KINDS else _DNS_SUBDOMAIN
        if not pattern.fullmatch(name):
            report(f"{kind} name {name!r} is not a valid Kubernetes name (lower-case letters, digits and '-'"
                   f"{'' if kind in _LABEL_KINDS else ', dots between parts'}; at most "
                   f"{63 if kind in _LABEL_KINDS else 253} characters)")
    if t in _CLOUD_NAMES:
        key, pattern, rule = _CLOUD_NAMES[t]
        if p.get(key) is not None and not pattern.fullmatch(str(p[key])):
            report(f"{key} {p[key]!r} is not a name the cloud accepts: {rule}")
    if t == "azure-native:containerservice:ManagedCluster":
        for profile in p.get("agentPoolProfiles") or []:
            if not _CLOUD_NAMES["azure-native:containerservice:AgentPool"][1].fullmatch(str(profile.get("name") or "")):
                report(f"agent pool name {profile.get('name')!r} is not a name AKS accepts: "
                       f"{_CLOUD_NAMES['azure-native:containerservice:AgentPool'][2]}")


_GPU_SCHEMA = PolicyConfigSchema(properties={"allowedGpus": {"type": "array", "items": {"type": "string"},
                                                             "default": DEFAULT_ALLOWED_GPUS}})
_REPLICA_SCHEMA = PolicyConfigSchema(properties={"maxReplicas": {"type": "integer", "default": DEFAULT_MAX_REPLICAS}})

POLICIES = [
    ResourceValidationPolicy(name="encryption-at-rest", validate=_encryption,
                             description="Data at rest is encrypted with the stack's customer-managed key."),
    StackValidationPolicy(name="buckets-encrypted-and-closed", validate=_buckets_covered,
                          description="Every S3 bucket has a KMS encryption configuration and a public access block."),
    ResourceValidationPolicy(name="no-public-access", validate=_not_public,
                             description="No bucket, container, registry, workspace or endpoint is public."),
    ResourceValidationPolicy(name="required-tags", validate=_tags,
                             description="Taggable resources carry project, env, owner and cost-center."),
    ResourceValidationPolicy(name="gpu-allow-list", validate=_gpus, config_schema=_GPU_SCHEMA,
                             description="GPU instances are catalog GPUs on the stack's allow-list."),
    ResourceValidationPolicy(name="bounded-replicas", validate=_replicas, config_schema=_REPLICA_SCHEMA,
                             description="Endpoint replicas and cluster nodes have a maximum within the bound."),
    StackValidationPolicy(name="budget-present", validate=_budget,
                          description="The stack has a monthly budget with alerts."),
    ResourceValidationPolicy(name="kubernetes-names", validate=_names,
                             description="Kubernetes objects, clusters and node pools have names the API server "
                                         "and the cloud accept."),
]


def check(resources: list[Any], config: dict[str, dict[str, Any]] | None = None) -> list[tuple[str, str, str]]:
    """Run every policy on resources recorded under mocks (`stackwise.infra.offline`).

    `config` is per policy name, as in `--policy-pack-config`. Returns (policy, resource name,
    message) for each violation; empty when the stack passes.
    """
    from pulumi_policy.policy import PolicyCustomTimeouts, PolicyResource, PolicyResourceOptions

    config = config or {}
    violations: list[tuple[str, str, str]] = []

    def options() -> PolicyResourceOptions:
        return PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [])

    custom = [r for r in resources if r.custom]
    for policy in POLICIES:
        def report(message: str, urn: str | None = None, *, _p=policy, _name="") -> None:
            violations.append((_p.name, _name, message))

        if isinstance(policy, ResourceValidationPolicy):
            for r in custom:
                args = ResourceValidationArgs(r.type, r.inputs, r.urn, r.name, options(), None,
                                              config.get(policy.name, {}))
                for validate in policy.validate if isinstance(policy.validate, list) else [policy.validate]:
                    validate(args, lambda m, urn=None, _n=r.name, _p=policy: violations.append((_p.name, _n, m)))
        else:
            # Stack policies see outputs (the engine's state), as after a real preview.
            stack = [PolicyResource(r.type, r.state or r.inputs, r.urn, r.name, options(), None, None, [], {}) for r in custom]
            policy.validate(StackValidationArgs(stack, config.get(policy.name, {})), report)
    return violations
