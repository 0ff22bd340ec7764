"""The stack's Kubernetes cluster on AWS: an EKS cluster in the platform's private subnets with a
small system node group and the GPU node group (`createCluster: true`), and, created or existing,
the EKS Pod Identity association that makes the stack's service account run as the job role."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi

from stackwise.catalog import Offer

from ..config import NodePoolConfig
from ..kubernetes import manifests
from ._provider import aws

# The system node group runs CoreDNS, Kueue, the autoscaler and the device plugin: GPU nodes are
# tainted and scale to zero, so they cannot.
SYSTEM_INSTANCE = "m5.large"
SYSTEM_NODES = (1, 2)
GPU_AMI = "AL2023_x86_64_NVIDIA"
"""EKS-optimized Amazon Linux 2023 with the NVIDIA driver and container toolkit (AL2 AMIs ended 2025-11-26)."""
SYSTEM_AMI = "AL2023_x86_64_STANDARD"
# Interface endpoints private nodes need beyond the platform's (ECR, logs, STS): EC2 (node
# bootstrap, the VPC CNI), EKS (the autoscaler's DescribeNodegroup), EKS Auth (Pod Identity's
# credentials) and Auto Scaling (the autoscaler). See docs/kubernetes.md.
NODE_ENDPOINTS = ("ec2", "eks", "eks-auth", "autoscaling")
_EFFECT = {"NoSchedule": "NO_SCHEDULE", "NoExecute": "NO_EXECUTE", "PreferNoSchedule": "PREFER_NO_SCHEDULE"}


@dataclass
class EksClusterArgs:
    create: bool
    """Create the cluster and its node groups; False: only bind the identity on `cluster_name`."""
    namespace: str
    service_account: str
    job_role_arn: pulumi.Input[str]
    """The platform's job role (it trusts pods.eks.amazonaws.com on a kubernetes stack)."""
    region: str
    tags: dict[str, str]
    cluster_name: str | None = None
    """The existing cluster's EKS name (create=False)."""
    node_pool: NodePoolConfig | None = None
    offer: Offer | None = None
    """The catalog's offer for the pool (its instance, without SageMaker's `ml.` prefix)."""
    subnet_ids: list[pulumi.Input[str]] | None = None
    kms_key_arn: pulumi.Input[str] | None = None
    """Encrypts the cluster's Kubernetes secrets."""
    endpoints_security_group_id: pulumi.Input[str] | None = None
    """The platform's interface endpoints' security group: the nodes (in the cluster security group) reach them on 443."""


def _assume(service: str) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}]})


def node_instance(offer: Offer) -> str:
    """The EC2 instance type of a catalog offer (the catalog names SageMaker's ml.* types)."""
    return offer.instance.removeprefix("ml.")


class EksCluster(pulumi.ComponentResource):
    """`name`, `kubeconfig` (exec `aws eks get-token`) and `ready` (what installs wait for)."""

    def __init__(self, name: str, args: EksClusterArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("stackwise:aws:EksCluster", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = args.tags
        self.kubeconfig: pulumi.Output[str] | None = None
        self.ready: list[pulumi.Resource] = []
        if not args.create:
            assert args.cluster_name
            self.name: pulumi.Output[str] = pulumi.Output.from_input(args.cluster_name)
            self.ready.append(aws.eks.PodIdentityAssociation(
                f"{name}-jobs-identity", cluster_name=args.cluster_name, namespace=args.namespace,
                service_account=args.service_account, role_arn=args.job_role_arn, tags=tags, opts=child))
            self.register_outputs({"name": self.name})
            return
        assert args.node_pool is not None and args.offer is not None and args.subnet_ids
        pool = args.node_pool
        cluster_role = aws.iam.Role(f"{name}-cluster-role", description=f"{name}: EKS control plane",
                                    assume_role_policy=_assume("eks.amazonaws.com"), tags=tags, opts=child)
        attached = [aws.iam.RolePolicyAttachment(f"{name}-cluster-policy", role=cluster_role.name,
                                                 policy_arn="arn:aws:iam::aws:policy/AmazonEKSClusterPolicy",
                                                 opts=child)]
        attached.append(aws.iam.RolePolicy(f"{name}-cluster-kms", role=cluster_role.id, policy=pulumi.Output.json_dumps(
            {"Version": "2012-10-17", "Statement": [{
                "Sid": "SecretsEnvelope", "Effect": "Allow", "Resource": args.kms_key_arn,
                "Action": ["kms:Encrypt", "kms:Decrypt", "kms:DescribeKey", "kms:CreateGrant"]}]}), opts=child))
        self.cluster = aws.eks.Cluster(
            f"{name}-eks", name=name, role_arn=cluster_role.arn,
            # Private API endpoint only: `pulumi up` and the SDK reach it from the VPC or a network
            # connected to it, like the rest of the stack (docs/kubernetes.md).
            vpc_config={"subnet_ids": args.subnet_ids, "endpoint_private_access": True,
                        "endpoint_public_access": False},
            access_config={"authentication_mode": "API", "bootstrap_cluster_creator_admin_permissions": True},
            encryption_config={"provider": {"key_arn": args.kms_key_arn}, "resources": ["secrets"]},
            enabled_cluster_log_types=["api", "audit", "authenticator"], tags=tags,
            opts=pulumi.ResourceOptions(parent=self, depends_on=attached))
        self.name = self.cluster.name
        aws.ec2.SecurityGroupRule(
            f"{name}-nodes-to-endpoints", type="ingress", protocol="tcp", from_port=443, to_port=443,
            security_group_id=args.endpoints_security_group_id,
            source_security_group_id=self.cluster.vpc_config.cluster_security_group_id,
            description="EKS nodes to the VPC interface endpoints", opts=child)

        node_role = aws.iam.Role(f"{name}-node-role", description=f"{name}: EKS nodes",
                                 assume_role_policy=_assume("ec2.amazonaws.com"), tags=tags, opts=child)
        node_policies = [aws.iam.RolePolicyAttachment(f"{name}-node-{short}", role=node_role.name,
                                                      policy_arn=f"arn:aws:iam::aws:policy/{policy}", opts=child)
                         for short, policy in (("worker", "AmazonEKSWorkerNodePolicy"),
                                               ("cni", "AmazonEKS_CNI_Policy"),
                                               ("ecr", "AmazonEC2ContainerRegistryReadOnly"))]
        after_nodes = pulumi.ResourceOptions(parent=self, depends_on=node_policies,
                                             ignore_changes=["scalingConfig.desiredSize"])
        low, high = SYSTEM_NODES
        system = aws.eks.NodeGroup(
            f"{name}-system", cluster_name=self.cluster.name, node_group_name="system", node_role_arn=node_role.arn,
            subnet_ids=args.subnet_ids, instance_types=[SYSTEM_INSTANCE], ami_type=SYSTEM_AMI,
            capacity_type="ON_DEMAND", scaling_config={"desired_size": low, "min_size": low, "max_size": high},
            labels={"stackwise.dev/pool": "system"}, tags=tags, opts=after_nodes)
        labels, taints = manifests.pool_labels_and_taints(args.offer.gpu, pool.spot)
        gpu = aws.eks.NodeGroup(
            f"{name}-gpu", cluster_name=self.cluster.name, node_group_name="gpu", node_role_arn=node_role.arn,
            subnet_ids=args.subnet_ids, instance_types=[node_instance(args.offer)], ami_type=GPU_AMI,
            capacity_type="SPOT" if pool.spot else "ON_DEMAND",
            scaling_config={"desired_size": pool.min_nodes, "min_size": pool.min_nodes, "max_size": pool.max_nodes},
            labels=labels, taints=[{"key": t["key"], "value": t["value"], "effect": _EFFECT[t["effect"]]} for t in taints],
            tags=tags, opts=after_nodes)
        agent = aws.eks.Addon(f"{name}-pod-identity-agent", cluster_name=self.cluster.name,
                              addon_name="eks-pod-identity-agent", tags=tags,
                              opts=pulumi.ResourceOptions(parent=self, depends_on=[system]))
        identity = aws.eks.PodIdentityAssociation(
            f"{name}-jobs-identity", cluster_name=self.cluster.name, namespace=args.namespace,
            service_account=args.service_account, role_arn=args.job_role_arn, tags=tags,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[agent]))
        self.ready = [system, gpu, agent, identity]
        region = args.region
        self.kubeconfig = pulumi.Output.all(self.cluster.name, self.cluster.endpoint,
                                            self.cluster.certificate_authority.data).apply(
            lambda v: manifests.eks_kubeconfig(v[0], v[1], v[2], region))
        self.register_outputs({"name": self.name})

