"""The Vertex AI deploy adapter against a local server speaking Vertex v1 REST, through
`aiplatform_v1` clients (REST transport, anonymous credentials, api_endpoint on 127.0.0.1).

Verified: the models:upload body (artifact URI, serving image, environment, labels), one
deployModel per version with the catalog's machine and a trafficSplit summing to 100 ("0" for the
model being deployed), a traffic-only change as one endpoint PATCH (updateMask=trafficSplit),
undeployModel, idempotent redeploys and refused splits; the server checks splits as Vertex does;
429 and 503 answers retried, and a write whose answer was lost never sent twice.
Not verified: a model serving predictions (no Vertex runs here).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "emulators"))

pytest.importorskip("google.cloud.aiplatform_v1", reason="install stackwise[gcp]")

from cloud_fixtures import use_stack  # noqa: E402
from drivers import CloudDeployDriver, chat_target, fast_retries, served  # noqa: E402
from vertex_server import VertexServer  # noqa: E402

from stackwise.deploy import DeployTarget  # noqa: E402
from stackwise.testing.deploy import DeployContract  # noqa: E402

IMAGE = "us-central1-docker.pkg.dev/my-project/sw-dev-images/serve:latest"
ENDPOINT_ID = "4242"
RESOURCE = f"projects/my-project/locations/us-central1/endpoints/{ENDPOINT_ID}"

server = served(VertexServer)


def connect(server, tmp_path, monkeypatch, endpoints=None, **extra):
    from google.auth.credentials import AnonymousCredentials

    from stackwise.adapters.deploy.vertex import VertexDeploy

    monkeypatch.setenv("NO_GCE_CHECK", "true")
    endpoints = [{"name": ENDPOINT_ID, "serving_image": IMAGE, "gpu": "L4", "min_replicas": 1}] if endpoints is None else endpoints
    platform = use_stack("dev-gcp", tmp_path, monkeypatch, endpoints=endpoints, **extra)
    platform._deployer = VertexDeploy(platform.stack, credentials=AnonymousCredentials(), api_endpoint=server.endpoint)
    return platform


@pytest.fixture
def vertex(server):
    server.reset()
    server.add_endpoint(RESOURCE)
    return server


def target(version: int) -> DeployTarget:
    return chat_target("gs://sw-dev-artifacts/mlflow", version)


class TestVertexDeployContract(DeployContract):
    @pytest.fixture
    def driver(self, vertex, tmp_path, monkeypatch):
        return CloudDeployDriver(
            tmp_path, lambda folder, endpoints: connect(vertex, folder, monkeypatch, endpoints=endpoints).deployer,
            target, count=lambda: len(vertex.models) + sum(
                1 for m, p, _ in vertex.requests if m == "POST" and p.endswith(":deployModel")))


def test_upload_and_deploy_requests(vertex, tmp_path, monkeypatch):
    deployer = connect(vertex, tmp_path, monkeypatch).deployer
    deployer.deploy([target(1)], {"chat:1": 100})
    deployer.deploy([target(2)], {"chat:1": 90, "chat:2": 10})
    uploads = [b for m, p, b in vertex.requests if p.endswith("/models:upload")]
    assert len(uploads) == 2
    model = uploads[1]["model"]
    assert uploads[1]["modelId"].startswith("m-4242-chat-v2-")
    assert model["artifactUri"] == "gs://sw-dev-artifacts/mlflow/chat-2/model"
    assert model["containerSpec"]["imageUri"] == IMAGE
    env = {e["name"]: e["value"] for e in model["containerSpec"]["env"]}
    assert env["STACKWISE_MODEL_VERSION"] == "2" and env["STACKWISE_BASE_MODEL"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert model["labels"]["stackwise-model"] == "chat" and model["labels"]["stackwise-version"] == "2"
    deploys = [b for m, p, b in vertex.requests if p == f"/v1/{RESOURCE}:deployModel"]
    assert len(deploys) == 2
    assert deploys[0]["trafficSplit"] == {"0": 100}
    first_id = vertex.endpoints[RESOURCE]["deployedModels"][0]["id"]
    assert deploys[1]["trafficSplit"] == {"0": 10, first_id: 90}
    resources = deploys[1]["deployedModel"]["dedicatedResources"]
    from google.cloud import aiplatform_v1

    from stackwise import catalog

    offer = catalog.offer("L4", "gcp", 1)
    spec = resources["machineSpec"]  # the REST transport sends enums as integers (enum-encoding=int)
    assert spec["machineType"] == offer.instance and int(spec["acceleratorCount"]) == 1
    assert aiplatform_v1.AcceleratorType(spec["acceleratorType"]).name == offer.accelerator == "NVIDIA_L4"
    assert int(resources["minReplicaCount"]) == 1
    assert deploys[1]["deployedModel"]["model"].endswith("/models/" + uploads[1]["modelId"])


def test_traffic_only_change_is_one_patch(vertex, tmp_path, monkeypatch):
    deployer = connect(vertex, tmp_path, monkeypatch).deployer
    deployer.deploy([target(1), target(2)], {"chat:1": 50, "chat:2": 50})
    before = len(vertex.requests)
    dep = deployer.deploy([target(1)], {"chat:1": 25, "chat:2": 75})
    writes = [(m, p, b) for m, p, b in vertex.requests[before:] if m != "GET"]
    assert [(m, p) for m, p, _ in writes] == [("PATCH", f"/v1/{RESOURCE}")]
    ids = {v.key: v.name for v in dep.variants}
    assert writes[0][2]["trafficSplit"] == {ids["chat:1"]: 25, ids["chat:2"]: 75}
    assert dep.traffic == {"chat:1": 25, "chat:2": 75}


def test_two_new_versions_at_once_end_with_the_split(vertex, tmp_path, monkeypatch):
    deployer = connect(vertex, tmp_path, monkeypatch).deployer
    dep = deployer.deploy([target(1), target(2)], {"chat:1": 70, "chat:2": 30})
    assert dep.traffic == {"chat:1": 70, "chat:2": 30}
    assert sum(1 for m, p, _ in vertex.requests if p.endswith(":deployModel")) == 2


def test_an_endpoint_missing_on_vertex_says_to_run_pulumi_up(vertex, tmp_path, monkeypatch):
    from stackwise.errors import ConfigError

    vertex.endpoints.clear()
    with pytest.raises(ConfigError, match="pulumi up"):
        connect(vertex, tmp_path, monkeypatch).deployer.describe()


def test_a_version_outside_gcs_is_refused(vertex, tmp_path, monkeypatch):
    from stackwise.errors import SpecError

    deployer = connect(vertex, tmp_path, monkeypatch).deployer
    with pytest.raises(SpecError, match="Vertex AI cannot read"):
        deployer.deploy([DeployTarget(model="chat", version="5", artifact_uri="s3://elsewhere/chat")], {"chat:5": 100})
    assert vertex.models == {}


# -- autoscaling: deployed versions scale as the endpoint's own deployment ------------------------
DUTY_CYCLE = "aiplatform.googleapis.com/prediction/online/accelerator/duty_cycle"
CPU = "aiplatform.googleapis.com/prediction/online/cpu/utilization"


def scaled_endpoint(**scaling):
    return {"name": ENDPOINT_ID, "serving_image": IMAGE, "gpu": "L4", "min_replicas": 1,
            "scaling": {"max_replicas": 3, "metric": "utilization", "gpu_percent": 65,
                        "vertex_metric_specs": [{"metricName": DUTY_CYCLE, "target": 65},
                                                {"metricName": CPU, "target": 60}], **scaling}}


def _deploy_bodies(vertex):
    return [b for m, p, b in vertex.requests if p == f"/v1/{RESOURCE}:deployModel"]


def test_a_deployed_version_gets_the_endpoint_s_max_replicas_and_metric_specs(vertex, tmp_path, monkeypatch):
    from vertex_server import autoscaling_metric_names

    deployer = connect(vertex, tmp_path, monkeypatch, endpoints=[scaled_endpoint()]).deployer
    deployer.deploy([target(1)], {"chat:1": 100})
    deployer.deploy([target(2)], {"chat:1": 90, "chat:2": 10})
    for body in _deploy_bodies(vertex):
        resources = body["deployedModel"]["dedicatedResources"]
        assert (int(resources["minReplicaCount"]), int(resources["maxReplicaCount"])) == (1, 3)
        assert resources["autoscalingMetricSpecs"] == [{"metricName": DUTY_CYCLE, "target": 65},
                                                       {"metricName": CPU, "target": 60}]
    # The names are those aiplatform_v1 documents; the server parsed the body into the v1 proto.
    assert {DUTY_CYCLE, CPU} <= autoscaling_metric_names()
    stored = vertex.endpoints[RESOURCE]["deployedModels"]
    assert [int(d["dedicatedResources"]["maxReplicaCount"]) for d in stored] == [3, 3]


def test_without_scaling_outputs_a_version_keeps_min_replicas(vertex, tmp_path, monkeypatch):
    deployer = connect(vertex, tmp_path, monkeypatch).deployer  # outputs synced before `scaling` existed
    deployer.deploy([target(1)], {"chat:1": 100})
    (body,) = _deploy_bodies(vertex)
    resources = body["deployedModel"]["dedicatedResources"]
    assert int(resources["maxReplicaCount"]) == int(resources["minReplicaCount"]) == 1
    assert "autoscalingMetricSpecs" not in resources


def test_the_server_refuses_what_vertex_refuses(vertex, tmp_path, monkeypatch):
    from stackwise.errors import StackwiseError

    latency = "aiplatform.googleapis.com/prediction/online/prediction_latencies"  # a metric, not a scaling one
    bad = scaled_endpoint(vertex_metric_specs=[{"metricName": latency, "target": 50}])
    deployer = connect(vertex, tmp_path, monkeypatch, endpoints=[bad]).deployer
    with pytest.raises(StackwiseError, match="autoscaling_metric_specs"):
        deployer.deploy([target(1)], {"chat:1": 100})
    assert vertex.endpoints[RESOURCE]["deployedModels"] == []


def test_the_stack_program_s_outputs_drive_the_deploy(vertex, tmp_path, monkeypatch):
    """infra/ -> the stack contract -> the adapter: dev-gcp (maxReplicas 2) with utilization scaling,
    built offline; its exported endpoint entry is what the deploy sends."""
    pytest.importorskip("pulumi", reason="pip install 'stackwise[infra]'")
    from stackwise.infra.config import InfraConfig
    from stackwise.infra.offline import run_offline
    from stackwise.stack import _read_config

    path = Path(__file__).resolve().parents[2] / "stacks" / "Pulumi.dev-gcp.yaml"
    raw = _read_config(path.read_text(encoding="utf-8"), str(path))
    raw["endpoint"] = {**raw["endpoint"], "scaling": {"metric": "utilization", "gpuPercent": 65, "cpuPercent": 55}}
    (exported,) = run_offline(InfraConfig.load(raw, str(path)), "dev-gcp").exported["endpoints"]
    assert exported["scaling"]["max_replicas"] == 2
    deployer = connect(vertex, tmp_path, monkeypatch, endpoints=[{**exported, "name": ENDPOINT_ID}]).deployer
    deployer.deploy([target(1)], {"chat:1": 100})
    (body,) = _deploy_bodies(vertex)
    resources = body["deployedModel"]["dedicatedResources"]
    assert int(resources["maxReplicaCount"]) == 2
    assert resources["autoscalingMetricSpecs"] == [{"metricName": DUTY_CYCLE, "target": 65},
                                                   {"metricName": CPU, "target": 55}]


# -- RAG app versions (issue 13): the container gets the stack's context and the pinned generator ---
from rag_deploy import SECRET_VALUE, _check_rag_env, _rag_env, _rag_registry  # noqa: E402 (tests/contract on sys.path)


def test_a_rag_version_s_upload_carries_the_context_and_the_pinned_generator(vertex, tmp_path, monkeypatch):
    from stackwise.adapters.deploy.vertex import upload_request

    store = "gs://sw-dev-artifacts"
    monkeypatch.setenv("HF_TOKEN", SECRET_VALUE)
    platform = connect(vertex, tmp_path, monkeypatch, tracking_uri=_rag_registry(tmp_path, store),
                       secrets={"hf_token": "env://HF_TOKEN"})
    rag_env = _rag_env(platform, tmp_path)
    rag = DeployTarget(model="lee-rag", version="1", artifact_uri=f"{store}/mlflow/lee-rag-1/rag", kind="rag")
    request = upload_request(platform.stack, platform.deployer.endpoint_output(), rag, rag_env)
    name = platform.deployer._ensure_model(request)  # aiplatform_v1's Model and REST client, to the server
    (upload,) = [b for m, p, b in vertex.requests if p.endswith("/models:upload")]
    env = {e["name"]: e.get("value", "") for e in upload["model"]["containerSpec"]["env"]}  # "" is left out
    assert env["STACKWISE_MODEL"] == "lee-rag" and name.endswith(request["modelId"])
    _check_rag_env(env, platform, store)


def test_a_model_version_s_upload_is_unchanged(vertex, tmp_path, monkeypatch):
    from stackwise.adapters.deploy.vertex import upload_request
    from stackwise.serve_targets import rag_deploy_environment

    platform = connect(vertex, tmp_path, monkeypatch)
    out = platform.deployer.endpoint_output()
    assert rag_deploy_environment(platform.stack, target(1)) is None
    request = upload_request(platform.stack, out, target(1))
    assert [e["name"] for e in request["model"]["containerSpec"]["env"]] == [
        "STACKWISE_BASE_MODEL", "STACKWISE_MODEL", "STACKWISE_MODEL_VERSION"]
    assert request == upload_request(platform.stack, out, target(1), None)


# -- throttling and lost answers -------------------------------------------------------------------------------
def posts(vertex, suffix: str) -> int:
    return sum(1 for m, p, _ in vertex.requests if m == "POST" and p.endswith(suffix))


def test_throttling_and_5xx_are_retried_on_every_call(vertex, tmp_path, monkeypatch):
    """A rate limit (429 RESOURCE_EXHAUSTED that names no spent quota) or a 503 answered before Vertex acted."""
    deployer = fast_retries(connect(vertex, tmp_path, monkeypatch).deployer)
    vertex.deploy_faults.extend([("get-endpoint", "throttle"), ("get-model", "unavailable"),
                                 ("upload", "throttle"), ("deployModel", "unavailable")])
    assert deployer.deploy([target(1)], {"chat:1": 100}).traffic == {"chat:1": 100}
    vertex.deploy_faults.extend([("upload", "unavailable"), ("deployModel", "throttle"), ("patch", "throttle")])
    assert deployer.deploy([target(2)], {"chat:1": 60, "chat:2": 40}).traffic == {"chat:1": 60, "chat:2": 40}
    vertex.deploy_faults.extend([("patch", "unavailable")])
    assert deployer.deploy([], {"chat:1": 0, "chat:2": 100}).traffic == {"chat:1": 0, "chat:2": 100}
    vertex.deploy_faults.extend([("undeployModel", "throttle")])
    assert deployer.undeploy("chat:1").traffic == {"chat:2": 100}
    assert not vertex.deploy_faults  # each fault was met
    assert len(vertex.models) == 2 and len(vertex.endpoints[RESOURCE]["deployedModels"]) == 1


def test_a_write_whose_answer_was_lost_is_not_sent_twice(vertex, tmp_path, monkeypatch):
    """Vertex acted, then the answer was lost (503): the adapter finds the model uploaded, the
    version deployed, the version undeployed, and goes on; a second deployModel would serve the
    version twice, a second undeployModel fail on an id that is gone."""
    deployer = fast_retries(connect(vertex, tmp_path, monkeypatch).deployer)
    vertex.deploy_faults.extend([("upload", "lost-answer"), ("deployModel", "lost-answer")])
    dep = deployer.deploy([target(1)], {"chat:1": 100})
    assert dep.traffic == {"chat:1": 100}
    assert (posts(vertex, "/models:upload"), posts(vertex, ":deployModel")) == (1, 1)
    assert len(vertex.endpoints[RESOURCE]["deployedModels"]) == 1

    vertex.deploy_faults.append(("deployModel", "lost-answer"))
    dep = deployer.deploy([target(2)], {"chat:1": 50, "chat:2": 50})
    assert dep.traffic == {"chat:1": 50, "chat:2": 50} and posts(vertex, ":deployModel") == 2
    assert len(vertex.endpoints[RESOURCE]["deployedModels"]) == 2

    deployer.deploy([], {"chat:1": 0, "chat:2": 100})
    vertex.deploy_faults.append(("undeployModel", "lost-answer"))
    assert deployer.undeploy("chat:1").traffic == {"chat:2": 100}
    assert posts(vertex, ":undeployModel") == 1


def test_throttling_that_never_ends_is_a_clear_error_and_deploys_nothing(vertex, tmp_path, monkeypatch):
    from stackwise.errors import CloudError

    deployer = fast_retries(connect(vertex, tmp_path, monkeypatch).deployer, attempts=3)
    vertex.deploy_faults.extend([("deployModel", "throttle")] * 3)
    with pytest.raises(CloudError) as err:
        deployer.deploy([target(1)], {"chat:1": 100})
    assert "kept failing after 3 attempts" in err.value.what and "Quota exceeded" in err.value.what
    assert err.value.where == f"gcp: deploy chat:1 to {RESOURCE}"
    assert posts(vertex, ":deployModel") == 3 and vertex.endpoints[RESOURCE]["deployedModels"] == []
