"""AWS's part of the policy pack (infra/policy): its encrypted, private, tagged, bounded and
budgeted resource types, and the S3 policy that every bucket has its own encryption
configuration and public access block. Needs nothing beyond the standard library (the AWS
endpoint imports `has_local_nvme` from here)."""

from __future__ import annotations

import re
from typing import Any

from ..cloud import PolicyRules, Report, get, name_check

# SageMaker instance families with local NVMe instance storage. That storage is encrypted by a
# hardware module on the instance, and CreateEndpointConfig *fails* when a KmsKeyId is given for
# such an instance (SageMaker API reference, CreateEndpointConfig.KmsKeyId); the KMS key encrypts
# only the EBS volumes of the other families.
_LOCAL_NVME_FAMILIES = ("g4dn", "g5", "g6", "g6e", "p3dn", "p4d", "p4de", "p5", "p5e", "p5en", "trn1", "trn1n",
                        "m5d", "c5d", "r5d", "m6id", "c6id", "r6id")


def has_local_nvme(instance_type: str) -> bool:
    """Whether a SageMaker instance type (`ml.g5.xlarge`) stores on local NVMe (hardware-encrypted)."""
    parts = instance_type.split(".")
    return len(parts) == 3 and parts[0] == "ml" and parts[1] in _LOCAL_NVME_FAMILIES


# -- encryption at rest ---------------------------------------------------------------------------
def _s3_encryption(p: dict, report: Report) -> None:
    rule = get(p, "rules", 0, "applyServerSideEncryptionByDefault") or {}
    if rule.get("sseAlgorithm") not in ("aws:kms", "aws:kms:dsse") or not rule.get("kmsMasterKeyId"):
        report("S3 encryption must use the stack's KMS key (sseAlgorithm aws:kms with kmsMasterKeyId)")


def _ecr_encryption(p: dict, report: Report) -> None:
    if get(p, "encryptionConfigurations", 0, "encryptionType") != "KMS":
        report("ECR repositories must be encrypted with KMS")


def _endpoint_encryption(p: dict, report: Report) -> None:
    # Local NVMe storage is encrypted in hardware and SageMaker refuses a key for it.
    local = [has_local_nvme(str(v.get("instanceType") or "")) for v in p.get("productionVariants") or []]
    if not p.get("kmsKeyArn") and not (local and all(local)):
        report("SageMaker endpoint volumes must be encrypted with the stack's KMS key (kmsKeyArn)")
    if p.get("kmsKeyArn") and any(local):
        report("SageMaker refuses a KMS key for instance types with local NVMe storage (encrypted in "
               "hardware): drop kmsKeyArn or choose an EBS-backed instance type")


def _sns_encryption(p: dict, report: Report) -> None:
    key = str(p.get("kmsMasterKeyId") or "")
    if not key or key.endswith("alias/aws/sns"):
        report("SNS topics must be encrypted with a customer-managed KMS key whose policy lets the "
               "publishers (CloudWatch alarms) use it; with alias/aws/sns alarm notifications are lost")


def _secret_encryption(p: dict, report: Report) -> None:
    if not p.get("kmsKeyId"):
        report("secrets must be encrypted with the stack's KMS key (kmsKeyId)")


def _eks_encryption(p: dict, report: Report) -> None:
    configs = p.get("encryptionConfig")
    configs = configs if isinstance(configs, list) else [configs] if configs else []
    if not any("secrets" in (c.get("resources") or []) and get(c, "provider", "keyArn") for c in configs):
        report("EKS clusters must encrypt Kubernetes secrets with the stack's KMS key (encryptionConfig)")


# -- nothing public --------------------------------------------------------------------------------
def _access_block(p: dict, report: Report) -> None:
    off = [k for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
           if p.get(k) is not True]
    if off:
        report(f"the bucket's public access block must set {', '.join(off)} to true")


def _bucket_acl(p: dict, report: Report) -> None:
    if str(p.get("acl") or "private").startswith("public"):
        report(f"S3 bucket ACL {p.get('acl')} makes it public")


def _model_in_vpc(p: dict, report: Report) -> None:
    if not get(p, "vpcConfig", "subnets"):
        report("SageMaker models must run in the stack's private subnets (vpcConfig)")


def _eks_private(p: dict, report: Report) -> None:
    if get(p, "vpcConfig", "endpointPublicAccess") is not False:
        report("EKS clusters must keep their API endpoint private (vpcConfig.endpointPublicAccess false)")


# -- every bucket covered (a stack policy: it compares resources) -----------------------------------
def _buckets_covered(args: Any, report: Report) -> None:
    """Every S3 bucket has its own encryption configuration and public access block."""
    buckets = {r.props.get("bucket") or r.name: r.name for r in args.resources if r.resource_type == "aws:s3/bucket:Bucket"}
    for kind, label in (("BucketServerSideEncryptionConfiguration", "KMS encryption configuration"),
                        ("BucketPublicAccessBlock", "public access block")):
        covered = {r.props.get("bucket") for r in args.resources if r.resource_type.endswith(f":{kind}")}
        for bucket, name in buckets.items():
            if bucket not in covered:
                report(f"S3 bucket {name} has no {label}")




_TAGGABLE = (
    "aws:kms/key:Key", "aws:s3/bucket:Bucket", "aws:ecr/repository:Repository", "aws:ec2/vpc:Vpc",
    "aws:ec2/subnet:Subnet", "aws:ec2/routeTable:RouteTable", "aws:ec2/vpcEndpoint:VpcEndpoint",
    "aws:ec2/securityGroup:SecurityGroup", "aws:iam/role:Role", "aws:secretsmanager/secret:Secret",
    "aws:sagemaker/model:Model", "aws:sagemaker/endpointConfiguration:EndpointConfiguration",
    "aws:sagemaker/endpoint:Endpoint", "aws:appautoscaling/target:Target", "aws:sns/topic:Topic",
    "aws:cloudwatch/metricAlarm:MetricAlarm", "aws:budgets/budget:Budget",
    # The pipeline trigger's (stackwise:pipelineTrigger).
    "aws:sagemaker/pipeline:Pipeline", "aws:cloudwatch/eventRule:EventRule",
    # A kubernetes stack's cluster (stackwise:kubernetes.createCluster) and identity binding.
    "aws:eks/cluster:Cluster", "aws:eks/nodeGroup:NodeGroup", "aws:eks/addon:Addon",
    "aws:eks/podIdentityAssociation:PodIdentityAssociation",
)


def _gpu_node_group(p: dict) -> list[str]:
    # A GPU AMI's node group; the GPU catalog names SageMaker's ml.* types, EKS the EC2 types behind them.
    if any(g in str(p.get("amiType") or "") for g in ("NVIDIA", "GPU")):
        return [f"ml.{i}" for i in p.get("instanceTypes") or [""]]
    return []


RULES = PolicyRules(
    encryption={
        "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration": _s3_encryption,
        "aws:ecr/repository:Repository": _ecr_encryption,
        "aws:sagemaker/endpointConfiguration:EndpointConfiguration": _endpoint_encryption,
        "aws:sns/topic:Topic": _sns_encryption,
        "aws:secretsmanager/secret:Secret": _secret_encryption,
        "aws:eks/cluster:Cluster": _eks_encryption,
    },
    not_public={
        "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock": _access_block,
        "aws:s3/bucket:Bucket": _bucket_acl,
        "aws:sagemaker/model:Model": _model_in_vpc,
        "aws:eks/cluster:Cluster": _eks_private,
    },
    tags=dict.fromkeys(_TAGGABLE, "tags"),
    instances={
        "aws:sagemaker/endpointConfiguration:EndpointConfiguration":
            lambda p: [v.get("instanceType", "") for v in p.get("productionVariants") or []],
        "aws:eks/nodeGroup:NodeGroup": _gpu_node_group,
    },
    replicas={
        "aws:appautoscaling/target:Target": lambda p: (p.get("minCapacity"), p.get("maxCapacity")),
        "aws:eks/nodeGroup:NodeGroup": lambda p: (get(p, "scalingConfig", "minSize"), get(p, "scalingConfig", "maxSize")),
    },
    budgets=("aws:budgets/budget:Budget",),
    budget_label="AWS Budgets",
    names={
        "aws:eks/cluster:Cluster": name_check("name", re.compile(r"^[0-9A-Za-z][A-Za-z0-9_-]{0,99}$"),
                                              "1-100 letters, digits, - or _"),
        "aws:eks/nodeGroup:NodeGroup": name_check("nodeGroupName", re.compile(r"^[0-9A-Za-z][A-Za-z0-9_-]{0,62}$"),
                                                  "1-63 letters, digits, - or _"),
    },
    stack_policies=(("buckets-encrypted-and-closed",
                     "Every S3 bucket has a KMS encryption configuration and a public access block.", _buckets_covered),),
)
