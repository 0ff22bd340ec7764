"""The Pulumi program: build the configured cloud's components and export the stack contract.

`infra/__main__.py` calls `read_config()` once and `build()`; `stackwise plan` and the tests
call `build()` under mocks with the same typed config. Only the configured cloud's provider
package is imported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi

from stackwise import catalog
from stackwise.contract import StackOutputs

from .config import EndpointConfig, InfraConfig, QueueConfig


@dataclass(frozen=True)
class Secrets:
    """Secret config outside the `stackwise:` namespace (Pulumi secrets, never in plain text)."""

    pinecone_api_key: pulumi.Input[str] | None = None


def stack_file(stack: str) -> str:
    return f"stacks/Pulumi.{stack}.yaml"


def read_config() -> tuple[InfraConfig, Secrets]:
    """Read the running stack's config once: the typed `stackwise:` keys, then its secrets."""
    from pulumi.runtime import config as runtime_config

    raw: dict[str, Any] = {}
    for source in (runtime_config.get_config_env() or {}, runtime_config.CONFIG.get()):
        for key, value in source.items():
            namespace, _, short = key.partition(":")
            if namespace == "stackwise" and short:
                raw[short] = value
    config = InfraConfig.load(raw, stack_file(pulumi.get_stack()))
    key = None
    if config.vector_store.kind == "pinecone":
        key = pulumi.Config("pinecone").require_secret("apiKey")
    return config, Secrets(pinecone_api_key=key)


def build(config: InfraConfig, secrets: Secrets) -> pulumi.Output[dict[str, Any]]:
    """Create the stack's resources; return the contract outputs, validated against StackOutputs."""
    prefix = f"sw-{config.env}"
    builder = {"aws": _build_aws, "gcp": _build_gcp, "azure": _build_azure}[config.cloud]
    fields = builder(prefix, config, secrets)
    fields.update(cloud=config.cloud, region=config.region, default_gpu=config.training_gpu,
                  embedding_model=config.embedding_model, tracking_uri=config.tracking_uri)
    return pulumi.Output.all(**fields).apply(_validated)


def export(contract: pulumi.Output[dict[str, Any]]) -> None:
    """Export every field of the contract, and nothing else."""
    for name in StackOutputs.model_fields:
        pulumi.export(name, contract.apply(lambda data, key=name: data[key]))


def _validated(fields: dict[str, Any]) -> dict[str, Any]:
    # Fails the deployment (and every test) if the program and the SDK's contract disagree.
    return StackOutputs.model_validate(fields).model_dump(mode="json")


def _vector_store(prefix: str, config: InfraConfig, secrets: Secrets, artifact_store: pulumi.Output[str],
                  secret_ref: pulumi.Output[str] | None) -> pulumi.Output[dict[str, Any]]:
    store = config.vector_store
    if store.kind == "embedded":
        return artifact_store.apply(lambda root: {"kind": "embedded", "uri": f"{root.rstrip('/')}/vectors"})
    if store.kind in ("weaviate", "milvus"):  # a cluster run elsewhere: exported, not created
        return pulumi.Output.from_input({"kind": store.kind, "host": store.host, "api_key_secret": store.api_key_secret})
    from .pinecone import VectorIndex, VectorIndexArgs

    assert secrets.pinecone_api_key is not None and secret_ref is not None
    index = VectorIndex(f"{prefix}-vectors", VectorIndexArgs(
        store=store, cloud=store.cloud or config.cloud, region=store.region or config.region,
        api_key=secrets.pinecone_api_key, tags=config.all_tags))
    return pulumi.Output.all(index.host, secret_ref).apply(
        lambda v: {"kind": "pinecone", "host": v[0], "api_key_secret": v[1]})


def _refs(refs: dict[str, pulumi.Output[str]]) -> pulumi.Input[dict[str, str]]:
    return pulumi.Output.all(**refs) if refs else {}


def _endpoints(endpoint) -> list[dict[str, Any]]:
    return [] if endpoint is None else [endpoint]


def _endpoint_scaling(ep: EndpointConfig, served: Any) -> dict[str, Any]:
    """The contract's `endpoints[].scaling`: the endpoint's replica bounds and `endpoint.scaling`,
    plus the Vertex metric specs the GCP component computed (REST JSON), so the versions that
    `stackwise deploy` adds autoscale as the endpoint's own deployment does."""
    scaling = ep.scaling
    return {"max_replicas": ep.max_replicas, "metric": scaling.metric, "target_invocations": ep.target_invocations,
            "target_concurrency": scaling.target_concurrency, "target_latency_ms": scaling.target_latency_ms,
            "gpu_percent": scaling.gpu_percent, "cpu_percent": scaling.cpu_percent,
            "scale_out_cooldown_seconds": scaling.scale_out_cooldown_seconds,
            "scale_in_cooldown_seconds": scaling.scale_in_cooldown_seconds,
            "vertex_metric_specs": list(getattr(served, "autoscaling_metric_specs", None) or [])}


def _endpoint_output(ep: EndpointConfig, served: Any, image: pulumi.Input[str]) -> pulumi.Output[dict[str, Any]]:
    """An endpoint's contract entry: where it answers, and what `stackwise deploy` needs to add versions."""
    scaling = _endpoint_scaling(ep, served)
    return pulumi.Output.all(served.name, served.url, image).apply(lambda v: {
        "name": v[0], "url": v[1], "serving_image": v[2], "gpu": catalog.canonical_gpu(ep.gpu),
        "gpu_count": ep.count, "min_replicas": ep.min_replicas, "scaling": scaling})


def _on_kubernetes(config: InfraConfig) -> bool:
    return config.compute.kind == "kubernetes"


def _cluster_endpoint(ep: EndpointConfig, image: pulumi.Input[str]) -> pulumi.Output[dict[str, Any]]:
    """A kubernetes stack's endpoint entry: nothing is created for it here (no cloud endpoint);
    `stackwise deploy` (the kubernetes deploy adapter) rolls versions onto the cluster from it."""
    scaling = _endpoint_scaling(ep, None)
    return pulumi.Output.from_input(image).apply(lambda img: {
        "name": ep.name, "url": None, "serving_image": img, "gpu": catalog.canonical_gpu(ep.gpu),
        "gpu_count": ep.count, "min_replicas": ep.min_replicas, "scaling": scaling})


def _pool_offer(config: InfraConfig):
    pool = config.cluster.node_pool
    return None if pool is None else catalog.offer(pool.gpu, config.cloud, pool.count)


def _kubernetes(prefix: str, config: InfraConfig, cluster: Any, identity: pulumi.Input[str] | None
                ) -> pulumi.Output[dict[str, Any]]:
    """Install the stack's objects on its cluster (created, or the `context`'s) and return the
    contract's `kubernetes` entry."""
    from .config import GPU_LABEL, SPOT_LABEL
    from .kubernetes import manifests
    from .kubernetes.install import ClusterInstall, ClusterInstallArgs

    k8s = config.cluster
    assert k8s.namespace is not None
    created = k8s.create_cluster and k8s.node_pool is not None
    gpu = catalog.canonical_gpu(k8s.node_pool.gpu) if created else None
    annotations, identity_labels = manifests.workload_identity(config.cloud, identity)
    queue = None
    if isinstance(k8s.queue, QueueConfig):
        q = k8s.queue
        queue = manifests.Queue(name=q.name, cluster_queue=q.cluster_queue or f"{k8s.namespace}-{q.name}",
                                gpus=q.gpus, cpu=q.cpu, memory=q.memory,
                                gpu_node_labels={GPU_LABEL: gpu} if gpu else {})
    install = manifests.Install(namespace=k8s.namespace, service_account=k8s.service_account,
                                sa_annotations=annotations, submitters=tuple(k8s.submitters), queue=queue,
                                pod_monitor=k8s.monitored, stack=pulumi.get_stack())
    ClusterInstall(f"{prefix}-k8s-install", ClusterInstallArgs(
        install=install, kubeconfig=cluster.kubeconfig, context=None if k8s.create_cluster else k8s.context,
        after=cluster.ready))
    fields: dict[str, Any] = {
        "namespace": k8s.namespace, "service_account": k8s.service_account,
        "queue": queue.name if queue else k8s.queue, "pod_labels": {**k8s.pod_labels, **identity_labels},
        "gateway": k8s.gateway, "metrics_url": k8s.metrics_url}
    if gpu is not None:
        spot = k8s.node_pool.spot
        fields.update(gpu_label=GPU_LABEL, gpu_values={gpu: gpu}, autoscaled_gpus=[gpu],
                      gpu_tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                      spot_selector={SPOT_LABEL: "true"} if spot else {},
                      spot_tolerations=[{"key": SPOT_LABEL, "operator": "Equal", "value": "true",
                                         "effect": "NoSchedule"}, *_CLOUD_SPOT_TOLERATIONS.get(config.cloud, [])]
                      if spot else [])
    else:
        described = {"gpu_label": k8s.gpu_label, "gpu_values": k8s.gpu_values, "gpu_tolerations": k8s.gpu_tolerations,
                     "spot_selector": k8s.spot_selector, "spot_tolerations": k8s.spot_tolerations,
                     "autoscaled_gpus": k8s.autoscaled_gpus}
        fields.update({key: value for key, value in described.items() if value is not None})
    return pulumi.Output.from_input(cluster.name).apply(lambda name: {**fields, "cluster": name})


# Taints a cloud adds to its own spot nodes, which spot pods must tolerate besides stackwise's.
_CLOUD_SPOT_TOLERATIONS = {"azure": [{"key": "kubernetes.azure.com/scalesetpriority", "operator": "Equal",
                                      "value": "spot", "effect": "NoSchedule"}]}


def _images(config: InfraConfig):
    """What the platform needs to build and push the images, or None when `images.build` is off."""
    from stackwise.images import repo_root

    from .images import ImageBuildArgs

    images = config.images
    if not images.build:
        return None
    return ImageBuildArgs(context=str(repo_root()), wheelhouse=images.wheelhouse, base_image=images.base_image,
                          extras=images.extras, platform=images.platform)


def _definition(config: InfraConfig) -> Any:
    """The trigger's compiled pipeline for the stack's cloud (checked again: the file may have
    changed since the config was loaded)."""
    from .pipeline_trigger import read_definition

    assert config.pipeline_trigger is not None
    return read_definition(config.pipeline_trigger, config.cloud, stack_file(pulumi.get_stack()))


def _pipeline_name(prefix: str, definition: str) -> str:
    """`sw-<env>-<the definition file's name up to its first dot>`, in the names clouds accept."""
    stem = re.sub(r"[^A-Za-z0-9]+", "-", Path(definition).name.split(".")[0]).strip("-").lower() or "pipeline"
    return f"{prefix}-{stem}"[:63].rstrip("-")


def _aws_secret_arn(ref: str | None) -> str | None:
    return ref.removeprefix("aws-sm://") if ref and ref.startswith("aws-sm://") else None


def _check_model_reachable(config: InfraConfig) -> None:
    """An AWS endpoint serving a Hugging Face id downloads it at start, from inside the private
    network: without a route to the internet it would never become InService."""
    from stackwise.errors import ConfigError

    from .common import is_hf_model

    ep = config.endpoint
    if ep is not None and is_hf_model(ep.model) and not config.network.internet_egress:
        raise ConfigError(
            f"endpoint.model {ep.model!r} is a Hugging Face id, but the endpoint runs in the stack's private "
            "network, which has no route to the internet",
            where=f"{stack_file(pulumi.get_stack())}: stackwise:endpoint.model",
            fix="mirror the model to the artifact store (`huggingface-cli download` it, tar it as model.tar.gz, "
            "`aws s3 cp` it) and set endpoint.model to its s3:// URI, or set stackwise:network.internetEgress: "
            "true (a NAT gateway)")


def _eks_platform(config: InfraConfig) -> dict[str, Any]:
    """What the AWS platform adds for a kubernetes stack (nothing for a managed one)."""
    if not _on_kubernetes(config):
        return {}
    from .aws.eks import NODE_ENDPOINTS

    return {"eks_pod_identity": True, "node_endpoints": NODE_ENDPOINTS if config.cluster.create_cluster else ()}


def _build_aws(prefix: str, config: InfraConfig, secrets: Secrets) -> dict[str, Any]:
    from . import aws

    _check_model_reachable(config)
    tags = config.all_tags
    platform = aws.TrainingPlatform(prefix, aws.TrainingPlatformArgs(
        region=config.region, cidr=config.network.cidr, tags=tags,
        pinecone_api_key=secrets.pinecone_api_key if config.vector_store.kind == "pinecone" else None,
        external_secret_arn=_aws_secret_arn(config.vector_store.api_key_secret), images=_images(config),
        internet_egress=config.network.internet_egress, **_eks_platform(config)))
    endpoint = None
    if config.endpoint is not None and _on_kubernetes(config):
        ep = config.endpoint
        endpoint = _cluster_endpoint(ep, ep.image or platform.serving_image or platform.repository.repository_url.apply(
            lambda url: f"{url}:serve"))
    elif config.endpoint is not None:
        ep = config.endpoint
        image = ep.image or platform.serving_image or platform.repository.repository_url.apply(
            lambda url: f"{url}:serve")
        served = aws.InferenceEndpoint(f"{prefix}-{ep.name}", aws.InferenceEndpointArgs(
            endpoint=ep, offer=catalog.offer(ep.gpu, "aws", ep.count), image=image,
            role_arn=platform.role.arn, kms_key_arn=platform.key.arn,
            subnet_ids=[s.id for s in platform.subnets], security_group_id=platform.security_group.id,
            alarms=config.alarms, alert_emails=config.budget_alert_emails, region=config.region, tags=tags))
        endpoint = _endpoint_output(ep, served, image)
    if config.pipeline_trigger is not None:
        from .aws.pipeline_trigger import PipelineTrigger, PipelineTriggerArgs

        PipelineTrigger(f"{prefix}-pipeline", PipelineTriggerArgs(
            trigger=config.pipeline_trigger, definition=_definition(config),
            pipeline_name=_pipeline_name(prefix, config.pipeline_trigger.definition), role_arn=platform.role.arn,
            role_id=platform.role.id, bucket=platform.bucket.bucket, region=config.region, tags=tags,
            stack=pulumi.get_stack(), endpoint_name=f"{prefix}-{config.endpoint.name}" if config.endpoint else None))
    aws.Budget(f"{prefix}-budget", aws.BudgetArgs(amount_usd=config.monthly_budget_usd,
                                                  emails=config.budget_alert_emails, env=config.env, tags=tags))
    kubernetes = {}
    if _on_kubernetes(config):
        from .aws.eks import EksCluster, EksClusterArgs

        k8s = config.cluster
        cluster = EksCluster(f"{prefix}-k8s", EksClusterArgs(
            create=k8s.create_cluster, namespace=k8s.namespace or "", service_account=k8s.service_account,
            job_role_arn=platform.role.arn, region=config.region, tags=tags, cluster_name=k8s.cluster_name,
            node_pool=k8s.node_pool, offer=_pool_offer(config), subnet_ids=[s.id for s in platform.subnets],
            kms_key_arn=platform.key.arn, endpoints_security_group_id=platform.endpoints_security_group.id))
        kubernetes = {"kubernetes": _kubernetes(prefix, config, cluster, None)}
    return {
        **kubernetes,
        "artifact_store": platform.artifact_store,
        "job_role": platform.role.arn,
        "training_image": platform.training_image,
        "vector_store": _vector_store(prefix, config, secrets, platform.artifact_store,
                                      platform.secret_refs.get("pinecone_api_key")),
        "endpoints": pulumi.Output.all(*_endpoints(endpoint)),
        "secrets": _refs(platform.secret_refs),
        "network": platform.network,
    }


def _build_gcp(prefix: str, config: InfraConfig, secrets: Secrets) -> dict[str, Any]:
    from . import gcp

    tags = config.all_tags
    assert config.gcp_project and config.gcp_billing_account  # checked by InfraConfig
    platform = gcp.TrainingPlatform(prefix, gcp.TrainingPlatformArgs(
        project=config.gcp_project, region=config.region, cidr=config.network.cidr, labels=tags,
        pinecone_api_key=secrets.pinecone_api_key if config.vector_store.kind == "pinecone" else None,
        images=_images(config), **({"extra_apis": ("container",)} if _on_kubernetes(config) else {})))
    endpoint = None
    if config.endpoint is not None and _on_kubernetes(config):
        ep = config.endpoint
        endpoint = _cluster_endpoint(ep, ep.image or platform.serving_image or platform.repository.repository_id.apply(
            lambda repo: f"{config.region}-docker.pkg.dev/{config.gcp_project}/{repo}/serve:latest"))
    elif config.endpoint is not None:
        ep = config.endpoint
        image = ep.image or platform.serving_image or platform.repository.repository_id.apply(
            lambda repo: f"{config.region}-docker.pkg.dev/{config.gcp_project}/{repo}/serve:latest")
        served = gcp.InferenceEndpoint(f"{prefix}-{ep.name}", gcp.InferenceEndpointArgs(
            endpoint=ep, offer=catalog.offer(ep.gpu, "gcp", ep.count), project=config.gcp_project,
            region=config.region, kms_key_id=platform.key.id, alarms=config.alarms,
            alert_emails=config.budget_alert_emails, labels=tags, after=list(platform.apis.values())))
        endpoint = _endpoint_output(ep, served, image)
    if config.pipeline_trigger is not None:
        from .gcp.pipeline_trigger import PipelineTrigger, PipelineTriggerArgs

        PipelineTrigger(f"{prefix}-pipeline", PipelineTriggerArgs(
            trigger=config.pipeline_trigger, definition=_definition(config), project=config.gcp_project,
            region=config.region, bucket=platform.bucket.name, artifact_store=platform.artifact_store,
            job_service_account=platform.service_account.email, job_service_account_id=platform.service_account.name,
            network=platform.network_output, kms_key_id=platform.key.id, labels=tags,
            after=list(platform.apis.values()), has_endpoint=config.endpoint is not None))
    gcp.Budget(f"{prefix}-budget", gcp.BudgetArgs(
        amount_usd=config.monthly_budget_usd, billing_account=config.gcp_billing_account,
        project=config.gcp_project, emails=config.budget_alert_emails, labels=tags,
        after=list(platform.apis.values())))
    kubernetes = {}
    if _on_kubernetes(config):
        from .gcp.gke import GkeCluster, GkeClusterArgs

        k8s = config.cluster
        cluster = GkeCluster(f"{prefix}-k8s", GkeClusterArgs(
            create=k8s.create_cluster, project=config.gcp_project, region=config.region,
            namespace=k8s.namespace or "", service_account=k8s.service_account,
            job_service_account_id=platform.service_account.name,
            job_service_account_email=platform.service_account.email, labels=tags, node_pool=k8s.node_pool,
            offer=_pool_offer(config), network=platform.network.id, subnetwork=platform.subnet.id,
            cidr=config.network.cidr, kms_key_id=platform.key.id, after=list(platform.apis.values())))
        kubernetes = {"kubernetes": _kubernetes(prefix, config, cluster, platform.service_account.email)}
    return {
        **kubernetes,
        "artifact_store": platform.artifact_store,
        "job_role": platform.service_account.email,
        "training_image": platform.training_image,
        "vector_store": _vector_store(prefix, config, secrets, platform.artifact_store,
                                      platform.secret_refs.get("pinecone_api_key")),
        "endpoints": pulumi.Output.all(*_endpoints(endpoint)),
        "secrets": _refs(platform.secret_refs),
        "network": platform.network_output,
        "gcp_project": config.gcp_project,
    }


def _build_azure(prefix: str, config: InfraConfig, secrets: Secrets) -> dict[str, Any]:
    from . import azure

    tags = config.all_tags
    training = catalog.offer(config.training.gpu, "azure", config.training.count)
    platform = azure.TrainingPlatform(prefix, azure.TrainingPlatformArgs(
        location=config.region, cidr=config.network.cidr, tags=tags, training=config.training, training_offer=training,
        pinecone_api_key=secrets.pinecone_api_key if config.vector_store.kind == "pinecone" else None,
        images=_images(config)))
    endpoint = None
    if config.endpoint is not None and _on_kubernetes(config):
        ep = config.endpoint
        endpoint = _cluster_endpoint(ep, ep.image or platform.serving_image or platform.registry.login_server.apply(
            lambda s: f"{s}/serve:latest"))
    elif config.endpoint is not None:
        ep = config.endpoint
        image = ep.image or platform.serving_image or platform.registry.login_server.apply(
            lambda s: f"{s}/serve:latest")
        served = azure.InferenceEndpoint(f"{prefix}-{ep.name}", azure.InferenceEndpointArgs(
            endpoint=ep, offer=catalog.offer(ep.gpu, "azure", ep.count), location=config.region,
            resource_group=platform.resource_group.name, workspace=platform.workspace.name, image=image,
            alarms=config.alarms, alert_emails=config.budget_alert_emails, tags=tags))
        endpoint = _endpoint_output(ep, served, image)
    if config.pipeline_trigger is not None:
        from .azure.pipeline_trigger import PipelineTrigger, PipelineTriggerArgs

        PipelineTrigger(f"{prefix}-pipeline", PipelineTriggerArgs(
            trigger=config.pipeline_trigger, job=_definition(config), location=config.region,
            resource_group=platform.resource_group.name, workspace=platform.workspace.name,
            workspace_id=platform.workspace.id, storage_account_id=platform.storage.id,
            container=azure.platform.ARTIFACTS_CONTAINER, tags=tags, job_principal_id=platform.identity.principal_id,
            resource_group_id=platform.resource_group.id, has_endpoint=config.endpoint is not None))
    azure.Budget(f"{prefix}-budget", azure.BudgetArgs(
        amount_usd=config.monthly_budget_usd, resource_group_id=platform.resource_group.id,
        emails=config.budget_alert_emails))
    kubernetes = {}
    if _on_kubernetes(config):
        from .azure.aks import AksCluster, AksClusterArgs
        from .common import subnets

        k8s = config.cluster
        cluster = AksCluster(f"{prefix}-k8s", AksClusterArgs(
            create=k8s.create_cluster, location=config.region, resource_group=platform.resource_group.name,
            namespace=k8s.namespace or "", service_account=k8s.service_account, identity_name=platform.identity.name,
            tags=tags, oidc_issuer=k8s.oidc_issuer, node_pool=k8s.node_pool, offer=_pool_offer(config),
            tier=k8s.cluster_tier, vnet_name=platform.vnet.name, subnet_cidr=subnets(config.network.cidr, 2)[1]))
        kubernetes = {"kubernetes": _kubernetes(prefix, config, cluster, platform.identity.client_id)}
    return {
        **kubernetes,
        "artifact_store": platform.artifact_store,
        "job_role": platform.identity.id,
        "training_image": platform.training_image,
        "vector_store": _vector_store(prefix, config, secrets, platform.artifact_store,
                                      platform.secret_refs.get("pinecone_api_key")),
        "endpoints": pulumi.Output.all(*_endpoints(endpoint)),
        "secrets": _refs(platform.secret_refs),
        "azure_subscription_id": platform.subscription_id,
        "azure_resource_group": platform.resource_group.name,
        "azure_workspace": platform.workspace.name,
        "azure_identity_client_id": platform.identity.client_id,
    }
