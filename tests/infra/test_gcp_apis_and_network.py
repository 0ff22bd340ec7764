"""The GCP program on a fresh project, under mocks (preview=False): it enables the APIs it uses and
creates the service agents before it grants them the key, peers its network with Vertex AI and
exports it, points the checkpoint rule where jobs write, and exports no public URL for a private
endpoint.

The dependencies checked are what the engine receives: the mock monitor's RegisterResource
requests carry each resource's `dependencies` (explicit `depends_on` and the inputs' resources),
recorded here by URN.
"""

from __future__ import annotations

import pytest

from .conftest import stack_config

pytest.importorskip("pulumi", reason="pip install 'stackwise[infra]'")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def gcp_run():
    """dev-gcp built once, with every registration's dependencies (URN -> set of URNs)."""
    from stackwise.infra import offline
    from stackwise.infra.config import InfraConfig

    raw, source = stack_config("dev-gcp")
    dependencies: dict[str, set[str]] = {}
    original = offline._Monitor.RegisterResource

    def register(self, request):
        response = original(self, request)
        dependencies[response.urn] = set(request.dependencies)
        return response

    offline._Monitor.RegisterResource = register
    try:
        run = offline.run_offline(InfraConfig.load(raw, source), "dev-gcp")
    finally:
        offline._Monitor.RegisterResource = original
    return run, dependencies


def by_type(run, suffix: str):
    return [r for r in run.resources if r.type.endswith(suffix)]


def test_the_apis_the_stack_uses_are_enabled(gcp_run):
    run, _ = gcp_run
    services = {r.inputs["service"]: r for r in by_type(run, "projects/service:Service")}
    for api in ("aiplatform", "artifactregistry", "secretmanager", "storage", "compute", "cloudkms", "logging",
                "monitoring", "servicenetworking", "billingbudgets", "iam"):
        assert f"{api}.googleapis.com" in services, api
    # turning the stack down must not switch off APIs other things in the project use
    assert all(s.inputs["disableOnDestroy"] is False for s in services.values())
    assert {s.inputs["project"] for s in services.values()} == {run.config.gcp_project}


def test_service_agents_are_created_and_granted_the_key_only_after(gcp_run):
    run, deps = gcp_run
    services = {r.inputs["service"]: r.urn for r in by_type(run, "projects/service:Service")}
    agents = {r.inputs["service"]: r for r in by_type(run, "projects/serviceIdentity:ServiceIdentity")}
    assert set(agents) == {"aiplatform.googleapis.com", "artifactregistry.googleapis.com",
                           "secretmanager.googleapis.com"}
    for service, agent in agents.items():
        assert services[service] in deps[agent.urn], f"{service}: the agent is created once its API is on"
    grants = {r.name: r for r in by_type(run, "kms/cryptoKeyIAMMember:CryptoKeyIAMMember")}
    for short in ("aiplatform", "artifactregistry", "secretmanager"):
        grant = grants[f"sw-dev-key-{short}-agent"]
        assert grant.inputs["member"] == f"serviceAccount:service-123456789@gcp-sa-{short}.iam.gserviceaccount.com"
        assert agents[f"{short}.googleapis.com"].urn in deps[grant.urn], f"{short}: granted before the agent exists"
        assert services[f"{short}.googleapis.com"] in deps[grant.urn]
    # the storage agent's grant and the key itself wait for the APIs too
    assert services["storage.googleapis.com"] in deps[grants["sw-dev-key-storage-agent"].urn]
    (key,) = by_type(run, "kms/cryptoKey:CryptoKey")
    assert services["cloudkms.googleapis.com"] in deps[key.urn]


def test_resources_of_each_api_wait_for_it(gcp_run):
    run, deps = gcp_run
    services = {r.inputs["service"].split(".")[0]: r.urn for r in by_type(run, "projects/service:Service")}
    expected = {"storage/bucket:Bucket": "storage", "artifactregistry/repository:Repository": "artifactregistry",
                "compute/network:Network": "compute", "servicenetworking/connection:Connection": "servicenetworking",
                "vertex/aiEndpointWithModelGardenDeployment:AiEndpointWithModelGardenDeployment": "aiplatform",
                "monitoring/alertPolicy:AlertPolicy": "monitoring", "billing/budget:Budget": "billingbudgets"}
    for suffix, api in expected.items():
        resources = by_type(run, suffix)
        assert resources, suffix
        for r in resources:
            assert services[api] in deps[r.urn], f"{r.name} does not wait for {api}"


def test_the_network_is_peered_with_vertex_and_exported_by_project_number(gcp_run):
    run, deps = gcp_run
    (network,) = by_type(run, "compute/network:Network")
    (subnet,) = by_type(run, "compute/subnetwork:Subnetwork")
    (address,) = by_type(run, "compute/globalAddress:GlobalAddress")
    (peering,) = by_type(run, "servicenetworking/connection:Connection")
    assert subnet.inputs["privateIpGoogleAccess"] is True
    assert (address.inputs["purpose"], address.inputs["addressType"]) == ("VPC_PEERING", "INTERNAL")
    assert address.inputs["prefixLength"] == 16
    assert peering.inputs["service"] == "servicenetworking.googleapis.com"
    assert peering.inputs["reservedPeeringRanges"] == [address.inputs["name"]]
    exported = run.outputs.network
    assert exported.network == f"projects/123456789/global/networks/{network.state['name']}"
    assert exported.reserved_ip_ranges == [address.inputs["name"]]
    assert exported.subnets == [] and exported.security_groups == []


def test_the_checkpoint_rule_matches_where_vertex_jobs_write(gcp_run):
    from stackwise.adapters.compute.vertex import build_request
    from stackwise.specs import FineTuneSpec
    from stackwise.stack import Stack

    run, _ = gcp_run
    (bucket,) = by_type(run, "storage/bucket:Bucket")
    (rule,) = [r for r in bucket.inputs["lifecycleRules"] if r["action"]["type"] == "SetStorageClass"]
    stack = Stack(name="dev-gcp", cloud="gcp", region=run.outputs.region, config={}, source="test",
                  _outputs=run.outputs)
    spec = FineTuneSpec(base="HuggingFaceTB/SmolLM2-135M", data=f"{run.outputs.artifact_store}/data/train.jsonl")
    request = build_request(spec, stack)
    env = {e["name"]: e["value"] for e in request["jobSpec"]["workerPoolSpecs"][0]["containerSpec"]["env"]}
    name = run.outputs.artifact_store.removeprefix("gs://")
    object_name = env["STACKWISE_CHECKPOINT_DIR"].removeprefix(f"/gcs/{name}/") + "/checkpoint-50/model.safetensors"
    assert any(object_name.startswith(prefix) for prefix in rule["condition"]["matchesPrefixes"]), (object_name, rule)
    # and the job is peered with the network the stack exports
    assert request["jobSpec"]["network"] == run.outputs.network.network


def test_a_private_endpoint_exports_no_public_rest_url(gcp_run):
    run, _ = gcp_run
    (endpoint,) = run.outputs.endpoints
    assert endpoint.url is None, "the public REST host does not serve a Private Service Connect endpoint"
    (deployment,) = by_type(run, "AiEndpointWithModelGardenDeployment")
    assert deployment.inputs["endpointConfig"]["privateServiceConnectConfig"]["enablePrivateServiceConnect"] is True
