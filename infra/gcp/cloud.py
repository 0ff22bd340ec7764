"""GCP for the Pulumi program: the training platform (Vertex AI needs no standing cluster), a
Vertex AI endpoint, the pipeline trigger, a billing budget and GKE; its own keys (`gcpProject`,
`gcpBillingAccount`), what the mocks fake, and how `stackwise plan` prices it. Components are
imported when a hook runs (see infra/cloud.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from ..cloud import ClusterOutputs, Fake, InfraCloud, PlatformOutputs, PolicyRules

if TYPE_CHECKING:
    import pulumi

    from stackwise.catalog import Offer

    from ..config import InfraConfig
    from ..offline import RecordedResource
    from ..plan import Pricer
    from ..program import Secrets

GKE_SA_ANNOTATION = "iam.gke.io/gcp-service-account"


class GcpCloud(InfraCloud):
    name = "gcp"
    provider = "gcp"
    pipeline_target = "vertex"
    config_fields = {
        "gcp_project": (str | None, Field(None, description="GCP project id (gcp stacks).")),
        "gcp_billing_account": (str | None, Field(None, description="GCP billing account id for the budget "
                                                                   "(gcp stacks).")),
    }

    @property
    def policy(self) -> PolicyRules:
        from .policy import RULES

        return RULES

    def check_config(self, config: InfraConfig) -> None:
        project, billing = getattr(config, "gcp_project", None), getattr(config, "gcp_billing_account", None)
        if config.cloud == self.name and not (project and billing):
            raise ValueError("gcp stacks need gcpProject and gcpBillingAccount")

    def check_schedule(self, trigger: Any, source: str) -> None:
        from ..pipeline_trigger import check_unix_cron_schedule

        check_unix_cron_schedule(self.name, trigger, source)

    def read_pipeline(self, path: Any, text: str, parameters: dict[str, Any], source: str) -> Any:
        from ..pipeline_trigger import vertex_definition

        return vertex_definition(text, path, parameters, source)

    def platform(self, prefix: str, config: InfraConfig, secrets: Secrets) -> PlatformOutputs:
        from ..program import image_build_args, on_kubernetes
        from .platform import TrainingPlatform, TrainingPlatformArgs

        project = config.gcp_project
        assert project and config.gcp_billing_account  # check_config
        platform = TrainingPlatform(prefix, TrainingPlatformArgs(
            project=project, region=config.region, cidr=config.network.cidr, labels=config.all_tags,
            pinecone_api_key=secrets.pinecone_api_key if config.vector_store.kind == "pinecone" else None,
            images=image_build_args(config), **({"extra_apis": ("container",)} if on_kubernetes(config) else {})))
        return PlatformOutputs(
            artifact_store=platform.artifact_store, job_role=platform.service_account.email,
            training_image=platform.training_image,
            serving_image=platform.serving_image or platform.repository.repository_id.apply(
                lambda repo: f"{config.region}-docker.pkg.dev/{project}/{repo}/serve:latest"),
            secrets=platform.secret_refs, contract={"network": platform.network_output, "gcp_project": project},
            component=platform)

    def endpoint(self, prefix: str, config: InfraConfig, platform: PlatformOutputs, image: pulumi.Input[str]) -> Any:
        from stackwise import catalog

        from .endpoint import InferenceEndpoint, InferenceEndpointArgs

        ep, p = config.endpoint, platform.component
        assert ep is not None
        return InferenceEndpoint(f"{prefix}-{ep.name}", InferenceEndpointArgs(
            endpoint=ep, offer=catalog.offer(ep.gpu, self.name, ep.count), project=config.gcp_project,
            region=config.region, kms_key_id=p.key.id, alarms=config.alarms, alert_emails=config.budget_alert_emails,
            labels=config.all_tags, after=list(p.apis.values())))

    def pipeline_trigger(self, prefix: str, config: InfraConfig, platform: PlatformOutputs, definition: Any,
                         pipeline_name: str) -> None:
        from .pipeline_trigger import PipelineTrigger, PipelineTriggerArgs

        assert config.pipeline_trigger is not None
        p = platform.component
        PipelineTrigger(f"{prefix}-pipeline", PipelineTriggerArgs(
            trigger=config.pipeline_trigger, definition=definition, project=config.gcp_project,
            region=config.region, bucket=p.bucket.name, artifact_store=p.artifact_store,
            job_service_account=p.service_account.email, job_service_account_id=p.service_account.name,
            network=p.network_output, kms_key_id=p.key.id, labels=config.all_tags,
            after=list(p.apis.values()), has_endpoint=config.endpoint is not None))

    def budget(self, prefix: str, config: InfraConfig, platform: PlatformOutputs) -> None:
        from .budget import Budget, BudgetArgs

        Budget(f"{prefix}-budget", BudgetArgs(
            amount_usd=config.monthly_budget_usd, billing_account=config.gcp_billing_account,
            project=config.gcp_project, emails=config.budget_alert_emails, labels=config.all_tags,
            after=list(platform.component.apis.values())))

    def cluster(self, prefix: str, config: InfraConfig, platform: PlatformOutputs,
                offer: Offer | None) -> ClusterOutputs:
        from .gke import GkeCluster, GkeClusterArgs

        k8s, p = config.cluster, platform.component
        cluster = GkeCluster(f"{prefix}-k8s", GkeClusterArgs(
            create=k8s.create_cluster, project=config.gcp_project, region=config.region,
            namespace=k8s.namespace or "", service_account=k8s.service_account,
            job_service_account_id=p.service_account.name, job_service_account_email=p.service_account.email,
            labels=config.all_tags, node_pool=k8s.node_pool, offer=offer, network=p.network.id,
            subnetwork=p.subnet.id, cidr=config.network.cidr, kms_key_id=p.key.id, after=list(p.apis.values())))
        return ClusterOutputs(name=cluster.name, kubeconfig=cluster.kubeconfig, ready=cluster.ready,
                              identity=p.service_account.email)

    def workload_identity(self, identity: Any) -> tuple[dict[str, Any], dict[str, str]]:
        """GKE Workload Identity: the Google service account's email on the Kubernetes one."""
        return {GKE_SA_ANNOTATION: identity}, {}

    # -- the mocks: what GCP answers -----------------------------------------------------------------
    def fake_resource(self, typ: str, inputs: dict[str, Any], state: dict[str, Any], fake: Fake) -> str:
        region, digest = fake.config.region, fake.digest
        project = getattr(fake.config, "gcp_project", None) or "project"
        if typ == "gcp:serviceaccount/account:Account":
            state["email"] = f"{inputs['accountId']}@{project}.iam.gserviceaccount.com"
        if typ == "gcp:vertex/aiEndpoint:AiEndpoint":
            state["name"] = digest
        if typ == "gcp:vertex/aiEndpointWithModelGardenDeployment:AiEndpointWithModelGardenDeployment":
            state["endpoint"] = f"projects/{project}/locations/{region}/endpoints/{digest}"
        if typ == "gcp:container/cluster:Cluster":  # the private endpoint's address and the cluster CA
            from ..offline import FAKE_CA

            state.update(endpoint="172.16.0.34", masterAuth={"clusterCaCertificate": FAKE_CA})
        if typ == "gcp:monitoring/notificationChannel:NotificationChannel":
            state["name"] = f"projects/{project}/notificationChannels/{digest}"
        return f"projects/{project}/locations/{region}/{fake.name}"

    def fake_call(self, token: str, args: dict[str, Any], fake: Fake) -> dict[str, Any] | None:
        project = getattr(fake.config, "gcp_project", None)
        if token.endswith("getProjectServiceAccount"):
            return {"emailAddress": "service-123456789@gs-project-accounts.iam.gserviceaccount.com"}
        if token.endswith("getProject"):
            return {"number": "123456789", "projectId": project}
        if token.endswith("getClientConfig"):  # with the access token a provider call would get
            return {"accessToken": fake.secret, "project": project, "region": fake.config.region}
        return None

    # -- stackwise plan ------------------------------------------------------------------------------
    def price(self, resource: RecordedResource, pricer: Pricer) -> bool:
        r, inputs = resource, resource.inputs
        if r.type == "gcp:vertex/aiEndpointWithModelGardenDeployment:AiEndpointWithModelGardenDeployment":
            dedicated = (inputs.get("deployConfig") or {}).get("dedicatedResources") or {}
            spec = dedicated.get("machineSpec") or {}
            pricer.gpu(r, spec.get("machineType"), float(dedicated.get("minReplicaCount") or 0), "minimum replicas")
        elif r.type == "gcp:container/nodePool:NodePool":
            node = inputs.get("nodeConfig") or {}
            scaling = inputs.get("autoscaling") or {}
            pricer.node_pool(r, node.get("machineType") or "", scaling.get("totalMinNodeCount"),
                             scaling.get("totalMaxNodeCount"), bool(node.get("spot")))
        else:
            return False
        return True


CLOUD = GcpCloud()
