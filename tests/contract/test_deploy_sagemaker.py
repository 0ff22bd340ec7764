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
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "emulators"))

pytest.importorskip("boto3", reason="install stackwise[aws]")
pytest.importorskip("moto", reason="install stackwise[dev]")

from cloud_fixtures import OUTPUTS, use_stack  # noqa: E402
from drivers import CloudDeployDriver, chat_target, moto_s3, served  # noqa: E402
from sagemaker_emulator import SageMakerEmulator  # noqa: E402

from stackwise.deploy import DeployTarget  # noqa: E402
from stackwise.testing.deploy import DeployContract  # noqa: E402

BUCKET = "sw-dev-artifacts"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/sw-dev-images:serve"
ENDPOINT = {"name": "sw-dev-chat", "serving_image": IMAGE, "gpu": "A10G", "min_replicas": 1}

emulator = served(SageMakerEmulator)


@pytest.fixture
def aws_env(emulator, monkeypatch, tmp_path):
    moto_s3(emulator, tmp_path, monkeypatch)
    emulator.update_delay = 0.05
    return emulator


def connect(tmp_path, monkeypatch, endpoints=(ENDPOINT,), **extra):
    return use_stack("dev-aws", tmp_path, monkeypatch, endpoints=list(endpoints), **extra)


def target(version: int) -> DeployTarget:
    return chat_target(f"s3://{BUCKET}/mlflow/models", version)


def _driver(emulator, tmp_path, monkeypatch, endpoint=ENDPOINT):
    return CloudDeployDriver(
        tmp_path, lambda folder, endpoints: connect(folder, monkeypatch, endpoints=(
            (endpoint,) if endpoints is None else endpoints)).deployer, target,
        count=lambda: len(emulator.backend._models) + len(emulator.backend.endpoint_configs),
        wait=lambda backend: backend._wait_in_service(backend.endpoint_name()))


class TestSageMakerDeployContract(DeployContract):
    @pytest.fixture
    def driver(self, aws_env, tmp_path, monkeypatch):
        return _driver(aws_env, tmp_path, monkeypatch)


# The endpoint as the Pulumi program exports it with `scaling`: up to 4 replicas on requests in
# flight (3 per replica), with a scale-out guard at 1.5 s average model latency.
SCALED = {**ENDPOINT, "scaling": {"max_replicas": 4, "metric": "concurrency", "target_concurrency": 3,
                                  "target_latency_ms": 1500}}


class TestSageMakerDeployContractWithAutoscaling(DeployContract):
    """The same contract when every deployed variant is autoscaled (register, deregister, retain)."""

    @pytest.fixture
    def driver(self, aws_env, tmp_path, monkeypatch):
        return _driver(aws_env, tmp_path, monkeypatch, endpoint=SCALED)


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


# -- autoscaling: deployed variants scale as the endpoint's own ----------------------------------

def _targets(endpoint="sw-dev-chat"):
    import boto3

    scaling = boto3.client("application-autoscaling", region_name="us-east-1")
    found = scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    return {t["ResourceId"].rsplit("/", 1)[1]: t for t in found
            if t["ResourceId"].startswith(f"endpoint/{endpoint}/variant/")}


def _policies(variant, endpoint="sw-dev-chat"):
    import boto3

    scaling = boto3.client("application-autoscaling", region_name="us-east-1")
    found = scaling.describe_scaling_policies(ServiceNamespace="sagemaker",
                                              ResourceId=f"endpoint/{endpoint}/variant/{variant}")
    return {p["PolicyName"]: p for p in found["ScalingPolicies"]}


def _latency_ms(variant):
    """Average ModelLatency of `variant` in ms, 0 while idle: written out from the AWS docs."""
    return {"Metrics": [
        {"Id": "latency", "ReturnData": False, "MetricStat": {"Stat": "Average", "Metric": {
            "Namespace": "AWS/SageMaker", "MetricName": "ModelLatency",
            "Dimensions": [{"Name": "EndpointName", "Value": "sw-dev-chat"},
                           {"Name": "VariantName", "Value": variant}]}}},
        {"Id": "latency_ms", "Expression": "FILL(latency, 0) / 1000", "Label": "model latency (ms)",
         "ReturnData": True}]}


def test_a_deployed_version_gets_a_scalable_target_and_the_endpoint_s_policies(aws_env, tmp_path, monkeypatch):
    import botocore.session

    deployer = connect(tmp_path, monkeypatch, endpoints=(SCALED,)).deployer
    deployer.deploy([target(1)], {"chat:1": 100})  # CreateEndpoint, then the target once InService
    deployer.deploy([target(2)], {"chat:1": 90, "chat:2": 10})  # UpdateEndpoint, likewise
    targets = _targets()
    assert set(targets) == {"chat-v1", "chat-v2"}
    for found in targets.values():
        assert (found["ScalableDimension"], found["MinCapacity"], found["MaxCapacity"]) == (
            "sagemaker:variant:DesiredInstanceCount", 1, 4)
    policies = _policies("chat-v2")
    assert set(policies) == {"chat-v2-scaling-policy", "chat-v2-latency-scaling-policy"}
    assert {p["PolicyType"] for p in policies.values()} == {"TargetTrackingScaling"}
    assert policies["chat-v2-scaling-policy"]["TargetTrackingScalingPolicyConfiguration"] == {
        "TargetValue": 3.0, "ScaleOutCooldown": 60, "ScaleInCooldown": 300,
        "PredefinedMetricSpecification": {
            "PredefinedMetricType": "SageMakerVariantConcurrentRequestsPerModelHighResolution"}}
    assert policies["chat-v2-latency-scaling-policy"]["TargetTrackingScalingPolicyConfiguration"] == {
        "TargetValue": 1500.0, "ScaleOutCooldown": 60, "ScaleInCooldown": 300, "DisableScaleIn": True,
        "CustomizedMetricSpecification": _latency_ms("chat-v2")}
    # botocore validated every request's shape on the way; the metric type is one its model lists.
    enum = botocore.session.get_session().get_service_model("application-autoscaling").shape_for("MetricType").enum
    assert "SageMakerVariantConcurrentRequestsPerModelHighResolution" in enum
    assert set(_policies("chat-v1")) == {"chat-v1-scaling-policy", "chat-v1-latency-scaling-policy"}


def test_removing_a_version_deregisters_its_target(aws_env, tmp_path, monkeypatch):
    deployer = connect(tmp_path, monkeypatch, endpoints=(SCALED,)).deployer
    deployer.deploy([target(1), target(2)], {"chat:1": 50, "chat:2": 50})
    deployer._wait_in_service("sw-dev-chat")
    deployer.deploy([], {"chat:1": 100})
    deployer._wait_in_service("sw-dev-chat")
    dep = deployer.undeploy("chat:2")  # the emulator refuses the update while chat-v2 is a target
    assert [v.name for v in dep.variants] == ["chat-v1"]
    assert set(_targets()) == {"chat-v1"}
    assert _policies("chat-v2") == {} and len(_policies("chat-v1")) == 2


def test_the_update_keeps_the_instance_counts_autoscaling_reached(aws_env, tmp_path, monkeypatch):
    import boto3

    deployer = connect(tmp_path, monkeypatch, endpoints=(SCALED,)).deployer
    deployer.deploy([target(1)], {"chat:1": 100})
    sm = boto3.client("sagemaker", region_name="us-east-1")
    sm.update_endpoint_weights_and_capacities(  # what a scale-out does to the variant
        EndpointName="sw-dev-chat", DesiredWeightsAndCapacities=[{"VariantName": "chat-v1", "DesiredInstanceCount": 3}])
    deployer._wait_in_service("sw-dev-chat")
    deployer.deploy([target(2)], {"chat:1": 90, "chat:2": 10})
    variants = {v["VariantName"]: v for v in sm.describe_endpoint(EndpointName="sw-dev-chat")["ProductionVariants"]}
    assert variants["chat-v1"]["DesiredInstanceCount"] == 3 and variants["chat-v2"]["DesiredInstanceCount"] == 1
    assert {n: v["DesiredWeight"] for n, v in variants.items()} == {"chat-v1": 90.0, "chat-v2": 10.0}


def test_the_pulumi_made_variant_keeps_its_target_until_it_is_removed(aws_env, tmp_path, monkeypatch):
    """The endpoint as `pulumi up` leaves it: variant `primary`, autoscaled. Adding a version keeps
    it (at 0%) with its target; undeploying it deregisters the target, which would otherwise point at
    a variant that no longer exists (and AWS would refuse the update)."""
    import boto3

    sm = boto3.client("sagemaker", region_name="us-east-1")
    scaling = boto3.client("application-autoscaling", region_name="us-east-1")
    sm.create_model(ModelName="sw-dev-chat-model", ExecutionRoleArn=OUTPUTS["dev-aws"]["job_role"],
                    PrimaryContainer={"Image": IMAGE, "Environment": {"HF_MODEL_ID": "HuggingFaceTB/SmolLM2-135M"}})
    sm.create_endpoint_config(EndpointConfigName="sw-dev-chat-config", ProductionVariants=[
        {"VariantName": "primary", "ModelName": "sw-dev-chat-model", "InstanceType": "ml.g5.xlarge",
         "InitialInstanceCount": 1, "InitialVariantWeight": 1.0}])
    sm.create_endpoint(EndpointName="sw-dev-chat", EndpointConfigName="sw-dev-chat-config")
    primary = {"ServiceNamespace": "sagemaker", "ResourceId": "endpoint/sw-dev-chat/variant/primary",
               "ScalableDimension": "sagemaker:variant:DesiredInstanceCount"}
    scaling.register_scalable_target(**primary, MinCapacity=1, MaxCapacity=4)
    scaling.put_scaling_policy(
        **primary, PolicyName="sw-dev-chat-scaling-policy", PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={"TargetValue": 100.0, "PredefinedMetricSpecification": {
            "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"}})
    deployer = connect(tmp_path, monkeypatch, endpoints=(SCALED,)).deployer
    deployer.deploy([target(1)], {"chat:1": 100})
    assert set(_targets()) == {"primary", "chat-v1"} and set(_policies("primary")) == {"sw-dev-chat-scaling-policy"}
    deployer.undeploy("sw-dev-chat-model:?")
    assert set(_targets()) == {"chat-v1"} and _policies("primary") == {}
    assert [v.name for v in deployer.describe().variants] == ["chat-v1"]


def test_without_scaling_outputs_nothing_is_registered(aws_env, tmp_path, monkeypatch):
    deployer = connect(tmp_path, monkeypatch).deployer  # outputs synced before `scaling` existed
    deployer.deploy([target(1)], {"chat:1": 100})
    deployer._wait_in_service("sw-dev-chat")
    deployer.deploy([target(2)], {"chat:1": 90, "chat:2": 10})
    assert _targets() == {}


@pytest.mark.parametrize("scaling", [
    {}, {"metric": "invocations", "targetLatencyMs": 900}, {"metric": "concurrency", "targetConcurrency": 2.5},
    {"metric": "utilization", "gpuPercent": 60, "scaleOutCooldownSeconds": 120, "scaleInCooldownSeconds": 600},
    {"metric": "latency", "targetLatencyMs": 2000},
])
def test_the_policies_are_the_pulumi_program_s_and_pass_botocore(scaling):
    """The adapter's policies for a variant are infra/aws/endpoint.py's for `primary` (the Pulumi
    program's variant), with the variant's own name; every request passes botocore's validator."""
    pytest.importorskip("pulumi", reason="pip install 'stackwise[infra]'")
    import botocore.session
    from botocore.validate import ParamValidator

    from stackwise.adapters.deploy.sagemaker import scaling_requests, tracking_policies
    from stackwise.contract import EndpointOutput
    from stackwise.infra.aws.endpoint import tracking_policies as infra_policies
    from stackwise.infra.config import ScalingConfig

    config = ScalingConfig.model_validate(scaling)
    ours = tracking_policies(config, 80, 4, "sw-dev-chat")
    assert ours == infra_policies(config, 80, 4, "sw-dev-chat")
    for_v2 = json.dumps(tracking_policies(config, 80, 4, "sw-dev-chat", "chat-v2"))
    assert for_v2 == json.dumps(ours).replace('"value": "primary"', '"value": "chat-v2"')
    model = botocore.session.get_session().get_service_model("application-autoscaling")
    # Every ScalingConfig field has its namesake in the contract (extra fields are refused there).
    out = EndpointOutput(name="sw-dev-chat", gpu="A10G", gpu_count=4,
                         scaling={"max_replicas": 3, "target_invocations": 80, **config.model_dump()})
    register, policies = scaling_requests(SimpleNamespace(name="dev-aws"), out, "chat-v2")
    assert register["ResourceId"] == "endpoint/sw-dev-chat/variant/chat-v2" and register["MaxCapacity"] == 3
    assert [p["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] for p in policies][0] == {
        None: 80, "invocations": 80, "concurrency": 2.5, "utilization": 240, "latency": 2000}[config.metric]
    for operation, request in [("RegisterScalableTarget", register)] + [("PutScalingPolicy", p) for p in policies]:
        report = ParamValidator().validate(request, model.operation_model(operation).input_shape)
        assert not report.has_errors(), report.generate_report()


# -- RAG app versions (issue 13): the container gets the stack's context and the pinned generator ---
RAG_YAML = "rag:\n  name: lee-rag\n  index: kb\n  k: 2\n  generator: models:/gen@live\n"
SECRET_VALUE = "hf_not-a-real-token-0123456789"  # what $HF_TOKEN holds here: never in a request


@pytest.fixture
def rag_stack(aws_env, tmp_path, monkeypatch):
    """dev-aws with a secret reference, an MLflow registry holding generator `gen` v1 and v2 (alias
    `live` on v1) and RAG app `lee-rag` v1 and v2, whose rag.yaml is in (moto's) S3."""
    pytest.importorskip("mlflow")
    pytest.importorskip("s3fs")
    import boto3
    from mlflow.tracking import MlflowClient

    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("HF_TOKEN", SECRET_VALUE)
    platform = connect(tmp_path, monkeypatch, tracking_uri=uri, secrets={"hf_token": "env://HF_TOKEN"})
    client = MlflowClient(tracking_uri=uri)
    client.create_registered_model("gen")
    for v in (1, 2):
        client.create_model_version("gen", source=f"s3://{BUCKET}/mlflow/models/gen-{v}/model")
        client.set_model_version_tag("gen", str(v), "lineage.base", f"base-of-gen-{v}")
    client.set_registered_model_alias("gen", "live", "1")
    client.create_registered_model("lee-rag", tags={"stackwise.kind": "rag"})
    for v in (1, 2):
        s3.put_object(Bucket=BUCKET, Key=f"mlflow/models/lee-rag-{v}/rag/rag.yaml", Body=RAG_YAML.encode())
        client.create_model_version("lee-rag", source=f"s3://{BUCKET}/mlflow/models/lee-rag-{v}/rag",
                                    tags={"stackwise.kind": "rag"})
    return platform, client


def _container_env(model_name: str) -> dict:
    import boto3

    sm = boto3.client("sagemaker", region_name="us-east-1")
    return sm.describe_model(ModelName=model_name)["PrimaryContainer"]["Environment"]


def _variant_models() -> dict:
    import boto3

    sm = boto3.client("sagemaker", region_name="us-east-1")
    config = sm.describe_endpoint(EndpointName="sw-dev-chat")["EndpointConfigName"]
    return {v["VariantName"]: v["ModelName"]
            for v in sm.describe_endpoint_config(EndpointConfigName=config)["ProductionVariants"]}


def test_a_rag_version_s_container_gets_the_context_and_the_generator_pinned_at_deploy_time(rag_stack):
    import base64

    from stackwise.contract import JobContext

    platform, client = rag_stack
    platform.deploy("lee-rag:1")
    env = _container_env(_variant_models()["lee-rag-v1"])
    assert env["STACKWISE_MODEL"] == "lee-rag" and env["STACKWISE_MODEL_VERSION"] == "1"
    assert env["STACKWISE_RAG_GENERATOR_URI"] == f"s3://{BUCKET}/mlflow/models/gen-1/model"  # not models:/gen@live
    assert env["STACKWISE_RAG_GENERATOR_BASE"] == "base-of-gen-1"
    context = JobContext.model_validate_json(base64.b64decode(env["STACKWISE_CONTEXT_B64"]))
    assert context == JobContext.from_outputs("dev-aws", platform.stack.outputs)
    assert context.secrets == {"hf_token": "env://HF_TOKEN"} and context.vector_store.uri == f"s3://{BUCKET}/vectors"
    assert SECRET_VALUE not in json.dumps(env)
    # The alias moves: the deployed version keeps its generator; a version deployed now pins the new one.
    client.set_registered_model_alias("gen", "live", "2")
    platform.deployer._wait_in_service("sw-dev-chat")
    platform.deploy("lee-rag:2", traffic={"lee-rag:1": 50, "lee-rag:2": 50})
    models = _variant_models()
    assert _container_env(models["lee-rag-v1"])["STACKWISE_RAG_GENERATOR_URI"].endswith("/gen-1/model")
    assert _container_env(models["lee-rag-v2"])["STACKWISE_RAG_GENERATOR_URI"].endswith("/gen-2/model")


def test_a_model_version_s_request_is_unchanged(rag_stack):
    from stackwise.adapters.deploy.sagemaker import model_request
    from stackwise.serve_targets import rag_deploy_environment

    platform, _ = rag_stack
    out = platform.deployer.endpoint_output()
    assert rag_deploy_environment(platform.stack, target(1)) is None  # nothing read, nothing added
    request = model_request(platform.stack, out, target(1))
    assert set(request["PrimaryContainer"]["Environment"]) == {
        "STACKWISE_MODEL", "STACKWISE_MODEL_VERSION", "STACKWISE_BASE_MODEL", "SM_NUM_GPUS"}
    assert request == model_request(platform.stack, out, target(1), None)


def test_a_rag_version_whose_rag_yaml_is_gone_is_refused_before_any_cloud_call(rag_stack, aws_env):
    import boto3

    from stackwise.errors import InputError

    platform, _ = rag_stack
    boto3.client("s3", region_name="us-east-1").delete_object(Bucket=BUCKET, Key="mlflow/models/lee-rag-1/rag/rag.yaml")
    with pytest.raises(InputError, match="rag.yaml does not exist"):
        platform.deploy("lee-rag:1")
    assert aws_env.backend._models == {}


def test_a_context_over_sagemaker_s_value_limit_is_refused_before_any_call(rag_stack, aws_env):
    from stackwise.adapters.deploy.sagemaker import ENV_VALUE_MAX, model_request
    from stackwise.contract import JobContext
    from stackwise.errors import ConfigError
    from stackwise.serve_targets import rag_environment

    platform, _ = rag_stack
    many = {f"secret{i}": f"aws-sm://arn:aws:secretsmanager:us-east-1:123456789012:secret:sw/{i}" for i in range(12)}
    context = JobContext.from_outputs("dev-aws", platform.stack.outputs).model_copy(update={"secrets": many})
    rag = DeployTarget(model="lee-rag", version="1", artifact_uri=f"s3://{BUCKET}/rag", kind="rag")
    with pytest.raises(ConfigError, match=f"over SageMaker's {ENV_VALUE_MAX}"):
        model_request(platform.stack, platform.deployer.endpoint_output(), rag, rag_environment(context, "s3://g"))
    assert aws_env.backend._models == {}
