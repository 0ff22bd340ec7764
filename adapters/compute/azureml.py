"""Azure compute: each job is one Azure ML command job (`azure-ai-ml` `MLClient`, imported lazily).

`build_request(spec, stack)` is pure: it returns the command job as the JSON the ARM API takes
(the `properties` of `PUT .../workspaces/<ws>/jobs/<name>`; golden files in tests/golden/ pin
it). What it holds:
- `environmentId`: the environment `stackwise-train`, one version per training image (the stack's
  `training_image`, which has stackwise installed); `submit` registers it before the first job;
- `command`: the bootstrap `python -m stackwise.adapters.compute.bootstrap`, with the spec and the
  job context inline in `STACKWISE_SPEC_B64` / `STACKWISE_CONTEXT_B64` (no code upload: a local
  `code=` folder would go to the workspace's blob storage, and the job needs nothing else);
- where it runs: the stack's AmlCompute cluster (`gpu`, made by infra/azure/platform.py) when
  the spec asks for exactly the cluster's VM size and priority, otherwise Azure ML serverless
  compute with `resources.instanceType` = the catalog's VM size. Spot is per cluster on
  AmlCompute (`LowPriority` VMs, chosen by the stack's `training.spot`), so a spec whose spot
  choice or GPU differs from the cluster's runs serverless, where `queueSettings.jobTier`
  ("Spot" or "Standard") is the per-job way to ask for low priority VMs;
- `resources.instanceCount` = nodes (index jobs: `workers`, one instance per shard) and, with
  more than one instance, `distribution` PyTorch with one process per instance: Azure ML then
  sets MASTER_ADDR, MASTER_PORT and NODE_RANK on each node, and the workload starts `count`
  processes per node itself (torchrun), as on SageMaker and Vertex;
- `limits.timeout` = max runtime; the job's managed identity (`job_role`); environment variables
  and tags naming the stack, kind and spec digest; the job folder `<artifact_store>/jobs/<name>/`
  in `STACKWISE_JOB_URI`, where the bootstrap writes `result.json` through fsspec (adlfs).

Job names are chosen by the client (`sw-<kind>-<digest>-<token>`), so the ARM PUT is keyed by
the name: `submit` GETs the name first and creates only when it is absent; after a create whose
answer was lost (5xx, timeout) it GETs again; a 409 Conflict on the PUT means the job exists,
and the job with that name is taken as this submission's job (the test server answers 409 to a
PUT of an existing name; what Azure itself answers to a repeated PUT was not observed here, and
the GET-first order means a submit does not rely on it).
"""

from __future__ import annotations

import hashlib
import time
from datetime import datetime
from typing import Any

from stackwise.adapters.clouds import azure
from stackwise.adapters.clouds.azure import workspace_id
from stackwise.adapters.clouds.common import require_output, require_store, with_retries
from stackwise.errors import CloudError, JobNotFoundError
from stackwise.jobs import JobInfo, JobState
from stackwise.registry import require

from .base import (ENV_SPEC, CloudCompute, bootstrap_command, decode_spec, identity_fields, job_environment, job_gpu,
                   job_name, job_uri, processes_per_node, strategy)
from .checks import check_max_runtime

#: Azure ML's job lifetime on AmlCompute: 21 days, 7 on low-priority nodes (Azure ML service limits).
MAX_RUNTIME_S, MAX_RUNTIME_LOW_PRIORITY_S = 21 * 86400, 7 * 86400

#: the AmlCompute cluster infra/azure/platform.py creates (`compute_name`); a test checks they agree
CLUSTER = "gpu"
ENVIRONMENT = "stackwise-train"
CPU_SIZE = "Standard_D8s_v3"
STATES = {
    "NotStarted": JobState.PENDING,
    "Queued": JobState.PENDING,
    "Preparing": JobState.PENDING,
    "Provisioning": JobState.PENDING,
    "Starting": JobState.PENDING,
    "Paused": JobState.PENDING,
    "Unknown": JobState.PENDING,
    "Running": JobState.RUNNING,
    "Finalizing": JobState.RUNNING,
    "CancelRequested": JobState.RUNNING,  # not ended yet: wait() polls until Canceled
    "NotResponding": JobState.RUNNING,  # a running job whose heartbeat is late; it may recover
    "Completed": JobState.SUCCEEDED,
    "Failed": JobState.FAILED,
    "Canceled": JobState.CANCELLED,
}


def environment_version(image: str) -> str:
    """One environment version per image URI (Azure ML environment versions are immutable)."""
    return hashlib.sha256(image.encode()).hexdigest()[:16]


def vm_size(spec: Any, stack: Any) -> str:
    """The Azure VM size for the spec's GPU and count (from the GPU catalog); CPU jobs get CPU_SIZE."""
    return azure.vm_size(job_gpu(spec, stack), spec.compute.count, CPU_SIZE)


def instance_count(spec: Any) -> int:
    if spec.kind == "index":
        return max(int(getattr(spec, "workers", 1) or 1), spec.compute.nodes)
    return spec.compute.nodes


def _timeout(seconds: int) -> str:
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return "PT" + "".join(f"{v}{u}" for v, u in ((hours, "H"), (minutes, "M"), (secs, "S")) if v) if seconds else "PT0S"


def build_request(spec: Any, stack: Any, name: str | None = None,
                  cluster: dict[str, str] | None = None, attempt: int = 1) -> dict[str, Any]:
    """The command job for `spec` on `stack` (ARM `properties` JSON), as data: no call, no credentials.

    `cluster` describes the stack's AmlCompute cluster as ARM reports it (`vmSize`, `vmPriority`);
    the job runs there when it matches the spec, else serverless. Without it (not looked up yet,
    or absent) the job runs serverless.
    """
    name = name or job_name(spec, attempt)
    # Azure ML ends a job after 21 days (7 on low-priority nodes): refuse a longer max runtime now
    if spec.compute.spot:
        check_max_runtime(spec, MAX_RUNTIME_LOW_PRIORITY_S, "Azure ML command jobs run on low-priority (spot) nodes")
    check_max_runtime(spec, MAX_RUNTIME_S, "Azure ML command jobs run")
    outputs = stack.outputs
    ws = workspace_id(stack)
    image = require_output(outputs.training_image, "training_image", stack,
                           "export the training image URI (`pulumi up` pushes it to the stack's registry; with "
                           "stackwise:images build: false, run `stackwise image build --push`)")
    size = vm_size(spec, stack)
    count = instance_count(spec)
    env = job_environment(spec, name, stack, attempt, inline=True)
    env["STACKWISE_NNODES"] = str(count)
    if outputs.azure_identity_client_id:  # DefaultAzureCredential in the job then uses the jobs' identity
        env["AZURE_CLIENT_ID"] = outputs.azure_identity_client_id
    request: dict[str, Any] = {
        "jobType": "Command",
        "displayName": name,
        "experimentName": f"stackwise-{stack.name}",
        "description": f"stackwise {spec.kind} job on stack {stack.name}",
        "command": " ".join(bootstrap_command()),
        "environmentId": f"{ws}/environments/{ENVIRONMENT}/versions/{environment_version(image)}",
        "environmentVariables": dict(sorted(env.items())),
        "resources": {"instanceCount": count},
        "limits": {"jobLimitsType": "Command", "timeout": _timeout(spec.compute.max_runtime_s)},
        "tags": {"stackwise-job": name, "stackwise-stack": stack.name, "stackwise-kind": spec.kind,
                 "stackwise-spec-digest": spec.digest(), "stackwise-strategy": strategy(spec),
                 "stackwise-identity": spec.identity, "stackwise-attempt": str(attempt),
                 "stackwise-processes-per-node": str(processes_per_node(spec))},
    }
    low_priority = bool(spec.compute.spot)
    on_cluster = bool(cluster) and str(cluster.get("vmSize", "")).lower() == size.lower() and (
        (str(cluster.get("vmPriority", "")).lower() == "lowpriority") == low_priority)
    if on_cluster:
        request["computeId"] = f"{ws}/computes/{CLUSTER}"
    else:
        request["resources"]["instanceType"] = size
        request["queueSettings"] = {"jobTier": "Spot" if low_priority else "Standard"}
    if count > 1:
        request["distribution"] = {"distributionType": "PyTorch", "processCountPerInstance": 1}
    if outputs.job_role:
        request["identity"] = {"identityType": "Managed", "resourceId": outputs.job_role}
    return request


def _ts(value: Any) -> float | None:
    return value.timestamp() if isinstance(value, datetime) else None


class AzureMLCompute(CloudCompute):
    """Jobs as Azure ML command jobs; the handle id is the job name.

    `arm_endpoint` (or `$STACKWISE_AZURE_ARM_ENDPOINT`) points MLClient at another Resource
    Manager (a sovereign cloud, or the test server) through azure-ai-ml's custom cloud metadata.
    """

    cloud = "azure"
    states = STATES
    retry_after_cap_s = azure.RETRY_AFTER_CAP_S

    def __init__(self, stack: Any, credential: Any = None, arm_endpoint: str | None = None):
        super().__init__(stack)
        self.workspace_id = workspace_id(stack)
        require_store(stack, "az", "Azure")
        self._ml = require("azure.ai.ml", "azure", "the Azure ML compute adapter")
        self.client = azure.ml_client(stack, azure.credential() if credential is None else credential, arm_endpoint,
                                      "the Azure ML compute adapter")
        self._cluster: dict[str, str] | None = None
        self._cluster_read = False
        self._environments: set[str] = set()

    # -- requests ------------------------------------------------------------------------------
    def build(self, spec: Any, name: str, attempt: int = 1) -> dict[str, Any]:
        build_request(spec, self.stack, name, attempt=attempt)  # validates GPU, image and outputs before any call
        return build_request(spec, self.stack, name, cluster=self.cluster(), attempt=attempt)

    def cluster(self) -> dict[str, str] | None:
        """The stack's AmlCompute cluster (`vmSize`, `vmPriority`), read once; None when absent."""
        if not self._cluster_read:
            def read() -> dict[str, str] | None:
                try:
                    compute = self._call(f"get compute {CLUSTER}", self.client.compute.get, CLUSTER)
                except JobNotFoundError:
                    return None
                return {"vmSize": str(getattr(compute, "size", "") or ""),
                        "vmPriority": "LowPriority" if str(getattr(compute, "tier", "")).lower().replace("_", "")
                        == "lowpriority" else "Dedicated"}

            self._cluster = with_retries(read, self.retry, f"azure: read cluster {CLUSTER}")
            self._cluster_read = True
        return self._cluster

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """One MLClient call; its errors become TransientError (retried) or a clear StackwiseError."""
        return azure.call(lambda: fn(*args, **kwargs), what, stack=self.stack, not_found=self._not_found,
                          retry_after_cap_s=self.retry_after_cap_s)

    def _not_found(self, what: str) -> JobNotFoundError:
        out = self.stack.outputs
        return JobNotFoundError(f"not found: {what}",
                                where=f"workspace {out.azure_workspace} (resource group {out.azure_resource_group})",
                                fix=f"list jobs with `stackwise jobs list --stack {self.stack.name}`")

    # -- the cloud calls -----------------------------------------------------------------------
    def _prepare(self, spec: Any, name: str, attempt: int) -> None:
        """Register the training image as environment `stackwise-train` (once per image)."""
        image = self.stack.outputs.training_image
        version = environment_version(image)
        if version in self._environments:
            return
        environment = self._ml.entities.Environment(name=ENVIRONMENT, version=version, image=image,
                                                    description="stackwise training image")

        def register() -> None:
            try:
                self._call(f"get environment {ENVIRONMENT}:{version}", self.client.environments.get,
                           name=ENVIRONMENT, version=version)
            except JobNotFoundError:
                self._call(f"register environment {ENVIRONMENT}:{version}", self.client.environments.create_or_update,
                           environment)

        with_retries(register, self.retry, f"azure: register environment {ENVIRONMENT}")
        self._environments.add(version)

    def _entity(self, request: dict[str, Any], name: str) -> Any:
        """The azure-ai-ml CommandJob for a request (the SDK turns it back into the same JSON)."""
        ml, entities = self._ml, self._ml.entities
        kwargs: dict[str, Any] = {
            "name": name, "display_name": request["displayName"], "experiment_name": request["experimentName"],
            "description": request["description"], "command": request["command"],
            "environment": request["environmentId"], "environment_variables": request["environmentVariables"],
            "tags": request["tags"], "timeout": _seconds(request["limits"]["timeout"]),
        }
        resources = request["resources"]
        kwargs["instance_count"] = resources["instanceCount"]
        if "instanceType" in resources:
            kwargs["instance_type"] = resources["instanceType"]
        if "computeId" in request:
            kwargs["compute"] = request["computeId"].rsplit("/", 1)[1]
        if "queueSettings" in request:
            kwargs["queue_settings"] = entities.QueueSettings(job_tier=request["queueSettings"]["jobTier"])
        if "distribution" in request:
            kwargs["distribution"] = ml.PyTorchDistribution(
                process_count_per_instance=request["distribution"]["processCountPerInstance"])
        if "identity" in request:
            kwargs["identity"] = entities.ManagedIdentityConfiguration(resource_id=request["identity"]["resourceId"])
        return ml.command(**kwargs)

    def _create(self, request: dict[str, Any], name: str) -> str:
        try:
            self._call(f"create job {name}", self.client.jobs.create_or_update, self._entity(request, name))
        except CloudError as exc:
            if exc.code == "Conflict":
                return name  # the name is ours (digest + client token): a retried PUT found our job
            raise
        return name

    def _find(self, name: str) -> str | None:
        try:
            self._call(f"get job {name}", self.client.jobs.get, name)
        except JobNotFoundError:
            return None
        return name

    def _describe(self, job_id: str) -> JobInfo:
        try:
            job = self._call(f"get job {job_id}", self.client.jobs.get, job_id)
        except JobNotFoundError:
            raise JobNotFoundError(f"no Azure ML job {job_id!r}", where=self.workspace_id,
                                   fix=f"list jobs with `stackwise jobs list --stack {self.stack.name}`") from None
        return self._to_info(job)

    def _to_info(self, job: Any) -> JobInfo:
        name = job.name
        status = str(getattr(job.status, "value", job.status) or "NotStarted")  # an enum or a str
        state = self.map_state(status)
        env = dict(getattr(job, "environment_variables", None) or {})
        spec = decode_spec(env[ENV_SPEC]) if env.get(ENV_SPEC) else {}
        tags = dict(job.tags or {})
        context = getattr(job, "creation_context", None)
        created = _ts(getattr(context, "created_at", None)) or 0.0
        modified = _ts(getattr(context, "last_modified_at", None))
        error = None
        if state is JobState.FAILED:
            # Command jobs carry no failure reason in ARM; the run's logs and error.json hold it.
            folder = job_uri(self.stack.outputs.artifact_store, name)
            error = f"Azure ML job {status}: see `stackwise jobs logs {name}` and {folder}/error.json"
        elif state is JobState.CANCELLED:
            error = "cancelled"
        return JobInfo(
            id=name,
            kind=spec.get("kind") or tags.get("stackwise-kind", ""),
            stack=self.stack.name,
            state=state,
            created_at=created,
            started_at=None,
            ended_at=(modified or time.time()) if state.terminal else None,
            error=error,
            outputs=self.outputs_for(spec or {"kind": tags.get("stackwise-kind")}, name, state,
                                     {"azureml_job": f"{self.workspace_id}/jobs/{name}"}),
            spec=spec,
            log_path=f"azureml:{self.workspace_id}/jobs/{name}",
            **identity_fields(name),
        )

    def _list(self, limit: int) -> list[JobInfo]:
        jobs: list[JobInfo] = []
        for job in self._call("list jobs", self.client.jobs.list):
            if (job.tags or {}).get("stackwise-stack") != self.stack.name:
                continue
            jobs.append(self._to_info(job))
            if len(jobs) >= limit:
                break
        return jobs

    def _log_lines(self, job_id: str, cursor: Any) -> tuple[list[str], Any]:
        """The run's `user_logs/*` files, read the way `MLClient.jobs.stream` reads them: run history's
        run details list the log files as SAS URLs. Only whole lines are returned; the cursor keeps
        how many characters of each file were consumed."""
        from azure.ai.ml._utils.utils import download_text_from_url  # what jobs.stream uses

        consumed: dict[str, int] = dict(cursor or {})
        runs = self.client.jobs._runs_operations  # run history client (no public accessor)
        try:
            details = self._call(f"get run details {job_id}", runs.get_run_details, job_id)
        except JobNotFoundError:
            return [], consumed  # no run yet: the job is still being scheduled
        files = {k: v for k, v in (getattr(details, "log_files", None) or {}).items() if k.startswith("user_logs/")}
        lines: list[str] = []
        for file in sorted(files):
            text = self._call(f"read log {file}", download_text_from_url, files[file],
                              self.client.jobs._requests_pipeline)
            start = consumed.get(file, 0)
            end = text.rfind("\n") + 1
            if end <= start:
                continue
            consumed[file] = end
            prefix = f"[{file.removeprefix('user_logs/').removesuffix('.txt')}] " if len(files) > 1 else ""
            lines += [prefix + line for line in text[start:end].splitlines()]
        return lines, consumed

    def _stop(self, job_id: str) -> None:
        try:
            poller = self._call(f"cancel job {job_id}", self.client.jobs.begin_cancel, job_id)
            self._call(f"cancel job {job_id}", poller.result)
        except CloudError as exc:
            if azure.has_ended(exc):
                return  # it ended meanwhile: cancel leaves an ended job as it is
            raise


def _seconds(duration: str) -> int:
    import re

    match = re.fullmatch(r"PT(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?", duration)
    if not match:
        raise ValueError(f"not an ISO 8601 duration: {duration}")
    hours, minutes, secs = (int(v or 0) for v in match.groups())
    return hours * 3600 + minutes * 60 + secs
