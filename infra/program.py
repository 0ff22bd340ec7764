"""The Pulumi program: build the configured cloud's components and export the stack contract.

`infra/__main__.py` calls `read_config()` once and `build()`; `stackwise plan` and the tests
call `build()` under mocks with the same typed config. `build` is the same for every cloud: the
stack's cloud object (`InfraCloud`, infra/<cloud>/cloud.py) creates the platform, the endpoint,
the pipeline trigger, the budget and the cluster; this module creates what is not a cloud's (the
vector store, the cluster's contents) and assembles the contract. Only the configured cloud's
provider package is imported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi

from stackwise import catalog
from stackwise.contract import StackOutputs
from stackwise.registry import vector_store_kinds

from .cloud import ClusterOutputs, InfraCloud, PlatformOutputs, infra_cloud
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
    cloud = infra_cloud(config.cloud)
    prefix = f"sw-{config.env}"
    platform = cloud.platform(prefix, config, secrets)
    endpoints: list[pulumi.Output[dict[str, Any]]] = []
    if config.endpoint is not None:
        ep = config.endpoint
        image = ep.image or platform.serving_image
        if on_kubernetes(config):
            endpoints.append(_cluster_endpoint(ep, image))
        else:
            endpoints.append(_endpoint_output(ep, cloud.endpoint(prefix, config, platform, image), image))
    if config.pipeline_trigger is not None:
        cloud.pipeline_trigger(prefix, config, platform, _definition(config),
                               _pipeline_name(prefix, config.pipeline_trigger.definition))
    cloud.budget(prefix, config, platform)
    fields: dict[str, Any] = {}
    if on_kubernetes(config):
        cluster = cloud.cluster(prefix, config, platform, _pool_offer(config))
        fields["kubernetes"] = _kubernetes(prefix, config, cloud, cluster)
    fields.update(
        platform.contract, artifact_store=platform.artifact_store, job_role=platform.job_role,
        training_image=platform.training_image,
        vector_store=_vector_store(prefix, config, secrets, platform),
        endpoints=pulumi.Output.all(*endpoints), secrets=_refs(platform.secrets),
        cloud=config.cloud, region=config.region, default_gpu=config.training_gpu,
        embedding_model=config.embedding_model, tracking_uri=config.tracking_uri)
    return pulumi.Output.all(**fields).apply(_validated)


def export(contract: pulumi.Output[dict[str, Any]]) -> None:
    """Export every field of the contract, and nothing else."""
    for name in StackOutputs.model_fields:
        pulumi.export(name, contract.apply(lambda data, key=name: data[key]))


def _validated(fields: dict[str, Any]) -> dict[str, Any]:
    # Fails the deployment (and every test) if the program and the SDK's contract disagree.
    return StackOutputs.model_validate(fields).model_dump(mode="json")


def _vector_store(prefix: str, config: InfraConfig, secrets: Secrets,
                  platform: PlatformOutputs) -> pulumi.Output[dict[str, Any]]:
    store, artifact_store = config.vector_store, platform.artifact_store
    secret_ref = platform.secrets.get("pinecone_api_key")
    if store.kind == "embedded":
        return artifact_store.apply(lambda root: {"kind": "embedded", "uri": f"{root.rstrip('/')}/vectors"})
    if store.kind in vector_store_kinds("external"):  # a cluster run elsewhere: exported, not created
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


def on_kubernetes(config: InfraConfig) -> bool:
    """Whether the stack's jobs and endpoints run on a Kubernetes cluster (`compute.kind`)."""
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


def _kubernetes(prefix: str, config: InfraConfig, cloud: InfraCloud, cluster: ClusterOutputs
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
    annotations, identity_labels = cloud.workload_identity(cluster.identity)
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
                                         "effect": "NoSchedule"}, *cloud.spot_tolerations]
                      if spot else [])
    else:
        described = {"gpu_label": k8s.gpu_label, "gpu_values": k8s.gpu_values, "gpu_tolerations": k8s.gpu_tolerations,
                     "spot_selector": k8s.spot_selector, "spot_tolerations": k8s.spot_tolerations,
                     "autoscaled_gpus": k8s.autoscaled_gpus}
        fields.update({key: value for key, value in described.items() if value is not None})
    return pulumi.Output.from_input(cluster.name).apply(lambda name: {**fields, "cluster": name})


def image_build_args(config: InfraConfig):
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
