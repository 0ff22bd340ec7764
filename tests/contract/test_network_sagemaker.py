"""SageMaker jobs and deployed models run in the stack's private network, against moto in server
mode (real HTTP, real boto3), and what the SageMaker API bounds is refused before any call.

Verified: CreateTrainingJob and deploy's CreateModel carry the stack's `VpcConfig` (its `network`
output), valid for botocore's own validator (the SageMaker service model), kept by the emulator,
which, as SageMaker does, refuses subnets and security groups that do not exist in the account's
EC2; checkpoints go under the top-level prefix the bucket's lifecycle rule targets (the same
constant infra/ uses); `max_runtime_s` above SageMaker's 28 days is a SpecError (exit 2) before any
call; a training job `Deleting` and an endpoint `OutOfService` read as ended / failed.
Not verified: ENIs really attached (no SageMaker runs here).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "emulators"))

pytest.importorskip("boto3", reason="install stackwise[aws]")
pytest.importorskip("moto", reason="install stackwise[dev]")

from cloud_fixtures import finetune_spec, index_spec, use_stack  # noqa: E402
from test_compute_sagemaker import aws_env, emulator  # noqa: E402,F401 - the SageMaker emulator's fixtures

from stackwise.jobs import JobState  # noqa: E402

BUCKET = "sw-dev-artifacts"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/sw-dev-images:serve"


def validate(operation: str, request: dict) -> None:
    """botocore's ParamValidator against the SageMaker service model: what boto3 sends, checked."""
    import botocore.session
    from botocore.validate import ParamValidator

    model = botocore.session.get_session().get_service_model("sagemaker").operation_model(operation)
    report = ParamValidator().validate(request, model.input_shape)
    assert not report.has_errors(), report.generate_report()


@pytest.fixture
def network(aws_env):
    """A VPC, two subnets and a security group in the account's EC2, as `pulumi up` makes them."""
    import boto3

    ec2 = boto3.client("ec2", region_name="us-east-1")
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.42.{16 * i}.0/20", AvailabilityZone=f"us-east-1{z}")
               ["Subnet"]["SubnetId"] for i, z in enumerate("ab")]
    group = ec2.create_security_group(GroupName=f"jobs-{vpc}", Description="jobs", VpcId=vpc)["GroupId"]
    return {"subnets": subnets, "security_groups": [group]}


def connect(tmp_path, monkeypatch, **extra):
    return use_stack("dev-aws", tmp_path, monkeypatch, **extra)


def fast(backend):
    backend.retry = type(backend.retry)(attempts=2, base_s=0.01, max_s=0.02)
    return backend


# -- training jobs -----------------------------------------------------------------------------
def test_training_jobs_run_in_the_stacks_private_network(aws_env, network, tmp_path, monkeypatch):
    from stackwise.adapters.compute.sagemaker import build_request

    platform = connect(tmp_path, monkeypatch, network=network)
    spec = index_spec(0)
    request = build_request(spec, platform.stack)
    assert request["VpcConfig"] == {"Subnets": network["subnets"], "SecurityGroupIds": network["security_groups"]}
    validate("CreateTrainingJob", request)

    handle = fast(platform.compute).submit(spec)
    described = __import__("boto3").client("sagemaker").describe_training_job(TrainingJobName=handle.id)
    assert described["VpcConfig"] == {"Subnets": network["subnets"], "SecurityGroupIds": network["security_groups"]}


def test_a_network_that_does_not_exist_is_refused_by_the_service(aws_env, network, tmp_path, monkeypatch):
    from stackwise.errors import CloudError

    platform = connect(tmp_path, monkeypatch, network={**network, "subnets": ["subnet-0000000000deadbee"]})
    with pytest.raises(CloudError, match="subnet-0000000000deadbee"):
        fast(platform.compute).submit(index_spec(1))
    assert aws_env.backend.training_jobs == {}


def test_a_stack_without_a_network_output_sends_no_vpc_config(aws_env, tmp_path, monkeypatch):
    """Outputs synced before the stack exported its network: SageMaker's own network, as before."""
    from stackwise.adapters.compute.sagemaker import build_request

    assert "VpcConfig" not in build_request(index_spec(0), connect(tmp_path, monkeypatch).stack)


def test_checkpoints_go_under_the_prefix_the_lifecycle_rule_targets(aws_env, tmp_path, monkeypatch):
    from stackwise.adapters.compute.sagemaker import build_request
    from stackwise.contract import CHECKPOINTS_PREFIX

    spec = finetune_spec()
    request = build_request(spec, connect(tmp_path, monkeypatch).stack)
    uri = request["CheckpointConfig"]["S3Uri"]
    key = uri.removeprefix(f"s3://{BUCKET}/")
    # S3 lifecycle filters match a key prefix only: the checkpoint keys must start with it
    assert key.startswith(CHECKPOINTS_PREFIX) and spec.output_name in key
    validate("CreateTrainingJob", request)


# -- max runtime -------------------------------------------------------------------------------
def test_max_runtime_above_28_days_is_refused_before_any_call(aws_env, tmp_path, monkeypatch):
    from stackwise.errors import SpecError

    platform = connect(tmp_path, monkeypatch)
    spec = index_spec(2)
    longest = spec.model_copy(update={"compute": spec.compute.model_copy(update={"max_runtime_s": 28 * 86400})})
    too_long = spec.model_copy(update={"compute": spec.compute.model_copy(update={"max_runtime_s": 28 * 86400 + 1})})
    with pytest.raises(SpecError) as caught:
        fast(platform.compute).submit(too_long)
    error = caught.value
    assert error.exit_code == 2 and "2419200" in str(error) and "max_runtime_s" in error.where and error.fix
    assert aws_env.create_calls == 0
    handle = fast(platform.compute).submit(longest)  # the bound itself is accepted
    assert aws_env.job(handle.id).stopping_condition["MaxRuntimeInSeconds"] == 2419200


def test_a_training_job_being_deleted_has_ended(aws_env, tmp_path, monkeypatch):
    compute = fast(connect(tmp_path, monkeypatch).compute)
    handle = compute.submit(index_spec(3))
    aws_env.move(handle.id, "Deleting")
    info = handle.info()
    assert info.state is JobState.CANCELLED and info.state.terminal and "deleted" in info.error


# -- deployed models ----------------------------------------------------------------------------
def _target(version: int):
    from stackwise.deploy import DeployTarget

    return DeployTarget(model="chat", version=str(version), artifact_uri=f"s3://{BUCKET}/models/chat-{version}/model",
                        base_model="HuggingFaceTB/SmolLM2-135M-Instruct")


ENDPOINT = {"name": "sw-dev-chat", "serving_image": IMAGE, "gpu": "A10G", "min_replicas": 1}


def test_deployed_models_run_in_the_same_private_network(aws_env, network, tmp_path, monkeypatch):
    import boto3

    from stackwise.adapters.deploy.sagemaker import model_request

    platform = connect(tmp_path, monkeypatch, network=network, endpoints=[ENDPOINT])
    request = model_request(platform.stack, platform.stack.outputs.endpoints[0], _target(1))
    assert request["VpcConfig"] == {"Subnets": network["subnets"], "SecurityGroupIds": network["security_groups"]}
    validate("CreateModel", request)

    deployer = platform.deployer
    deployer.wait_timeout = 10
    deployer.deploy([_target(1)], {"chat:1": 100})
    (model,) = boto3.client("sagemaker").list_models()["Models"]
    described = boto3.client("sagemaker").describe_model(ModelName=model["ModelName"])
    assert described["VpcConfig"] == {"Subnets": network["subnets"], "SecurityGroupIds": network["security_groups"]}


def test_an_out_of_service_endpoint_reads_failed_and_is_not_waited_on(aws_env, tmp_path, monkeypatch):
    from stackwise.errors import SpecError

    platform = connect(tmp_path, monkeypatch, endpoints=[ENDPOINT])
    deployer = platform.deployer
    deployer.wait_timeout = 30
    deployer.deploy([_target(1)], {"chat:1": 100})
    aws_env.backend.endpoints["sw-dev-chat"].endpoint_status = "OutOfService"
    assert deployer.describe().state == "failed"
    started = time.monotonic()
    with pytest.raises(SpecError, match="endpoint sw-dev-chat is OutOfService"):
        deployer._wait_in_service("sw-dev-chat")
    assert time.monotonic() - started < 5, "refused at once, not after wait_timeout"
