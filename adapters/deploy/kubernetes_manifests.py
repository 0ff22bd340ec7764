"""The Kubernetes objects of an endpoint, as data (pure functions of the stack, the endpoint output
and the version: no call). adapters/deploy/kubernetes.py sends them.

Per version (`name:version`) on endpoint E, in the stack's namespace, all named `version_name`
(`<E>-<model>-v<version>`, a DNS-1035 label) and labelled `stackwise.dev/endpoint`,
`stackwise.dev/model`, `stackwise.dev/version` and `app.kubernetes.io/managed-by: stackwise`:

- a **Deployment** (apps/v1) of `min_replicas` pods of the endpoint's serving image, with the
  environment every cloud adapter gives that image (`STACKWISE_MODEL`, `STACKWISE_MODEL_VERSION`,
  `STACKWISE_BASE_MODEL`, `STACKWISE_MODEL_URI`: the image reads the version from the artifact
  store with the pod's identity; a RAG app's context and pinned generator: secret references,
  never values), readiness on `GET /health` (200 once the model is loaded) and liveness on
  `GET /` (200 while the process serves, also while the model loads), the catalog GPU as the
  compute adapter asks for it (`nvidia.com/gpu`, the node selector of `gpu_label`/`gpu_values`
  or GPU feature discovery's product name, the GPU tolerations), the stack's service account and
  pod labels;
- a **Service** (v1) selecting that Deployment's pods, port 80 -> the container's `http` (8080);
- with the stack's `metrics_url` and the endpoint's `scaling`: a **ScaledObject** (keda.sh/v1alpha1)
  scaling the Deployment between `min_replicas` and `scaling.max_replicas` on a Prometheus query of
  the serving metrics of its pods (`scaling_triggers`). Without either, none: the version keeps
  `min_replicas`.

Per endpoint, a **Service** named after it and, with the stack's `gateway` (`namespace/name`), an
**HTTPRoute** (gateway.networking.k8s.io/v1) attached to that Gateway whose `backendRefs` are the
version Services weighted by the split (0 included): the split is the HTTPRoute, and a change of
weights alone is one PATCH of it. The endpoint Service then selects every version's pods (a stable
in-cluster name; the split applies to traffic through the Gateway). Without a gateway the endpoint
Service selects the one version that has 100 %, and a split between versions is refused
(SpecError naming `stackwise:kubernetes.gateway`).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from stackwise import catalog
from stackwise.adapters.clouds import kubernetes as kube
from stackwise.adapters.clouds.kubernetes import GPU_RESOURCE, dns_label, label_value, node_selector
from stackwise.deploy import DeployTarget, Variant, variant_name
from stackwise.errors import ConfigError, SpecError

from . import base

ENDPOINT_LABEL = f"{kube.DOMAIN}/endpoint"
MODEL_LABEL = f"{kube.DOMAIN}/model"
VERSION_LABEL = f"{kube.DOMAIN}/version"
STACK_LABEL = f"{kube.DOMAIN}/stack"
ENV_MODEL, ENV_VERSION, ENV_BASE, ENV_URI = ("STACKWISE_MODEL", "STACKWISE_MODEL_VERSION", "STACKWISE_BASE_MODEL",
                                             "STACKWISE_MODEL_URI")
CONTAINER = "serve"
PORT = 8080  # the serving image's port (scripts/image/stackwise-serve)
PORT_NAME = "http"  # the container port's name: what Services and a PodMonitor point at
SERVICE_PORT = 80
READINESS_PATH = "/health"  # sdk/serving.py HEALTH_ROUTES: 200 once the model is loaded, 503 before
LIVENESS_PATH = "/"  # 200 while the process serves, also while the model loads
#: A rollout that has not made progress for this long is failed (ProgressDeadlineExceeded): pulling a
#: GPU image and loading a large model from the artifact store can take many minutes.
PROGRESS_DEADLINE_S = 1800

GATEWAY_GROUP, GATEWAY_VERSION, ROUTES = "gateway.networking.k8s.io", "v1", "httproutes"
KEDA_GROUP, KEDA_VERSION, SCALED_OBJECTS = "keda.sh", "v1alpha1", "scaledobjects"
GATEWAY_KEY = "stackwise:kubernetes.gateway"
METRICS_KEY = "stackwise:kubernetes.metricsUrl"
SCALING_METRIC_KEY = "stackwise:endpoint.scaling.metric"

#: The serving image's Prometheus metrics (sdk/serve_metrics.py: `stackwise:` + family name).
METRIC_PREFIX = "stackwise:"
RATE_WINDOW = "2m"
POLLING_INTERVAL_S = 15
SCALE_IN_WINDOW_S = 300  # default scale-down stabilization: a replica is not removed on a lull of seconds

# -- names and labels ------------------------------------------------------------------------------
def endpoint_object_name(endpoint: str) -> str:
    """The endpoint's Service and HTTPRoute."""
    return dns_label(endpoint, 52)


def version_name(endpoint: str, model: str, version: str) -> str:
    """One version's Deployment, Service and ScaledObject: `<endpoint>-<model>-v<version>` (the
    `variant_name` of the version after the endpoint), a DNS-1035 label of at most 52 characters
    (a pod name adds the ReplicaSet's and its own suffixes)."""
    return dns_label(f"{endpoint}-{variant_name(model, version)}", 52)


def version_labels(endpoint: str, model: str, version: str) -> dict[str, str]:
    """The labels that select one version's pods (the Deployment's selector, its Service's)."""
    return {ENDPOINT_LABEL: label_value(endpoint), MODEL_LABEL: label_value(model), VERSION_LABEL: label_value(version)}


def object_labels(stack: Any, endpoint: str, model: str | None = None, version: str | None = None) -> dict[str, str]:
    labels = {**kube.MANAGED_BY, STACK_LABEL: label_value(stack.name), ENDPOINT_LABEL: label_value(endpoint)}
    if model is not None and version is not None:
        labels.update(version_labels(endpoint, model, version))
    return labels


def gateway_ref(stack: Any) -> tuple[str, str] | None:
    """(namespace, name) of the stack's Gateway, or None without one."""
    value = kube.cluster_outputs(stack).gateway
    if not value:
        return None
    namespace, sep, name = value.partition("/")
    if not sep or not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", namespace) or not re.fullmatch(
            r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name):
        raise ConfigError(f"stackwise:kubernetes.gateway is {value!r}, not NAMESPACE/NAME of a Gateway",
                          where=f"stack {stack.name}: {GATEWAY_KEY} (outputs: kubernetes.gateway)",
                          fix="write it as NAMESPACE/NAME, e.g. gateway-system/public")
    return namespace, name


# -- what a version runs ---------------------------------------------------------------------------
def _serve_beside(training: str) -> str | None:
    found = re.fullmatch(r"(.+)/train(?::([^/@]+))?(?:@sha256:[0-9a-f]+)?", training)
    return f"{found[1]}/serve:{found[2] or 'latest'}" if found else None  # `stackwise image build` tags both alike


def serving_image(stack: Any, endpoint_output: Any) -> str:
    """The endpoint's serving image, else the `serve` image beside a `train` training image, with its tag
    (`stackwise image build` tags both `<repository>/<target>:<tag>`; a digest-pinned one: `latest`)."""
    return base.serving_image(
        stack, endpoint_output, _serve_beside,
        fix="export serving_image for the endpoint, or a training image named <repository>/train:<tag> "
            "(`stackwise image build --push`), whose <repository>/serve:<tag> is used")


def endpoint_gpu(stack: Any, endpoint_output: Any) -> str | None:
    gpu = base.endpoint_gpu(stack, endpoint_output)
    return catalog.canonical_gpu(gpu) if gpu else None


def container_env(target: DeployTarget, rag_env: dict[str, str] | None = None) -> dict[str, str]:
    """What the serving image reads (sdk/serve_source.py `model_source`, sdk/serving.py `create_app`):
    the same variables the cloud adapters set, and a RAG app version's context and pinned generator
    (`rag_env`)."""
    return {ENV_MODEL: target.model, ENV_VERSION: target.version, ENV_BASE: target.base_model or "",
            ENV_URI: target.artifact_uri, **(rag_env or {})}


def _check_artifact(stack: Any, target: DeployTarget) -> None:
    uri = target.artifact_uri
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme in ("", "file", "local"):
        raise SpecError(f"{target.key} lives at {uri}, a folder of this machine that the cluster's pods cannot read",
                        where=f"model registry, {target.key} source",
                        fix=f"register the version in the stack's artifact store ({stack.outputs.artifact_store}), "
                            "an object store the pods' service account may read")


def _resources(gpu: str | None, count: int) -> dict[str, Any]:
    per = max(count, 1) if gpu else 1
    requests = {"cpu": str(2 * per), "memory": f"{8 * per}Gi", "ephemeral-storage": "20Gi"}  # the model cache
    if not gpu:
        return {"requests": requests}
    requests[GPU_RESOURCE] = str(count)
    return {"requests": requests, "limits": {GPU_RESOURCE: str(count)}}


def deployment_manifest(stack: Any, endpoint_output: Any, target: DeployTarget,
                        rag_env: dict[str, str] | None = None) -> dict[str, Any]:
    """One version's Deployment, as data (no call). Raises before anything is sent: an artifact
    the pods cannot read, no serving image, a GPU the stack does not map to nodes."""
    cluster = kube.cluster_outputs(stack)
    _check_artifact(stack, target)
    endpoint = endpoint_output.name
    name = version_name(endpoint, target.model, target.version)
    gpu = endpoint_gpu(stack, endpoint_output)
    count = endpoint_output.gpu_count if gpu else 0
    selector = version_labels(endpoint, target.model, target.version)
    env = container_env(target, rag_env)
    probe = {"httpGet": {"path": READINESS_PATH, "port": PORT_NAME}, "periodSeconds": 5, "failureThreshold": 3,
             "timeoutSeconds": 3}
    container: dict[str, Any] = {
        "name": CONTAINER, "image": serving_image(stack, endpoint_output),
        "env": [{"name": k, "value": v} for k, v in sorted(env.items())],
        "ports": [{"name": PORT_NAME, "containerPort": PORT, "protocol": "TCP"}],
        "readinessProbe": probe,
        # The process answers GET / from its first second, while the model still loads: restart it
        # only when it stops answering. The startup probe gives a slow image start (imports) 5 min.
        "livenessProbe": {"httpGet": {"path": LIVENESS_PATH, "port": PORT_NAME}, "periodSeconds": 10,
                          "failureThreshold": 3, "timeoutSeconds": 5},
        "startupProbe": {"httpGet": {"path": LIVENESS_PATH, "port": PORT_NAME}, "periodSeconds": 10,
                         "failureThreshold": 30, "timeoutSeconds": 5},
        "resources": _resources(gpu, count),
    }
    pod: dict[str, Any] = {"containers": [container]}
    if cluster.service_account:
        pod["serviceAccountName"] = cluster.service_account
    nodes = node_selector(gpu, False, cluster, stack)
    if nodes:
        pod["nodeSelector"] = nodes
    if gpu and cluster.gpu_tolerations:
        pod["tolerations"] = [dict(t) for t in cluster.gpu_tolerations]
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": cluster.namespace,
                     "labels": object_labels(stack, endpoint, target.model, target.version)},
        "spec": {
            "replicas": endpoint_output.min_replicas,
            "selector": {"matchLabels": selector},
            "progressDeadlineSeconds": PROGRESS_DEADLINE_S,
            "template": {"metadata": {"labels": {**cluster.pod_labels, **kube.MANAGED_BY, **selector}},
                         "spec": pod},
        },
    }


def service_manifest(stack: Any, name: str, endpoint: str, selector: dict[str, str],
                     model: str | None = None, version: str | None = None) -> dict[str, Any]:
    """A ClusterIP Service `name` on port 80 to the serving container's `http` port."""
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": kube.cluster_outputs(stack).namespace,
                         "labels": object_labels(stack, endpoint, model, version)},
            "spec": {"type": "ClusterIP", "selector": dict(selector),
                     "ports": [{"name": PORT_NAME, "port": SERVICE_PORT, "targetPort": PORT_NAME, "protocol": "TCP"}]}}


def version_service(stack: Any, endpoint: str, target: Any) -> dict[str, Any]:
    return service_manifest(stack, version_name(endpoint, target.model, target.version), endpoint,
                            version_labels(endpoint, target.model, target.version), target.model, target.version)


def endpoint_selector(endpoint: str, primary: Any | None) -> dict[str, str]:
    """The endpoint Service's selector: the version with 100 % (no gateway), else every version's pods."""
    if primary is None:
        return {ENDPOINT_LABEL: label_value(endpoint)}
    return version_labels(endpoint, primary.model, primary.version)


def route_manifest(stack: Any, endpoint_output: Any, backends: list[tuple[str, int]]) -> dict[str, Any]:
    """The endpoint's HTTPRoute: attached to the stack's Gateway, one backendRef per version Service
    (`backends`: (service, percent)), weighted by its percent. The endpoint URL's host, when it has a
    DNS name, is the route's hostname (a Gateway shared by several endpoints tells them apart by it)."""
    namespace, gateway = gateway_ref(stack) or ("", "")
    spec: dict[str, Any] = {
        "parentRefs": [{"group": GATEWAY_GROUP, "kind": "Gateway", "namespace": namespace, "name": gateway}],
        "rules": [{"backendRefs": [{"group": "", "kind": "Service", "name": service, "port": SERVICE_PORT,
                                    "weight": int(weight)} for service, weight in backends]}],
    }
    host = urlsplit(endpoint_output.url or "").hostname
    if host and not re.fullmatch(r"[\d.]+|localhost|\[?[0-9a-fA-F:]+\]?", host):
        spec["hostnames"] = [host]
    return {"apiVersion": f"{GATEWAY_GROUP}/{GATEWAY_VERSION}", "kind": "HTTPRoute",
            "metadata": {"name": endpoint_object_name(endpoint_output.name),
                         "namespace": kube.cluster_outputs(stack).namespace,
                         "labels": object_labels(stack, endpoint_output.name)},
            "spec": spec}


# -- autoscaling -----------------------------------------------------------------------------------
def served_metrics() -> set[str]:
    """The sample names the serving image exports at GET /metrics (sdk/serve_metrics.py)."""
    from stackwise.serve_metrics import FAMILIES

    return {name for family in FAMILIES for name in family.series(METRIC_PREFIX)}


def _metric(name: str) -> str:
    full = METRIC_PREFIX + name
    if full not in served_metrics():  # a renamed family must not leave a query that matches nothing
        raise AssertionError(f"the serving image exports no {full}")
    return full


def pod_matcher(namespace: str, deployment: str) -> str:
    """The PromQL label matchers of one Deployment's pods: the `namespace` and `pod` target labels
    every Kubernetes scrape config (a PodMonitor, the Prometheus chart's kubernetes-pods job) adds;
    a Deployment's pods are named `<deployment>-<replicaset hash>-<suffix>`."""
    return f'namespace="{namespace}",pod=~"{deployment}-[a-z0-9]+-[a-z0-9]+"'


def scaling_triggers(endpoint_output: Any, metrics_url: str, namespace: str, deployment: str) -> list[dict[str, Any]]:
    """KEDA Prometheus triggers of one version's Deployment, from the endpoint's `scaling`:

    - `concurrency` (the default): requests in flight, running and queued
      (`stackwise:num_requests_running` + `stackwise:num_requests_waiting`), `target_concurrency` per
      replica (AverageValue: the HPA divides the sum by the replicas);
    - `invocations`: finished requests per minute (`stackwise:requests_total`), `target_invocations`
      per replica;
    - `latency`: the mean end-to-end request latency over 2 minutes
      (`stackwise:e2e_request_latency_seconds`), held at `target_latency_ms` (Value: not per replica).
      With another metric, `target_latency_ms` adds this trigger too (the HPA takes the larger count).

    `utilization` (GPU busy %) is refused: the serving image exports no GPU metric (ConfigError
    naming `stackwise:endpoint.scaling.metric`)."""
    scaling = endpoint_output.scaling
    metric = scaling.metric or "concurrency"
    pods = pod_matcher(namespace, deployment)
    if metric == "utilization":
        raise ConfigError(
            f"endpoint {endpoint_output.name}: scaling.metric utilization cannot drive a Kubernetes endpoint: the "
            "serving image exports no GPU utilization metric (it exports " + ", ".join(sorted(
                {METRIC_PREFIX + n for n in ("num_requests_running", "num_requests_waiting", "requests_total",
                                             "e2e_request_latency_seconds")})) + ", ...)",
            where=f"{SCALING_METRIC_KEY} (stack outputs: endpoints[].scaling.metric)",
            fix="use concurrency (requests in flight per replica, scaling.targetConcurrency), latency (with "
                "targetLatencyMs) or invocations (targetInvocations per replica per minute)")
    base = {"serverAddress": metrics_url, "ignoreNullValues": "true"}
    triggers: list[dict[str, Any]] = []
    if metric == "concurrency":
        # a regex of plain names (letters, ':' and '_': nothing to escape in PromQL or RE2)
        names = "|".join(_metric(n) for n in ("num_requests_running", "num_requests_waiting"))
        query = f'sum({{__name__=~"{names}",{pods}}})'
        triggers.append({"type": "prometheus", "name": "concurrency", "metricType": "AverageValue",
                         "metadata": {**base, "query": query, "threshold": _number(scaling.target_concurrency)}})
    elif metric == "invocations":
        query = f"sum(rate({_metric('requests_total')}{{{pods}}}[{RATE_WINDOW}])) * 60"
        triggers.append({"type": "prometheus", "name": "invocations", "metricType": "AverageValue",
                         "metadata": {**base, "query": query, "threshold": _number(scaling.target_invocations)}})
    if scaling.target_latency_ms is not None:
        total = _metric("e2e_request_latency_seconds_sum")
        count = _metric("e2e_request_latency_seconds_count")
        # Idle, both rates are 0: the clamp makes that 0, not NaN (KEDA before 2.20 fails on NaN).
        query = (f"sum(rate({total}{{{pods}}}[{RATE_WINDOW}])) / "
                 f"clamp_min(sum(rate({count}{{{pods}}}[{RATE_WINDOW}])), 1e-9)")
        triggers.append({"type": "prometheus", "name": "latency", "metricType": "Value",
                         "metadata": {**base, "query": query,
                                      "threshold": _number(scaling.target_latency_ms / 1000)}})
    return triggers


def _number(value: float) -> str:
    return f"{value:g}"


def scaled_object_manifest(stack: Any, endpoint_output: Any, target: Any) -> dict[str, Any] | None:
    """The version's ScaledObject, or None when the stack has no `metrics_url` or the endpoint no
    `scaling` (the Deployment then keeps `min_replicas`)."""
    cluster = kube.cluster_outputs(stack)
    scaling = endpoint_output.scaling
    if scaling is None or not cluster.metrics_url:
        return None
    name = version_name(endpoint_output.name, target.model, target.version)
    behavior: dict[str, Any] = {
        "scaleDown": {"stabilizationWindowSeconds": scaling.scale_in_cooldown_seconds or SCALE_IN_WINDOW_S}}
    if scaling.scale_out_cooldown_seconds:
        behavior["scaleUp"] = {"stabilizationWindowSeconds": scaling.scale_out_cooldown_seconds}
    return {
        "apiVersion": f"{KEDA_GROUP}/{KEDA_VERSION}", "kind": "ScaledObject",
        "metadata": {"name": name, "namespace": cluster.namespace,
                     "labels": object_labels(stack, endpoint_output.name, target.model, target.version)},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicaCount": endpoint_output.min_replicas, "maxReplicaCount": scaling.max_replicas,
            "pollingInterval": POLLING_INTERVAL_S,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": behavior}},
            "triggers": scaling_triggers(endpoint_output, cluster.metrics_url, cluster.namespace, name),
        },
    }


def version_manifests(stack: Any, endpoint_output: Any, target: DeployTarget,
                      rag_env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Deployment, Service and (when autoscaled) ScaledObject of one version, in creation order."""
    made = [deployment_manifest(stack, endpoint_output, target, rag_env),
            version_service(stack, endpoint_output.name, target)]
    scaled = scaled_object_manifest(stack, endpoint_output, target)
    return made + ([scaled] if scaled else [])


def route_shape(route: dict[str, Any]) -> tuple[Any, ...]:
    """What of an HTTPRoute stackwise sets, with the API server's defaults filled in (a stored route
    carries them): its Gateway, hostnames and (Service, port, weight) backends."""
    spec = route.get("spec") or {}
    parents = [(p.get("group", GATEWAY_GROUP), p.get("kind", "Gateway"), p.get("namespace"), p.get("name"))
               for p in spec.get("parentRefs") or []]
    backends = [(r.get("group", ""), r.get("kind", "Service"), r.get("name"), r.get("port"), int(r.get("weight", 1)))
                for rule in spec.get("rules") or [] for r in rule.get("backendRefs") or []]
    return parents, sorted(spec.get("hostnames") or []), backends


def version_manifests_for_removal(stack: Any, endpoint_output: Any, variant: Variant) -> list[dict[str, Any]]:
    """The objects of one version in deletion order: ScaledObject, Service, Deployment (names only)."""
    name = variant.name
    return [{"apiVersion": f"{KEDA_GROUP}/{KEDA_VERSION}", "kind": "ScaledObject", "metadata": {"name": name}},
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}},
            {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name}}]
