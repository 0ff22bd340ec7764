"""GCP training platform: KMS key, artifact bucket, job service account, Artifact Registry, VPC."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from stackwise.contract import CHECKPOINTS_PREFIX

from ..images import ImageBuildArgs, RegistryLogin, build_images
from ._provider import gcp

# The APIs the stack uses, enabled by the program: on a fresh project they are all off, and
# every resource (and IAM binding to a service agent) of a disabled API fails.
APIS = ("serviceusage", "cloudresourcemanager", "iam", "cloudkms", "storage", "compute", "servicenetworking",
        "artifactregistry", "aiplatform", "secretmanager", "logging", "monitoring", "billingbudgets")
# Google service agents that encrypt with the stack's key on its behalf, by the API they serve.
# They exist only once created (`gcloud beta services identity create`, ServiceIdentity here),
# which enabling the API alone does not always do; a key grant to a missing agent fails.
AGENTS = {"artifactregistry": "gcp-sa-artifactregistry", "aiplatform": "gcp-sa-aiplatform",
          "secretmanager": "gcp-sa-secretmanager"}
# The range reserved in the stack's network for Vertex AI's peering (private services access):
# a /16 leaves room for large distributed jobs (Vertex's guide for training).
PEERING_PREFIX = 16


@dataclass
class TrainingPlatformArgs:
    project: str
    """GCP project id."""
    region: str
    """Region of the bucket, registry, key and network."""
    cidr: str
    """The private subnet's range."""
    labels: dict[str, str]
    """Labels on every labelable resource."""
    pinecone_api_key: pulumi.Input[str] | None = None
    """When set, stored in Secret Manager (CMEK) for jobs to read."""
    images: ImageBuildArgs | None = None
    """When set, the training and serving images are built and pushed to the Docker repository
    (`.../train:latest`, `.../serve:latest`) and exported digest-pinned."""
    extra_apis: tuple[str, ...] = ()
    """APIs enabled besides APIS (a kubernetes stack's cluster: container)."""


class TrainingPlatform(pulumi.ComponentResource):
    """What Vertex AI custom jobs need; Vertex needs no standing cluster.

    The APIs it uses enabled and the service agents that use its key created first; a
    CMEK-encrypted, versioned bucket with public access prevention enforced and lifecycle rules;
    a job service account that may use only that bucket, that key and that secret; a Docker
    repository; a VPC with a private subnet (Private Google Access) peered with Vertex AI, whose
    name the stack exports for CustomJobs (`network`). See docs/stacks.md, "GCP network".
    """

    def __init__(self, name: str, args: TrainingPlatformArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("stackwise:gcp:TrainingPlatform", name, None, opts)
        project, region, labels = args.project, args.region, args.labels
        self.apis = {api: gcp.projects.Service(
            f"{name}-api-{api}", project=project, service=f"{api}.googleapis.com", disable_on_destroy=False,
            opts=pulumi.ResourceOptions(parent=self)) for api in (*APIS, *args.extra_apis)}
        # Every other resource waits for the APIs.
        child = pulumi.ResourceOptions(parent=self, depends_on=list(self.apis.values()))
        self.agents = {api: gcp.projects.ServiceIdentity(
            f"{name}-agent-{api}", project=project, service=f"{api}.googleapis.com",
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.apis[api]])) for api in AGENTS}

        ring = gcp.kms.KeyRing(f"{name}-keyring", name=f"{name}-keyring", location=region, project=project, opts=child)
        self.key = gcp.kms.CryptoKey(f"{name}-key", name=f"{name}-key", key_ring=ring.id,
                                     rotation_period="7776000s", labels=labels, opts=child)
        # Reading the Cloud Storage agent creates it; it needs the storage API on.
        storage_agent = gcp.storage.get_project_service_account_output(
            project=project, opts=pulumi.InvokeOutputOptions(parent=self, depends_on=[self.apis["storage"]]))
        number = gcp.organizations.get_project_output(project_id=project).number
        grants = [gcp.kms.CryptoKeyIAMMember(
            f"{name}-key-storage-agent", crypto_key_id=self.key.id, role="roles/cloudkms.cryptoKeyEncrypterDecrypter",
            member=storage_agent.email_address.apply(lambda e: f"serviceAccount:{e}"), opts=child)]
        for api, agent in AGENTS.items():
            grants.append(gcp.kms.CryptoKeyIAMMember(
                f"{name}-key-{api}-agent", crypto_key_id=self.key.id,
                role="roles/cloudkms.cryptoKeyEncrypterDecrypter",
                member=number.apply(lambda n, a=agent: f"serviceAccount:service-{n}@{a}.iam.gserviceaccount.com"),
                opts=pulumi.ResourceOptions(parent=self, depends_on=[*self.apis.values(), self.agents[api]])))
        after_grants = pulumi.ResourceOptions(parent=self, depends_on=[*self.apis.values(), *grants])

        self.bucket = gcp.storage.Bucket(
            f"{name}-artifacts", project=project, location=region.upper(), uniform_bucket_level_access=True,
            public_access_prevention="enforced", versioning={"enabled": True},
            encryption={"default_kms_key_name": self.key.id},
            lifecycle_rules=[
                {"action": {"type": "AbortIncompleteMultipartUpload"}, "condition": {"age": 7}},
                {"action": {"type": "Delete"}, "condition": {"days_since_noncurrent_time": 30, "with_state": "ARCHIVED"}},
                # Checkpoints are written under this top-level prefix (the Vertex adapter points the
                # trainer there); a GCS prefix or suffix cannot match `<anything>/checkpoints/`.
                {"action": {"type": "SetStorageClass", "storage_class": "NEARLINE"},
                 "condition": {"age": 30, "matches_prefixes": [CHECKPOINTS_PREFIX]}},
            ],
            labels=labels, opts=after_grants)

        self.service_account = gcp.serviceaccount.Account(
            f"{name}-jobs", account_id=f"{name}-jobs"[:30], project=project,
            display_name="stackwise training jobs and endpoints", opts=child)
        member = self.service_account.email.apply(lambda e: f"serviceAccount:{e}")
        gcp.storage.BucketIAMMember(f"{name}-jobs-artifacts", bucket=self.bucket.name,
                                    role="roles/storage.objectAdmin", member=member, opts=child)
        gcp.kms.CryptoKeyIAMMember(f"{name}-jobs-key", crypto_key_id=self.key.id,
                                   role="roles/cloudkms.cryptoKeyEncrypterDecrypter", member=member, opts=child)
        gcp.projects.IAMMember(f"{name}-jobs-logs", project=project, role="roles/logging.logWriter",
                               member=member, opts=child)

        self.repository = gcp.artifactregistry.Repository(
            f"{name}-images", project=project, location=region, repository_id=f"{name}-images", format="DOCKER",
            kms_key_name=self.key.id, labels=labels, opts=after_grants)
        gcp.artifactregistry.RepositoryIamMember(f"{name}-jobs-images", project=project, location=region,
                                                 repository=self.repository.name,
                                                 role="roles/artifactregistry.reader", member=member, opts=child)

        self.network = gcp.compute.Network(f"{name}-vpc", project=project, auto_create_subnetworks=False, opts=child)
        self.subnet = gcp.compute.Subnetwork(f"{name}-private", project=project, region=region,
                                             network=self.network.id, ip_cidr_range=args.cidr,
                                             private_ip_google_access=True, opts=child)
        # Private services access: Vertex AI jobs given `network` run peered with this VPC. The
        # peering needs a reserved range of the network and the Service Networking connection.
        self.peering_range = gcp.compute.GlobalAddress(
            f"{name}-vertex-range", name=f"{name}-vertex-range", project=project, network=self.network.id,
            purpose="VPC_PEERING", address_type="INTERNAL", prefix_length=PEERING_PREFIX, labels=labels, opts=child)
        self.peering = gcp.servicenetworking.Connection(
            f"{name}-vertex-peering", network=self.network.id, service="servicenetworking.googleapis.com",
            reserved_peering_ranges=[self.peering_range.name], deletion_policy="ABANDON", opts=child)
        # What a CustomJob's `network` takes: the network by project *number*; exported only once
        # the peering exists (a job naming an unpeered network is refused).
        self.network_output = pulumi.Output.all(number, self.network.name, self.peering_range.name,
                                                self.peering.id).apply(
            lambda v: {"network": f"projects/{v[0]}/global/networks/{v[1]}", "reserved_ip_ranges": [v[2]]})

        self.secret_refs: dict[str, pulumi.Output[str]] = {}
        if args.pinecone_api_key is not None:
            secret = gcp.secretmanager.Secret(
                f"{name}-pinecone-api-key", project=project, secret_id=f"{name}-pinecone-api-key",
                replication={"user_managed": {"replicas": [{
                    "location": region, "customer_managed_encryption": {"kms_key_name": self.key.id}}]}},
                labels=labels, opts=after_grants)
            gcp.secretmanager.SecretVersion(f"{name}-pinecone-api-key-value", secret=secret.id,
                                            secret_data=args.pinecone_api_key, opts=child)
            gcp.secretmanager.SecretIamMember(f"{name}-jobs-pinecone-api-key", project=project,
                                              secret_id=secret.secret_id, role="roles/secretmanager.secretAccessor",
                                              member=member, opts=child)
            self.secret_refs["pinecone_api_key"] = secret.secret_id.apply(
                lambda s: f"gcp-sm://projects/{project}/secrets/{s}")

        self.artifact_store = self.bucket.name.apply(lambda b: f"gs://{b}")
        self.training_image = self.repository.repository_id.apply(
            lambda repo: f"{region}-docker.pkg.dev/{project}/{repo}/train:latest")
        self.serving_image: pulumi.Output[str] | None = None
        self.images: dict[str, pulumi.Resource] = {}
        if args.images is not None:
            # The access token of the identity running `pulumi up` (user `oauth2accesstoken`, 1 h).
            client = gcp.organizations.get_client_config_output(opts=pulumi.InvokeOutputOptions(parent=self))
            self.images, pinned = build_images(
                name, args.images,
                {t: self.repository.repository_id.apply(
                    lambda repo, t=t: f"{region}-docker.pkg.dev/{project}/{repo}/{t}:latest") for t in ("train", "serve")},
                RegistryLogin(address=f"{region}-docker.pkg.dev", username="oauth2accesstoken",
                              password=client.access_token), parent=self)
            self.training_image, self.serving_image = pinned["train"], pinned["serve"]
        self.register_outputs({"artifact_store": self.artifact_store, "job_role": self.service_account.email,
                               "training_image": self.training_image})
