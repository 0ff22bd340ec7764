"""AWS training platform: KMS key, artifact bucket, job role, image registry, private network."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi

from ..common import subnets
from ..images import ImageBuildArgs, RegistryLogin, build_images
from ._provider import aws


@dataclass
class TrainingPlatformArgs:
    region: str
    """AWS region; subnets go to its zones a and b."""
    cidr: str
    """The private network's range (two /20 subnets are carved from it)."""
    tags: dict[str, str]
    """Tags on every taggable resource."""
    pinecone_api_key: pulumi.Input[str] | None = None
    """When set, stored in Secrets Manager (KMS-encrypted) for jobs to read."""
    external_secret_arn: str | None = None
    """A Secrets Manager secret made elsewhere (an existing Weaviate/Milvus cluster's key) jobs may read."""
    images: ImageBuildArgs | None = None
    """When set, the training and serving images are built and pushed to the registry (tags `:train`,
    `:serve`: ECR holds one image name per repository) and exported digest-pinned."""


class TrainingPlatform(pulumi.ComponentResource):
    """Everything SageMaker training jobs need; SageMaker itself needs no standing cluster.

    The bucket is KMS-encrypted with the stack's own key, versioned, closed to the public and
    expires stale versions; the job role can reach only that bucket, that key, its registry and
    its secret.
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
                {"id": "checkpoints-to-infrequent-access", "status": "Enabled",
                 "filter": {"prefix": "checkpoints/"},
                 "transitions": [{"days": 30, "storage_class": "STANDARD_IA"}]},
            ],
            opts=child)

        self.repository = aws.ecr.Repository(
            f"{name}-images", image_tag_mutability="MUTABLE",
            encryption_configurations=[{"encryption_type": "KMS", "kms_key": self.key.arn}],
            image_scanning_configuration={"scan_on_push": True}, tags=tags, opts=child)

        # Jobs and endpoints run in private subnets with no route to the internet; S3 is
        # reached through a gateway endpoint (free), SageMaker pulls images on its own side.
        self.vpc = aws.ec2.Vpc(f"{name}-vpc", cidr_block=args.cidr, enable_dns_hostnames=True,
                               enable_dns_support=True, tags=tags, opts=child)
        self.subnets = [
            aws.ec2.Subnet(f"{name}-private-{zone}", vpc_id=self.vpc.id, cidr_block=block,
                           availability_zone=f"{args.region}{zone}", map_public_ip_on_launch=False,
                           tags=tags, opts=child)
            for zone, block in zip("ab", subnets(args.cidr, 2))
        ]
        routes = aws.ec2.RouteTable(f"{name}-private-routes", vpc_id=self.vpc.id, tags=tags, opts=child)
        for subnet, zone in zip(self.subnets, "ab"):
            aws.ec2.RouteTableAssociation(f"{name}-private-routes-{zone}", subnet_id=subnet.id,
                                          route_table_id=routes.id, opts=child)
        aws.ec2.VpcEndpoint(f"{name}-s3-endpoint", vpc_id=self.vpc.id, service_name=f"com.amazonaws.{args.region}.s3",
                            vpc_endpoint_type="Gateway", route_table_ids=[routes.id], tags=tags, opts=child)
        self.security_group = aws.ec2.SecurityGroup(
            f"{name}-jobs-sg", vpc_id=self.vpc.id, description="stackwise jobs and endpoints: traffic within the VPC only",
            ingress=[{"protocol": "-1", "from_port": 0, "to_port": 0, "self": True}],
            egress=[{"protocol": "-1", "from_port": 0, "to_port": 0, "cidr_blocks": [args.cidr]}],
            tags=tags, opts=child)

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
                "Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}]}),
            tags=tags, opts=child)
        aws.iam.RolePolicy(f"{name}-jobs-policy", role=self.role.id,
                           policy=_job_policy(self.bucket.arn, self.key.arn, self.repository.arn,
                                              self.secret.arn if self.secret else args.external_secret_arn),
                           opts=child)

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
