"""AWS compute: each job is one SageMaker training job (boto3).

`build_request(spec, stack)` is pure: it returns the CreateTrainingJob request as data (golden
files in tests/golden/ pin it). `SageMakerCompute` uploads the spec and the job context to the
job's folder in the artifact store (`s3://.../jobs/<name>/input/{spec,context}.json`, mounted as
the `stackwise` input channel at /opt/ml/input/data/stackwise/), sends the request, and follows
the job.

What a request holds:
- the stack's training image (its `training_image` output: the image `pulumi up` builds, or
  `stackwise image build --push` with `stackwise:images: {build: false}`) running the bootstrap `python -m stackwise.adapters.compute.bootstrap`;
  the `sagemaker` SDK's image_uris are not used, because its Deep Learning Containers do not
  contain stackwise and jobs run in private subnets without a route to PyPI;
- `ResourceConfig`: the catalog's instance type for `gpu` x `count` (ml.m5.xlarge without a GPU),
  `InstanceCount` = nodes (index jobs: `workers`, one instance per shard, each node's shard its
  host's index in resourceconfig.json);
- spot: `EnableManagedSpotTraining`, `MaxWaitTimeInSeconds` (twice the runtime);
- fine-tuning: a `CheckpointConfig` whose S3 URI is the identity's checkpoint folder
  (`<store>/checkpoints/<model>-<digest>`, shared by every attempt, under the top-level prefix the
  bucket's lifecycle rule moves to infrequent access) and whose local path
  is /opt/ml/checkpoints (`STACKWISE_CHECKPOINT_DIR`): SageMaker restores it before the container
  starts (a spot restart, or the next attempt) and uploads what the trainer saves there;
- distribution: each host runs the workload, which starts `count` processes with torchrun and
  meets the others at algo-1 (the bootstrap derives MASTER_ADDR and NODE_RANK from SageMaker's
  resourceconfig.json); the strategy (ddp, fsdp, deepspeed-zero2/3) travels in the spec and
  is shown as hyperparameters;
- `VpcConfig`: the stack's private subnets and security group (its `network` output), so the
  job runs in the private network the stack made (S3 through its gateway endpoint, ECR, logs,
  STS and Secrets Manager through interface endpoints; no internet unless the stack has a NAT
  gateway);
- `StoppingCondition.MaxRuntimeInSeconds` = `max_runtime_s`, refused above SageMaker's 28 days;
- environment variables and tags naming the stack, kind and spec digest.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from stackwise.adapters.clouds import aws
from stackwise.adapters.clouds.common import require_output, require_store
from stackwise.contract import checkpoint_uri
from stackwise.errors import CloudError, JobNotFoundError
from stackwise.jobs import JobInfo, JobState

from .base import (CloudCompute, identity_fields, job_context, job_environment, job_gpu, job_name, job_uri, node_count,
                   parse_job_name, processes_per_node, strategy)
from .checks import check_max_runtime

#: SageMaker's MaxRuntimeInSeconds bound: 28 days (CreateTrainingJob API reference).
MAX_RUNTIME_S = 28 * 86400

LOG_GROUP = "/aws/sagemaker/TrainingJobs"
CHECKPOINT_PATH = "/opt/ml/checkpoints"
CHANNEL = "stackwise"  # the input channel holding spec.json and context.json
STATES = {
    "InProgress": JobState.RUNNING,
    "Completed": JobState.SUCCEEDED,
    "Failed": JobState.FAILED,
    "Stopping": JobState.RUNNING,  # not ended yet: wait() keeps polling until Stopped
    "Stopped": JobState.CANCELLED,
    # DeleteTrainingJob was called: the job ended (it could not be deleted otherwise) and is going
    # away; waiting on it must end, not poll a job that is about to vanish.
    "Deleting": JobState.CANCELLED,
}
# Secondary statuses before the container runs.
_PENDING_SECONDARY = {"Starting", "Pending", "Downloading", "LaunchingMLInstances", "PreparingTrainingStack",
                      "DownloadingTrainingImage", "Restarting"}


def instance_type(spec: Any, stack: Any) -> str:
    """The SageMaker instance type for the spec's GPU and count (from the GPU catalog)."""
    return aws.instance_type(job_gpu(spec, stack), spec.compute.count)


def build_request(spec: Any, stack: Any, name: str | None = None, attempt: int = 1) -> dict[str, Any]:
    """The CreateTrainingJob request for `spec` on `stack`, as data (no call, no credentials).

    `name` is the job name of the attempt (default: `job_name(spec, attempt)`).
    """
    name = name or job_name(spec, attempt)
    check_max_runtime(spec, MAX_RUNTIME_S, "SageMaker training jobs run")
    outputs = stack.outputs
    role = require_output(outputs.job_role, "job_role", stack, "export the SageMaker job role ARN (the Pulumi program does)")
    image = require_output(outputs.training_image, "training_image", stack,
                           "export the training image URI (`pulumi up` pushes it to the stack's ECR repository; with "
                           "stackwise:images build: false, run `stackwise image build --push`)")
    root = job_uri(outputs.artifact_store, name)
    compute = spec.compute
    env = job_environment(spec, name, stack, attempt, inline=False)
    if spec.kind == "finetune":
        env["STACKWISE_CHECKPOINT_DIR"] = CHECKPOINT_PATH
    request: dict[str, Any] = {
        "TrainingJobName": name,
        "RoleArn": role,
        "AlgorithmSpecification": {
            "TrainingImage": image,
            "TrainingInputMode": "File",
            "ContainerEntrypoint": ["python", "-m", "stackwise.adapters.compute.bootstrap"],
            "EnableSageMakerMetricsTimeSeries": False,
        },
        "HyperParameters": {
            "stackwise_kind": spec.kind,
            "stackwise_spec_digest": spec.digest(),
            "stackwise_strategy": strategy(spec),
            "stackwise_nodes": str(node_count(spec)),
            "stackwise_processes_per_host": str(processes_per_node(spec)),
        },
        "InputDataConfig": [{
            "ChannelName": CHANNEL,
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"{root}/input/",
                                            "S3DataDistributionType": "FullyReplicated"}},
            "InputMode": "File",
        }],
        "OutputDataConfig": {"S3OutputPath": f"{root}/output"},
        "ResourceConfig": {
            "InstanceType": instance_type(spec, stack),
            "InstanceCount": node_count(spec),
            "VolumeSizeInGB": 100 if spec.kind == "finetune" else 30,
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": compute.max_runtime_s},
        "EnableManagedSpotTraining": bool(compute.spot),
        "Environment": env,
        "Tags": [
            {"Key": "stackwise:stack", "Value": stack.name},
            {"Key": "stackwise:kind", "Value": spec.kind},
            {"Key": "stackwise:spec-digest", "Value": spec.digest()},
            {"Key": "stackwise:identity", "Value": spec.identity},
            {"Key": "stackwise:attempt", "Value": str(attempt)},
        ],
    }
    if compute.spot:
        request["StoppingCondition"]["MaxWaitTimeInSeconds"] = 2 * compute.max_runtime_s
    if spec.kind == "finetune":
        request["CheckpointConfig"] = {"S3Uri": checkpoint_uri(outputs.artifact_store, spec.output_name),
                                       "LocalPath": CHECKPOINT_PATH}
    vpc = aws.vpc_config(stack)
    if vpc:
        request["VpcConfig"] = vpc
    return request


def _split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def _ts(value: Any) -> float | None:
    return value.timestamp() if isinstance(value, datetime) else None


class SageMakerCompute(CloudCompute):
    """Jobs as SageMaker training jobs; the handle id is the training job name."""

    cloud = "aws"
    states = STATES

    def __init__(self, stack: Any, session: Any = None):
        super().__init__(stack)
        require_store(stack, "s3", "AWS")
        self._session = session or aws.session(stack, "the SageMaker compute adapter")
        self.sagemaker = self._session.client("sagemaker")
        self.s3 = self._session.client("s3")
        self.logs_client = self._session.client("logs")
        self._specs: dict[str, dict[str, Any]] = {}

    # -- requests ------------------------------------------------------------------------------
    def build(self, spec: Any, name: str, attempt: int = 1) -> dict[str, Any]:
        return build_request(spec, self.stack, name, attempt)

    def checkpoints_uri(self, output_name: str) -> str:
        return checkpoint_uri(self.stack.outputs.artifact_store, output_name)

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        """One API call; its errors become TransientError (retried) or a clear CloudError."""
        return aws.call(lambda: fn(**kwargs), what, stack=self.stack)

    # -- the cloud calls -----------------------------------------------------------------------
    def _prepare(self, spec: Any, name: str, attempt: int) -> None:
        root = job_uri(self.stack.outputs.artifact_store, name)
        context = job_context(self.stack, name, attempt)
        for file, model in (("spec.json", spec), ("context.json", context)):
            bucket, key = _split_s3(f"{root}/input/{file}")
            self._call(f"upload the job's {file}", self.s3.put_object, Bucket=bucket, Key=key,
                       Body=model.model_dump_json(indent=2).encode(), ContentType="application/json")

    def _attempts(self, identity: str) -> list[tuple[int, str]]:
        found: list[tuple[int, str]] = []
        kwargs: dict[str, Any] = {"NameContains": f"sw-{identity}-", "MaxResults": 100}
        while True:
            page = self._call(f"ListTrainingJobs {identity}", self.sagemaker.list_training_jobs, **kwargs)
            for item in page.get("TrainingJobSummaries", []):
                parsed = parse_job_name(item["TrainingJobName"])
                if parsed and parsed[0] == identity:
                    found.append((parsed[1], item["TrainingJobName"]))
            if not page.get("NextToken"):
                return sorted(found)
            kwargs["NextToken"] = page["NextToken"]

    def _create(self, request: dict[str, Any], name: str) -> str:
        try:
            self._call(f"CreateTrainingJob {name}", self.sagemaker.create_training_job, **request)
        except CloudError as exc:
            # A create that landed before its answer was lost: the job is ours.
            if aws.name_taken(exc):
                return name
            raise
        return name

    def _find(self, name: str) -> str | None:
        try:
            self._describe_raw(name)
        except JobNotFoundError:
            return None
        return name

    def _describe_raw(self, job_id: str) -> dict[str, Any]:
        try:
            return self._call(f"DescribeTrainingJob {job_id}", self.sagemaker.describe_training_job,
                              TrainingJobName=job_id)
        except CloudError as exc:
            if aws.is_missing(exc):
                raise JobNotFoundError(f"no SageMaker training job {job_id!r}", where=f"region {self.stack.region}",
                                       fix="list jobs with `stackwise jobs list --stack " + self.stack.name + "`") from None
            raise

    def _spec_of(self, name: str) -> dict[str, Any]:
        if name not in self._specs:
            bucket, key = _split_s3(f"{job_uri(self.stack.outputs.artifact_store, name)}/input/spec.json")
            try:
                body = self._call("read the job spec", self.s3.get_object, Bucket=bucket, Key=key)["Body"].read()
                self._specs[name] = json.loads(body)
            except (CloudError, ValueError):
                return {}
        return self._specs[name]

    def _describe(self, job_id: str) -> JobInfo:
        return self._to_info(self._describe_raw(job_id))

    def _to_info(self, job: dict[str, Any]) -> JobInfo:
        name = job["TrainingJobName"]
        status = job.get("TrainingJobStatus", "InProgress")
        state = self.map_state(status)
        if state is JobState.RUNNING and status == "InProgress" and job.get("SecondaryStatus") in _PENDING_SECONDARY:
            state = JobState.PENDING
        spec = self._spec_of(name)
        extra = {}
        artifacts = (job.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
        if artifacts:
            extra["sagemaker_model_artifacts"] = artifacts
        hyper = job.get("HyperParameters") or {}
        return JobInfo(
            id=name,
            kind=hyper.get("stackwise_kind") or spec.get("kind") or name.split("-")[1],
            stack=self.stack.name,
            state=state,
            created_at=_ts(job.get("CreationTime")) or 0.0,
            started_at=_ts(job.get("TrainingStartTime")),
            ended_at=_ts(job.get("TrainingEndTime")) if state.terminal else None,
            error=job.get("FailureReason") if state is JobState.FAILED else
            ("deleted (DeleteTrainingJob)" if status == "Deleting" else
             "stopped" if state is JobState.CANCELLED else None),
            outputs=self.outputs_for(spec or {"kind": hyper.get("stackwise_kind")}, name, state, extra),
            spec=spec,
            log_path=f"cloudwatch:{LOG_GROUP}/{name}",
            **identity_fields(name),
        )

    def _list(self, limit: int) -> list[JobInfo]:
        page = self._call("ListTrainingJobs", self.sagemaker.list_training_jobs, NameContains="sw-",
                          SortBy="CreationTime", SortOrder="Descending", MaxResults=min(100, limit))
        return [self._describe(item["TrainingJobName"]) for item in page.get("TrainingJobSummaries", [])[:limit]]

    def _stop(self, job_id: str) -> None:
        try:
            self._call(f"StopTrainingJob {job_id}", self.sagemaker.stop_training_job, TrainingJobName=job_id)
        except CloudError as exc:
            if aws.has_ended(exc):
                return  # it ended meanwhile: cancel leaves an ended job as it is
            raise

    def _read_result(self, uri: str) -> dict[str, Any] | None:
        bucket, key = _split_s3(uri)
        try:
            body = self._call("read the job result", self.s3.get_object, Bucket=bucket, Key=key)["Body"].read()
            return json.loads(body)
        except (CloudError, ValueError):
            return None

    def _log_lines(self, job_id: str, cursor: Any) -> tuple[list[str], Any]:
        """CloudWatch Logs: every stream `<job>/algo-N-...`, in stream order, from the last token on."""
        tokens: dict[str, str] = dict(cursor or {})
        try:
            streams = self._call("DescribeLogStreams", self.logs_client.describe_log_streams,
                                 logGroupName=LOG_GROUP, logStreamNamePrefix=f"{job_id}/")
        except CloudError as exc:
            if aws.is_missing(exc):
                return [], tokens  # the job has not written a line yet
            raise
        lines: list[str] = []
        multi = len(streams.get("logStreams", [])) > 1
        for stream in sorted(streams.get("logStreams", []), key=lambda s: s["logStreamName"]):
            sname = stream["logStreamName"]
            kwargs: dict[str, Any] = {"logGroupName": LOG_GROUP, "logStreamName": sname, "startFromHead": True}
            if sname in tokens:
                kwargs["nextToken"] = tokens[sname]
            while True:
                page = self._call("GetLogEvents", self.logs_client.get_log_events, **kwargs)
                events = page.get("events", [])
                host = sname.split("/", 1)[1].rsplit("-", 1)[0]
                lines += [f"[{host}] {e['message']}" if multi else e["message"] for e in events]
                token = page.get("nextForwardToken")
                same = token == kwargs.get("nextToken")
                if token:
                    tokens[sname] = token
                    kwargs["nextToken"] = token
                if not events or same:
                    break
        return lines, tokens

