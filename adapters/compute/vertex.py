"""GCP compute: each job is one Vertex AI CustomJob (`google.cloud.aiplatform_v1`, REST transport).

`build_request(spec, stack)` is pure: it returns the CustomJob as the JSON Vertex's v1 REST API
takes (golden files in tests/golden/ pin it). What it holds:
- worker pool 0: one replica (the chief); worker pool 1: `nodes - 1` replicas (index jobs:
  `workers - 1`: one node per shard, its rank over pools 0 and 1 its shard); each with the
  catalog's machine type and accelerator for `gpu` x `count` (n1-standard-8 without a GPU) and
  the stack's training image running the bootstrap; the bootstrap derives MASTER_ADDR and
  NODE_RANK from Vertex's CLUSTER_SPEC;
- `scheduling`: timeout = max runtime, strategy SPOT for `spot=True` (else STANDARD);
- `network` (and `reservedIpRanges`): the stack's VPC network, peered with Vertex AI through
  private services access (infra/gcp/platform.py), from the stack's `network` output, so the job
  reaches the stack's private addresses; Google APIs (GCS, Artifact Registry, Logging) are
  reached as without it;
- fine-tuning: `STACKWISE_CHECKPOINT_DIR` = the identity's checkpoint folder through Vertex's
  Cloud Storage FUSE mount (`/gcs/<bucket>/checkpoints/<model>-<digest>`), so the trainer writes
  checkpoints straight under the top-level prefix the bucket's lifecycle rule targets, and every
  attempt (a spot restart, a resubmit) finds them there;
- the job's service account, `base_output_directory` = the job's folder in the artifact store,
  and labels naming the stack, kind, the stackwise job name, its identity and attempt (how
  `submit` finds a spec's jobs: Vertex assigns CustomJob ids itself, so `submit` lists by the
  `stackwise-identity` label before creating).
The spec and the job context travel in the container's environment (`STACKWISE_SPEC_B64`,
`STACKWISE_CONTEXT_B64`), so submitting needs no GCS upload. The handle id is the CustomJob's numeric id. `logs()` reads the job's entries from
Cloud Logging's REST `entries:list` with the same credentials.
"""

from __future__ import annotations

import json
import os
from typing import Any

from stackwise.adapters.clouds import gcp
from stackwise.adapters.clouds.common import require_output, require_store
from stackwise.contract import checkpoint_uri
from stackwise.errors import CloudError, CredentialsError, JobNotFoundError, TransientError
from stackwise.jobs import JobInfo, JobState

from .base import (CloudCompute, bootstrap_command, decode_spec, identity_fields, job_environment, job_gpu, job_name,
                   job_uri, node_count, parse_job_name, strategy)

CPU_MACHINE = "n1-standard-8"
ENV_CHECKPOINT_DIR = "STACKWISE_CHECKPOINT_DIR"  # read by stackwise.training.trainer
STATES = {
    "JOB_STATE_QUEUED": JobState.PENDING,
    "JOB_STATE_PENDING": JobState.PENDING,
    "JOB_STATE_PAUSED": JobState.PENDING,
    "JOB_STATE_RUNNING": JobState.RUNNING,
    "JOB_STATE_UPDATING": JobState.RUNNING,
    "JOB_STATE_CANCELLING": JobState.RUNNING,  # not ended yet: wait() polls until CANCELLED
    "JOB_STATE_SUCCEEDED": JobState.SUCCEEDED,
    "JOB_STATE_PARTIALLY_SUCCEEDED": JobState.FAILED,
    "JOB_STATE_FAILED": JobState.FAILED,
    "JOB_STATE_EXPIRED": JobState.FAILED,
    "JOB_STATE_CANCELLED": JobState.CANCELLED,
}
LABEL = "stackwise-job"
IDENTITY_LABEL = "stackwise-identity"
LOGGING_ENDPOINT = "https://logging.googleapis.com"
LOG_PAGE = 1000


def machine_spec(spec: Any, stack: Any) -> dict[str, Any]:
    return gcp.machine_spec(job_gpu(spec, stack), spec.compute.count, CPU_MACHINE)


def fuse_path(uri: str) -> str:
    """The path of a gs:// URI inside a Vertex AI job, where Cloud Storage FUSE mounts every bucket
    the job's service account can read under /gcs/."""
    return "/gcs/" + uri.removeprefix("gs://")


def build_request(spec: Any, stack: Any, name: str | None = None, attempt: int = 1) -> dict[str, Any]:
    """The CustomJob for `spec` on `stack` (v1 REST JSON), as data: no call, no credentials."""
    name = name or job_name(spec, attempt)
    outputs = stack.outputs
    image = require_output(outputs.training_image, "training_image", stack,
                           "export the training image URI (`pulumi up` builds and pushes it to Artifact Registry; "
                           "with stackwise:images build: false, run `stackwise image build --push`)")
    # Vertex AI documents a default timeout of 7 days and no maximum: no bound (docs/cloud-adapters.md).
    env = job_environment(spec, name, stack, attempt, inline=True)
    if spec.kind == "finetune":
        env[ENV_CHECKPOINT_DIR] = fuse_path(checkpoint_uri(outputs.artifact_store, spec.output_name))
    container = {"imageUri": image, "command": bootstrap_command(),
                 "env": [{"name": k, "value": v} for k, v in sorted(env.items())]}
    pool = {
        "machineSpec": machine_spec(spec, stack),
        "replicaCount": "1",
        "containerSpec": container,
        "diskSpec": {"bootDiskType": "pd-ssd", "bootDiskSizeGb": 100 if spec.kind == "finetune" else 50},
    }
    pools = [pool]
    nodes = node_count(spec)
    if nodes > 1:
        pools.append(dict(pool, replicaCount=str(nodes - 1)))
    job_spec: dict[str, Any] = {
        "workerPoolSpecs": pools,
        "scheduling": {"timeout": f"{spec.compute.max_runtime_s}s",
                       "strategy": "SPOT" if spec.compute.spot else "STANDARD"},
        "baseOutputDirectory": {"outputUriPrefix": job_uri(outputs.artifact_store, name)},
    }
    if outputs.job_role:
        job_spec["serviceAccount"] = outputs.job_role
    network = outputs.network
    if network is not None and network.network:
        job_spec["network"] = network.network
        if network.reserved_ip_ranges:
            job_spec["reservedIpRanges"] = list(network.reserved_ip_ranges)
    return {
        "displayName": name,
        "jobSpec": job_spec,
        "labels": {LABEL: name, "stackwise-stack": gcp.label(stack.name), "stackwise-kind": spec.kind,
                   "stackwise-strategy": strategy(spec), IDENTITY_LABEL: spec.identity,
                   "stackwise-attempt": str(attempt)},
    }


class VertexCompute(CloudCompute):
    """Jobs as Vertex AI CustomJobs; the handle id is the CustomJob id."""

    cloud = "gcp"
    states = STATES

    def __init__(self, stack: Any, credentials: Any = None, api_endpoint: str | None = None,
                 logging_endpoint: str | None = None):
        super().__init__(stack)
        self._credentials = credentials
        self.logging_endpoint = (logging_endpoint or os.environ.get("STACKWISE_LOGGING_ENDPOINT")
                                 or LOGGING_ENDPOINT).rstrip("/")
        self._log_session: Any = None
        self.project = require_output(stack.outputs.gcp_project, "gcp_project", stack,
                                      "export gcp_project (the Pulumi program does)")
        require_store(stack, "gs", "GCP")
        self.location = stack.region
        self.parent = gcp.where(stack)
        self._types = gcp.aiplatform("the Vertex AI compute adapter")
        self.client = gcp.client("JobServiceClient", stack, credentials, api_endpoint, "the Vertex AI compute adapter")

    def build(self, spec: Any, name: str, attempt: int = 1) -> dict[str, Any]:
        return build_request(spec, self.stack, name, attempt)

    def checkpoints_uri(self, output_name: str) -> str:
        return checkpoint_uri(self.stack.outputs.artifact_store, output_name)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """One API call; its errors become TransientError (retried), JobNotFoundError or a clear CloudError."""
        return gcp.call(lambda: fn(*args, **kwargs), what, stack=self.stack, not_found=self._not_found)

    def _not_found(self, what: str) -> JobNotFoundError:
        return JobNotFoundError(f"no Vertex AI job for {what}", where=self.parent,
                                fix=f"list jobs with `stackwise jobs list --stack {self.stack.name}`")

    def _create(self, request: dict[str, Any], name: str) -> str:
        job = self._types.CustomJob.from_json(json.dumps(request))
        created = self._call(f"create CustomJob {name}", self.client.create_custom_job, parent=self.parent,
                             custom_job=job)
        return created.name.rsplit("/", 1)[1]

    def _find(self, name: str) -> str | None:
        request = self._types.ListCustomJobsRequest(parent=self.parent, filter=f'labels.{LABEL}="{name}"')
        for job in self._call(f"list CustomJobs named {name}", self.client.list_custom_jobs, request=request):
            return job.name.rsplit("/", 1)[1]
        return None

    def _attempts(self, identity: str) -> list[tuple[int, str]]:
        request = self._types.ListCustomJobsRequest(parent=self.parent, filter=f'labels.{IDENTITY_LABEL}="{identity}"')
        found = []
        for job in self._call(f"list CustomJobs of {identity}", self.client.list_custom_jobs, request=request):
            parsed = parse_job_name(job.labels.get(LABEL, ""))
            if parsed and parsed[0] == identity:
                found.append((parsed[1], job.name.rsplit("/", 1)[1]))
        return sorted(found)

    def _to_info(self, job: Any) -> JobInfo:
        data = json.loads(type(job).to_json(job, use_integers_for_enums=False))
        job_id = data["name"].rsplit("/", 1)[1]
        state = self.map_state(data.get("state", "JOB_STATE_PENDING"))
        name = (data.get("labels") or {}).get(LABEL) or data.get("displayName", job_id)
        spec: dict[str, Any] = {}
        for pool in (data.get("jobSpec") or {}).get("workerPoolSpecs", [])[:1]:
            for var in (pool.get("containerSpec") or {}).get("env", []):
                if var.get("name") == "STACKWISE_SPEC_B64":
                    spec = decode_spec(var["value"])
        error = (data.get("error") or {}).get("message")
        return JobInfo(
            id=job_id,
            kind=spec.get("kind") or (data.get("labels") or {}).get("stackwise-kind", ""),
            stack=self.stack.name,
            state=state,
            created_at=job.create_time.timestamp() if data.get("createTime") else 0.0,
            started_at=job.start_time.timestamp() if data.get("startTime") else None,
            ended_at=job.end_time.timestamp() if data.get("endTime") and state.terminal else None,
            error=error or ("cancelled" if state is JobState.CANCELLED else
                            ("failed" if state is JobState.FAILED else None)),
            outputs=self.outputs_for(spec, name, state, {"vertex_job": data["name"]}),
            spec=spec,
            log_path=f"cloud-logging:resource.labels.job_id={job_id}",
            **identity_fields(name),
        )

    def _describe(self, job_id: str) -> JobInfo:
        return self._to_info(self._call(f"get CustomJob {job_id}", self.client.get_custom_job,
                                        name=f"{self.parent}/customJobs/{job_id}"))

    def _list(self, limit: int) -> list[JobInfo]:
        request = self._types.ListCustomJobsRequest(parent=self.parent, filter=f'labels.stackwise-stack="{gcp.label(self.stack.name)}"',
                                                    page_size=min(limit, 100))
        jobs = []
        for job in self._call("list CustomJobs", self.client.list_custom_jobs, request=request):
            jobs.append(self._to_info(job))
            if len(jobs) >= limit:
                break
        return jobs

    def _stop(self, job_id: str) -> None:
        try:
            self._call(f"cancel CustomJob {job_id}", self.client.cancel_custom_job,
                       name=f"{self.parent}/customJobs/{job_id}")
        except CloudError as exc:
            if exc.code == "FAILED_PRECONDITION":  # the job has ended: cancel leaves it as it is
                return
            raise

    # -- logs ------------------------------------------------------------------------------------
    def _logging(self) -> Any:
        """An authorized HTTP session for Cloud Logging, with the credentials the job client uses
        (google-cloud-logging is not a dependency: `entries:list` is one REST call)."""
        if self._log_session is None:
            self._log_session = gcp.authorized_session(self._credentials, self.stack, "read the job's logs")
        return self._log_session

    def _log_lines(self, job_id: str, cursor: Any) -> tuple[list[str], Any]:
        """Cloud Logging entries of the CustomJob (`resource.type="ml_job"`, its `job_id`), oldest
        first, from the cursor's timestamp on (entries seen at that timestamp skipped by insertId).
        A job with more than one replica has each line prefixed with its task (`[workerpool1-0] ...`)."""
        import requests

        if cursor is None:
            spec = self._describe(job_id).spec
            nodes = int(spec.get("workers") or 1) if spec.get("kind") == "index" else \
                int((spec.get("compute") or {}).get("nodes") or 1)
            cursor = ("", frozenset(), nodes > 1)
        last, seen, multi = cursor
        query = f'resource.type="ml_job" AND resource.labels.job_id="{job_id}"'
        if last:
            query += f' AND timestamp>="{last}"'
        body: dict[str, Any] = {"resourceNames": [f"projects/{self.project}"], "filter": query,
                                "orderBy": "timestamp asc", "pageSize": LOG_PAGE}
        entries: list[dict[str, Any]] = []
        while True:
            try:
                answer = self._logging().post(f"{self.logging_endpoint}/v2/entries:list", json=body, timeout=60)
            except requests.RequestException as exc:
                raise TransientError(f"Cloud Logging entries:list: {exc}") from None
            if answer.status_code == 429 or answer.status_code >= 500:
                raise TransientError(f"Cloud Logging entries:list: HTTP {answer.status_code}")
            if answer.status_code in (401, 403):
                raise CredentialsError(f"Google Cloud refused reading the logs of job {job_id}: "
                                       f"HTTP {answer.status_code}", where=f"project {self.project}",
                                       fix="grant the account the Logs Viewer role (roles/logging.viewer), or "
                                       "check `gcloud auth application-default login`")
            if answer.status_code != 200:
                raise CloudError(f"Cloud Logging refused entries:list: HTTP {answer.status_code} "
                                 f"{answer.text[:300]}", where=f"project {self.project}",
                                 fix="check the project and this filter in the Logs Explorer: " + query)
            page = answer.json()
            entries += page.get("entries", [])
            if not page.get("nextPageToken"):
                break
            body["pageToken"] = page["nextPageToken"]
        fresh = [e for e in entries if not (e.get("timestamp") == last and e.get("insertId") in seen)]
        lines = [f"[{_task(e)}] {_message(e)}" if multi else _message(e) for e in fresh]
        if fresh:
            newest = fresh[-1]["timestamp"]
            same = {e.get("insertId") for e in fresh if e.get("timestamp") == newest}
            seen = (seen | same) if newest == last else frozenset(same)
            last = newest
        return lines, (last, seen, multi)


def _task(entry: dict[str, Any]) -> str:
    labels = (entry.get("resource") or {}).get("labels") or {}
    return labels.get("task_name") or (entry.get("labels") or {}).get("ml.googleapis.com/task_name") or "workerpool0-0"


def _message(entry: dict[str, Any]) -> str:
    if "textPayload" in entry:
        return str(entry["textPayload"]).rstrip("\n")
    payload = entry.get("jsonPayload") or {}
    return str(payload.get("message", json.dumps(payload)))

