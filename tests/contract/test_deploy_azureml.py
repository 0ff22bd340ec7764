"""The Azure ML deploy adapter against the local ARM server (tests/emulators/azureml_server.py),
through `MLClient.online_endpoints` / `online_deployments`, signed in like the compute tests.

Verified: one managed online deployment per version (serving image with its routes as an
environment, the catalog's VM size, min replicas, tags, the artifact URI in its environment), the
endpoint's traffic map as one update (a weights-only change creates and touches no deployment),
deployments stackwise did not make left at 0% and never deleted, begin_delete, idempotent
redeploys and refused splits. Not verified: a deployment serving requests (no Azure runs here).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "emulators"))

pytest.importorskip("azure.ai.ml", reason="install stackwise[azure]")
pytest.importorskip("cryptography", reason="install stackwise[azure]")

from azureml_server import AzureMLServer  # noqa: E402
from cloud_fixtures import azure_cli_login, use_stack  # noqa: E402
from drivers import CloudDeployDriver, chat_target, fast_retries, served  # noqa: E402

from stackwise.deploy import DeployTarget  # noqa: E402
from stackwise.testing.deploy import DeployContract  # noqa: E402

# azure-ai-ml's own use of marshmallow warns on every schema; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:The `context` parameter is deprecated")

IMAGE = "swdevimages.azurecr.io/serve:latest"
ENDPOINT = "sw-dev-chat"

server = served(AzureMLServer)


@pytest.fixture
def azure(server, tmp_path, monkeypatch):
    server.reset()
    server.add_endpoint(ENDPOINT)
    azure_cli_login(server, tmp_path, monkeypatch)
    return server


def connect(tmp_path, monkeypatch, endpoints=None, **extra):
    endpoints = [{"name": ENDPOINT, "serving_image": IMAGE, "gpu": "T4", "min_replicas": 1}] if endpoints is None \
        else endpoints
    platform = use_stack("dev-azure", tmp_path, monkeypatch, endpoints=endpoints, **extra)
    fast_retries(platform.deployer, attempts=3)
    return platform


def target(version: int) -> DeployTarget:
    return chat_target("az://artifacts/mlflow", version)


def _deployment_puts(server):
    return [(p, b) for m, p, b in server.requests if m == "PUT" and "/deployments/" in p]


def _driver(server, tmp_path, monkeypatch, endpoints=None):
    return CloudDeployDriver(
        tmp_path, lambda folder, wanted: connect(folder, monkeypatch, endpoints=endpoints if wanted is None
                                                 else wanted).deployer,
        target, count=lambda: len(_deployment_puts(server)), server=server)


class TestAzureDeployContract(DeployContract):
    @pytest.fixture
    def driver(self, azure, tmp_path, monkeypatch):
        return _driver(azure, tmp_path, monkeypatch)


def test_deployment_requests(azure, tmp_path, monkeypatch):
    from stackwise import catalog

    deployer = connect(tmp_path, monkeypatch).deployer
    deployer.deploy([target(1)], {"chat:1": 100})
    dep = deployer.deploy([target(2)], {"chat:1": 90, "chat:2": 10})
    puts = _deployment_puts(azure)
    assert [p.rsplit("/", 1)[1] for p, _ in puts] == ["chat-v1", "chat-v2"]
    body = puts[1][1]
    props = body["properties"]
    assert props["instanceType"] == catalog.offer("T4", "azure", 1).instance == "Standard_NC4as_T4_v3"
    assert body["sku"]["capacity"] == 1
    assert props["environmentVariables"]["STACKWISE_MODEL_URI"] == "az://artifacts/mlflow/chat-2/model"
    assert props["environmentVariables"]["STACKWISE_BASE_MODEL"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert body["tags"]["stackwise-model"] == "chat" and body["tags"]["stackwise-version"] == "2"
    env_id = props["environmentId"]
    (env,) = [b for m, p, b in azure.requests if m == "PUT" and p == env_id.split("azureml:")[-1]][:1]
    assert env["properties"]["image"] == IMAGE
    assert env["properties"]["inferenceConfig"]["scoringRoute"] == {"port": 8080, "path": "/v1/completions"}
    # Liveness answers while the model loads (else Azure restarts the container in a loop); readiness after.
    assert env["properties"]["inferenceConfig"]["livenessRoute"] == {"port": 8080, "path": "/"}
    assert env["properties"]["inferenceConfig"]["readinessRoute"] == {"port": 8080, "path": "/health"}
    assert azure.endpoints[ENDPOINT]["properties"]["traffic"] == {"chat-v1": 90, "chat-v2": 10}
    assert dep.traffic == {"chat:1": 90, "chat:2": 10} and dep.state == "ready"


def test_a_traffic_only_change_is_one_endpoint_update(azure, tmp_path, monkeypatch):
    deployer = connect(tmp_path, monkeypatch).deployer
    deployer.deploy([target(1), target(2)], {"chat:1": 50, "chat:2": 50})
    before = len(azure.requests)
    dep = deployer.deploy([target(1)], {"chat:1": 25, "chat:2": 75})
    writes = [(m, p, b) for m, p, b in azure.requests[before:] if m != "GET"]
    assert [(m, p.rsplit("/", 2)[-2:]) for m, p, _ in writes] == [("PUT", ["onlineEndpoints", ENDPOINT])]
    assert writes[0][2]["properties"]["traffic"] == {"chat-v1": 25, "chat-v2": 75}
    assert dep.traffic == {"chat:1": 25, "chat:2": 75}


def test_a_deployment_stackwise_did_not_make_is_left_at_zero(azure, tmp_path, monkeypatch):
    primary = azure.endpoints[ENDPOINT]["id"] + "/deployments/primary"  # as the Pulumi program makes it
    azure.deployments[ENDPOINT]["primary"] = {"id": primary, "name": "primary", "tags": {}, "properties": {
        "endpointComputeType": "Managed", "instanceType": "Standard_NC4as_T4_v3", "provisioningState": "Succeeded",
        "properties": {}, "scaleSettings": {"scaleType": "Default"}},
        "sku": {"name": "Default", "capacity": 1}}
    azure.endpoints[ENDPOINT]["properties"]["traffic"] = {"primary": 100}
    deployer = connect(tmp_path, monkeypatch).deployer
    assert deployer.describe().state == "absent"
    dep = deployer.deploy([target(1)], {"chat:1": 100})
    traffic = azure.endpoints[ENDPOINT]["properties"]["traffic"]
    assert traffic.get("primary", 0) == 0 and traffic["chat-v1"] == 100
    assert dep.traffic == {"chat:1": 100} and "primary" in azure.deployments[ENDPOINT]


def test_an_endpoint_missing_on_azure_says_to_run_pulumi_up(azure, tmp_path, monkeypatch):
    from stackwise.errors import ConfigError

    azure.endpoints.clear()
    with pytest.raises(ConfigError, match="pulumi up"):
        connect(tmp_path, monkeypatch).deployer.describe()


def test_a_version_outside_the_artifact_store_is_refused(azure, tmp_path, monkeypatch):
    from stackwise.errors import SpecError

    deployer = connect(tmp_path, monkeypatch).deployer
    with pytest.raises(SpecError, match="Azure endpoint cannot read"):
        deployer.deploy([DeployTarget(model="chat", version="5", artifact_uri="s3://elsewhere/chat")], {"chat:5": 100})
    assert _deployment_puts(azure) == []


# -- deployment names: always valid for Azure ML (azure-ai-ml's validator is the judge) ---------
LONG_MODEL = "qwen2-5-coder-32b-instruct-lora-customer-support-finetune"


@pytest.mark.parametrize("model,version", [
    ("chat", "1"), ("7b-chat", "1"), ("7", "12"), (LONG_MODEL, "1"), (LONG_MODEL, "123456789"),
    ("Chat_Model", "3"), ("llama-3.1-8b", "2"), ("---", "4"), ("a" * 63, "1"), ("x", "2024.06-rc1"),
])
def test_deployment_names_pass_azure_ml_s_validator(model, version):
    from azure.ai.ml.entities._endpoint._endpoint_helpers import validate_endpoint_or_deployment_name

    from stackwise.adapters.deploy.azureml import deployment_name

    name = deployment_name(model, version)
    validate_endpoint_or_deployment_name(name, is_deployment=True)
    assert name == deployment_name(model, version) and name == name.lower()


def test_deployment_names_stay_readable_and_unique_per_version():
    from stackwise.adapters.deploy.azureml import deployment_name

    assert deployment_name("chat", "3") == "chat-v3"  # already valid: unchanged
    assert deployment_name("7b-chat", "1").startswith("m-7b-chat-v1-")
    long = {deployment_name(LONG_MODEL, str(v)) for v in range(1, 200)}
    assert len(long) == 199
    # Two models cut to the same head, and names that differ only in case or '_', stay apart.
    assert deployment_name(LONG_MODEL + "-a", "1") != deployment_name(LONG_MODEL + "-b", "1")
    assert len({deployment_name(m, "1") for m in ("chat-x", "chat_x", "Chat-x")}) == 3


def test_long_and_digit_first_models_deploy(azure, tmp_path, monkeypatch):
    deployer = connect(tmp_path, monkeypatch).deployer
    targets = [DeployTarget(model=m, version="1", artifact_uri=f"az://artifacts/mlflow/{i}/model")
               for i, m in enumerate(("7b-chat", LONG_MODEL))]
    dep = deployer.deploy(targets, {"7b-chat:1": 50, f"{LONG_MODEL}:1": 50})
    names = [p.rsplit("/", 1)[1] for p, _ in _deployment_puts(azure)]
    assert all(3 <= len(n) <= 32 and n[0].isalpha() for n in names) and len(set(names)) == 2
    assert set(azure.endpoints[ENDPOINT]["properties"]["traffic"]) == set(names)
    assert dep.traffic == {"7b-chat:1": 50, f"{LONG_MODEL}:1": 50} and dep.state == "ready"


def test_the_old_names_are_refused(azure, tmp_path, monkeypatch):
    # The naming before the fix (`variant_name(...).lower()`): azure-ai-ml itself refuses both
    # before sending (the server below refuses them too, for a client that does not check).
    from azure.ai.ml.exceptions import MlException

    import stackwise.adapters.deploy.azureml as adapter
    from stackwise.deploy import variant_name
    from stackwise.errors import StackwiseError

    monkeypatch.setattr(adapter, "deployment_name", lambda m, v: variant_name(m, v).lower())
    deployer = connect(tmp_path, monkeypatch).deployer
    for model in (LONG_MODEL, "7b-chat"):
        with pytest.raises((StackwiseError, MlException), match="at most 32 characters|start with an upper"):
            deployer.deploy([DeployTarget(model=model, version="1", artifact_uri="az://artifacts/mlflow/1/model")],
                            {f"{model}:1": 100})
    assert azure.deployments[ENDPOINT] == {}


@pytest.mark.parametrize("path,message", [
    (f"onlineEndpoints/{ENDPOINT}/deployments/7b-chat-v1", "must start with an upper- or lowercase letter"),
    (f"onlineEndpoints/{ENDPOINT}/deployments/{LONG_MODEL}-v1", "at most 32 characters"),
    (f"onlineEndpoints/{ENDPOINT}/deployments/chat-", "must start with an upper- or lowercase letter"),
    (f"onlineEndpoints/sw-dev-{LONG_MODEL}", "at most 32 characters"),
])
def test_the_server_refuses_invalid_names_over_http_as_azure_does(azure, path, message):
    import requests

    workspace = azure.endpoints[ENDPOINT]["id"].split("/onlineEndpoints/")[0]
    answer = requests.put(f"{azure.endpoint.rstrip('/')}{workspace}/{path}?api-version=2024-04-01",
                          json={"properties": {}}, headers={"Authorization": "Bearer test"}, verify=azure.ca_file,
                          timeout=10)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == "BadArgument" and message in error["message"]
    assert error["details"] == [] and error["additionalInfo"] == []
    assert azure.deployments[ENDPOINT] == {} and set(azure.endpoints) == {ENDPOINT}


def test_an_invalid_endpoint_name_cannot_be_added(azure):
    with pytest.raises(ValueError, match="start with an upper- or lowercase letter"):
        azure.add_endpoint("9-endpoint")


# -- autoscaling: each deployed version gets the endpoint's autoscale setting --------------------
SCALED = {"name": ENDPOINT, "serving_image": IMAGE, "gpu": "T4", "min_replicas": 1,
          "scaling": {"max_replicas": 3, "metric": "invocations", "target_invocations": 80, "target_latency_ms": 1200}}


def _setting_name(deployment):
    return f"{ENDPOINT}-{deployment}-autoscale"


def _only(deployment):
    return [{"DimensionName": "deployment", "Operator": "Equals", "Values": [deployment]}]


def _trigger(metric, resource, operator, threshold, **extra):
    namespace = "Microsoft.MachineLearningServices/workspaces/onlineEndpoints" + (
        "/deployments" if "/deployments/" in resource else "")
    return {"metricName": metric, "metricNamespace": namespace, "metricResourceUri": resource, "timeGrain": "PT1M",
            "statistic": "Average", "timeWindow": "PT10M", "timeAggregation": "Average", "operator": operator,
            "threshold": threshold, **extra}


def test_a_deployed_version_gets_an_autoscale_setting(azure, tmp_path, monkeypatch):
    deployer = connect(tmp_path, monkeypatch, endpoints=[SCALED]).deployer
    deployer.deploy([target(1)], {"chat:1": 100})
    deployer.deploy([target(2)], {"chat:1": 90, "chat:2": 10})
    assert set(azure.autoscale) == {_setting_name("chat-v1"), _setting_name("chat-v2")}
    endpoint_id = azure.endpoints[ENDPOINT]["id"]
    deployment_id = azure.deployments[ENDPOINT]["chat-v2"]["id"]
    setting = azure.autoscale[_setting_name("chat-v2")]
    assert setting["location"] == "eastus" and setting["properties"]["enabled"] is True
    assert setting["properties"]["targetResourceUri"] == deployment_id
    (profile,) = setting["properties"]["profiles"]
    assert profile["capacity"] == {"minimum": "1", "maximum": "3", "default": "1"}
    # By hand from docs/serving.md: requests per replica per minute and average latency scale out
    # (this deployment's series only); an idle GPU (< 25 %) scales in.
    assert profile["rules"] == [
        {"metricTrigger": _trigger("RequestsPerMinute", endpoint_id, "GreaterThan", 80, dimensions=_only("chat-v2"),
                                   dividePerInstance=True),
         "scaleAction": {"direction": "Increase", "type": "ChangeCount", "value": "1", "cooldown": "PT5M"}},
        {"metricTrigger": _trigger("RequestLatency", endpoint_id, "GreaterThan", 1200, dimensions=_only("chat-v2"),
                                   dividePerInstance=False),
         "scaleAction": {"direction": "Increase", "type": "ChangeCount", "value": "1", "cooldown": "PT5M"}},
        {"metricTrigger": _trigger("GpuUtilizationPercentage", deployment_id, "LessThan", 25),
         "scaleAction": {"direction": "Decrease", "type": "ChangeCount", "value": "1", "cooldown": "PT10M"}}]


def test_undeploy_deletes_the_setting_before_the_deployment(azure, tmp_path, monkeypatch):
    deployer = connect(tmp_path, monkeypatch, endpoints=[SCALED]).deployer
    deployer.deploy([target(1), target(2)], {"chat:1": 50, "chat:2": 50})
    deployer.deploy([], {"chat:1": 100})
    before = len(azure.requests)
    dep = deployer.undeploy("chat:2")
    assert [v.name for v in dep.variants] == ["chat-v1"]
    assert set(azure.autoscale) == {_setting_name("chat-v1")}
    deletes = [p.rsplit("/", 1)[1] for m, p, _ in azure.requests[before:] if m == "DELETE"]
    assert deletes == [_setting_name("chat-v2"), "chat-v2"]


def test_without_scaling_outputs_no_setting_is_made(azure, tmp_path, monkeypatch):
    deployer = connect(tmp_path, monkeypatch).deployer  # outputs synced before `scaling` existed
    deployer.deploy([target(1), target(2)], {"chat:1": 50, "chat:2": 50})
    deployer.deploy([], {"chat:1": 100})
    deployer.undeploy("chat:2")
    assert azure.autoscale == {} and not any("autoscalesettings" in p for _, p, _ in azure.requests)


def test_concurrency_is_refused_before_any_call(azure, tmp_path, monkeypatch):
    from stackwise.errors import ConfigError

    bad = {**SCALED, "scaling": {"max_replicas": 3, "metric": "concurrency"}}
    with pytest.raises(ConfigError, match="concurrency is not available on Azure") as caught:
        connect(tmp_path, monkeypatch, endpoints=[bad]).deployer.deploy([target(1)], {"chat:1": 100})
    assert caught.value.where == "stack outputs: endpoints[].scaling.metric"
    assert _deployment_puts(azure) == [] and azure.autoscale == {}


@pytest.mark.parametrize("change,says", [
    (lambda rule: rule["metricTrigger"].update(dimensions=[{"dimensionName": "deployment", "operator": "Equals",
                                                           "values": ["chat-v1"]}]), "'DimensionName' is a required"),
    (lambda rule: rule["scaleAction"].update(cooldown="PT30S"), "cooldown: PT30S is out of range"),
    (lambda rule: rule["metricTrigger"].update(statistic="Mean"), "'Mean' is not one of"),
])
def test_the_server_refuses_a_setting_arm_would(azure, tmp_path, monkeypatch, change, says):
    import requests

    from stackwise.adapters.deploy.azureml import autoscale_setting, autoscale_setting_path

    deployer = connect(tmp_path, monkeypatch, endpoints=[SCALED]).deployer
    deployer.deploy([target(1)], {"chat:1": 100})
    out = deployer.endpoint_output()
    body = autoscale_setting(deployer.stack, out, "chat-v1", deployer.workspace_id)
    change(body["properties"]["profiles"][0]["rules"][0])
    answer = requests.put(f"{azure.endpoint.rstrip('/')}{autoscale_setting_path(deployer.stack, ENDPOINT, 'other')}",
                          params={"api-version": "2022-10-01"}, json=body, headers={"Authorization": "Bearer test"},
                          verify=azure.ca_file, timeout=10)
    assert answer.status_code == 400 and says in answer.json()["error"]["message"]


@pytest.mark.parametrize("scaling", [
    {}, {"metric": "invocations", "targetLatencyMs": 900}, {"metric": "latency", "targetLatencyMs": 2000},
    {"metric": "utilization", "gpuPercent": 40, "scaleOutCooldownSeconds": 90, "scaleInCooldownSeconds": 900},
])
def test_the_rules_are_the_pulumi_program_s(scaling):
    """The adapter's rules for a deployment are infra/azure/endpoint.py's for `primary`, with the
    deployment's own name in the dimension filter."""
    pytest.importorskip("pulumi", reason="pip install 'stackwise[infra]'")
    from stackwise.adapters.deploy.azureml import scale_rules
    from stackwise.infra.azure.endpoint import scale_rules as infra_rules
    from stackwise.infra.config import ScalingConfig

    config = ScalingConfig.model_validate(scaling)
    assert scale_rules(config, 80) == infra_rules(config, 80, "dev-azure")
    for_v2 = json.dumps(scale_rules(config, 80, "chat-v2"))
    assert for_v2 == json.dumps(scale_rules(config, 80)).replace('["primary"]', '["chat-v2"]')


def test_the_setting_is_the_one_the_pulumi_program_makes(azure, tmp_path, monkeypatch):
    """dev-azure built offline: the program's AutoscaleSetting for `primary` and the adapter's ARM body
    for `primary` agree key for key (Pulumi's inputs in camelCase, ARM's dimension keys capitalized),
    resource ids aside (the mocks invent those)."""
    pytest.importorskip("pulumi", reason="pip install 'stackwise[infra]'")
    from stackwise.adapters.deploy.azureml import autoscale_setting
    from stackwise.infra.config import InfraConfig
    from stackwise.infra.offline import run_offline
    from stackwise.stack import _read_config

    path = Path(__file__).resolve().parents[2] / "stacks" / "Pulumi.dev-azure.yaml"
    raw = _read_config(path.read_text(encoding="utf-8"), str(path))
    raw["endpoint"] = {**raw["endpoint"], "scaling": {"metric": "invocations", "targetLatencyMs": 1500}}
    run = run_offline(InfraConfig.load(raw, str(path)), "dev-azure")
    (program,) = [r for r in run.resources if r.type == "azure-native:monitor:AutoscaleSetting"]
    (exported,) = run.exported["endpoints"]
    stack = SimpleNamespace(name="dev-azure", region="eastus", outputs=SimpleNamespace(
        azure_subscription_id="s", azure_resource_group="rg"))
    from stackwise.contract import EndpointOutput

    ours = autoscale_setting(stack, EndpointOutput.model_validate(exported), "primary", "/ws")

    def plain(value):  # keys compared case-blind; resource ids dropped
        if isinstance(value, dict):
            return {k.lower(): plain(v) for k, v in value.items() if not k.lower().endswith("resourceuri")}
        return [plain(v) for v in value] if isinstance(value, list) else value

    assert plain(ours["properties"]["profiles"]) == plain(program.inputs["profiles"])
    assert ours["properties"]["enabled"] is program.inputs["enabled"] is True


class TestAzureDeployContractWithAutoscaling(DeployContract):
    """The same contract when each deployment gets an autoscale setting (made, then deleted with it)."""

    @pytest.fixture
    def driver(self, azure, tmp_path, monkeypatch):
        return _driver(azure, tmp_path, monkeypatch, endpoints=[SCALED])

    def test_every_deployment_has_its_setting(self, driver, backend):
        backend.deploy([driver.target(1), driver.target(2)], {"chat:1": 100})
        backend.undeploy("chat:2")
        assert set(driver.server.autoscale) == {_setting_name("chat-v1")}


# -- RAG app versions (issue 13): the container gets the stack's context and the pinned generator ---
from rag_deploy import SECRET_VALUE, _check_rag_env, _rag_env, _rag_registry  # noqa: E402 (tests/contract on sys.path)


def test_a_rag_version_s_deployment_carries_the_context_and_the_pinned_generator(azure, tmp_path, monkeypatch):
    from stackwise.adapters.deploy.azureml import deployment_request

    store = "az://artifacts"
    monkeypatch.setenv("HF_TOKEN", SECRET_VALUE)
    platform = connect(tmp_path, monkeypatch, tracking_uri=_rag_registry(tmp_path, store),
                       secrets={"hf_token": "env://HF_TOKEN"})
    rag_env = _rag_env(platform, tmp_path)
    rag = DeployTarget(model="lee-rag", version="1", artifact_uri=f"{store}/mlflow/lee-rag-1/rag", kind="rag")
    platform.deployer._create(deployment_request(platform.stack, platform.deployer.endpoint_output(), rag, rag_env))
    ((path, body),) = _deployment_puts(azure)  # azure-ai-ml's ManagedOnlineDeployment, to the ARM server
    env = body["properties"]["environmentVariables"]
    assert path.endswith("/lee-rag-v1") and env["STACKWISE_MODEL_URI"] == f"{store}/mlflow/lee-rag-1/rag"
    _check_rag_env(env, platform, store)


def test_a_model_version_s_deployment_is_unchanged(azure, tmp_path, monkeypatch):
    from stackwise.adapters.deploy.azureml import deployment_request
    from stackwise.serve_targets import rag_deploy_environment

    platform = connect(tmp_path, monkeypatch)
    out = platform.deployer.endpoint_output()
    assert rag_deploy_environment(platform.stack, target(1)) is None
    request = deployment_request(platform.stack, out, target(1))
    assert set(request["environment_variables"]) == {
        "STACKWISE_MODEL", "STACKWISE_MODEL_VERSION", "STACKWISE_MODEL_URI", "STACKWISE_BASE_MODEL"}
    assert request == deployment_request(platform.stack, out, target(1), None)
