"""Vertex AI CustomJobs peered with the stack's network, and the Vertex endpoint's address, against
a local server speaking Vertex v1 REST through `aiplatform_v1` (REST transport, anonymous
credentials, api_endpoint on 127.0.0.1).

Verified: a CustomJob carries the stack's `network` (by project number) and its reserved peering
range, valid for the aiplatform_v1 CustomJob proto (json_format.ParseDict, unknown fields refused);
the server, as Vertex does, refuses a network named by project id or not peered with Vertex AI;
fine-tuning jobs write checkpoints through Vertex's Cloud Storage FUSE mount under the top-level
prefix the bucket's lifecycle rule targets; Vertex has no runtime bound here (it documents none);
a Private Service Connect endpoint is given no public REST URL.
Not verified: a job really peered (no Vertex runs here).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "emulators"))

pytest.importorskip("google.cloud.aiplatform_v1", reason="install stackwise[gcp]")

from cloud_fixtures import finetune_spec, index_spec, use_stack  # noqa: E402
from vertex_server import VertexServer  # noqa: E402

NETWORK = "projects/123456789/global/networks/sw-dev-vpc"
RANGE = "sw-dev-vertex-range"
STACK_NETWORK = {"network": NETWORK, "reserved_ip_ranges": [RANGE]}


def parse_custom_job(body: dict) -> None:
    """The request as the CustomJob proto reads it: unknown or mistyped fields raise."""
    from google.cloud.aiplatform_v1.types import CustomJob
    from google.protobuf import json_format

    json_format.ParseDict(body, CustomJob.pb(CustomJob()))


@pytest.fixture(scope="module")
def server():
    srv = VertexServer().start()
    yield srv
    srv.stop()


def connect(server, tmp_path, monkeypatch, **extra):
    monkeypatch.setenv("NO_GCE_CHECK", "true")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-such-key.json"))
    return use_stack("dev-gcp", tmp_path, monkeypatch, **extra)


def compute(platform, server):
    from google.auth.credentials import AnonymousCredentials

    from stackwise.adapters.compute.vertex import VertexCompute

    backend = VertexCompute(platform.stack, credentials=AnonymousCredentials(), api_endpoint=server.endpoint)
    backend.retry = type(backend.retry)(attempts=2, base_s=0.01, max_s=0.02)
    return backend


def test_custom_jobs_are_peered_with_the_stacks_network(server, tmp_path, monkeypatch):
    from stackwise.adapters.compute.vertex import build_request

    server.reset()
    server.peer(NETWORK, RANGE)
    platform = connect(server, tmp_path, monkeypatch, network=STACK_NETWORK)
    request = build_request(index_spec(0), platform.stack)
    assert request["jobSpec"]["network"] == NETWORK and request["jobSpec"]["reservedIpRanges"] == [RANGE]
    parse_custom_job(request)

    handle = compute(platform, server).submit(index_spec(0))
    stored = server.jobs[handle.id]["jobSpec"]
    assert (stored["network"], stored["reservedIpRanges"]) == (NETWORK, [RANGE])


@pytest.mark.parametrize("network, message", [
    ({"network": "projects/my-project/global/networks/sw-dev-vpc"}, "Invalid network name"),  # an id, not a number
    ({"network": NETWORK, "reserved_ip_ranges": []}, "not peered"),
])
def test_vertex_refuses_a_network_it_cannot_peer_with(server, tmp_path, monkeypatch, network, message):
    from stackwise.errors import CloudError

    server.reset()
    platform = connect(server, tmp_path, monkeypatch, network=network)
    with pytest.raises(CloudError, match=message):
        compute(platform, server).submit(index_spec(1))
    assert server.jobs == {}


def test_a_stack_without_a_network_output_sends_no_network(server, tmp_path, monkeypatch):
    from stackwise.adapters.compute.vertex import build_request

    request = build_request(index_spec(0), connect(server, tmp_path, monkeypatch).stack)
    assert "network" not in request["jobSpec"] and "reservedIpRanges" not in request["jobSpec"]
    parse_custom_job(request)


def test_checkpoints_go_under_the_prefix_the_lifecycle_rule_targets(server, tmp_path, monkeypatch):
    from stackwise.adapters.compute.vertex import build_request
    from stackwise.contract import CHECKPOINTS_PREFIX

    spec = finetune_spec()
    request = build_request(spec, connect(server, tmp_path, monkeypatch).stack)
    env = {e["name"]: e["value"] for e in request["jobSpec"]["workerPoolSpecs"][0]["containerSpec"]["env"]}
    # Vertex mounts gs://<bucket> at /gcs/<bucket>: the trainer writes straight into the bucket
    assert env["STACKWISE_CHECKPOINT_DIR"] == f"/gcs/sw-dev-artifacts/{CHECKPOINTS_PREFIX}{spec.output_name}"
    parse_custom_job(request)


def test_vertex_has_no_runtime_bound_here(server, tmp_path, monkeypatch):
    from stackwise.adapters.compute.vertex import build_request

    spec = index_spec(0)
    ten_days = spec.model_copy(update={"compute": spec.compute.model_copy(update={"max_runtime_s": 10 * 86400})})
    request = build_request(ten_days, connect(server, tmp_path, monkeypatch).stack)
    assert request["jobSpec"]["scheduling"]["timeout"] == "864000s"
    parse_custom_job(request)


def test_a_private_service_connect_endpoint_has_no_public_url(server, tmp_path, monkeypatch):
    from google.auth.credentials import AnonymousCredentials

    from stackwise.adapters.deploy.vertex import VertexDeploy

    server.reset()
    resource = "projects/my-project/locations/us-central1/endpoints/4242"
    server.add_endpoint(resource)
    server.endpoints[resource]["privateServiceConnectConfig"] = {"enablePrivateServiceConnect": True,
                                                                 "projectAllowlist": ["my-project"]}
    platform = connect(server, tmp_path, monkeypatch, endpoints=[{"name": "4242"}])
    deployer = VertexDeploy(platform.stack, credentials=AnonymousCredentials(), api_endpoint=server.endpoint)
    assert deployer.describe().url is None

    server.endpoints[resource].pop("privateServiceConnectConfig")  # a public endpoint keeps its REST URL
    assert deployer.describe().url == f"https://us-central1-aiplatform.googleapis.com/v1/{resource}"
