"""The job backend every compute stack but `local` is (SageMaker, Vertex AI, Azure ML, Kubernetes):
job names, the job's folder in the artifact store, the command a job runs, retries, and the follow
loop (the local adapter shares the job naming).

Nothing here imports a cloud SDK. Each compute adapter supplies a pure `build_request(spec, stack)`
and a few thin calls (`_create`, `_describe`, `_find`, `_stop`, `_log_lines`); `CloudCompute`
turns them into the `ComputeBackend` every stack offers:

- **One job identity.** A spec's identity is `<kind>-<digest>` (the digest covers `run_name`);
  attempt N of it is the cloud job `sw-<identity>-<N>`. `submit` finds the identity's attempts:
  while the latest is PENDING or RUNNING it returns that job; once it ended it creates attempt
  N + 1, which resumes from the checkpoints under the identity. `new=True` (or another
  `run_name`) is another identity: a fresh run. A create is retried on throttling and 5xx under
  the same name, a create whose answer was lost is followed by a lookup, and a create that finds
  the name taken (another process submitted the same spec) returns that job: never two GPU jobs.
- **Self-contained jobs.** Each job carries its spec and its `JobContext` (artifact store, vector
  store, tracking URI, secret references; never credentials), so nothing in the job resolves a
  stack by name.
- **Same states everywhere.** Each cloud maps its states onto `JobState`.
- **Outputs are artifact URIs** under `<artifact_store>/jobs/<name>/`.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from typing import Any

from stackwise.adapters.clouds.common import Retry, unless_landed, with_retries
from stackwise.errors import SpecError
from stackwise.jobs import JobHandle, JobInfo, JobState

from .checks import check_paths, with_run

# Where each job keeps its files, under the stack's artifact store.
JOBS_PREFIX = "jobs"
BOOTSTRAP_MODULE = "stackwise.adapters.compute.bootstrap"
#: every cloud job's name starts with it (IAM grants on AWS scope the job role's jobs to `sw-*`)
JOB_NAME_PREFIX = "sw-"
_JOB_NAME = re.compile(r"^sw-(?P<identity>[a-z]+-[0-9a-f]{16})-(?P<attempt>[0-9]{1,4})$")
# Environment variables the job sees; the bootstrap reads them.
ENV_KIND = "STACKWISE_JOB_KIND"
ENV_JOB_URI = "STACKWISE_JOB_URI"
ENV_SPEC = "STACKWISE_SPEC_B64"
ENV_CONTEXT = "STACKWISE_CONTEXT_B64"


def job_name(spec: Any, attempt: int = 1) -> str:
    """`sw-<kind>-<digest>-<attempt>`: at most 33 characters, valid on every cloud."""
    return f"{JOB_NAME_PREFIX}{spec.identity}-{int(attempt)}"


def parse_job_name(name: str) -> tuple[str, int] | None:
    """(identity, attempt) of a stackwise job name, or None for another name."""
    found = _JOB_NAME.fullmatch(name or "")
    return (found["identity"], int(found["attempt"])) if found else None


def identity_fields(name: str) -> dict[str, Any]:
    """JobInfo's `identity` and `attempt` for a job name (empty for a name stackwise did not make)."""
    parsed = parse_job_name(name)
    return {"identity": parsed[0], "attempt": parsed[1]} if parsed else {}


def job_context(stack: Any, name: str, attempt: int) -> Any:
    """The JobContext a job of `stack` is sent with."""
    from stackwise.contract import JobContext

    return JobContext.from_outputs(stack.name, stack.outputs, job_id=name, attempt=attempt)


def b64(model: Any) -> str:
    return base64.b64encode(model.model_dump_json().encode()).decode()


def job_uri(artifact_store: str, name: str) -> str:
    return f"{artifact_store.rstrip('/')}/{JOBS_PREFIX}/{name}"


def bootstrap_command() -> list[str]:
    """What every cloud job runs: the bootstrap reads its spec and job folder from the environment."""
    return ["python", "-m", BOOTSTRAP_MODULE]


def job_environment(spec: Any, name: str, stack: Any, attempt: int, inline: bool) -> dict[str, str]:
    """The environment every cloud job gets. With `inline` the spec and the job context travel in
    it (Vertex, Azure); otherwise the job reads `spec.json` and `context.json` from its input
    channel (SageMaker, whose environment values are capped at 512 characters)."""
    env = {ENV_KIND: spec.kind, ENV_JOB_URI: job_uri(stack.outputs.artifact_store, name), "PYTHONUNBUFFERED": "1"}
    if inline:
        env[ENV_SPEC] = b64(spec)
        env[ENV_CONTEXT] = b64(job_context(stack, name, attempt))
    return env


def spec_from_dict(data: dict[str, Any]) -> Any:
    """A spec from its stored JSON (the `kind` field says which model)."""
    from pydantic import ValidationError

    from stackwise.specs import parse_job_spec

    try:
        return parse_job_spec(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise SpecError(f"invalid job spec at {'.'.join(str(p) for p in first['loc']) or '(root)'}: {first['msg']}",
                        where="spec", fix="use an IndexSpec, FineTuneSpec or EvaluateSpec") from None


def job_gpu(spec: Any, stack: Any) -> str | None:
    """The GPU a job runs on: the spec's, else for a fine-tune the stack's default GPU; None for a CPU job."""
    return spec.compute.gpu or (stack.outputs.default_gpu if spec.kind == "finetune" else None)


def node_count(spec: Any) -> int:
    """Instances the job runs on: an index job's `workers` (one shard each), else `compute.nodes`."""
    if spec.kind == "index":
        return int(getattr(spec, "workers", 1))
    return int(spec.compute.nodes)


def processes_per_node(spec: Any) -> int:
    return int(getattr(spec.compute, "count", 1))


def strategy(spec: Any) -> str:
    return getattr(spec.compute, "strategy", None) or "none"


class CloudCompute:
    """The `ComputeBackend` of a cloud stack; subclasses speak one cloud's API.

    Guarantees: `submit` creates at most one cloud job per (spec, client token); `cancel` is
    idempotent and leaves an ended job as it is; `info` maps the cloud's states onto JobState.
    """

    cloud = ""
    retry = Retry()
    #: states of the cloud -> JobState; unknown states read as PENDING (never as ended)
    states: dict[str, JobState] = {}

    def __init__(self, stack: Any):
        self.stack = stack
        self.stack_name = stack.name

    # -- what subclasses provide ---------------------------------------------------------------
    def build(self, spec: Any, name: str, attempt: int = 1) -> Any:  # the pure request for this cloud
        raise NotImplementedError

    def _prepare(self, spec: Any, name: str, attempt: int) -> None:
        """Upload what the job reads before it starts (default: nothing)."""

    def _create(self, request: Any, name: str) -> str:  # returns the job id
        raise NotImplementedError

    def _find(self, name: str) -> str | None:  # the id of the job with this name, if any
        raise NotImplementedError

    def _attempts(self, identity: str) -> list[tuple[int, str]]:
        """(attempt, job id) of every job of `identity`, oldest first. Default: look the names
        `sw-<identity>-1`, `-2`, ... up until one is missing (clouds that list by name or label
        override this)."""
        found: list[tuple[int, str]] = []
        attempt = 1
        while True:
            job_id = self._find(f"sw-{identity}-{attempt}")
            if job_id is None:
                return found
            found.append((attempt, job_id))
            attempt += 1

    def _describe(self, job_id: str) -> JobInfo:
        raise NotImplementedError

    def _list(self, limit: int) -> list[JobInfo]:
        raise NotImplementedError

    def _stop(self, job_id: str) -> None:
        raise NotImplementedError

    def _log_lines(self, job_id: str, cursor: Any) -> tuple[list[str], Any]:
        """New log lines since `cursor`, and the next cursor. Default: none."""
        return [], cursor

    # -- the backend ---------------------------------------------------------------------------
    def submit(self, spec: Any, *, new: bool = False, run_name: str | None = None) -> JobHandle:
        """Run `spec` and return its job's handle at once (see the module docstring: a job of the
        same identity that is PENDING or RUNNING is returned instead of starting another)."""
        spec = with_run(spec, new, run_name)
        check_paths(spec, self.stack)
        self.build(spec, job_name(spec, 1))  # validates GPU, image, role before any call
        identity = spec.identity
        attempts = with_retries(lambda: self._attempts(identity), self.retry, f"{self.cloud}: look up jobs of {identity}")
        attempt = 1
        if attempts:
            last, job_id = attempts[-1]
            if not self.info(job_id).state.terminal:
                return JobHandle(self, job_id)
            attempt = last + 1
        name = job_name(spec, attempt)
        request = self.build(spec, name, attempt)
        self._prepare(spec, name, attempt)

        # The create may have landed before its answer was lost: the job is looked up by name first.
        create = unless_landed(lambda: self._create(request, name), lambda: self._find(name))
        job_id = with_retries(create, self.retry, f"{self.cloud}: create job {name}")
        return JobHandle(self, job_id)

    def handle(self, job_id: str) -> JobHandle:
        return JobHandle(self, self.info(job_id).id)

    def info(self, job_id: str) -> JobInfo:
        return with_retries(lambda: self._describe(job_id), self.retry, f"{self.cloud}: describe job {job_id}")

    def list(self, limit: int = 50) -> list[JobInfo]:
        return with_retries(lambda: self._list(limit), self.retry, f"{self.cloud}: list jobs")

    def cancel(self, job_id: str) -> JobInfo:
        info = self.info(job_id)
        if info.state.terminal:
            return info
        with_retries(lambda: self._stop(info.id), self.retry, f"{self.cloud}: stop job {job_id}")
        return self.info(job_id)

    def logs(self, job_id: str, follow: bool = False, poll: float = 1.0, max_poll: float = 15.0) -> Iterator[str]:
        """The job's log lines as far as the cloud's log service has them; with `follow`, until it ends."""
        cursor: Any = None
        delay = poll
        while True:
            ended = self.info(job_id).state.terminal
            lines, cursor = with_retries(lambda: self._log_lines(job_id, cursor), self.retry,
                                         f"{self.cloud}: read the logs of job {job_id}")
            yield from lines
            if not follow or ended:
                return
            delay = poll if lines else min(max_poll, delay * 1.5)
            time.sleep(delay)

    # -- helpers for subclasses ----------------------------------------------------------------
    def checkpoints_uri(self, output_name: str) -> str:
        """Where a fine-tuning identity's checkpoints are kept: by default where the trainer mirrors
        them (`<store>/finetune/<output_name>/checkpoints`); clouds whose job writes them to the
        top-level checkpoint prefix (`stackwise.contract.checkpoint_uri`) say so."""
        return f"{self.stack.outputs.artifact_store.rstrip('/')}/finetune/{output_name}/checkpoints"

    def map_state(self, state: str) -> JobState:
        return self.states.get(state, JobState.PENDING)

    def outputs_for(self, spec: dict[str, Any], name: str, state: JobState, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The artifact URIs of a job (only once it SUCCEEDED), plus its result when readable."""
        if state is not JobState.SUCCEEDED:
            return {}
        root = job_uri(self.stack.outputs.artifact_store, name)
        outputs: dict[str, Any] = {"artifacts": root + "/", "result_uri": f"{root}/result.json"}
        if spec.get("kind") == "finetune":
            try:
                folder = spec_from_dict(spec).output_name
            except SpecError:
                folder = None
            if folder:  # shared by every attempt of the identity
                outputs["checkpoints"] = self.checkpoints_uri(folder) + "/"
        outputs.update(extra or {})
        workers = int(spec.get("workers") or 1) if spec.get("kind") == "index" else 1
        if workers > 1:
            result = self._merged_shard_results(root, workers)
        else:
            result = self._cached_result(f"{root}/result.json")
        if result:
            outputs.update({k: v for k, v in result.items() if k not in outputs})
        return outputs

    def _cached_result(self, uri: str) -> dict[str, Any] | None:
        """`_read_result`, remembered once read: a finished job's result never changes."""
        cache = self.__dict__.setdefault("_results", {})
        if uri not in cache:
            found = self._read_result(uri)
            if found is None:
                return None
            cache[uri] = found
        return cache[uri]

    def _read_result(self, uri: str) -> dict[str, Any] | None:
        """The workload's result JSON, read through fsspec with this machine's credentials for the
        artifact store (gcsfs, adlfs); None while it is absent or unreadable (the outputs then hold
        only the artifact URIs)."""
        def read() -> dict[str, Any] | None:
            try:
                import fsspec

                with fsspec.open(uri, "rb") as handle:
                    return json.loads(handle.read())
            except Exception:  # noqa: BLE001 - missing file, no credentials, no fsspec backend: not readable
                return None

        # In a thread of its own: adlfs makes fsspec's I/O loop the calling thread's event loop,
        # which would break the caller's own asyncio use (Pulumi's engine, a notebook's loop).
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1, thread_name_prefix="stackwise-result") as pool:
            return pool.submit(read).result()

    def _merged_shard_results(self, root: str, workers: int) -> dict[str, Any] | None:
        """A sharded index job's report: each node wrote `shards/<i>/result.json`; their sum,
        or None while any is unreadable (the outputs then hold only the artifact URIs)."""
        reports = []
        for shard in range(workers):
            report = self._cached_result(f"{root}/shards/{shard}/result.json")
            if not report:
                return None
            reports.append(report)
        from stackwise.workloads.index import merge_reports

        return merge_reports(reports)


def decode_spec(value: str) -> dict[str, Any]:
    return json.loads(base64.b64decode(value))
