"""AWS for the Pulumi program: the training platform (SageMaker needs no standing cluster), a
SageMaker endpoint, the pipeline trigger, AWS Budgets and EKS; what the mocks fake for them, and
how `stackwise plan` prices them. Components are imported when a hook runs (see infra/cloud.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..cloud import ClusterOutputs, Fake, InfraCloud, PlatformOutputs, PolicyRules

if TYPE_CHECKING:
    import pulumi

    from stackwise.catalog import Offer

    from ..config import InfraConfig
    from ..offline import RecordedResource
    from ..plan import Pricer
    from ..program import Secrets

FAKE_ACCOUNT = "123456789012"


def _secret_arn(ref: str | None) -> str | None:
    return ref.removeprefix("aws-sm://") if ref and ref.startswith("aws-sm://") else None


def _check_model_reachable(config: InfraConfig) -> None:
    """An AWS endpoint serving a Hugging Face id downloads it at start, from inside the private
    network: without a route to the internet it would never become InService."""
    import pulumi

    from stackwise.errors import ConfigError

    from ..common import is_hf_model
    from ..program import stack_file

    ep = config.endpoint
    if ep is not None and is_hf_model(ep.model) and not config.network.internet_egress:
        raise ConfigError(
            f"endpoint.model {ep.model!r} is a Hugging Face id, but the endpoint runs in the stack's private "
            "network, which has no route to the internet",
            where=f"{stack_file(pulumi.get_stack())}: stackwise:endpoint.model",
            fix="mirror the model to the artifact store (`huggingface-cli download` it, tar it as model.tar.gz, "
            "`aws s3 cp` it) and set endpoint.model to its s3:// URI, or set stackwise:network.internetEgress: "
            "true (a NAT gateway)")


class AwsCloud(InfraCloud):
    name = "aws"
    provider = "aws"
    pipeline_target = "sagemaker"

    @property
    def policy(self) -> PolicyRules:
        from .policy import RULES

        return RULES

    def check_config(self, config: InfraConfig) -> None:
        if config.compute.kind != "kubernetes":
            return
        k8s = config.cluster
        if config.cloud == self.name and not k8s.create_cluster and not k8s.cluster_name:
            raise ValueError("kubernetes.clusterName is needed on aws for an existing cluster: the EKS cluster's "
                             "name, so its pods run as the job role (EKS Pod Identity); or set createCluster: true")
        if config.cloud != self.name and k8s.cluster_name:
            raise ValueError("kubernetes.clusterName is for aws (EKS Pod Identity) only")

    def check_schedule(self, trigger: Any, source: str) -> None:
        from ..pipeline_trigger import check_eventbridge_schedule

        check_eventbridge_schedule(self.name, trigger, source)

    def read_pipeline(self, path: Any, text: str, parameters: dict[str, Any], source: str) -> Any:
        from ..pipeline_trigger import sagemaker_definition

        return sagemaker_definition(text, path, parameters, source)

    def platform(self, prefix: str, config: InfraConfig, secrets: Secrets) -> PlatformOutputs:
        from ..program import image_build_args, on_kubernetes
        from .platform import TrainingPlatform, TrainingPlatformArgs

        _check_model_reachable(config)
        eks: dict[str, Any] = {}
        if on_kubernetes(config):
            from .eks import NODE_ENDPOINTS

            eks = {"eks_pod_identity": True, "node_endpoints": NODE_ENDPOINTS if config.cluster.create_cluster else ()}
        platform = TrainingPlatform(prefix, TrainingPlatformArgs(
            region=config.region, cidr=config.network.cidr, tags=config.all_tags,
            pinecone_api_key=secrets.pinecone_api_key if config.vector_store.kind == "pinecone" else None,
            external_secret_arn=_secret_arn(config.vector_store.api_key_secret), images=image_build_args(config),
            internet_egress=config.network.internet_egress, **eks))
        return PlatformOutputs(
            artifact_store=platform.artifact_store, job_role=platform.role.arn, training_image=platform.training_image,
            serving_image=platform.serving_image or platform.repository.repository_url.apply(lambda url: f"{url}:serve"),
            secrets=platform.secret_refs, contract={"network": platform.network}, component=platform)

    def endpoint(self, prefix: str, config: InfraConfig, platform: PlatformOutputs, image: pulumi.Input[str]) -> Any:
        from stackwise import catalog

        from .endpoint import InferenceEndpoint, InferenceEndpointArgs

        ep, p = config.endpoint, platform.component
        assert ep is not None
        return InferenceEndpoint(f"{prefix}-{ep.name}", InferenceEndpointArgs(
            endpoint=ep, offer=catalog.offer(ep.gpu, self.name, ep.count), image=image, role_arn=p.role.arn,
            kms_key_arn=p.key.arn, subnet_ids=[s.id for s in p.subnets], security_group_id=p.security_group.id,
            alarms=config.alarms, alert_emails=config.budget_alert_emails, region=config.region, tags=config.all_tags))

    def pipeline_trigger(self, prefix: str, config: InfraConfig, platform: PlatformOutputs, definition: Any,
                         pipeline_name: str) -> None:
        import pulumi

        from .pipeline_trigger import PipelineTrigger, PipelineTriggerArgs

        assert config.pipeline_trigger is not None
        p = platform.component
        PipelineTrigger(f"{prefix}-pipeline", PipelineTriggerArgs(
            trigger=config.pipeline_trigger, definition=definition, pipeline_name=pipeline_name, role_arn=p.role.arn,
            role_id=p.role.id, bucket=p.bucket.bucket, region=config.region, tags=config.all_tags,
            stack=pulumi.get_stack(), endpoint_name=f"{prefix}-{config.endpoint.name}" if config.endpoint else None))

    def budget(self, prefix: str, config: InfraConfig, platform: PlatformOutputs) -> None:
        from .budget import Budget, BudgetArgs

        Budget(f"{prefix}-budget", BudgetArgs(amount_usd=config.monthly_budget_usd, emails=config.budget_alert_emails,
                                              env=config.env, tags=config.all_tags))

    def cluster(self, prefix: str, config: InfraConfig, platform: PlatformOutputs,
                offer: Offer | None) -> ClusterOutputs:
        from .eks import EksCluster, EksClusterArgs

        k8s, p = config.cluster, platform.component
        cluster = EksCluster(f"{prefix}-k8s", EksClusterArgs(
            create=k8s.create_cluster, namespace=k8s.namespace or "", service_account=k8s.service_account,
            job_role_arn=p.role.arn, region=config.region, tags=config.all_tags, cluster_name=k8s.cluster_name,
            node_pool=k8s.node_pool, offer=offer, subnet_ids=[s.id for s in p.subnets], kms_key_arn=p.key.arn,
            endpoints_security_group_id=p.endpoints_security_group.id))
        # EKS Pod Identity binds the service account through the EKS API: no annotation to add.
        return ClusterOutputs(name=cluster.name, kubeconfig=cluster.kubeconfig, ready=cluster.ready)

    # -- the mocks: what AWS answers -----------------------------------------------------------------
    def fake_resource(self, typ: str, inputs: dict[str, Any], state: dict[str, Any], fake: Fake) -> str:
        region, physical, digest = fake.config.region, fake.physical, fake.digest
        service = typ.split(":")[1].split("/")[0]
        state["arn"] = f"arn:aws:{service}:{region}:{FAKE_ACCOUNT}:{physical}"
        if typ == "aws:iam/role:Role":  # IAM is global: no region in its ARNs
            state["arn"] = f"arn:aws:iam::{FAKE_ACCOUNT}:role/{physical}"
        if typ == "aws:s3/bucket:Bucket":  # bucket ARNs name neither region nor account
            state.update(bucket=physical, arn=f"arn:aws:s3:::{physical}")
            return physical
        if typ == "aws:ecr/repository:Repository":
            state["repositoryUrl"] = f"{FAKE_ACCOUNT}.dkr.ecr.{region}.amazonaws.com/{physical}"
        if typ == "aws:eks/cluster:Cluster":  # what EKS answers: the API endpoint, its CA, its security group
            from ..offline import FAKE_CA

            state.update(endpoint=f"https://{digest.upper()}.gr7.{region}.eks.amazonaws.com",
                         certificateAuthority={"data": FAKE_CA},
                         vpcConfig={**(inputs.get("vpcConfig") or {}), "clusterSecurityGroupId": f"sg-{digest}"})
        if typ == "aws:ec2/vpcEndpoint:VpcEndpoint" and inputs.get("vpcEndpointType", "Gateway") == "Gateway":
            state["prefixListId"] = f"pl-{digest}"  # what AWS answers for a gateway endpoint
        return f"{physical}-id"

    def fake_call(self, token: str, args: dict[str, Any], fake: Fake) -> dict[str, Any] | None:
        if token == "aws:ecr/getAuthorizationToken:getAuthorizationToken":
            region = fake.config.region
            return {"userName": "AWS", "password": fake.secret, "authorizationToken": fake.secret,
                    "proxyEndpoint": f"https://{FAKE_ACCOUNT}.dkr.ecr.{region}.amazonaws.com",
                    "expiresAt": "2099-01-01T00:00:00Z", "id": region}
        return None

    # -- stackwise plan ------------------------------------------------------------------------------
    def price(self, resource: RecordedResource, pricer: Pricer) -> bool:
        from stackwise import catalog

        r, inputs = resource, resource.inputs
        if r.type == "aws:sagemaker/endpointConfiguration:EndpointConfiguration":
            for variant in inputs.get("productionVariants") or []:
                pricer.gpu(r, variant.get("instanceType"), float(variant.get("initialInstanceCount") or 0),
                           "minimum replicas")
        elif r.type == "aws:eks/nodeGroup:NodeGroup":
            scaling = inputs.get("scalingConfig") or {}
            # The GPU catalog names SageMaker's ml.* types (EKS nodes are the EC2 types behind them).
            pricer.node_pool(r, (inputs.get("instanceTypes") or [""])[0], scaling.get("minSize"),
                             scaling.get("maxSize"), inputs.get("capacityType") == "SPOT", catalog_prefix="ml.",
                             note=" (SageMaker's ml.* list price: EC2 bills the node less)")
        elif r.type == "aws:ec2/vpcEndpoint:VpcEndpoint":
            if inputs.get("vpcEndpointType") == "Interface" and (fixed := catalog.fixed_monthly(f"{r.type}#Interface")):
                zones = len(inputs.get("subnetIds") or []) or 1  # one network interface per zone's subnet
                pricer.add(r, fixed.usd * zones, f"{zones} zone(s) x ${fixed.usd:.2f}: {fixed.source}")
        else:
            return False
        return True


CLOUD = AwsCloud()
