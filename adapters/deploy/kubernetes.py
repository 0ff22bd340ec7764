"""Endpoints on a Kubernetes cluster: each model version a Deployment of the serving image, a
traffic split with a Gateway API HTTPRoute, autoscaling with a KEDA ScaledObject
(docs/kubernetes.md says what the cluster needs).

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

`describe` reads the Deployments (the client's V1Deployment models: `deployment_state`), the
HTTPRoute's weights, or without one the endpoint Service's selector. `deploy` is idempotent (a
version whose Deployment exists is not created again); a version whose Service or ScaledObject
cannot be created is deleted again, with everything else this call created, before the error is
raised. `undeploy` needs 0 % first, drops the version from the HTTPRoute, then deletes its
ScaledObject, Service and Deployment. Request builders are pure functions of the stack and target.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any
from urllib.parse import urlsplit

from stackwise import catalog
from stackwise.adapters import kube
from stackwise.deploy import DeployBackend, Deployment, DeployTarget, Variant, variant_name
from stackwise.errors import ConfigError, SpecError
from stackwise.serve_targets import rag_deploy_environment

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
GPU_RESOURCE = "nvidia.com/gpu"

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

_LABEL = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


# -- names and labels ------------------------------------------------------------------------------
def _digest(text: str, n: int = 6) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def dns_label(text: str, limit: int = 63) -> str:
    """`text` as a DNS-1035 label (a letter first; lowercase letters, digits, '-'; at most `limit`):
    itself when it already is one, else a cleaned head and 6 hex digits of `text`, so two different
    texts never share a name."""
    clean = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if clean == text and len(clean) <= limit and clean[:1].isalpha():
        return clean
    if not clean[:1].isalpha():
        clean = f"x-{clean}".rstrip("-")
    return clean[:limit - 7].rstrip("-") + "-" + _digest(text)


def label_value(text: str) -> str:
    """`text` as a label value: itself when valid (63 characters of [A-Za-z0-9._-], alphanumeric at both
    ends), else a cleaned head and 6 hex digits of it."""
    if len(text) <= 63 and _LABEL.fullmatch(text):
        return text
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:56].strip("-_.")
    return f"{clean}-{_digest(text)}" if clean else _digest(text)


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
def serving_image(stack: Any, endpoint_output: Any) -> str:
    """The endpoint's serving image, else the `serve` image beside a `train` training image, with its tag
    (`stackwise image build` tags both `<repository>/<target>:<tag>`; a digest-pinned one: `latest`)."""
    if endpoint_output.serving_image:
        return endpoint_output.serving_image
    training = stack.outputs.training_image or ""
    found = re.fullmatch(r"(.+)/train(?::([^/@]+))?(?:@sha256:[0-9a-f]+)?", training)
    if found:
        return f"{found[1]}/serve:{found[2] or 'latest'}"  # `stackwise image build` tags both alike
    raise ConfigError(f"stack {stack.name!r} exports no serving image for endpoint {endpoint_output.name!r}",
                      where="stack outputs: endpoints[].serving_image",
                      fix="export serving_image for the endpoint, or a training image named <repository>/train:<tag> "
                          "(`stackwise image build --push`), whose <repository>/serve:<tag> is used")


def endpoint_gpu(stack: Any, endpoint_output: Any) -> str | None:
    gpu = endpoint_output.gpu or stack.outputs.default_gpu
    return catalog.canonical_gpu(gpu) if gpu else None


def container_env(target: DeployTarget, rag_env: dict[str, str] | None = None) -> dict[str, str]:
    """What the serving image reads (sdk/serving.py `model_source`, `create_app`): the same variables
    the cloud adapters set, and a RAG app version's context and pinned generator (`rag_env`)."""
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
    from stackwise.adapters.compute.kubernetes import node_selector

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


# -- states ----------------------------------------------------------------------------------------
def deployment_state(deployment: Any) -> str:
    """"ready", "updating", "creating" or "failed" of a V1Deployment (the client's model):
    failed when its rollout passed its progress deadline (Progressing False,
    ProgressDeadlineExceeded); ready when the controller has seen its latest spec and as many
    replicas are updated and available as it wants; creating while none was ever available in its
    first rollout; else updating."""
    spec, status, meta = deployment.spec, deployment.status, deployment.metadata
    conditions = {c.type: c for c in (status.conditions or [])} if status else {}
    progressing = conditions.get("Progressing")
    if progressing is not None and progressing.status == "False" and progressing.reason == "ProgressDeadlineExceeded":
        return "failed"
    desired = spec.replicas if spec is not None and spec.replicas is not None else 1
    available = (status.available_replicas or 0) if status else 0
    updated = (status.updated_replicas or 0) if status else 0
    observed = (status.observed_generation or 0) if status else 0
    if observed >= (meta.generation or 0) and available >= desired and updated >= desired:
        return "ready"
    once_available = progressing is not None and progressing.reason == "NewReplicaSetAvailable"
    return "creating" if available == 0 and not once_available else "updating"


def endpoint_state(states: list[str]) -> str:
    if not states:
        return "absent"
    if "failed" in states:
        return "failed"
    if all(s == "ready" for s in states):
        return "ready"
    return "creating" if all(s == "creating" for s in states) else "updating"


def _env(deployment: Any) -> dict[str, str]:
    containers = deployment.spec.template.spec.containers if deployment.spec and deployment.spec.template else []
    for container in containers or []:
        if container.name == CONTAINER:
            return {e.name: e.value or "" for e in container.env or []}
    return {}


class KubernetesDeploy(DeployBackend):
    """The stack's endpoints on its Kubernetes cluster; each version one Deployment (see the module)."""

    cloud = "kubernetes"

    def __init__(self, stack: Any, api_client: Any = None):
        super().__init__(stack)
        from stackwise.adapters.compute._cloud import Retry

        self._api_client = api_client
        self._apis: dict[str, Any] = {}
        self.retry = Retry()

    # -- endpoint ------------------------------------------------------------------------------------
    def endpoint_output(self, endpoint: str | None = None) -> Any:
        """A local stack (an on-premises cluster) exports no endpoints: it has one, `local`, serving the
        `serve` image beside its training image on CPU, with one replica."""
        if self.stack.is_local and not self.stack.outputs.endpoints:
            from stackwise.contract import EndpointOutput
            from stackwise.serving import DEFAULT_ENDPOINT

            if endpoint not in (None, DEFAULT_ENDPOINT):
                raise ConfigError(f"stack {self.stack.name!r} has no endpoint named {endpoint!r}",
                                  where=f"stack {self.stack.name}", fix=f"its endpoint is {DEFAULT_ENDPOINT!r}")
            return EndpointOutput(name=DEFAULT_ENDPOINT)
        return super().endpoint_output(endpoint)

    @property
    def namespace(self) -> str:
        return kube.cluster_outputs(self.stack).namespace

    # -- calls ---------------------------------------------------------------------------------------
    def _api(self, name: str) -> Any:
        if name not in self._apis:
            if self._api_client is None:
                self._api_client = kube.api_client(self.stack)
            from kubernetes import client

            self._apis[name] = getattr(client, name)(self._api_client)
        return self._apis[name]

    def _call(self, what: str, method: str, *args: Any, api: str = "CoreV1Api", **kwargs: Any) -> Any:
        """One API call in the namespace, retried on 429/5xx; errors mapped by stackwise.adapters.kube."""
        from stackwise.adapters.compute._cloud import with_retries

        def once() -> Any:
            fn = getattr(self._api(api), method)
            return kube.call(lambda: fn(*args, **kwargs), what, stack=self.stack, namespace=self.namespace)

        return with_retries(once, self.retry, f"kubernetes: {what}")

    def _custom(self, verb: str, group: str, version: str, plural: str, *args: Any, what: str) -> Any:
        return self._call(what, f"{verb}_namespaced_custom_object", group, version, self.namespace, plural, *args,
                          api="CustomObjectsApi")

    def _route(self, name: str) -> dict[str, Any] | None:
        try:
            return self._custom("get", GATEWAY_GROUP, GATEWAY_VERSION, ROUTES, name, what=f"get HTTPRoute {name}")
        except kube.NotFound:
            return None

    def _service(self, name: str) -> Any:
        try:
            return self._call(f"get Service {name}", "read_namespaced_service", name, self.namespace)
        except kube.NotFound:
            return None

    def _deployments(self, endpoint: str) -> list[Any]:
        selector = ",".join(f"{k}={v}" for k, v in {**kube.MANAGED_BY, ENDPOINT_LABEL: label_value(endpoint)}.items())
        found = self._call(f"list Deployments of endpoint {endpoint}", "list_namespaced_deployment", self.namespace,
                           label_selector=selector, api="AppsV1Api").items
        return sorted(found, key=lambda d: d.metadata.name)

    # -- reading -------------------------------------------------------------------------------------
    def describe(self, endpoint: str | None = None) -> Deployment:
        out = self.endpoint_output(endpoint)
        front = endpoint_object_name(out.name)
        url = out.url or f"http://{front}.{self.namespace}.svc.cluster.local/v1"
        deployments = self._deployments(out.name)
        if not deployments:
            return Deployment(endpoint=out.name, cloud=self.cloud, state="absent", url=url)
        weights = self._weights(out.name, deployments)
        variants = []
        for dep in deployments:
            env, labels = _env(dep), dep.metadata.labels or {}
            variants.append(Variant(model=env.get(ENV_MODEL) or labels.get(MODEL_LABEL, "?"),
                                    version=env.get(ENV_VERSION) or labels.get(VERSION_LABEL, "?"),
                                    traffic=weights.get(dep.metadata.name, 0), state=deployment_state(dep),
                                    name=dep.metadata.name, artifact_uri=env.get(ENV_URI) or None,
                                    base_model=env.get(ENV_BASE) or None))
        variants.sort(key=lambda v: (v.model, int(v.version) if v.version.isdigit() else 0, v.version))
        return Deployment(endpoint=out.name, cloud=self.cloud, state=endpoint_state([v.state for v in variants]),
                          url=url, variants=variants)

    def _weights(self, endpoint: str, deployments: list[Any]) -> dict[str, int]:
        """Version object name -> percent: the HTTPRoute's weights, else the endpoint Service's one version."""
        front = endpoint_object_name(endpoint)
        if gateway_ref(self.stack) is not None:
            route = self._route(front)
            if route is not None:
                refs = [ref for rule in (route.get("spec") or {}).get("rules") or []
                        for ref in rule.get("backendRefs") or []]
                return {ref["name"]: int(ref.get("weight", 1)) for ref in refs}
        service = self._service(front)
        selector = dict(service.spec.selector or {}) if service is not None and service.spec else {}
        if MODEL_LABEL in selector and VERSION_LABEL in selector:
            for dep in deployments:
                if all((dep.metadata.labels or {}).get(k) == v for k, v in selector.items()):
                    return {dep.metadata.name: 100}
        return {}

    # -- writing -------------------------------------------------------------------------------------
    def deploy(self, targets: list[DeployTarget], traffic: dict[str, int], endpoint: str | None = None) -> Deployment:
        out = self.endpoint_output(endpoint)
        current = self.describe(out.name)
        new, split = self.plan(current, targets, traffic)
        gateway = gateway_ref(self.stack)
        primary = next((key for key, pct in split.items() if pct == 100), None)
        if gateway is None and primary is None:
            raise SpecError(
                "a traffic split between versions needs a Gateway API Gateway, and this stack names none: "
                + ", ".join(f"{k}={v}" for k, v in split.items() if v),
                where=f"traffic; {GATEWAY_KEY} of stack {self.stack.name}",
                fix=f"set {GATEWAY_KEY}: NAMESPACE/NAME (docs/kubernetes.md), or send all traffic to one "
                    "version, e.g. --traffic " + next(iter(split)) + "=100")
        # Every manifest is built (and checked) before the first call.
        plans = [version_manifests(self.stack, out, t, rag_deploy_environment(self.stack, t)) for t in new]
        made: list[dict[str, Any]] = []
        try:
            for target, manifests in zip(new, plans):
                for manifest in manifests:
                    self._create(manifest, target, made)
            self._route_traffic(out, current, new, split, primary, made)
        except BaseException:
            self._remove(made)  # nothing left half-created
            raise
        return self.describe(out.name)

    def _create(self, manifest: dict[str, Any], target: Any, made: list[dict[str, Any]]) -> None:
        """Create one object of a version; an existing one of this version (left by an interrupted
        deploy) is brought to `manifest`; one of the same name that is not this version's is a ConfigError."""
        made.append(manifest)  # removed again if anything of this deploy fails, also when it existed
        try:
            self._send("create", manifest)
            return
        except kube.Conflict:
            pass
        existing = self._send("get", manifest)
        try:
            self._check_owner(manifest, existing, (ENDPOINT_LABEL, MODEL_LABEL, VERSION_LABEL), target.key)
        except ConfigError:
            made.pop()  # not ours: never deleted
            raise
        if manifest["kind"] != "Deployment":  # a Deployment's selector is immutable; this version's runs already
            self._send("patch", manifest, {"metadata": {"labels": manifest["metadata"]["labels"]},
                                           "spec": manifest["spec"]})

    def _check_owner(self, manifest: dict[str, Any], existing: Any, keys: tuple[str, ...], whose: str) -> None:
        """ConfigError unless `existing` (a dict or a client model) carries `manifest`'s `keys` labels and
        stackwise's managed-by: an object of the same name made by someone else is never taken over."""
        if isinstance(existing, dict):
            labels = (existing.get("metadata") or {}).get("labels") or {}
        else:
            labels = existing.metadata.labels or {}
        wanted = manifest["metadata"]["labels"]
        if all(labels.get(k) == wanted[k] for k in (*keys, *kube.MANAGED_BY)):
            return
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        raise ConfigError(f"a {kind} named {name} already exists in namespace {self.namespace} and is not "
                          f"stackwise's {whose} of endpoint {wanted[ENDPOINT_LABEL]}",
                          where=f"namespace {self.namespace}, {kind} {name}",
                          fix=f"delete or rename that {kind} (kubectl delete {kind.lower()} {name} -n "
                              f"{self.namespace}), or deploy to another endpoint")

    def _send(self, verb: str, manifest: dict[str, Any], body: Any = None) -> Any:
        """create / get / patch / delete one manifest's object; returns the object as a dict."""
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        what = f"{verb} {kind} {name}"
        if kind in ("HTTPRoute", "ScaledObject"):
            group, version = manifest["apiVersion"].split("/")
            plural = ROUTES if kind == "HTTPRoute" else SCALED_OBJECTS
            if verb == "create":
                return self._custom("create", group, version, plural, manifest, what=what)
            if verb == "delete":
                return self._custom("delete", group, version, plural, name, what=what)
            return self._custom(verb, group, version, plural, name, *([body] if verb == "patch" else []), what=what)
        api, noun = ("AppsV1Api", "deployment") if kind == "Deployment" else ("CoreV1Api", "service")
        method = {"create": f"create_namespaced_{noun}", "get": f"read_namespaced_{noun}",
                  "patch": f"patch_namespaced_{noun}", "delete": f"delete_namespaced_{noun}"}[verb]
        if verb == "create":
            answer = self._call(what, method, self.namespace, manifest, api=api)
        elif verb == "patch":
            answer = self._call(what, method, name, self.namespace, body, api=api)
        elif verb == "delete":
            answer = self._call(what, method, name, self.namespace, api=api, propagation_policy="Background")
        else:
            answer = self._call(what, method, name, self.namespace, api=api)
        return self._api_client.sanitize_for_serialization(answer) if verb != "delete" else answer

    def _remove(self, manifests: list[dict[str, Any]]) -> None:
        """Delete the objects of `manifests`, last first, ignoring what is gone or cannot be deleted (the
        error that made this necessary is the one raised)."""
        for manifest in reversed(manifests):
            try:
                self._send("delete", manifest)
            except Exception:  # noqa: BLE001 - best effort: the first error is the one that matters
                pass

    def _route_traffic(self, out: Any, current: Deployment, new: list[DeployTarget], split: dict[str, int],
                       primary: str | None, made: list[dict[str, Any]]) -> None:
        """Apply `split`: the HTTPRoute's weights (with a gateway) or the endpoint Service's selector."""
        front = endpoint_object_name(out.name)
        versions = {v.key: v for v in current.variants}
        versions.update({t.key: t for t in new})
        names = {key: version_name(out.name, v.model, v.version) for key, v in versions.items()}
        gateway = gateway_ref(self.stack) is not None
        selector = endpoint_selector(out.name, None if gateway else versions[primary])
        service = self._service(front)
        wanted = service_manifest(self.stack, front, out.name, selector)
        if service is None:
            self._create_front(wanted, made)
        else:
            self._check_owner(wanted, service, (ENDPOINT_LABEL,), "Service")
            if dict(service.spec.selector or {}) != selector:
                gone = {k: None for k in (service.spec.selector or {}) if k not in selector}
                self._send("patch", wanted, {"spec": {"selector": {**gone, **selector}}})
        if not gateway:
            return
        route = route_manifest(self.stack, out, [(names[key], pct) for key, pct in split.items()])
        existing = self._route(front)
        if existing is None:
            self._create_front(route, made)
            return
        self._check_owner(route, existing, (ENDPOINT_LABEL,), "HTTPRoute")
        if route_shape(existing) != route_shape(route):  # weights alone: this one PATCH
            self._send("patch", route, {"spec": {**route["spec"], "hostnames": route["spec"].get("hostnames")}})

    def _create_front(self, manifest: dict[str, Any], made: list[dict[str, Any]]) -> None:
        """Create the endpoint Service or HTTPRoute (created by a concurrent deploy meanwhile: patched)."""
        try:
            self._send("create", manifest)
            made.append(manifest)
        except kube.Conflict:
            self._check_owner(manifest, self._send("get", manifest), (ENDPOINT_LABEL,), manifest["kind"])
            self._send("patch", manifest, {"spec": manifest["spec"]})

    def undeploy(self, key: str, endpoint: str | None = None) -> Deployment:
        out = self.endpoint_output(endpoint)
        current = self.describe(out.name)
        variant = self.check_removable(current, key)
        if variant is None:
            return current
        if gateway_ref(self.stack) is not None:
            rest = [(v.name, v.traffic) for v in current.variants if v.key != key]
            route = route_manifest(self.stack, out, rest)
            if self._route(route["metadata"]["name"]) is not None:  # first: no route to a Service being deleted
                self._send("patch", route, {"spec": {"rules": route["spec"]["rules"]}})
        for manifest in version_manifests_for_removal(self.stack, out, variant):
            try:
                self._send("delete", manifest)  # ScaledObject first: KEDA never scales what is being deleted
            except kube.NotFound:
                pass
            except ConfigError:  # forbidden: a stack that never autoscaled may have no rights on ScaledObjects
                if manifest["kind"] != "ScaledObject" or scaled_object_manifest(self.stack, out, variant):
                    raise
        return self.describe(out.name)


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
