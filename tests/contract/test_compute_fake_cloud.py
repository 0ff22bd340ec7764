"""The compute half of "add a cloud": a cloud defined in one test module (tests/fake_cloud.py: its
registry entry, catalog offers, Pulumi side and `FakeCompute` on a small job API over HTTP) is
plugged in through `stackwise.clouds.CLOUDS` alone and passes the same compute contract as
SageMaker, Vertex AI, Azure ML and Kubernetes, real jobs included: each node of a job runs the
bootstrap and the index workload as a process with the job's environment, reading and writing S3
served by moto. Its offline plan and Pulumi program are tests/infra/test_cloud_registry.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
for folder in (TESTS, TESTS / "emulators"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

pytest.importorskip("boto3", reason="install stackwise[aws]")
pytest.importorskip("moto", reason="install stackwise[dev]")

import fake_cloud  # noqa: E402
from cloud_fixtures import (JOB_STORE_KEY, JOB_STORE_KEY_ENV, aws_moto_env, image_process, index_spec,  # noqa: E402
                            job_vector_store, real_index_job)
from sagemaker_emulator import SageMakerEmulator  # noqa: E402

from stackwise.jobs import JobState  # noqa: E402
from stackwise.testing.compute import ComputeContract, ComputeDriver  # noqa: E402

BUCKET = "sw-fake-artifacts"


@pytest.fixture(scope="module")
def service():
    server = fake_cloud.FakeJobService()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def s3():
    server = SageMakerEmulator().start()  # moto: the fake cloud's object store speaks S3
    yield server
    server.stop()


@pytest.fixture
def platform(service, s3, job_store, tmp_path, monkeypatch):
    import boto3
    import s3fs

    import stackwise

    fake_cloud.plugged_in(monkeypatch)
    aws_moto_env(s3.endpoint, tmp_path, monkeypatch)
    s3.reset()
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
    job_store.reset()
    monkeypatch.setenv(JOB_STORE_KEY_ENV, JOB_STORE_KEY)
    monkeypatch.setenv("FAKECLOUD_ENDPOINT", service.url)
    service.jobs.clear()
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    (stacks / "Pulumi.dev-fake.yaml").write_text(fake_cloud.STACK_FILE, encoding="utf-8")
    outputs = tmp_path / "dev-fake-outputs.json"
    outputs.write_text(json.dumps({"cloud": "fake", "region": "fake-east-1", "artifact_store": f"s3://{BUCKET}",
                                   "training_image": "registry.fake/train:latest", "default_gpu": "T4",
                                   "vector_store": job_vector_store(job_store.url)}), encoding="utf-8")
    monkeypatch.setenv("STACKWISE_STACKS_DIR", str(stacks))
    monkeypatch.setenv("STACKWISE_OUTPUTS", str(outputs))
    monkeypatch.setenv("STACKWISE_HOME", str(tmp_path / ".stackwise"))
    yield stackwise.connect("dev-fake")
    s3fs.S3FileSystem.clear_instance_cache()  # bound to this module's moto server


class FakeDriver(ComputeDriver):
    timeout = 10.0

    def __init__(self, compute, service, s3, job_store, workdir):
        self.compute, self.service, self.s3, self.job_store, self.workdir = compute, service, s3, job_store, workdir

    def backend(self):
        return self.compute

    def spec(self, outcome, n=0):
        return index_spec(n)

    def bad_spec(self):
        return index_spec(99, gpu="H100")  # the fake cloud offers T4 only

    def advance(self, handle, outcome):
        state = {"succeed": "DONE", "fail": "FAILED", "hold": "RUNNING"}[outcome]
        self.service.move(handle.id, state, error="node 0 exited with code 2" if outcome == "fail" else None)

    def real_job(self, workers=1):
        return real_index_job(f"s3://{BUCKET}", job_vector_store(self.job_store.url), f"fake-real-{workers}", workers)

    def leave_stale_result(self, handle, report):
        import boto3

        workers = handle.info().spec.get("workers") or 1
        keys = ["result.json"] + ([f"shards/{i}/result.json" for i in range(workers)] if workers > 1 else [])
        for key in keys:
            boto3.client("s3").put_object(Bucket=BUCKET, Key=f"jobs/{handle.id}/{key}", Body=json.dumps(report).encode())

    def run(self, handle):
        """What the fake cloud does with a job: each node runs the job's command with its env and rank."""
        job = self.service.jobs[handle.id]
        self.service.move(handle.id, "RUNNING")
        env = {**job["env"], "AWS_ENDPOINT_URL": self.s3.endpoint, "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_EC2_METADATA_DISABLED": "true", JOB_STORE_KEY_ENV: JOB_STORE_KEY}
        folder = self.workdir / handle.id
        folder.mkdir(parents=True, exist_ok=True)
        # The fake cloud's image knows its cloud, as an image built from a checkout with its registry
        # entry would: the job context names cloud `fake`, which a job validates.
        (folder / "sitecustomize.py").write_text(
            "import stackwise.clouds as c\n"
            f"c.CLOUDS[{fake_cloud.NAME!r}] = c.CloudRef(**{fake_cloud.REF.__dict__!r})\n", encoding="utf-8")
        env["PYTHONPATH"] = str(folder)
        nodes = [image_process(job["command"], {**env, "NODE_RANK": str(rank), "MASTER_ADDR": "127.0.0.1"},
                               folder / f"{rank}.log", folder) for rank in range(job["nodes"])]
        codes = [node.wait(timeout=120) for node in nodes]
        self.service.move(handle.id, "DONE" if set(codes) == {0} else "FAILED")
        assert set(codes) == {0}, "\n".join((folder / f"{r}.log").read_text()[-3000:] for r in range(job["nodes"]))


class TestFakeCloudContract(ComputeContract):
    @pytest.fixture
    def driver(self, platform, service, s3, job_store, tmp_path):
        from stackwise.adapters.compute.base import Retry

        compute = platform.compute
        assert type(compute).__name__ == "FakeCompute", "the stack's compute comes from the cloud's registry entry"
        compute.retry = Retry(attempts=4, base_s=0.01, max_s=0.05)
        return FakeDriver(compute, service, s3, job_store, tmp_path)


def test_without_its_registry_entry_the_fake_cloud_is_unknown(tmp_path, monkeypatch):
    from stackwise.errors import ConfigError
    from stackwise.stack import load_stack

    stacks = tmp_path / "stacks"
    stacks.mkdir()
    (stacks / "Pulumi.dev-fake.yaml").write_text(fake_cloud.STACK_FILE, encoding="utf-8")
    monkeypatch.setenv("STACKWISE_STACKS_DIR", str(stacks))
    with pytest.raises(ConfigError, match="unknown cloud 'fake'"):
        load_stack("dev-fake")
