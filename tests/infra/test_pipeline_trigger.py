"""The pipeline trigger as each cloud's provider receives it (the program under Pulumi mocks):
the pipeline made from the compiled definition, the schedule and data-change rules and what they
run, and the IAM of each part. Where a real component can judge a value, it does: EventBridge's
pattern matching (moto, over HTTP), Vertex AI's PipelineJob message (aiplatform_v1's proto),
azure-ai-ml's REST model of the job, and the providers' own schemas and enums."""

from __future__ import annotations

import base64
import copy
import json
import re

import pytest

from .conftest import stack_config
from .test_pipeline_trigger_config import DATA, REPO, TRIGGERS

pytest.importorskip("pulumi", reason="pip install 'stackwise[infra]'")
pytestmark = [pytest.mark.filterwarnings("ignore:The `context` parameter is deprecated"),
              pytest.mark.filterwarnings("ignore:`Number` field should not be instantiated"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]
_RUNS: dict[str, object] = {}


def run(name: str, **changes):
    """The stack's program under mocks with a pipeline trigger (cached per trigger)."""
    from stackwise.infra.config import InfraConfig
    from stackwise.infra.offline import run_offline

    if name == "dev-azure":
        pytest.importorskip("azure.ai.ml", reason="pip install 'stackwise[azure]' (reads the Azure ML job YAML)")
    trigger = {k: v for k, v in {**TRIGGERS[name], **changes}.items() if v is not None}
    key = json.dumps([name, trigger], sort_keys=True)
    if key not in _RUNS:
        raw, source = stack_config(name)
        _RUNS[key] = run_offline(InfraConfig.load({**copy.deepcopy(raw), "pipelineTrigger": trigger}, source), name)
    return _RUNS[key]


def of(found, suffix, name_part=""):
    return [r for r in found.resources if r.type.endswith(suffix) and name_part in r.name]


def one(found, suffix, name_part=""):
    (resource,) = of(found, suffix, name_part)
    return resource


def plain(value):
    """A value the engine got as a secret, unwrapped (the provider sees the value inside)."""
    if isinstance(value, dict) and value.get("4dabf18193072939515e22adb298388d"):
        return value["value"]
    return value


# -- every cloud ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(TRIGGERS))
def test_inputs_match_the_provider_schemas_and_the_policies_pass(name):
    from stackwise.infra.policy import check

    from .test_provider_schemas import _report, findings_of

    found = run(name)
    assert any(r.type.endswith(":PipelineTrigger") for r in found.resources)
    assert not (problems := findings_of(found)), _report(problems)
    assert check(found.resources) == []


@pytest.mark.parametrize("name", sorted(TRIGGERS))
def test_stacks_without_a_trigger_create_none(name, offline_run):
    assert not any("pipeline" in r.name for r in offline_run(name).resources)


def test_policies_catch_an_untagged_trigger_and_a_workflow_without_the_stacks_key():
    from stackwise.infra.policy import check

    found = copy.deepcopy(run("dev-gcp"))
    workflow = one(found, "workflows/workflow:Workflow")
    workflow.inputs.pop("cryptoKeyName")
    workflow.inputs["labels"].pop("owner")
    messages = [m for _, n, m in check(found.resources) if n == workflow.name]
    assert any("customer-managed key" in m for m in messages) and any("owner" in m for m in messages)


def test_plan_prices_the_trigger():
    from stackwise.infra.plan import estimate

    items = {i["resource"]: i for i in estimate(run("dev-gcp").resources, "gcp")["items"]}
    assert items["sw-dev-pipeline-schedule"]["monthly_usd"] == 0.10
    assert "cloud.google.com/scheduler/pricing" in items["sw-dev-pipeline-schedule"]["basis"]
    assert items["sw-dev-pipeline-on-data"]["monthly_usd"] == 0.0  # per use, with its source
    aws = {i["type"] for i in estimate(run("dev-aws").resources, "aws")["items"]}
    assert {"aws:sagemaker/pipeline:Pipeline", "aws:cloudwatch/eventRule:EventRule"} <= aws


# -- AWS --------------------------------------------------------------------------------------------
def test_aws_pipeline_is_the_definition_run_as_the_job_role():
    found = run("dev-aws")
    pipeline = one(found, "sagemaker/pipeline:Pipeline")
    assert json.loads(pipeline.inputs["pipelineDefinition"]) == json.loads(
        (REPO / DATA / "train.sagemaker.json").read_text())
    assert pipeline.inputs["pipelineName"] == "sw-dev-train"
    assert pipeline.inputs["roleArn"] == one(found, "iam/role:Role", "jobs-role").state["arn"]


def test_aws_rules_start_that_pipeline_with_the_parameters():
    found = run("dev-aws")
    pipeline_arn = one(found, "sagemaker/pipeline:Pipeline").state["arn"]
    events_role = one(found, "iam/role:Role", "events-role")
    schedule = one(found, "eventRule:EventRule", "schedule")
    assert schedule.inputs["scheduleExpression"] == "cron(0 3 * * ? *)" and schedule.inputs["state"] == "ENABLED"
    targets = {t.inputs["rule"]: t for t in of(found, "eventTarget:EventTarget")}
    assert set(targets) == {r.state["name"] for r in of(found, "eventRule:EventRule")}
    for target in targets.values():
        assert target.inputs["arn"] == pipeline_arn and target.inputs["roleArn"] == events_role.state["arn"]
        assert target.inputs["sagemakerPipelineTarget"] == {
            "pipelineParameterLists": [{"name": "Model", "value": "Qwen/Qwen2.5-0.5B-Instruct"}]}
    disabled = run("dev-aws", enabled=False)
    assert {r.inputs["state"] for r in of(disabled, "eventRule:EventRule")} == {"DISABLED"}


def test_aws_eventbridge_may_start_this_pipeline_only():
    found = run("dev-aws")
    trust = json.loads(one(found, "iam/role:Role", "events-role").inputs["assumeRolePolicy"])["Statement"]
    assert [s["Principal"] for s in trust] == [{"Service": "events.amazonaws.com"}]
    assert trust[0]["Condition"] == {"StringEquals": {"aws:SourceAccount": "123456789012"}}
    (statement,) = json.loads(one(found, "iam/rolePolicy:RolePolicy", "events-policy").inputs["policy"])["Statement"]
    assert statement["Action"] == "sagemaker:StartPipelineExecution"
    assert statement["Resource"] == one(found, "sagemaker/pipeline:Pipeline").state["arn"]


def test_aws_job_role_gets_what_the_steps_need_on_their_job_kinds_only():
    found = run("dev-aws")
    policy = json.loads(one(found, "iam/rolePolicy:RolePolicy", "pipeline-steps").inputs["policy"])
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    # The definition has Training, Processing, Condition and Fail steps.
    assert set(by_sid) == {"TrainingJobSteps", "ProcessingJobSteps", "PassJobRole"}
    assert by_sid["TrainingJobSteps"]["Resource"] == "arn:aws:sagemaker:us-east-1:123456789012:training-job/*"
    assert "sagemaker:CreateTrainingJob" in by_sid["TrainingJobSteps"]["Action"]
    assert all(a.startswith("sagemaker:") and "*" not in a for s in policy["Statement"][:2] for a in s["Action"])
    role = one(found, "iam/role:Role", "jobs-role")
    assert by_sid["PassJobRole"]["Resource"] == role.state["arn"]
    assert by_sid["PassJobRole"]["Condition"] == {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}


@pytest.fixture(scope="module")
def eventbridge():
    """Which events a rule's pattern lets through, on moto (real HTTP, real boto3): the rule routes
    to an SQS queue, each event is put, and the queue holds the ones that matched. (moto has no
    TestEventPattern; its rules match with its EventBridge pattern implementation.)"""
    pytest.importorskip("moto", reason="install stackwise[dev]")
    import uuid

    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    kwargs = dict(region_name="us-east-1", endpoint_url=f"http://{host}:{port}", aws_access_key_id="testing",
                  aws_secret_access_key="testing")
    events, sqs = boto3.client("events", **kwargs), boto3.client("sqs", **kwargs)

    def delivered(pattern: str, sent: list[dict]) -> list[str]:
        name = f"rule-{uuid.uuid4().hex[:8]}"
        queue = sqs.create_queue(QueueName=name)["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        events.put_rule(Name=name, EventPattern=pattern, State="ENABLED")
        events.put_targets(Rule=name, Targets=[{"Id": "queue", "Arn": arn}])
        for event in sent:
            events.put_events(Entries=[{"Source": event["source"], "DetailType": event["detail-type"],
                                        "Resources": event["resources"], "Detail": json.dumps(event["detail"])}])
        keys = []
        while messages := sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages"):
            keys += [json.loads(m["Body"])["detail"]["object"]["key"] for m in messages]
            for m in messages:
                sqs.delete_message(QueueUrl=queue, ReceiptHandle=m["ReceiptHandle"])
        return keys

    yield delivered
    server.stop()


def s3_object_created(bucket: str, key: str) -> dict:
    """An "Object Created" event as S3 sends it to EventBridge (the S3 user guide's example)."""
    return ({
        "version": "0", "id": "17793124-05d4-b198-2fde-7ededc63b103", "detail-type": "Object Created",
        "source": "aws.s3", "account": "123456789012", "time": "2021-11-12T00:00:00Z", "region": "us-east-1",
        "resources": [f"arn:aws:s3:::{bucket}"],
        "detail": {"version": "0", "bucket": {"name": bucket},
                   "object": {"key": key, "size": 5, "etag": "b1946ac92492d2347c6235b4d2611184", "sequencer": "00617F08299329D189"},
                   "request-id": "N4N7GDK58NMKJ12R", "requester": "123456789012", "source-ip-address": "1.2.3.4",
                   "reason": "PutObject"}})


@pytest.mark.parametrize("suffix,matching,other", [
    (None, ["data/raw/a.jsonl", "data/raw/2026/12/b.parquet"], ["data/rawer/a.jsonl", "models/data/raw/a", "data/a"]),
    ("_SUCCESS", ["data/raw/batch-1/_SUCCESS"], ["data/raw/batch-1/part-0.jsonl", "other/_SUCCESS"]),
])
def test_aws_data_rule_matches_object_created_under_the_prefix(eventbridge, suffix, matching, other):
    found = run("dev-aws", dataSuffix=suffix)
    bucket = one(found, "s3/bucket:Bucket", "artifacts").state["bucket"]
    notification = one(found, "s3/bucketNotification:BucketNotification")
    assert notification.inputs == {"bucket": bucket, "eventbridge": True}
    pattern = one(found, "eventRule:EventRule", "-data").inputs["eventPattern"]
    sent = [s3_object_created(bucket, key) for key in [*matching, *other]]
    sent.append(s3_object_created("another-bucket", "data/raw/elsewhere"))
    assert sorted(eventbridge(pattern, sent)) == sorted(matching)


# -- GCP --------------------------------------------------------------------------------------------
def vertex_body(encoded: str):
    """A pipelineJobs.create body, parsed by Vertex AI's own v1 message (unknown fields fail)."""
    pytest.importorskip("google.cloud.aiplatform_v1", reason="pip install 'stackwise[gcp]'")
    from google.cloud.aiplatform_v1.types import PipelineJob
    from google.protobuf import json_format

    body = json.loads(base64.b64decode(encoded))
    return body, json_format.ParseDict(body, PipelineJob.pb(PipelineJob()))


def test_gcp_scheduler_posts_the_pipeline_job_as_the_trigger_account():
    import yaml

    found = run("dev-gcp")
    job = one(found, "cloudscheduler/job:Job")
    assert (job.inputs["schedule"], job.inputs["timeZone"], job.inputs["paused"]) == ("0 3 * * 1-5", "Europe/Paris",
                                                                                      False)
    target = job.inputs["httpTarget"]
    assert target["uri"] == ("https://us-central1-aiplatform.googleapis.com/v1/projects/replace-with-your-project/"
                             "locations/us-central1/pipelineJobs")
    assert target["httpMethod"] == "POST"
    trigger_account = one(found, "serviceaccount/account:Account", "pipeline-trigger").state["email"]
    assert target["oauthToken"]["serviceAccountEmail"] == trigger_account
    body, message = vertex_body(target["body"])
    assert body["pipelineSpec"] == yaml.safe_load((REPO / DATA / "train.vertex.yaml").read_text())
    jobs_account = one(found, "serviceaccount/account:Account", "jobs").state["email"]
    assert message.service_account == jobs_account
    assert message.runtime_config.gcs_output_directory == f"{found.outputs.artifact_store}/pipelines/train/vertex-root"
    assert dict(message.runtime_config.parameter_values)["model"].string_value == "Qwen/Qwen2.5-0.5B-Instruct"
    assert message.network == found.outputs.network.network
    assert list(message.reserved_ip_ranges) == found.outputs.network.reserved_ip_ranges
    assert message.encryption_spec.kms_key_name == one(found, ":CryptoKeyIAMMember", "jobs-key").inputs["cryptoKeyId"]
    assert one(run("dev-gcp", enabled=False), "cloudscheduler/job:Job").inputs["paused"] is True


@pytest.mark.parametrize("suffix,matching,other", [
    (None, ["data/raw/a.jsonl", "data/raw/x/y"], ["data/rawer/a", "x/data/raw/a", "data/raw"]),
    ("_SUCCESS", ["data/raw/b1/_SUCCESS"], ["data/raw/b1/part-0", "data/raw/b1/_SUCCESS.tmp", "data/rawx/_SUCCESS"]),
    (".done", ["data/raw/b1.done"], ["data/raw/b1xdone"]),
])
def test_gcp_workflow_starts_runs_for_objects_under_the_prefix(suffix, matching, other):
    found = run("dev-gcp", dataSuffix=suffix)
    workflow = one(found, "workflows/workflow:Workflow")
    source = json.loads(workflow.inputs["sourceContents"])
    steps = {name: step for item in source["main"]["steps"] for name, step in item.items()}
    assert source["main"]["params"] == ["event"] and steps["init"]["assign"][0] == {"object": "${event.data.name}"}
    (condition,) = steps["wanted"]["switch"]
    pattern = re.fullmatch(r'\$\{text\.match_regex\(object, "(.*)"\)\}', condition["condition"]).group(1)
    assert condition["next"] == "start"
    for name in matching:  # RE2 and Python's re agree on this pattern (anchors, `.*`, `[.]`, literals)
        assert re.search(pattern, name), (pattern, name)
    for name in other:
        assert not re.search(pattern, name), (pattern, name)
    call = steps["start"]
    assert call["call"] == "http.post" and call["args"]["auth"]["type"] == "OAuth2"
    assert call["args"]["url"] == one(found, "cloudscheduler/job:Job").inputs["httpTarget"]["uri"]
    # The body in the workflow is the scheduler's (same spec, account, root, network, key).
    encoded = steps["init"]["assign"][1]["request"]
    assert vertex_body(encoded)[0] == vertex_body(one(found, "cloudscheduler/job:Job").inputs["httpTarget"]["body"])[0]
    assert workflow.inputs["cryptoKeyName"] and workflow.inputs["serviceAccount"] == one(
        found, "serviceaccount/account:Account", "pipeline-trigger").state["email"]


def test_gcp_eventarc_sends_the_buckets_finalized_objects_to_the_workflow():
    found = run("dev-gcp")
    trigger = one(found, "eventarc/trigger:Trigger")
    criteria = {c["attribute"]: c["value"] for c in trigger.inputs["matchingCriterias"]}
    assert criteria == {"type": "google.cloud.storage.object.v1.finalized",
                        "bucket": one(found, "storage/bucket:Bucket", "artifacts").state["name"]}
    workflow = one(found, "workflows/workflow:Workflow")
    # The workflow's id, as the mocks give GCP resources theirs (projects/<p>/locations/<region>/<name>).
    assert trigger.inputs["destination"] == {
        "workflow": f"projects/replace-with-your-project/locations/us-central1/{workflow.name}"}
    assert trigger.inputs["location"] == "us-central1"
    assert trigger.inputs["serviceAccount"] == workflow.inputs["serviceAccount"]
    assert not of(run("dev-gcp", enabled=False), "eventarc/trigger:Trigger")


def test_gcp_trigger_account_holds_only_what_starting_runs_needs():
    found = run("dev-gcp")
    account = one(found, "serviceaccount/account:Account", "pipeline-trigger").state["email"]
    member = f"serviceAccount:{account}"
    role = one(found, "iAMCustomRole:IAMCustomRole", "pipeline-start")
    assert role.inputs["permissions"] == ["aiplatform.pipelineJobs.create"]
    project_roles = {r.inputs["role"] for r in of(found, "projects/iAMMember:IAMMember") if r.inputs["member"] == member}
    assert project_roles == {role.state["name"], "roles/eventarc.eventReceiver", "roles/workflows.invoker"}
    (acts_as,) = [r for r in of(found, "serviceaccount/iAMMember:IAMMember") if r.inputs["member"] == member]
    assert acts_as.inputs["role"] == "roles/iam.serviceAccountUser"
    assert acts_as.inputs["serviceAccountId"] == one(found, "serviceaccount/account:Account", "jobs").state["name"]
    agent = [r for r in of(found, "projects/iAMMember:IAMMember") if r.inputs["role"] == "roles/pubsub.publisher"]
    assert [a.inputs["member"] for a in agent] == ["serviceAccount:service-123456789@gs-project-accounts.iam.gserviceaccount.com"]


def test_pulumi_up_entrypoint_finds_the_definition_from_infra(monkeypatch):
    """`pulumi up` runs infra/__main__.py with infra/ as its working folder (Pulumi.yaml's `main`)
    and the stack file's path relative: the definition is still found from the project folder."""
    from stackwise.infra.offline import run_entrypoint

    monkeypatch.chdir(REPO / "infra")
    raw, _ = stack_config("dev-aws")
    found = run_entrypoint("dev-aws", {**copy.deepcopy(raw), "pipelineTrigger": TRIGGERS["dev-aws"]})
    pipeline = one(found, "sagemaker/pipeline:Pipeline")
    assert json.loads(pipeline.inputs["pipelineDefinition"])["Steps"][0]["Name"] == "index"
