"""The SageMaker deploy adapter against moto in server mode on 127.0.0.1 (real HTTP, real boto3).

Verified: the CreateModel request as moto stores it (serving image, S3 model data, environment),
one ProductionVariant per version with weights = traffic on the catalog's instance type,
CreateEndpoint then UpdateEndpoint for a new version, UpdateEndpointWeightsAndCapacities for a
traffic-only change, idempotent redeploys, refused splits, and `stackwise deploy --stack dev-aws`
resolving `chat@champion` / `chat:2` through an MLflow registry. Not verified: a container serving
(no SageMaker runs here).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "emulators"))

pytest.importorskip("boto3", reason="install stackwise[aws]")
pytest.importorskip("moto", reason="install stackwise[dev]")

from cloud_fixtures import OUTPUTS, aws_moto_env  # noqa: E402
from sagemaker_emulator import SageMakerEmulator  # noqa: E402

from stackwise.deploy import DeployTarget  # noqa: E402
from stackwise.testing.deploy import DeployContract, DeployDriver  # noqa: E402

BUCKET = "sw-dev-artifacts"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/sw-dev-images:serve"
ENDPOINT = {"name": "sw-dev-chat", "serving_image": IMAGE, "gpu": "A10G", "min_replicas": 1}


@pytest.fixture(scope="module")
def emulator():
    server = SageMakerEmulator().start()
    yield server
    server.stop()


@pytest.fixture
def aws_env(emulator, monkeypatch, tmp_path):
    aws_moto_env(emulator.endpoint, tmp_path, monkeypatch)
    emulator.reset()
    emulator.update_delay = 0.05
    return emulator


def connect(tmp_path, monkeypatch, endpoints=(ENDPOINT,), **extra):
    import stackwise

    path = tmp_path / "dev-aws-outputs.json"
    path.write_text(json.dumps({**OUTPUTS["dev-aws"], "endpoints": list(endpoints), **extra}))
    monkeypatch.setenv("STACKWISE_OUTPUTS", str(path))
    monkeypatch.setenv("STACKWISE_HOME", str(tmp_path / ".stackwise"))
    monkeypatch.delenv("STACKWISE_STACK", raising=False)
    return stackwise.connect("dev-aws")


def target(version: int) -> DeployTarget:
    return DeployTarget(model="chat", version=str(version), artifact_uri=f"s3://{BUCKET}/mlflow/models/chat-{version}/model",
                        base_model="HuggingFaceTB/SmolLM2-135M-Instruct")


class SageMakerDriver(DeployDriver):
    def __init__(self, emulator, tmp_path, monkeypatch):
        self.emulator, self.tmp_path, self.monkeypatch = emulator, tmp_path, monkeypatch

    def backend(self):
        return connect(self.tmp_path, self.monkeypatch).deployer

    def backend_without_endpoint(self):
        bare = self.tmp_path / "bare"
        bare.mkdir(exist_ok=True)
        return connect(bare, self.monkeypatch, endpoints=()).deployer

    def target(self, version):
        return target(version)

    def settle(self, backend):
        backend._wait_in_service(backend.endpoint_name())

    def created(self):
        return len(self.emulator.backend._models) + len(self.emulator.backend.endpoint_configs)


class TestSageMakerDeployContract(DeployContract):
    @pytest.fixture
    def driver(self, aws_env, tmp_path, monkeypatch):
        return SageMakerDriver(aws_env, tmp_path, monkeypatch)


def test_requests_carry_image_model_data_instance_type_and_weights(aws_env, tmp_path, monkeypatch):
    import boto3

    platform = connect(tmp_path, monkeypatch)
    deployer = platform.deployer
    deployer.deploy([target(1)], {"chat:1": 100})
    deployer._wait_in_service("sw-dev-chat")
    aws_env.update_delay = 3.0  # long enough to see the endpoint Updating
    deployer.deploy([target(2)], {"chat:1": 90, "chat:2": 10})
    sm = boto3.client("sagemaker", region_name="us-east-1")
    endpoint = sm.describe_endpoint(EndpointName="sw-dev-chat")
    assert endpoint["EndpointStatus"] == "Updating"  # UpdateEndpoint swapped in a new config
    config = sm.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    variants = {v["VariantName"]: v for v in config["ProductionVariants"]}
    assert set(variants) == {"chat-v1", "chat-v2"}
    assert {n: v["InitialVariantWeight"] for n, v in variants.items()} == {"chat-v1": 90.0, "chat-v2": 10.0}
    assert {v["InstanceType"] for v in variants.values()} == {"ml.g5.xlarge"}  # A10G x1 in the catalog
    assert {v["InitialInstanceCount"] for v in variants.values()} == {1}
    model = sm.describe_model(ModelName=variants["chat-v2"]["ModelName"])
    container = model["PrimaryContainer"]
    assert container["Image"] == IMAGE
    assert container["ModelDataSource"]["S3DataSource"] == {
        "S3Uri": f"s3://{BUCKET}/mlflow/models/chat-2/model/", "S3DataType": "S3Prefix", "CompressionType": "None"}
    assert container["Environment"]["STACKWISE_MODEL_VERSION"] == "2"
    assert container["Environment"]["STACKWISE_BASE_MODEL"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert model["ExecutionRoleArn"] == OUTPUTS["dev-aws"]["job_role"]
    assert len(sm.list_models()["Models"]) == 2


def test_traffic_only_change_uses_update_endpoint_weights(aws_env, tmp_path, monkeypatch):
    import boto3

    deployer = connect(tmp_path, monkeypatch).deployer
    deployer.deploy([target(1), target(2)], {"chat:1": 50, "chat:2": 50})
    deployer._wait_in_service("sw-dev-chat")
    sm = boto3.client("sagemaker", region_name="us-east-1")
    config_before = sm.describe_endpoint(EndpointName="sw-dev-chat")["EndpointConfigName"]
    calls: list[str] = []
    deployer.sagemaker.meta.events.register("before-call.sagemaker.*", lambda model, **_: calls.append(model.name))
    dep = deployer.deploy([target(2)], {"chat:1": 20, "chat:2": 80})
    assert "UpdateEndpointWeightsAndCapacities" in calls
    assert not {"CreateModel", "CreateEndpointConfig", "UpdateEndpoint"} & set(calls)
    raw = sm.describe_endpoint(EndpointName="sw-dev-chat")
    assert raw["EndpointConfigName"] == config_before
    assert {v["VariantName"]: v["CurrentWeight"] for v in raw["ProductionVariants"]} == {"chat-v1": 20.0, "chat-v2": 80.0}
    assert dep.traffic == {"chat:1": 20, "chat:2": 80}


def test_a_version_outside_s3_is_refused(aws_env, tmp_path, monkeypatch):
    from stackwise.errors import SpecError

    deployer = connect(tmp_path, monkeypatch).deployer
    local = DeployTarget(model="chat", version="7", artifact_uri="file:///tmp/chat-7")
    with pytest.raises(SpecError, match="SageMaker cannot read"):
        deployer.deploy([local], {"chat:7": 100})
    assert aws_env.backend._models == {}


@pytest.fixture
def registry_stack(aws_env, tmp_path, monkeypatch):
    """dev-aws with an MLflow registry (SQLite) holding chat versions 1 and 2 in S3."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    platform = connect(tmp_path, monkeypatch, tracking_uri=uri)
    client = MlflowClient(tracking_uri=uri)
    client.create_registered_model("chat")
    for v in (1, 2):
        mv = client.create_model_version("chat", source=target(v).artifact_uri)
        client.set_model_version_tag("chat", mv.version, "lineage.base", "HuggingFaceTB/SmolLM2-135M-Instruct")
    client.set_registered_model_alias("chat", "champion", "1")
    return platform


def test_cli_deploys_refs_from_the_registry_with_a_split(registry_stack, aws_env):
    from typer.testing import CliRunner

    from stackwise.cli import app

    runner = CliRunner()
    first = runner.invoke(app, ["deploy", "chat@champion", "--stack", "dev-aws", "--json"])
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["traffic"] == {"chat:1": 100}
    registry_stack.deployer._wait_in_service("sw-dev-chat")
    second = runner.invoke(app, ["deploy", "chat:2", "--traffic", "chat@champion=90", "--traffic", "chat:2=10",
                                 "--stack", "dev-aws", "--json"])
    assert second.exit_code == 0, second.output
    registry_stack.deployer._wait_in_service("sw-dev-chat")
    shown = runner.invoke(app, ["endpoints", "--stack", "dev-aws", "--json"])
    assert json.loads(shown.stdout)["traffic"] == {"chat:1": 90, "chat:2": 10}
    assert json.loads(shown.stdout)["state"] == "ready"


@pytest.mark.parametrize("ref, traffic, message", [
    ("chat:9", None, "model chat version 9 is not in the model registry"),
    ("chat@nope", None, "alias 'nope' of model chat"),
    ("chat/2", None, "is not a model reference"),
    ("chat:2", {"chat:1": 60, "chat:2": 30}, "which is neither on the endpoint"),
    ("chat:2", {"chat:2": 90}, "sum to 90, not 100"),
])
def test_bad_refs_and_splits_are_refused_before_any_cloud_call(registry_stack, aws_env, ref, traffic, message):
    from stackwise.errors import StackwiseError

    with pytest.raises(StackwiseError, match=message):
        registry_stack.deploy(ref, traffic=traffic)
    assert aws_env.backend._models == {} and aws_env.backend.endpoints == {}


@pytest.mark.parametrize("args, message", [
    (["deploy", "chat:9"], "model chat version 9 is not in the model registry"),
    (["deploy", "chat:2", "--traffic", "chat:2=90"], "sum to 90, not 100"),
    (["deploy", "chat:2", "--traffic", "chat:2"], "is not REF=PERCENT"),
])
def test_cli_bad_input_exits_2_with_a_clear_message(registry_stack, aws_env, args, message):
    import subprocess
    import os

    env = {**os.environ, "STACKWISE_STACK": "dev-aws"}
    proc = subprocess.run([sys.executable, "-m", "stackwise.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert aws_env.backend._models == {}


def test_cli_on_a_stack_without_endpoint_exits_2(aws_env, tmp_path, monkeypatch):
    import os
    import subprocess

    connect(tmp_path, monkeypatch, endpoints=())
    proc = subprocess.run([sys.executable, "-m", "stackwise.cli", "endpoints", "--stack", "dev-aws"],
                          env=dict(os.environ), capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 2 and "has no inference endpoint" in proc.stderr, proc.stderr


def test_serve_is_for_the_local_stack(aws_env, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from stackwise.cli import app
    from stackwise.errors import ConfigError

    connect(tmp_path, monkeypatch)
    result = CliRunner().invoke(app, ["serve", "--stack", "dev-aws"])
    assert isinstance(result.exception, ConfigError) and "serves the local stack" in str(result.exception)
