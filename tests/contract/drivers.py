"""What the cloud compute and deploy tests share: one driver per contract, and the fixture plumbing
around it (emulators started per module, stacks from outputs, backends with fast retries).

Each cloud's test module keeps only what differs in that cloud's emulator, as data and small hooks:
a `ComputeCloud` (how a job is moved to succeed, fail or hold, how its nodes really run, where its
result lives, the spec it refuses) for `CloudComputeDriver`, and the deployer factory, target and
count of created objects for `CloudDeployDriver`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

EMULATORS = Path(__file__).resolve().parents[1] / "emulators"
if str(EMULATORS) not in sys.path:
    sys.path.insert(0, str(EMULATORS))

from cloud_fixtures import (JOB_STORE_KEY, JOB_STORE_KEY_ENV, OUTPUTS, aws_moto_env, index_spec,  # noqa: E402
                            job_vector_store, real_index_job, use_stack)

from stackwise.testing.compute import ComputeDriver, Outcome  # noqa: E402
from stackwise.testing.deploy import DeployDriver  # noqa: E402

BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


# -- fixture plumbing ------------------------------------------------------------------------------
def served(make: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A module-scoped fixture: `make(*args, **kwargs).start()`, stopped after the module."""

    @pytest.fixture(scope="module")
    def fixture():
        server = make(*args, **kwargs).start()
        yield server
        server.stop()

    return fixture


def fast_retries(backend: Any, attempts: int = 4, base_s: float = 0.01, max_s: float = 0.05) -> Any:
    """`backend` retrying `attempts` times with waits of milliseconds (the tests inject the faults)."""
    backend.retry = type(backend.retry)(attempts=attempts, base_s=base_s, max_s=max_s)
    return backend


def cloud_backend(backend: Any, kind: type) -> Any:
    """The stack's backend, which must be a `kind`, with fast retries."""
    assert isinstance(backend, kind)
    return fast_retries(backend)


def moto_s3(emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bucket: str | None = None) -> Any:
    """boto3 pointed at the moto `emulator`, emptied, with `bucket` made."""
    aws_moto_env(emulator.endpoint, tmp_path, monkeypatch)
    emulator.reset()
    if bucket:
        import boto3

        s3 = boto3.client("s3", region_name="us-east-1")
        if bucket not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
            s3.create_bucket(Bucket=bucket)
    return emulator


def aws_node_env(endpoint: str) -> dict[str, str]:
    """What an instance or a pod needs to reach moto's S3 (the cloud would give the job's role instead)."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def contract_stack(name: str, job_store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **changes: Any) -> Any:
    """`connect(name)` for the compute contract: its vector store is the (emptied) job store that the
    real jobs' nodes reach with $STACKWISE_TEST_JOB_STORE_KEY."""
    job_store.reset()
    monkeypatch.setenv(JOB_STORE_KEY_ENV, JOB_STORE_KEY)
    return use_stack(name, tmp_path, monkeypatch, vector_store=job_vector_store(job_store.url), **changes)


def offline_stack(name: str) -> Any:
    """The `Stack` of OUTPUTS[name] with no config and no I/O (for `build_request` and friends)."""
    from stackwise.contract import StackOutputs
    from stackwise.stack import Stack

    outputs = OUTPUTS[name]
    return Stack(name=name, cloud=outputs["cloud"], region=outputs["region"], config={}, source="test",
                 _outputs=StackOutputs.model_validate(outputs))


# -- the compute contract on a cloud's emulator -----------------------------------------------------
NodeRun = tuple[Mapping[Any, int], Callable[[Any], str]]


@dataclass(frozen=True)
class ComputeCloud:
    """What differs between the clouds' emulators under the compute contract."""

    name: str  #: names the real jobs' indexes (`<name>-real-<workers>`)
    root: str  #: the stack's artifact store, where each job has its folder under jobs/
    move: Callable[[Any, str, Outcome], None]  #: (emulator, job id, outcome): the job's state as the cloud moves it
    run: Callable[[Any, str, Path, dict[str, str]], NodeRun]
    """(emulator, job id, workdir, node env): run every node of the job through the cloud's runner;
    returns each node's exit code and a function giving a node's log."""
    bad_spec: Callable[[], Any]  #: a spec this cloud's catalog cannot place
    folder: Callable[[Any, str], str] = lambda emulator, job_id: job_id  #: the job's folder name under jobs/


def result_keys(workers: int) -> list[str]:
    """Where a job's result is, relative to its folder (and each shard's, for a sharded job)."""
    return ["result.json"] + ([f"shards/{i}/result.json" for i in range(workers)] if workers > 1 else [])


def _put(uri: str, text: str) -> None:
    if uri.startswith("s3://"):  # through boto3 (the adapter's own client), not s3fs's cached filesystems
        import boto3

        bucket, key = uri[len("s3://"):].split("/", 1)
        boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=text.encode())
        return
    import fsspec

    with fsspec.open(uri, "w") as out:
        out.write(text)


@dataclass
class CloudComputeDriver(ComputeDriver):
    """The compute contract's driver for any cloud emulator; `cloud` holds what differs."""

    cloud: ComputeCloud
    compute: Any
    emulator: Any
    job_store: Any
    workdir: Path
    node_env: dict[str, str] = field(default_factory=dict)
    skip: str | None = None  #: why real jobs cannot run here, if they cannot
    timeout: float = 10.0

    def backend(self) -> Any:
        return self.compute

    def spec(self, outcome: Outcome, n: int = 0) -> Any:
        return index_spec(n)

    def bad_spec(self) -> Any:
        return self.cloud.bad_spec()

    def advance(self, handle: Any, outcome: Outcome) -> None:
        self.cloud.move(self.emulator, handle.id, outcome)

    def real_job(self, workers: int = 1) -> Any:
        if self.skip:
            pytest.skip(self.skip)
        return real_index_job(self.cloud.root, job_vector_store(self.job_store.url), f"{self.cloud.name}-real-{workers}",
                              workers)

    def leave_stale_result(self, handle: Any, report: Mapping[str, Any]) -> None:
        folder = f"{self.cloud.root}/jobs/{self.cloud.folder(self.emulator, handle.id)}"
        for key in result_keys(handle.info().spec.get("workers") or 1):
            _put(f"{folder}/{key}", json.dumps(report))

    def run(self, handle: Any) -> None:
        codes, log = self.cloud.run(self.emulator, handle.id, self.workdir,
                                    {**self.node_env, JOB_STORE_KEY_ENV: JOB_STORE_KEY})
        assert set(codes.values()) == {0}, "\n".join(log(node)[-3000:] for node in codes)


# -- the deploy contract on a cloud's emulator ------------------------------------------------------
def chat_target(root: str, version: int, model: str = "chat") -> Any:
    """`<model>:<version>`, registered with its artifacts at `<root>/<model>-<version>/model`."""
    from stackwise.deploy import DeployTarget

    return DeployTarget(model=model, version=str(version), artifact_uri=f"{root}/{model}-{version}/model",
                        base_model=BASE_MODEL)


@dataclass
class CloudDeployDriver(DeployDriver):
    """The deploy contract's driver for any cloud emulator; the hooks hold what differs."""

    folder: Path  #: the test's own folder: stack outputs and state go under it
    deployer: Callable[[Path, list[dict[str, Any]] | None], Any]
    """(folder, endpoints): the stack's deployer with its outputs and state in `folder`; `endpoints`
    None is the endpoint of the test, [] a stack that exports none."""
    version: Callable[[int], Any]  #: the target of `chat:<version>`
    count: Callable[[], int]  #: models and deployed models created so far on the cloud
    wait: Callable[[Any], None] = lambda backend: None  #: let an endpoint update finish
    server: Any = None  #: the emulator, for a cloud's own checks in its contract class

    def backend(self) -> Any:
        return self.deployer(self.folder, None)

    def backend_without_endpoint(self) -> Any:
        bare = self.folder / "bare"
        bare.mkdir(exist_ok=True)
        return self.deployer(bare, [])

    def target(self, version: int) -> Any:
        return self.version(version)

    def settle(self, backend: Any) -> None:
        self.wait(backend)

    def created(self) -> int:
        return self.count()
