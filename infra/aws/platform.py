"""AWS training platform: KMS key, artifact bucket, job role, image registry, private network."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi

from stackwise.contract import CHECKPOINTS_PREFIX

from ..common import subnets
from ..images import ImageBuildArgs, RegistryLogin, build_images
from ._provider import aws


@dataclass
class TrainingPlatformArgs:
    region: str
    """AWS region; subnets go to its zones a and b."""
    cidr: str
    """The private network's range (/20 subnets are carved from it: two private, one public with
    `internet_egress`)."""
    tags: dict[str, str]
    """Tags on every taggable resource."""
    pinecone_api_key: pulumi.Input[str] | None = None
    """When set, stored in Secrets Manager (KMS-encrypted) for jobs to read."""
    external_secret_arn: str | None = None
    """A Secrets Manager secret made elsewhere (an existing Weaviate/Milvus cluster's key) jobs may read."""
    images: ImageBuildArgs | None = None
    """When set, the training and serving images are built and pushed to the registry (tags `:train`,
    `:serve`: ECR holds one image name per repository) and exported digest-pinned."""
    internet_egress: bool = False
    """When set, a NAT gateway in a public subnet gives jobs and endpoints a route to the internet
    (HTTPS only: Hugging Face, PyPI, a hosted vector store). Off: the network reaches only AWS
    services through VPC endpoints, and models must come from S3."""
    eks_pod_identity: bool = False
    """A kubernetes stack: the job role also trusts EKS Pod Identity (pods.eks.amazonaws.com), so the
    stack's service account on its EKS cluster runs as it."""
    node_endpoints: tuple[str, ...] = ()
    """Interface endpoints private EKS nodes need beyond INTERFACE_ENDPOINTS (infra/aws/eks.py)."""


# AWS services jobs and endpoints reach through interface endpoints (PrivateLink), with private
# DNS so the SDKs' default host names resolve to them: image layers (ECR API and registry),
# container logs, STS (regional credentials), and the vector store key (Secrets Manager).
INTERFACE_ENDPOINTS = ("ecr.api", "ecr.dkr", "logs", "sts", "secretsmanager")
HTTPS = 443
# EKS Pod Identity assumes the role for a pod's service account (and tags the session with it).
POD_IDENTITY_TRUST = {"Effect": "Allow", "Principal": {"Service": "pods.eks.amazonaws.com"},
                      "Action": ["sts:AssumeRole", "sts:TagSession"]}


class TrainingPlatform(pulumi.ComponentResource):
    """Everything SageMaker training jobs need; SageMaker itself needs no standing cluster.

    The bucket is KMS-encrypted with the stack's own key, versioned, closed to the public and
    expires stale versions; the job role can reach only that bucket, that key, its registry and
    its secret. Jobs and endpoint models run in the private subnets (`network`, exported in the
    stack contract, is their `VpcConfig`); see docs/stacks.md, "AWS network".
    """

    def __init__(self, name: str, args: TrainingPlatformArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("stackwise:aws:TrainingPlatform", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = args.tags

        self.key = aws.kms.Key(f"{name}-key", description=f"{name}: artifacts, images, secrets, endpoints",
                               enable_key_rotation=True, deletion_window_in_days=30, tags=tags, opts=child)
        self.bucket = aws.s3.Bucket(f"{name}-artifacts", force_destroy=False, tags=tags, opts=child)
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-artifacts-sse", bucket=self.bucket.id,
            rules=[{"apply_server_side_encryption_by_default": {"sse_algorithm": "aws:kms",
                                                                "kms_master_key_id": self.key.arn},
                    "bucket_key_enabled": True}],
            opts=child)
        aws.s3.BucketVersioning(f"{name}-artifacts-versioning", bucket=self.bucket.id,
                                versioning_configuration={"status": "Enabled"}, opts=child)
        aws.s3.BucketPublicAccessBlock(f"{name}-artifacts-public-access", bucket=self.bucket.id,
                                       block_public_acls=True, block_public_policy=True,
                                       ignore_public_acls=True, restrict_public_buckets=True, opts=child)
        aws.s3.BucketLifecycleConfiguration(
            f"{name}-artifacts-lifecycle", bucket=self.bucket.id,
            rules=[
                {"id": "abort-incomplete-uploads", "status": "Enabled", "filter": {},
                 "abort_incomplete_multipart_upload": {"days_after_initiation": 7}},
                {"id": "expire-old-versions", "status": "Enabled", "filter": {},
                 "noncurrent_version_expiration": {"noncurrent_days": 30}},
                # Checkpoints are written under this top-level prefix (the SageMaker adapter's
                # CheckpointConfig): an S3 prefix filter cannot match `<anything>/checkpoints/`.
                {"id": "checkpoints-to-infrequent-access", "status": "Enabled",
                 "filter": {"prefix": CHECKPOINTS_PREFIX},
                 "transitions": [{"days": 30, "storage_class": "STANDARD_IA"}]},
            ],
            opts=child)

        self.repository = aws.ecr.Repository(
            f"{name}-images", image_tag_mutability="MUTABLE",
            encryption_configurations=[{"encryption_type": "KMS", "kms_key": self.key.arn}],
            image_scanning_configuration={"scan_on_push": True}, tags=tags, opts=child)

        self._network(name, args, tags, child)

        self.secret = None
        if args.pinecone_api_key is not None:
            self.secret = aws.secretsmanager.Secret(f"{name}-pinecone-api-key", kms_key_id=self.key.arn,
                                                    recovery_window_in_days=7, tags=tags, opts=child)
            aws.secretsmanager.SecretVersion(f"{name}-pinecone-api-key-value", secret_id=self.secret.id,
                                             secret_string=args.pinecone_api_key, opts=child)

        self.role = aws.iam.Role(
            f"{name}-jobs-role",
            description="stackwise training jobs and endpoints",
            assume_role_policy=json.dumps({"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}]
                + ([POD_IDENTITY_TRUST] if args.eks_pod_identity else [])}),
            tags=tags, opts=child)
        aws.iam.RolePolicy(f"{name}-jobs-policy", role=self.role.id,
                           policy=_job_policy(self.bucket.arn, self.key.arn, self.repository.arn,
                                              self.secret.arn if self.secret else args.external_secret_arn),
                           opts=child)

        self.network = pulumi.Output.all(*[s.id for s in self.subnets], self.security_group.id).apply(
            lambda ids: {"subnets": list(ids[:-1]), "security_groups": [ids[-1]]})
        self.artifact_store = self.bucket.bucket.apply(lambda b: f"s3://{b}")
        self.training_image = self.repository.repository_url.apply(lambda url: f"{url}:latest")
        self.serving_image: pulumi.Output[str] | None = None
        self.images: dict[str, pulumi.Resource] = {}
        if args.images is not None:
            url = self.repository.repository_url
            # The registry's own short-lived token (12 h), read when `pulumi up` runs.
            token = aws.ecr.get_authorization_token_output(registry_id=self.repository.registry_id,
                                                           opts=pulumi.InvokeOutputOptions(parent=self))
            self.images, pinned = build_images(
                name, args.images, {t: url.apply(lambda u, t=t: f"{u}:{t}") for t in ("train", "serve")},
                RegistryLogin(address=url.apply(lambda u: u.split("/", 1)[0]), username=token.user_name,
                              password=token.password), parent=self)
            self.training_image, self.serving_image = pinned["train"], pinned["serve"]
        self.secret_refs = {"pinecone_api_key": self.secret.arn.apply(lambda a: f"aws-sm://{a}")} if self.secret else {}
        self.register_outputs({"artifact_store": self.artifact_store, "job_role": self.role.arn,
                               "training_image": self.training_image})

    def _network(self, name: str, args: TrainingPlatformArgs, tags: dict[str, str],
                 child: pulumi.ResourceOptions) -> None:
        """The private network: two private subnets with no route to the internet (unless
        `internet_egress`), S3 through a gateway endpoint, the other AWS services jobs use
        through interface endpoints, and one security group for jobs and endpoint models."""
        self.vpc = aws.ec2.Vpc(f"{name}-vpc", cidr_block=args.cidr, enable_dns_hostnames=True,
                               enable_dns_support=True, tags=tags, opts=child)
        blocks = subnets(args.cidr, 3)
        self.subnets = [
            aws.ec2.Subnet(f"{name}-private-{zone}", vpc_id=self.vpc.id, cidr_block=block,
                           availability_zone=f"{args.region}{zone}", map_public_ip_on_launch=False,
                           tags=tags, opts=child)
            for zone, block in zip("ab", blocks[:2])
        ]
        self.route_table = aws.ec2.RouteTable(f"{name}-private-routes", vpc_id=self.vpc.id, tags=tags, opts=child)
        for subnet, zone in zip(self.subnets, "ab"):
            aws.ec2.RouteTableAssociation(f"{name}-private-routes-{zone}", subnet_id=subnet.id,
                                          route_table_id=self.route_table.id, opts=child)
        # S3 (artifacts, checkpoints, model data) through the free gateway endpoint: its traffic is
        # addressed to S3's public ranges, which the endpoint's prefix list names.
        self.s3_endpoint = aws.ec2.VpcEndpoint(
            f"{name}-s3-endpoint", vpc_id=self.vpc.id, service_name=f"com.amazonaws.{args.region}.s3",
            vpc_endpoint_type="Gateway", route_table_ids=[self.route_table.id], tags=tags, opts=child)

        egress = [
            {"protocol": "-1", "from_port": 0, "to_port": 0, "self": True,
             "description": "the nodes of one job (torchrun, NCCL)"},
            {"protocol": "tcp", "from_port": HTTPS, "to_port": HTTPS, "cidr_blocks": [args.cidr],
             "description": "AWS services through the VPC's interface endpoints"},
            {"protocol": "tcp", "from_port": HTTPS, "to_port": HTTPS,
             "prefix_list_ids": [self.s3_endpoint.prefix_list_id], "description": "S3 through the gateway endpoint"},
        ]
        if args.internet_egress:
            egress.append({"protocol": "tcp", "from_port": HTTPS, "to_port": HTTPS, "cidr_blocks": ["0.0.0.0/0"],
                           "description": "the internet (model hubs) through the NAT gateway"})
        self.security_group = aws.ec2.SecurityGroup(
            f"{name}-jobs-sg", vpc_id=self.vpc.id,
            description="stackwise jobs and endpoints: each other, S3 and the VPC endpoints",
            ingress=[{"protocol": "-1", "from_port": 0, "to_port": 0, "self": True,
                      "description": "the nodes of one job (torchrun, NCCL)"}],
            egress=egress, tags=tags, opts=child)
        endpoints_sg = aws.ec2.SecurityGroup(
            f"{name}-endpoints-sg", vpc_id=self.vpc.id, description="stackwise VPC interface endpoints: HTTPS from jobs",
            ingress=[{"protocol": "tcp", "from_port": HTTPS, "to_port": HTTPS,
                      "security_groups": [self.security_group.id], "description": "jobs and endpoint models"}],
            tags=tags, opts=child)
        self.endpoints_security_group = endpoints_sg
        self.interface_endpoints = {
            service: aws.ec2.VpcEndpoint(
                f"{name}-{service.replace('.', '-')}-endpoint", vpc_id=self.vpc.id,
                service_name=f"com.amazonaws.{args.region}.{service}", vpc_endpoint_type="Interface",
                private_dns_enabled=True, subnet_ids=[s.id for s in self.subnets],
                security_group_ids=[endpoints_sg.id], tags=tags, opts=child)
            for service in (*INTERFACE_ENDPOINTS, *args.node_endpoints)
        }
        self.nat_gateway = None
        if args.internet_egress:
            gateway = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=self.vpc.id, tags=tags, opts=child)
            public = aws.ec2.Subnet(f"{name}-public-a", vpc_id=self.vpc.id, cidr_block=blocks[2],
                                    availability_zone=f"{args.region}a", map_public_ip_on_launch=False,
                                    tags=tags, opts=child)
            public_routes = aws.ec2.RouteTable(
                f"{name}-public-routes", vpc_id=self.vpc.id,
                routes=[{"cidr_block": "0.0.0.0/0", "gateway_id": gateway.id}], tags=tags, opts=child)
            aws.ec2.RouteTableAssociation(f"{name}-public-routes-a", subnet_id=public.id,
                                          route_table_id=public_routes.id, opts=child)
            address = aws.ec2.Eip(f"{name}-nat-ip", domain="vpc", tags=tags, opts=child)
            self.nat_gateway = aws.ec2.NatGateway(
                f"{name}-nat", allocation_id=address.id, subnet_id=public.id, tags=tags,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[gateway]))
            aws.ec2.Route(f"{name}-private-default-route", route_table_id=self.route_table.id,
                          destination_cidr_block="0.0.0.0/0", nat_gateway_id=self.nat_gateway.id, opts=child)


def _job_policy(bucket_arn, key_arn, repository_arn, secret_arn) -> pulumi.Output[str]:
    statements = [
        {"Sid": "Artifacts", "Effect": "Allow",
         "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket", "s3:GetBucketLocation"],
         "Resource": [bucket_arn, pulumi.Output.concat(bucket_arn, "/*")]},
        {"Sid": "ArtifactKey", "Effect": "Allow",
         "Action": ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:DescribeKey"], "Resource": key_arn},
        {"Sid": "PullImages", "Effect": "Allow",
         "Action": ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"],
         "Resource": repository_arn},
        # Registry tokens and VPC network interfaces cannot be scoped to a resource.
        {"Sid": "RegistryToken", "Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"},
        {"Sid": "VpcJobs", "Effect": "Allow",
         "Action": ["ec2:CreateNetworkInterface", "ec2:CreateNetworkInterfacePermission", "ec2:DeleteNetworkInterface",
                    "ec2:DeleteNetworkInterfacePermission", "ec2:DescribeNetworkInterfaces", "ec2:DescribeVpcs",
                    "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups", "ec2:DescribeDhcpOptions"],
         "Resource": "*"},
        {"Sid": "Logs", "Effect": "Allow",
         "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
         "Resource": "arn:aws:logs:*:*:log-group:/aws/sagemaker/*"},
        {"Sid": "Metrics", "Effect": "Allow", "Action": "cloudwatch:PutMetricData", "Resource": "*",
         "Condition": {"StringEquals": {"cloudwatch:namespace": "/aws/sagemaker/TrainingJobs"}}},
    ]
    if secret_arn is not None:
        statements.append({"Sid": "VectorStoreKey", "Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
                           "Resource": secret_arn})
    return pulumi.Output.json_dumps({"Version": "2012-10-17", "Statement": statements})
