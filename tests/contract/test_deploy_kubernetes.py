"""The Kubernetes deploy adapter against tests/emulators/kube_server.py: real HTTP, the official
`kubernetes` client, every object the adapter creates or patches judged by the API server stand-in
with tests/kube_validate.py (kubernetes-validate strict at the pinned Kubernetes version for
Deployments and Services; the upstream CRD schemas for the Gateway API HTTPRoute and KEDA's
ScaledObject).

Verified: the deploy contract (absent, first deploy, A/B split, traffic-only change, idempotence,
refused splits, undeploy rules); the manifests (golden); GPU placement as the compute adapter places
jobs; probes on routes the real serving app answers; autoscaling queries on metrics the real serving
app exports; the split without a gateway; errors (no kubeconfig, unknown context, 403, a metric the
image does not export, a name taken by a foreign object) with nothing left half-created; no secret
in any request. Not verified: a cluster running any of it (no kubelet, Gateway implementation, KEDA
or Prometheus runs here; the emulator's `settle` plays the Deployment controller).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
for folder in (HERE.parent, HERE.parent / "emulators"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

pytest.importorskip("kubernetes", reason="install stackwise[kubernetes]")
pytest.importorskip("kubernetes_validate", reason="install stackwise[dev]")

from kube_validate import ManifestError, validate_manifest  # noqa: E402
from cloud_fixtures import OUTPUTS, check_golden  # noqa: E402
from kube_server import KubeServer  # noqa: E402

from stackwise.deploy import DeployTarget  # noqa: E402
from stackwise.errors import ConfigError, SpecError  # noqa: E402
from stackwise.testing.deploy import DeployContract, DeployDriver  # noqa: E402

NS = "sw-dev"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/sw-dev-images/serve:v7"
GATEWAY = "gateway-system/public"
METRICS = "http://prometheus.monitoring:9090"
TOKEN = "kube-t0ken-n3v3r-l34k-0123456789"  # the kubeconfig's bearer token: never in a message or request
SCALING = {"max_replicas": 4, "metric": "concurrency", "target_concurrency": 6, "target_latency_ms": 2500}
DEPLOYMENTS = "/apis/apps/v1/namespaces/sw-dev/deployments"
SERVICES = "/api/v1/namespaces/sw-dev/services"
ROUTES = "/apis/gateway.networking.k8s.io/v1/namespaces/sw-dev/httproutes"
SCALED = "/apis/keda.sh/v1alpha1/namespaces/sw-dev/scaledobjects"


@pytest.fixture(scope="module")
def server():
    srv = KubeServer(validator=validate_manifest).start()
    yield srv
    srv.stop()


@pytest.fixture
def kube(server):
    server.reset()
    return server


def endpoint(**changes):
    return {"name": "chat", "serving_image": IMAGE, "gpu": "A10G", "gpu_count": 1, "min_replicas": 2,
            "scaling": dict(SCALING), **changes}


def connect(server, tmp_path, monkeypatch, *, endpoints=None, settings=None, outputs=None, **cluster):
    """`stackwise.connect("dev-k8s")`: an AWS stack whose jobs and endpoints run on the emulated cluster."""
    import yaml

    import stackwise

    stacks = tmp_path / "stacks"
    stacks.mkdir(exist_ok=True)
    if settings is None:
        settings = {"kubeconfig": server.kubeconfig(str(tmp_path / "kubeconfig"), token=TOKEN), "context": "test"}
    (stacks / "Pulumi.dev-k8s.yaml").write_text(yaml.safe_dump({"config": {
        "stackwise:cloud": "aws", "stackwise:region": "us-east-1", "stackwise:compute": {"kind": "kubernetes"},
        "stackwise:kubernetes": settings}}))
    values = {**OUTPUTS["dev-aws"], "endpoints": [endpoint()] if endpoints is None else endpoints,
              "secrets": {"hf_token": "env://HF_TOKEN"},
              "kubernetes": {"namespace": NS, "service_account": "stackwise-serve", "gateway": GATEWAY,
                             "metrics_url": METRICS, "pod_labels": {"azure.workload.identity/use": "true"},
                             **cluster}, **(outputs or {})}
    path = tmp_path / "dev-k8s-outputs.json"
    path.write_text(json.dumps(values))
    monkeypatch.setenv("STACKWISE_STACKS_DIR", str(stacks))
    monkeypatch.setenv("STACKWISE_OUTPUTS", str(path))
    monkeypatch.setenv("STACKWISE_HOME", str(tmp_path / ".stackwise"))
    monkeypatch.delenv("STACKWISE_STACK", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    return stackwise.connect("dev-k8s")


def backend(server, tmp_path, monkeypatch, **kwargs):
    deployer = connect(server, tmp_path, monkeypatch, **kwargs).deployer
    deployer.retry = type(deployer.retry)(attempts=3, base_s=0.0, max_s=0.0)
    return deployer


def target(version: int, model: str = "chat") -> DeployTarget:
    return DeployTarget(model=model, version=str(version),
                        artifact_uri=f"s3://sw-dev-artifacts/mlflow/{model}-{version}/model",
                        base_model="HuggingFaceTB/SmolLM2-135M-Instruct")


def settle(server) -> None:
    """Play the Deployment controller: every Deployment's pods are up and available."""
    for dep in server.find("Deployment", NS):
        n = dep["spec"]["replicas"]
        server.update_status("apps/v1", "deployments", NS, dep["metadata"]["name"], {
            "observedGeneration": dep["metadata"]["generation"], "replicas": n, "updatedReplicas": n,
            "readyReplicas": n, "availableReplicas": n,
            "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                           {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]})


def writes(server, since: int = 0) -> list[tuple[str, str]]:
    """(method, path without the query) of every call that is not a read."""
    return [(m, p.split("?")[0]) for m, p, _ in server.requests[since:] if m != "GET"]


def posted(server, collection: str) -> list[dict]:
    return [b for m, p, b in server.requests if m == "POST" and p.split("?")[0] == collection]


class KubernetesDriver(DeployDriver):
    def __init__(self, server, tmp_path, monkeypatch):
        self.server, self.tmp_path, self.monkeypatch = server, tmp_path, monkeypatch

    def backend(self):
        return backend(self.server, self.tmp_path, self.monkeypatch)

    def backend_without_endpoint(self):
        bare = self.tmp_path / "bare"
        bare.mkdir(exist_ok=True)
        return backend(self.server, bare, self.monkeypatch, endpoints=[])

    def target(self, version):
        return target(version)

    def settle(self, backend):
        settle(self.server)

    def created(self):
        return len(posted(self.server, DEPLOYMENTS))


class TestKubernetesDeployContract(DeployContract):
    @pytest.fixture
    def driver(self, kube, tmp_path, monkeypatch):
        return KubernetesDriver(kube, tmp_path, monkeypatch)


# -- the manifests ------------------------------------------------------------------------------------
def test_a_version_s_objects_match_the_golden_manifests(kube, tmp_path, monkeypatch):
    deployer = backend(kube, tmp_path, monkeypatch)
    deployer.deploy([target(1)], {"chat:1": 100})
    sent = [b for m, p, b in kube.requests if m == "POST"]
    assert [(b["kind"], b["metadata"]["name"]) for b in sent] == [
        ("Deployment", "chat-chat-v1"), ("Service", "chat-chat-v1"), ("ScaledObject", "chat-chat-v1"),
        ("Service", "chat"), ("HTTPRoute", "chat")]
    check_golden("kubernetes_endpoint_chat_1", sent)


def test_the_validator_refuses_what_the_api_server_refuses(kube, tmp_path, monkeypatch):
    """The judge is not a pass-through: a wrong field in each kind is refused (a 422 from the stand-in)."""
    from stackwise.adapters.deploy import kubernetes as k8s

    platform = connect(kube, tmp_path, monkeypatch)
    out = platform.deployer.endpoint_output()
    deployment, service, scaled = k8s.version_manifests(platform.stack, out, target(1))
    route = k8s.route_manifest(platform.stack, out, [("chat-chat-v1", 100)])
    for good in (deployment, service, scaled, route):
        validate_manifest(good)
    bad = [
        json.loads(json.dumps(deployment).replace('"readinessProbe"', '"readinesProbe"')),
        {**service, "spec": {**service["spec"], "ports": [{"port": "eighty"}]}},
        {**scaled, "spec": {k: v for k, v in scaled["spec"].items() if k != "scaleTargetRef"}},
        json.loads(json.dumps(route).replace('"weight"', '"weigth"')),
        {**route, "spec": {**route["spec"], "rules": [{"backendRefs": [{"name": "x", "port": 80, "weight": -1}]}]}},
        {**scaled, "metadata": {**scaled["metadata"], "labels": {"stackwise.dev/model": "a" * 64}}},
    ]
    for manifest in bad:
        with pytest.raises(ManifestError):
            validate_manifest(manifest)


def test_placement_follows_the_compute_adapter(kube, tmp_path, monkeypatch):
    from stackwise.adapters.compute.kubernetes import GFD_PRODUCTS

    backend(kube, tmp_path, monkeypatch).deploy([target(1)], {"chat:1": 100})
    (dep,) = posted(kube, DEPLOYMENTS)
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    resources = container["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": GFD_PRODUCTS["A10G"]}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["serviceAccountName"] == "stackwise-serve" and dep["spec"]["replicas"] == 2
    assert dep["spec"]["template"]["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert container["image"] == IMAGE


def test_a_program_made_gpu_pool_is_selected_by_its_label(kube, tmp_path, monkeypatch):
    deployer = backend(kube, tmp_path, monkeypatch, gpu_label="stackwise.dev/gpu", gpu_values={"A10G": "A10G"},
                       gpu_tolerations=[{"key": "nvidia.com/gpu", "operator": "Equal", "value": "present",
                                         "effect": "NoSchedule"}])
    deployer.deploy([target(1)], {"chat:1": 100})
    pod = posted(kube, DEPLOYMENTS)[0]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"stackwise.dev/gpu": "A10G"}
    assert pod["tolerations"][0]["value"] == "present"


def test_a_gpu_the_stack_does_not_map_is_refused_before_anything_is_created(kube, tmp_path, monkeypatch):
    deployer = backend(kube, tmp_path, monkeypatch, gpu_label="stackwise.dev/gpu", gpu_values={"L4": "L4"})
    with pytest.raises(ConfigError, match="A10G") as err:
        deployer.deploy([target(1)], {"chat:1": 100})
    assert "gpuValues" in err.value.fix
    assert writes(kube) == []


def test_a_cpu_endpoint_asks_for_no_gpu(kube, tmp_path, monkeypatch):
    monkeypatch.setitem(OUTPUTS, "dev-aws", {**OUTPUTS["dev-aws"], "default_gpu": None})
    backend(kube, tmp_path, monkeypatch, endpoints=[endpoint(gpu=None)]).deploy([target(1)], {"chat:1": 100})
    pod = posted(kube, DEPLOYMENTS)[0]["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["requests"]


def test_the_probes_are_routes_the_serving_app_answers(kube, tmp_path, monkeypatch):
    """The real serving app, given the Deployment's environment: it serves the version's URI, its
    liveness route answers while the model is not loaded, its readiness route does not yet."""
    pytest.importorskip("fastapi", reason="install stackwise[serve]")
    from fastapi.testclient import TestClient

    from stackwise.keys import KeyRing
    from stackwise.serving import ModelSource, create_app, model_source

    backend(kube, tmp_path, monkeypatch).deploy([target(1)], {"chat:1": 100})
    (container,) = posted(kube, DEPLOYMENTS)[0]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    source = model_source(environ=env, sagemaker_dir=tmp_path / "none")
    assert (source.uri, source.origin) == ("s3://sw-dev-artifacts/mlflow/chat-1/model", "$STACKWISE_MODEL_URI")
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    app = create_app(source=ModelSource(str(empty), source.origin, source.platform), environ=env,
                     keys=KeyRing(tmp_path / "keys"))
    port = container["ports"][0]
    assert port["containerPort"] == 8080 and container["livenessProbe"]["httpGet"]["port"] == port["name"]
    with TestClient(app) as client:
        assert client.get(container["livenessProbe"]["httpGet"]["path"]).status_code == 200
        assert client.get(container["startupProbe"]["httpGet"]["path"]).status_code == 200
        assert client.get(container["readinessProbe"]["httpGet"]["path"]).status_code == 503


# -- traffic -------------------------------------------------------------------------------------------
def test_a_change_of_weights_alone_patches_only_the_route(kube, tmp_path, monkeypatch):
    deployer = backend(kube, tmp_path, monkeypatch)
    deployer.deploy([target(1)], {"chat:1": 100})
    deployer.deploy([target(2)], {"chat:1": 90, "chat:2": 10})
    before = len(kube.requests)
    dep = deployer.deploy([], {"chat:1": 30, "chat:2": 70})
    assert writes(kube, before) == [("PATCH", f"{ROUTES}/chat")]
    route = kube.get("gateway.networking.k8s.io/v1", "httproutes", NS, "chat")
    assert [(r["name"], r["weight"]) for r in route["spec"]["rules"][0]["backendRefs"]] == [
        ("chat-chat-v1", 30), ("chat-chat-v2", 70)]
    assert route["spec"]["parentRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                            "namespace": "gateway-system", "name": "public"}]
    assert dep.traffic == {"chat:1": 30, "chat:2": 70}
    before = len(kube.requests)
    deployer.deploy([target(2)], {"chat:1": 30, "chat:2": 70})
    assert writes(kube, before) == []  # the same split again: nothing written


def test_the_endpoint_service_selects_every_version_behind_a_gateway(kube, tmp_path, monkeypatch):
    backend(kube, tmp_path, monkeypatch).deploy([target(1), target(2)], {"chat:1": 50, "chat:2": 50})
    front = kube.get("v1", "services", NS, "chat")
    assert front["spec"]["selector"] == {"stackwise.dev/endpoint": "chat"}
    versions = {s["metadata"]["name"]: s["spec"]["selector"] for s in kube.find("Service", NS)}
    assert versions["chat-chat-v2"] == {"stackwise.dev/endpoint": "chat", "stackwise.dev/model": "chat",
                                        "stackwise.dev/version": "2"}
    pods = kube.get("apps/v1", "deployments", NS, "chat-chat-v2")["spec"]["template"]["metadata"]["labels"]
    assert all(pods[k] == v for k, v in versions["chat-chat-v2"].items())


def test_an_endpoint_url_s_host_is_the_route_s_hostname(kube, tmp_path, monkeypatch):
    deployer = backend(kube, tmp_path, monkeypatch, endpoints=[endpoint(url="https://chat.example.com/v1")])
    dep = deployer.deploy([target(1)], {"chat:1": 100})
    (route,) = posted(kube, ROUTES)
    assert route["spec"]["hostnames"] == ["chat.example.com"] and dep.url == "https://chat.example.com/v1"


def test_without_a_gateway_the_endpoint_service_is_the_switch(kube, tmp_path, monkeypatch):
    deployer = backend(kube, tmp_path, monkeypatch, gateway=None)
    dep = deployer.deploy([target(1)], {"chat:1": 100})
    assert dep.url == "http://chat.sw-dev.svc.cluster.local/v1"
    assert kube.get("v1", "services", NS, "chat")["spec"]["selector"]["stackwise.dev/version"] == "1"
    before = len(kube.requests)
    deployer.deploy([target(2)], {"chat:2": 100})
    assert ("PATCH", f"{SERVICES}/chat") in writes(kube, before)
    assert kube.get("v1", "services", NS, "chat")["spec"]["selector"] == {
        "stackwise.dev/endpoint": "chat", "stackwise.dev/model": "chat", "stackwise.dev/version": "2"}
    assert deployer.describe().traffic == {"chat:1": 0, "chat:2": 100}
    assert posted(kube, ROUTES) == []
    before = len(kube.requests)
    with pytest.raises(SpecError) as err:
        deployer.deploy([target(3)], {"chat:2": 50, "chat:3": 50})
    assert "stackwise:kubernetes.gateway" in err.value.where and "=100" in err.value.fix
    assert writes(kube, before) == []
    deployer.undeploy("chat:1")
    assert kube.get("apps/v1", "deployments", NS, "chat-chat-v1") is None


def test_switching_a_stack_to_a_gateway_widens_the_endpoint_service(kube, tmp_path, monkeypatch):
    backend(kube, tmp_path, monkeypatch, gateway=None).deploy([target(1)], {"chat:1": 100})
    deployer = backend(kube, tmp_path, monkeypatch)
    assert deployer.describe().traffic == {"chat:1": 100}  # read from the Service until a route exists
    deployer.deploy([target(2)], {"chat:1": 80, "chat:2": 20})
    assert kube.get("v1", "services", NS, "chat")["spec"]["selector"] == {"stackwise.dev/endpoint": "chat"}
    assert deployer.describe().traffic == {"chat:1": 80, "chat:2": 20}


def test_undeploy_drops_the_route_first_then_the_version_s_objects(kube, tmp_path, monkeypatch):
    deployer = backend(kube, tmp_path, monkeypatch)
    deployer.deploy([target(1), target(2)], {"chat:1": 0, "chat:2": 100})
    before = len(kube.requests)
    deployer.undeploy("chat:1")
    assert writes(kube, before) == [("PATCH", f"{ROUTES}/chat"), ("DELETE", f"{SCALED}/chat-chat-v1"),
                                    ("DELETE", f"{SERVICES}/chat-chat-v1"), ("DELETE", f"{DEPLOYMENTS}/chat-chat-v1")]
    route = kube.get("gateway.networking.k8s.io/v1", "httproutes", NS, "chat")
    assert [r["name"] for r in route["spec"]["rules"][0]["backendRefs"]] == ["chat-chat-v2"]
    assert {o["metadata"]["name"] for o in kube.find("ScaledObject", NS)} == {"chat-chat-v2"}


# -- autoscaling -----------------------------------------------------------------------------------------
def _exported_samples() -> set[str]:
    """The sample names the real serving metrics expose (prometheus-client's own parser)."""
    pytest.importorskip("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families

    from stackwise.serve_metrics import QueueLabels, ServeMetrics

    metrics = ServeMetrics()
    metrics.add_queue_source(lambda: [(QueueLabels(model_name="chat:1", version="1"), 1, 2)])
    metrics.observe_request(model_name="chat:1", version="1", app="", status=200, finish_reason="stop",
                            prompt_tokens=3, completion_tokens=2, ttft_s=0.01, token_times=[0.01, 0.02], e2e_s=0.03)
    body, _ = metrics.exposition()
    return {s.name for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}


def _names_in(query: str) -> set[str]:
    import re

    names = set(re.findall(r"stackwise:[a-z0-9_]+", query))
    for alternatives in re.findall(r'__name__=~"([^"]+)"', query):
        names |= set(alternatives.split("|"))
    return names


@pytest.mark.parametrize("scaling, triggers", [
    ({"metric": "concurrency", "target_concurrency": 6}, {"concurrency": ("AverageValue", "6")}),
    ({"metric": None, "target_latency_ms": 2500}, {"concurrency": ("AverageValue", "4"), "latency": ("Value", "2.5")}),
    ({"metric": "invocations", "target_invocations": 120}, {"invocations": ("AverageValue", "120")}),
    ({"metric": "latency", "target_latency_ms": 800}, {"latency": ("Value", "0.8")}),
])
def test_a_version_scales_on_the_serving_metrics(kube, tmp_path, monkeypatch, scaling, triggers):
    scaled = {"max_replicas": 5, "scale_in_cooldown_seconds": 600, **scaling}
    backend(kube, tmp_path, monkeypatch, endpoints=[endpoint(scaling=scaled)]).deploy([target(1)], {"chat:1": 100})
    (obj,) = posted(kube, SCALED)
    spec = obj["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "chat-chat-v1"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 5)
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 600
    found = {t["name"]: (t["metricType"], t["metadata"]["threshold"]) for t in spec["triggers"]}
    assert found == triggers
    exported = _exported_samples()
    for trigger in spec["triggers"]:
        meta = trigger["metadata"]
        assert trigger["type"] == "prometheus" and meta["serverAddress"] == METRICS
        assert 'namespace="sw-dev",pod=~"chat-chat-v1-[a-z0-9]+-[a-z0-9]+"' in meta["query"]
        names = _names_in(meta["query"])
        assert names and names <= exported, names - exported


def test_no_metrics_url_or_no_scaling_means_no_scaled_object(kube, tmp_path, monkeypatch):
    backend(kube, tmp_path, monkeypatch, metrics_url=None).deploy([target(1)], {"chat:1": 100})
    other = tmp_path / "other"
    other.mkdir()
    backend(kube, other, monkeypatch, endpoints=[endpoint(name="bot", scaling=None)]).deploy(
        [target(1)], {"chat:1": 100})
    assert posted(kube, SCALED) == [] and len(posted(kube, DEPLOYMENTS)) == 2
    assert [d["spec"]["replicas"] for d in posted(kube, DEPLOYMENTS)] == [2, 2]


def test_a_metric_the_serving_image_does_not_export_is_refused(kube, tmp_path, monkeypatch):
    deployer = backend(kube, tmp_path, monkeypatch, endpoints=[endpoint(scaling={"max_replicas": 3,
                                                                                 "metric": "utilization"})])
    with pytest.raises(ConfigError, match="utilization") as err:
        deployer.deploy([target(1)], {"chat:1": 100})
    assert "stackwise:endpoint.scaling.metric" in err.value.where
    assert writes(kube) == []


# -- states ----------------------------------------------------------------------------------------------
def _v1(status: dict | None, replicas: int = 2, generation: int = 1):
    """A V1Deployment as the client deserializes an API answer."""
    import kubernetes.client

    raw = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "generation": generation},
           "spec": {"replicas": replicas, "selector": {"matchLabels": {"a": "b"}},
                    "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c"}]}}},
           "status": status}

    class Response:
        data = json.dumps(raw)

    return kubernetes.client.ApiClient().deserialize(Response(), "V1Deployment")


PROGRESSING = {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"}
DONE = {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}
DEADLINE = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
            "message": 'ReplicaSet "d-5f" has timed out progressing.'}


@pytest.mark.parametrize("status, replicas, generation, state", [
    (None, 2, 1, "creating"),
    ({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "conditions": [PROGRESSING]}, 2, 1, "creating"),
    ({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1,
      "conditions": [PROGRESSING]}, 2, 1, "updating"),
    ({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2,
      "conditions": [DONE]}, 2, 1, "ready"),
    ({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2,
      "conditions": [DONE]}, 3, 2, "updating"),  # scaled out by KEDA: the controller has not caught up
    ({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 0,
      "conditions": [DONE]}, 2, 1, "updating"),  # was available: pods lost, being replaced
    ({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 0, "conditions": [DEADLINE]}, 2, 1, "failed"),
])
def test_deployment_state_on_the_client_s_models(status, replicas, generation, state):
    from stackwise.adapters.deploy.kubernetes import deployment_state

    assert deployment_state(_v1(status, replicas, generation)) == state


def test_an_endpoint_whose_rollout_passed_its_deadline_is_failed(kube, tmp_path, monkeypatch):
    deployer = backend(kube, tmp_path, monkeypatch)
    assert deployer.deploy([target(1)], {"chat:1": 100}).state == "creating"
    kube.update_status("apps/v1", "deployments", NS, "chat-chat-v1",
                       {"observedGeneration": 1, "replicas": 2, "conditions": [DEADLINE]})
    dep = deployer.describe()
    assert dep.state == "failed" and dep.variants[0].state == "failed"
    assert dep.variants[0].artifact_uri == "s3://sw-dev-artifacts/mlflow/chat-1/model"
    assert dep.variants[0].base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"


# -- bad input and failures: exit 2, nothing half-created -----------------------------------------------------
def _fail(kube, monkeypatch, method: str, path: str, status: int) -> None:
    """Answer `method path` with `status` (the stand-in's per-namespace switch is too coarse here)."""
    from kube_server import status_body

    original = kube._http.route

    def route(m, raw_path, body, headers):
        if m == method and raw_path.split("?")[0] == path:
            return status, status_body(status, "Forbidden", f'{path.rsplit("/", 1)[1]} is forbidden: User "tester" '
                                       f"cannot create resource in the namespace \"{NS}\"")
        return original(m, raw_path, body, headers)

    monkeypatch.setattr(kube._http, "route", route)


def test_a_version_whose_scaled_object_is_forbidden_is_removed_again(kube, tmp_path, monkeypatch):
    deployer = backend(kube, tmp_path, monkeypatch)
    deployer.deploy([target(1)], {"chat:1": 100})
    before = {(o["kind"], o["metadata"]["name"]) for o in kube.objects.values()}
    _fail(kube, monkeypatch, "POST", SCALED, 403)
    with pytest.raises(ConfigError, match="forbidden") as err:
        deployer.deploy([target(2)], {"chat:1": 50, "chat:2": 50})
    assert NS in err.value.where
    assert {(o["kind"], o["metadata"]["name"]) for o in kube.objects.values()} == before
    assert ("DELETE", f"{DEPLOYMENTS}/chat-chat-v2") in writes(kube)


def test_a_refused_route_removes_everything_the_deploy_created(kube, tmp_path, monkeypatch):
    deployer = backend(kube, tmp_path, monkeypatch)
    kube.validator = lambda obj: (_ for _ in ()).throw(ValueError("refused for the test")) \
        if obj["kind"] == "HTTPRoute" else validate_manifest(obj)
    try:
        with pytest.raises(SpecError, match="refused for the test"):
            deployer.deploy([target(1), target(2)], {"chat:1": 50, "chat:2": 50})
    finally:
        kube.validator = validate_manifest
    assert kube.objects == {}
    assert deployer.describe().state == "absent"


def test_a_name_taken_by_a_foreign_object_is_refused_and_kept(kube, tmp_path, monkeypatch):
    foreign = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "chat-chat-v1", "namespace": NS,
                                                                   "labels": {"app": "someone-else"}},
               "spec": {"selector": {"app": "someone-else"}, "ports": [{"port": 80}]}}
    kube.put_object(foreign, "services")
    deployer = backend(kube, tmp_path, monkeypatch)
    with pytest.raises(ConfigError, match="already exists") as err:
        deployer.deploy([target(1)], {"chat:1": 100})
    assert "kubectl delete service chat-chat-v1" in err.value.fix
    assert [o["metadata"]["name"] for o in kube.objects.values()] == ["chat-chat-v1"]
    assert kube.get("v1", "services", NS, "chat-chat-v1")["metadata"]["labels"] == {"app": "someone-else"}


def test_objects_left_by_an_interrupted_deploy_are_adopted(kube, tmp_path, monkeypatch):
    from stackwise.adapters.deploy import kubernetes as k8s

    platform = connect(kube, tmp_path, monkeypatch)
    service = k8s.version_service(platform.stack, "chat", target(1))
    kube.put_object({**service, "spec": {**service["spec"], "ports": [{"port": 81}]}}, "services")
    platform.deployer.deploy([target(1)], {"chat:1": 100})
    assert kube.get("v1", "services", NS, "chat-chat-v1")["spec"]["ports"][0]["port"] == 80
    assert len(kube.find("Service", NS)) == 2


def test_a_throttled_call_is_retried(kube, tmp_path, monkeypatch):
    deployer = backend(kube, tmp_path, monkeypatch)
    kube.fail_next(1, 503)
    assert deployer.deploy([target(1)], {"chat:1": 100}).traffic == {"chat:1": 100}


def test_a_version_on_this_machine_s_disk_is_refused(kube, tmp_path, monkeypatch):
    deployer = backend(kube, tmp_path, monkeypatch)
    with pytest.raises(SpecError, match="cannot read"):
        deployer.deploy([DeployTarget(model="chat", version="1", artifact_uri=str(tmp_path / "m"))], {"chat:1": 100})
    assert writes(kube) == []


def test_no_kubeconfig_and_an_unknown_context(kube, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="no kubeconfig") as err:
        backend(kube, tmp_path, monkeypatch, settings={"kubeconfig": str(tmp_path / "missing")}).describe()
    assert "update-kubeconfig" in err.value.fix
    config = kube.kubeconfig(str(tmp_path / "kc"), context="prod-eks", token=TOKEN)
    with pytest.raises(ConfigError, match="no context 'prod-ek'") as err:
        backend(kube, tmp_path, monkeypatch, settings={"kubeconfig": config, "context": "prod-ek"}).describe()
    assert "did you mean 'prod-eks'" in err.value.what and TOKEN not in str(err.value)


def test_a_forbidden_namespace_exits_2_without_a_traceback(kube, tmp_path, monkeypatch, capsys):
    from stackwise.cli import main

    connect(kube, tmp_path, monkeypatch)
    kube.forbid(NS)
    monkeypatch.setattr(sys, "argv", ["stackwise", "endpoints", "--stack", "dev-k8s"])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert "forbidden" in err and NS in err and "Traceback" not in err and TOKEN not in err
    assert [m for m, _, _ in kube.requests if m != "GET"] == []


# -- secrets ---------------------------------------------------------------------------------------------------
def test_no_secret_value_reaches_the_cluster(kube, tmp_path, monkeypatch):
    """A RAG app version's environment holds the stack's context with secret references only; no
    request, Deployment or error carries the secret's value or the kubeconfig's token."""
    from rag_deploy import RAG_YAML, SECRET_VALUE, _check_rag_env, _rag_registry

    from stackwise.adapters.deploy import kubernetes as k8s
    from stackwise.serve_targets import rag_deploy_environment

    store = "s3://sw-dev-artifacts"
    monkeypatch.setenv("HF_TOKEN", SECRET_VALUE)
    platform = connect(kube, tmp_path, monkeypatch, outputs={"tracking_uri": _rag_registry(tmp_path, store)})
    folder = tmp_path / "lee-rag-1"  # the app's rag.yaml, read through fsspec as from the store
    folder.mkdir()
    (folder / "rag.yaml").write_text(RAG_YAML)
    rag_env = rag_deploy_environment(platform.stack, DeployTarget(model="lee-rag", version="1",
                                                                  artifact_uri=str(folder), kind="rag"))
    rag = DeployTarget(model="lee-rag", version="1", artifact_uri=f"{store}/mlflow/lee-rag-1/rag", kind="rag")
    monkeypatch.setattr(k8s, "rag_deploy_environment", lambda stack, t: rag_env if t.kind == "rag" else None)
    platform.deployer.retry = type(platform.deployer.retry)(attempts=2, base_s=0.0, max_s=0.0)
    dep = platform.deployer.deploy([rag], {"lee-rag:1": 100})
    (manifest,) = posted(kube, DEPLOYMENTS)
    env = {e["name"]: e["value"] for e in manifest["spec"]["template"]["spec"]["containers"][0]["env"]}
    _check_rag_env(env, platform, store)
    assert env["STACKWISE_MODEL"] == "lee-rag" and env["STACKWISE_MODEL_URI"] == rag.artifact_uri
    kube.forbid(NS)
    with pytest.raises(ConfigError) as err:
        platform.deployer.describe()
    seen = json.dumps(kube.requests) + json.dumps(dep.as_dict()) + str(err.value)
    assert SECRET_VALUE not in seen and TOKEN not in seen


# -- names and the local stack -------------------------------------------------------------------------------
@pytest.mark.parametrize("endpoint_name, model, version", [
    ("chat", "chat", "1"), ("Chat_Bot", "Llama-3.1_8B.instruct", "12"), ("e" * 80, "m" * 80, "123456"),
    ("9lives", "-x-", "3"),
])
def test_names_are_dns_labels_and_distinct(endpoint_name, model, version):
    import re

    from stackwise.adapters.deploy.kubernetes import endpoint_object_name, label_value, version_name

    name = version_name(endpoint_name, model, version)
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 52
    assert version_name(endpoint_name, model, version) == name  # the same inputs, the same name
    assert version_name(endpoint_name, model, version + "0") != name
    assert version_name(endpoint_name, model.upper(), version) != name or model.upper() == model
    front = endpoint_object_name(endpoint_name)
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", front) and len(front) <= 52
    assert len(label_value(model)) <= 63


def test_a_local_stack_serves_its_one_endpoint_with_the_serve_image(kube, tmp_path, monkeypatch):
    import yaml

    import stackwise

    stacks = tmp_path / "stacks"
    stacks.mkdir()
    (stacks / "Pulumi.onprem.yaml").write_text(yaml.safe_dump({"config": {
        "stackwise:cloud": "local", "stackwise:artifactStore": "s3://models",
        "stackwise:compute": {"kind": "kubernetes", "image": "registry.lan/stackwise/train:1.4"},
        "stackwise:kubernetes": {"namespace": NS, "kubeconfig": kube.kubeconfig(str(tmp_path / "kc")),
                                 "context": "test"}}}))
    monkeypatch.setenv("STACKWISE_STACKS_DIR", str(stacks))
    monkeypatch.setenv("STACKWISE_HOME", str(tmp_path / ".stackwise"))
    monkeypatch.delenv("STACKWISE_OUTPUTS", raising=False)
    deployer = stackwise.connect("onprem").deployer
    assert deployer.describe().endpoint == "local"
    dep = deployer.deploy([DeployTarget(model="chat", version="1", artifact_uri="s3://models/chat-1")], {"chat:1": 100})
    (manifest,) = posted(kube, DEPLOYMENTS)
    assert manifest["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.lan/stackwise/serve:1.4"
    assert "serviceAccountName" not in manifest["spec"]["template"]["spec"]
    assert dep.traffic == {"chat:1": 100} and posted(kube, ROUTES) == []


def test_an_endpoint_service_of_someone_else_is_not_taken_over(kube, tmp_path, monkeypatch):
    foreign = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "chat", "namespace": NS,
                                                                   "labels": {"app": "chat-ui"}},
               "spec": {"selector": {"app": "chat-ui"}, "ports": [{"port": 80}]}}
    kube.put_object(foreign, "services")
    deployer = backend(kube, tmp_path, monkeypatch, gateway=None)
    with pytest.raises(ConfigError, match="Service named chat already exists"):
        deployer.deploy([target(1)], {"chat:1": 100})
    assert kube.get("v1", "services", NS, "chat")["spec"]["selector"] == {"app": "chat-ui"}
    assert [o["metadata"]["name"] for o in kube.objects.values()] == ["chat"]  # chat:1's objects removed again


def test_stackwise_endpoints_shows_the_cluster_s_versions(kube, tmp_path, monkeypatch, capsys):
    from stackwise.cli import main

    backend(kube, tmp_path, monkeypatch).deploy([target(1), target(2)], {"chat:1": 75, "chat:2": 25})
    settle(kube)
    monkeypatch.setattr(sys, "argv", ["stackwise", "endpoints", "--stack", "dev-k8s", "--json"])
    try:
        main()
    except SystemExit as exit_:
        assert exit_.code in (0, None)
    shown = json.loads(capsys.readouterr().out)
    shown = shown[0] if isinstance(shown, list) else shown
    assert shown["traffic"] == {"chat:1": 75, "chat:2": 25} and shown["state"] == "ready"
    assert shown["cloud"] == "kubernetes" and [v["name"] for v in shown["variants"]] == ["chat-chat-v1", "chat-chat-v2"]
