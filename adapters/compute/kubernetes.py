"""Jobs on a Kubernetes cluster (EKS, GKE, AKS or on-premises): a `batch/v1` Job per attempt.

The same `CloudCompute` as SageMaker, Vertex AI and Azure ML (one job identity, attempt N named
`sw-<identity>-N`, retries on 429/5xx, a create whose answer was lost looked up by name, a taken
name returned instead of a second job), speaking the Kubernetes API with the official client:

- **The Job.** An Indexed Job of `nodes` completions (an index job: one per worker, each a shard;
  a fine-tune or evaluation: one per node), every pod running the training image's bootstrap with
  the spec and the job context inline (`STACKWISE_SPEC_B64`, `STACKWISE_CONTEXT_B64`), its
  completion index as `NODE_RANK` (read by the bootstrap from `JOB_COMPLETION_INDEX`). Several
  nodes get a headless Service named after the Job, owned by it, so pod `<job>-0.<job>` is
  `MASTER_ADDR` for torch's rendezvous. The spec is also the Job's `stackwise.dev/spec` annotation.
- **Placement.** `nvidia.com/gpu: count` per pod; a node selector for the catalog GPU (the stack's
  `gpu_label` and `gpu_values`, by default GPU feature discovery's `nvidia.com/gpu.product`
  names), the GPU tolerations, and for `spot` the stack's spot selector and tolerations. A spot
  pod that is evicted or preempted (condition `DisruptionTarget`) is recreated without counting
  as a failure (`podFailurePolicy`), and a fine-tune resumes from its checkpoints; exit code 2
  (the workload refused its input) fails the Job at once. `/dev/shm` is a memory volume (torch's
  data loaders and NCCL need more than the runtime's 64 MB).
- **Kueue.** With a queue, the Job carries `kueue.x-k8s.io/queue-name` and is created suspended;
  Kueue admits it by unsuspending it (PENDING until then, saying so). Without one, the Job is
  created suspended, its Service added, then unsuspended: a failure in between deletes the Job,
  so nothing is left half-created.
- **Before anything is created:** a job asking for a GPU that no node has (by label, with enough
  `nvidia.com/gpu`) and that no node pool scales up (`autoscaled_gpus`) is refused, exit 2,
  naming the GPUs the cluster has. An identity without the right to list nodes skips that check.
- **States** (`job_state`, on the client's own V1Job and V1Pod models): Complete -> SUCCEEDED;
  Failed (backoff limit, deadline, pod failure policy) -> FAILED with the failing container's
  exit code and message; deleted (or being deleted) -> CANCELLED; suspended -> PENDING (queued);
  pods ready -> RUNNING; else PENDING, with the scheduler's reason when a pod is unschedulable.
- **Cancel** deletes the Job with foreground propagation (its pods and Service go with it);
  a Job that is gone reads as CANCELLED.
- **Logs** are the pods' logs, read with timestamps so that each call returns new lines only.

(About 450 lines: the Job's manifests, the state read from the Job and its pods, and the backend
that sends and reads them are one protocol; each part alone is short.)
"""

from __future__ import annotations

import base64
import json
import re
import time
from typing import Any

from stackwise import catalog
from stackwise.adapters.clouds import kubernetes as kube
from stackwise.adapters.clouds.common import require_output
from stackwise.adapters.clouds.kubernetes import GFD_PRODUCTS, GPU_RESOURCE, node_selector
from stackwise.adapters.compute.base import (ENV_CONTEXT, ENV_JOB_URI, ENV_KIND, ENV_SPEC, CloudCompute, b64,
                                             bootstrap_command, identity_fields, job_context, job_gpu, job_uri,
                                             node_count, parse_job_name)
from stackwise.errors import ConfigError, SpecError
from stackwise.jobs import JobInfo, JobState

SPEC_ANNOTATION = f"{kube.DOMAIN}/spec"
IDENTITY_LABEL = f"{kube.DOMAIN}/identity"
ATTEMPT_LABEL = f"{kube.DOMAIN}/attempt"
KIND_LABEL = f"{kube.DOMAIN}/kind"
STACK_LABEL = f"{kube.DOMAIN}/stack"
JOB_LABEL = f"{kube.DOMAIN}/job"
CONTAINER = "job"
MASTER_PORT = 29500
#: Exit code of a workload that refused its input: the Job fails at once instead of retrying.
BAD_INPUT_EXIT = 2


def gpu_of(spec: Any, stack: Any) -> str | None:
    """The catalog GPU the job's pods ask for, or None for a CPU job (as on every cloud: a
    fine-tune with no GPU named takes the stack's default GPU)."""
    gpu = job_gpu(spec, stack)
    if not gpu:
        return None
    try:
        return catalog.canonical_gpu(gpu)
    except ConfigError as exc:
        raise SpecError(exc.what, where="spec.compute.gpu", fix=exc.fix or "") from None


def _resources(kind: str, gpu: str | None, count: int) -> dict[str, Any]:
    per = max(count, 1) if gpu else 1
    requests = {"cpu": str(per), "memory": f"{4 * per}Gi", "ephemeral-storage": "10Gi" if kind == "finetune" else "5Gi"}
    limits: dict[str, str] = {}
    if gpu:
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(count)
    return {"requests": requests, **({"limits": limits} if limits else {})}


def build_manifests(spec: Any, stack: Any, name: str, attempt: int = 1) -> list[dict[str, Any]]:
    """The Job (and for several nodes its headless Service) for `spec` on `stack`, as data: no call."""
    outputs = stack.outputs
    cluster = kube.cluster_outputs(stack)
    if "://" not in outputs.artifact_store or outputs.artifact_store.startswith("file://"):
        raise ConfigError(
            f"stack {stack.name!r} keeps its artifacts in a folder of this machine ({outputs.artifact_store}), "
            "which pods on a cluster cannot reach",
            where=f"{stack.source}: stackwise:artifactStore",
            fix="set stackwise:artifactStore to an object store the pods reach (s3://, gs://, az://; MinIO on "
            "premises is s3:// with AWS_ENDPOINT_URL)")
    image = require_output(outputs.training_image, "training_image", stack,
                           "export the training image (`pulumi up` builds and pushes it; or build and push it with "
                           "`stackwise image build --push` and set stackwise:compute.image)")
    gpu = gpu_of(spec, stack)
    count = int(spec.compute.count) if gpu else 1
    nodes = node_count(spec)
    namespace = cluster.namespace
    labels = {**kube.MANAGED_BY, IDENTITY_LABEL: spec.identity, ATTEMPT_LABEL: str(attempt), KIND_LABEL: spec.kind,
              STACK_LABEL: kube.label_value(stack.name)}
    if cluster.queue:
        labels[kube.KUEUE_QUEUE_LABEL] = cluster.queue
    env = {ENV_KIND: spec.kind, ENV_JOB_URI: job_uri(outputs.artifact_store, name), "PYTHONUNBUFFERED": "1",
           ENV_SPEC: b64(spec), ENV_CONTEXT: b64(job_context(stack, name, attempt)), "STACKWISE_NNODES": str(nodes)}
    if nodes > 1:
        env.update(MASTER_ADDR=f"{name}-0.{name}.{namespace}.svc", MASTER_PORT=str(MASTER_PORT))
    container = {
        "name": CONTAINER, "image": image, "command": bootstrap_command(),
        "env": [{"name": k, "value": v} for k, v in sorted(env.items())],
        "resources": _resources(spec.kind, gpu, count),
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
    }
    if nodes > 1:
        container["ports"] = [{"name": "rendezvous", "containerPort": MASTER_PORT}]
    tolerations = list(cluster.gpu_tolerations) if gpu else []
    if spec.compute.spot:
        tolerations += list(cluster.spot_tolerations)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{2 * count}Gi"}}],
        # A stop (cancel, eviction) sends SIGTERM: the trainer saves a checkpoint before this ends.
        "terminationGracePeriodSeconds": 120,
    }
    if cluster.service_account:
        pod_spec["serviceAccountName"] = cluster.service_account
    selector = node_selector(gpu, spec.compute.spot, cluster, stack)
    if selector:
        pod_spec["nodeSelector"] = selector
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if nodes > 1:
        pod_spec["subdomain"] = name
    # Several nodes of one training run cannot go on without the others: a failed pod fails the Job
    # (the next attempt resumes from checkpoints). An index shard or a single node is retried.
    retries = 0 if nodes > 1 and spec.kind != "index" else 2
    job = {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": labels,
                     "annotations": {SPEC_ANNOTATION: spec.model_dump_json()}},
        "spec": {
            "suspend": True,
            "completionMode": "Indexed", "completions": nodes, "parallelism": nodes,
            "backoffLimit": retries,
            "activeDeadlineSeconds": int(spec.compute.max_runtime_s),
            "podFailurePolicy": {"rules": [
                {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                                      "values": [BAD_INPUT_EXIT]}},
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]},
            "template": {"metadata": {"labels": {**kube.MANAGED_BY, IDENTITY_LABEL: spec.identity, JOB_LABEL: name,
                                                 **cluster.pod_labels}},
                         "spec": pod_spec},
        },
    }
    manifests = [job]
    if nodes > 1:
        manifests.append({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
            "spec": {"clusterIP": "None", "selector": {JOB_LABEL: name}, "publishNotReadyAddresses": True,
                     "ports": [{"name": "rendezvous", "port": MASTER_PORT, "targetPort": MASTER_PORT}]},
        })
    return manifests


# -- states ----------------------------------------------------------------------------------------

def _condition(job: Any, kind: str) -> Any:
    for condition in (job.status.conditions or []) if job.status else []:
        if condition.type == kind and condition.status == "True":
            return condition
    return None


def _terminated(pods: list[Any]) -> tuple[int | None, str | None]:
    """The exit code and message of the most recent failed container among `pods`."""
    failed = []
    for pod in pods:
        for status in (pod.status.container_statuses or []) if pod.status else []:
            ended = status.state.terminated if status.state else None
            if ended is not None and ended.exit_code:
                failed.append((ended.finished_at or 0, ended.exit_code, ended.message or ended.reason, pod))
    if not failed:
        return None, None
    _, code, message, pod = max(failed, key=lambda f: str(f[0]))
    return int(code), f"pod {pod.metadata.name} exited with code {code}" + (f": {message}" if message else "")


def _waiting(pods: list[Any]) -> str | None:
    """Why pods are not running yet: unschedulable, image pull, evicted."""
    for pod in pods:
        status = pod.status
        if status is None:
            continue
        for condition in status.conditions or []:
            if condition.type == "PodScheduled" and condition.status == "False" and condition.reason == "Unschedulable":
                return f"pod {pod.metadata.name} is unschedulable: {condition.message}"
        for container in status.container_statuses or []:
            waiting = container.state.waiting if container.state else None
            if waiting is not None and waiting.reason in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName",
                                                          "CreateContainerConfigError"):
                return f"pod {pod.metadata.name}: {waiting.reason}: {waiting.message or ''}".rstrip(": ")
        if status.reason == "Evicted" or any(c.type == "DisruptionTarget" and c.status == "True"
                                             for c in status.conditions or []):
            return f"pod {pod.metadata.name} was evicted or preempted ({status.message or status.reason}); " \
                   "it is started again, a fine-tune resuming from its checkpoints"
    return None


def job_state(job: Any, pods: list[Any]) -> tuple[JobState, str | None, int | None]:
    """(state, message, exit code) of a V1Job and its V1Pods (see the module docstring)."""
    meta, spec, status = job.metadata, job.spec, job.status
    if meta.deletion_timestamp is not None:
        return JobState.CANCELLED, "the Job is being deleted", None
    if _condition(job, "Complete") or _condition(job, "SuccessCriteriaMet"):
        return JobState.SUCCEEDED, None, 0
    failed = _condition(job, "Failed") or _condition(job, "FailureTarget")
    if failed is not None:
        code, why = _terminated(pods)
        reason = f"{failed.reason}: {failed.message}" if failed.message else str(failed.reason)
        return JobState.FAILED, f"{reason}" + (f"; {why}" if why else ""), code
    if spec is not None and spec.suspend:
        queue = (meta.labels or {}).get(kube.KUEUE_QUEUE_LABEL)
        return JobState.PENDING, (f"queued: waiting for Kueue to admit it to LocalQueue {queue}" if queue
                                  else "suspended"), None
    if status is not None and (status.ready or 0) > 0:
        return JobState.RUNNING, _waiting(pods), None
    return JobState.PENDING, _waiting(pods), None


def _timestamp(value: Any) -> float | None:
    return value.timestamp() if value is not None and hasattr(value, "timestamp") else None


class KubernetesCompute(CloudCompute):
    """Jobs as Kubernetes Jobs in the stack's namespace; the handle id is the Job's name."""

    cloud = "kubernetes"

    def __init__(self, stack: Any, api_client: Any = None):
        super().__init__(stack)
        self._apis = kube.Apis(stack, api_client)

    # -- clients ------------------------------------------------------------------------------------
    @property
    def namespace(self) -> str:
        return kube.cluster_outputs(self.stack).namespace

    def _api(self, name: str) -> Any:
        return self._apis.get(name)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return kube.call(lambda: fn(*args, **kwargs), what, stack=self.stack, namespace=self.namespace)

    # -- CloudCompute -------------------------------------------------------------------------------
    def build(self, spec: Any, name: str, attempt: int = 1) -> list[dict[str, Any]]:
        return build_manifests(spec, self.stack, name, attempt)

    def _prepare(self, spec: Any, name: str, attempt: int) -> None:
        self.check_schedulable(spec)

    def check_schedulable(self, spec: Any) -> None:
        """Refuse a GPU that no node has and no node pool scales up (see the module docstring)."""
        gpu = gpu_of(spec, self.stack)
        if not gpu:
            return
        cluster = kube.cluster_outputs(self.stack)
        if gpu in cluster.autoscaled_gpus:
            return
        selector = node_selector(gpu, False, cluster, self.stack)
        count = int(spec.compute.count)
        try:
            nodes = kube.call(lambda: self._api("CoreV1Api").list_node(), "list nodes", stack=self.stack).items
        except ConfigError:  # 403: this identity may not list nodes; the scheduler will say
            return
        have: dict[str, int] = {}
        for node in nodes:
            labels = node.metadata.labels or {}
            gpus = int((node.status.allocatable or {}).get(GPU_RESOURCE, 0) or 0) if node.status else 0
            name = labels.get(cluster.gpu_label)
            if name is not None and gpus:
                have[name] = max(have.get(name, 0), gpus)
        value = selector[cluster.gpu_label]
        if have.get(value, 0) >= count:
            return
        where = f"cluster of stack {self.stack.name!r}, namespace {cluster.namespace}: nodes labelled " \
                f"{cluster.gpu_label}={value}"
        names = {v: k for k, v in {**GFD_PRODUCTS, **cluster.gpu_values}.items()}
        found = ", ".join(f"{names.get(v, v)} (up to {n} per node)" for v, n in sorted(have.items())) or "none"
        if value in have:
            what = f"no node has {count} x {gpu}: nodes with {gpu} have at most {have[value]} allocatable"
        else:
            what = f"no node of the cluster has a {gpu} and no node pool scales one up"
        raise ConfigError(what, where=where,
                          fix=f"ask for a GPU the cluster has (GPUs on its nodes: {found}), fewer per node, or add a "
                          f"node pool with {gpu} (stackwise:kubernetes.nodePool) and list it in autoscaledGpus")

    def _create(self, manifests: list[dict[str, Any]], name: str) -> str:
        batch = self._api("BatchV1Api")
        job = manifests[0]
        try:
            created = self._call(f"create Job {name}", batch.create_namespaced_job, self.namespace, job)
        except kube.Conflict:
            return name  # another process created the same attempt: that job
        try:
            for extra in manifests[1:]:
                owned = dict(extra, metadata=dict(extra["metadata"], ownerReferences=[{
                    "apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": created.metadata.uid,
                    "controller": False, "blockOwnerDeletion": True}]))
                try:
                    self._call(f"create Service {name}", self._api("CoreV1Api").create_namespaced_service,
                               self.namespace, owned)
                except kube.Conflict:
                    pass
            if kube.KUEUE_QUEUE_LABEL not in job["metadata"]["labels"]:
                self._call(f"start Job {name}", batch.patch_namespaced_job, name, self.namespace,
                           {"spec": {"suspend": False}})
        except BaseException:
            self._delete(name)  # nothing left half-created
            raise
        return name

    def _delete(self, name: str) -> None:
        try:
            self._call(f"delete Job {name}", self._api("BatchV1Api").delete_namespaced_job, name, self.namespace,
                       propagation_policy="Foreground")
        except kube.NotFound:
            pass

    def _find(self, name: str) -> str | None:
        try:
            self._call(f"get Job {name}", self._api("BatchV1Api").read_namespaced_job, name, self.namespace)
        except kube.NotFound:
            return None
        return name

    def _attempts(self, identity: str) -> list[tuple[int, str]]:
        jobs = self._call("list Jobs", self._api("BatchV1Api").list_namespaced_job, self.namespace,
                          label_selector=f"{IDENTITY_LABEL}={identity}").items
        found = [(parse_job_name(j.metadata.name), j.metadata.name) for j in jobs]
        return sorted((parsed[1], name) for parsed, name in found if parsed and parsed[0] == identity)

    def _pods(self, name: str) -> list[Any]:
        return self._call(f"list pods of Job {name}", self._api("CoreV1Api").list_namespaced_pod, self.namespace,
                          label_selector=f"{JOB_LABEL}={name}").items

    def _describe(self, job_id: str) -> JobInfo:
        try:
            job = self._call(f"get Job {job_id}", self._api("BatchV1Api").read_namespaced_job, job_id, self.namespace)
        except kube.NotFound:
            return self._gone(job_id)
        return self._to_info(job, with_pods=True)

    def _gone(self, job_id: str) -> JobInfo:
        parsed = parse_job_name(job_id)
        if parsed is None:
            from stackwise.errors import JobNotFoundError

            raise JobNotFoundError(f"no job {job_id!r} in namespace {self.namespace}",
                                   where=f"stack {self.stack.name!r}", fix="list jobs with `stackwise jobs list`")
        # Cancel deletes the Job: a stackwise Job that is gone was cancelled (or deleted with kubectl).
        return JobInfo(id=job_id, kind=parsed[0].split("-")[0], stack=self.stack_name, state=JobState.CANCELLED,
                       created_at=0.0, error=None, **identity_fields(job_id))

    def _to_info(self, job: Any, with_pods: bool) -> JobInfo:
        name = job.metadata.name
        spec = json.loads((job.metadata.annotations or {}).get(SPEC_ANNOTATION) or "{}")
        state, message, code = job_state(job, [])
        if with_pods and state in (JobState.PENDING, JobState.RUNNING, JobState.FAILED):
            state, message, code = job_state(job, self._pods(name))
        status = job.status
        ended = None
        if state.terminal and status is not None:
            ended = _timestamp(status.completion_time) or next(
                (_timestamp(c.last_transition_time) for c in status.conditions or [] if c.status == "True"
                 and c.type in ("Failed", "FailureTarget")), None) or time.time()
        return JobInfo(
            id=name, kind=spec.get("kind") or (job.metadata.labels or {}).get(KIND_LABEL, ""), stack=self.stack_name,
            state=state, created_at=_timestamp(job.metadata.creation_timestamp) or 0.0,
            started_at=_timestamp(status.start_time) if status else None, ended_at=ended,
            error=message if state is JobState.FAILED else None, outputs=self.outputs_for(spec, name, state),
            spec=spec, exit_code=code, **identity_fields(name))

    def _list(self, limit: int) -> list[JobInfo]:
        selector = ",".join(f"{k}={v}" for k, v in {**kube.MANAGED_BY,
                                                    STACK_LABEL: kube.label_value(self.stack.name)}.items())
        jobs = self._call("list Jobs", self._api("BatchV1Api").list_namespaced_job, self.namespace,
                          label_selector=selector).items
        jobs.sort(key=lambda j: _timestamp(j.metadata.creation_timestamp) or 0.0, reverse=True)
        return [self._to_info(job, with_pods=False) for job in jobs[:limit]]

    def _stop(self, job_id: str) -> None:
        self._delete(job_id)

    def _log_lines(self, job_id: str, cursor: Any) -> tuple[list[str], Any]:
        """New lines of every pod of the Job since `cursor` ({pod: last timestamp seen}): each pod's
        log is read with timestamps from a little before the last line seen (`sinceSeconds`; the
        client has no `sinceTime`), and lines at or before it are skipped."""
        seen: dict[str, str] = dict(cursor or {})
        lines: list[str] = []
        pods = sorted(self._pods(job_id), key=lambda p: (p.metadata.annotations or {}).get(
            "batch.kubernetes.io/job-completion-index", "") + p.metadata.name)
        for pod in pods:
            pod_name = pod.metadata.name
            kwargs: dict[str, Any] = {"timestamps": True, "container": CONTAINER, "_preload_content": False}
            last = _stamp(seen[pod_name]) if pod_name in seen else None
            if last is not None:
                kwargs["since_seconds"] = max(1, int(time.time() - last[0]) + 2)
            try:
                raw = self._call(f"read the log of pod {pod_name}", self._api("CoreV1Api").read_namespaced_pod_log,
                                 pod_name, self.namespace, **kwargs)
            except kube.NotFound:
                continue
            text = raw.data.decode("utf-8", "replace") if hasattr(raw, "data") else str(raw)
            prefix = f"[{pod_name}] " if len(pods) > 1 else ""
            for entry in text.splitlines():
                stamp, _, line = entry.partition(" ")
                key = _stamp(stamp)
                if last is not None and key is not None and key <= last:
                    continue
                lines.append(prefix + line)
                if key is not None:
                    seen[pod_name], last = stamp, key
        return lines, seen


def _stamp(value: str) -> tuple[float, int] | None:
    """An RFC 3339 timestamp of a log line as (epoch seconds, nanoseconds), comparable; None if it is not one."""
    import datetime as dt

    found = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)", value)
    if not found:
        return None
    zone = "+00:00" if found[3] == "Z" else found[3]
    seconds = dt.datetime.fromisoformat(found[1] + zone).timestamp()
    return seconds, int((found[2] or "0").ljust(9, "0"))


def decode_env_spec(job: dict[str, Any]) -> dict[str, Any]:
    """The spec a Job manifest carries in its container's environment (for tests and `--dry-run`)."""
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    return json.loads(base64.b64decode(env[ENV_SPEC]))
