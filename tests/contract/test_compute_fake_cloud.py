"""The compute half of "add a cloud": a cloud defined in one test module (tests/fake_cloud.py: its
registry entry, catalog offers, Pulumi side and `FakeCompute` on a small job API over HTTP) is
plugged in through `stackwise.clouds.CLOUDS` alone and passes the same compute contract as
SageMaker, Vertex AI, Azure ML and Kubernetes, real jobs included: each node of a job runs the
bootstrap and the index workload as a process with the job's environment, reading and writing S3
served by moto. Its offline plan and Pulumi program are tests/infra/test_cloud_registry.py."""

from __future__ import annotations

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
from cloud_fixtures import JOB_STORE_KEY, JOB_STORE_KEY_ENV, image_process, index_spec, job_vector_store  # noqa: E402
from drivers import CloudComputeDriver, ComputeCloud, aws_node_env, fast_retries, moto_s3, served  # noqa: E402
from sagemaker_emulator import SageMakerEmulator  # noqa: E402

from stackwise.jobs import JobState  # noqa: E402
from stackwise.testing.compute import ComputeContract  # noqa: E402

BUCKET = "sw-fake-artifacts"


@pytest.fixture(scope="module")
def service():
    server = fake_cloud.FakeCloudAPI()
    yield server
    server.stop()


s3 = served(SageMakerEmulator)  # moto: the fake cloud's object store speaks S3


@pytest.fixture
def platform(service, s3, job_store, tmp_path, monkeypatch):
    import s3fs

    import stackwise

    fake_cloud.plugged_in(monkeypatch)
    moto_s3(s3, tmp_path, monkeypatch, BUCKET)
    job_store.reset()
    monkeypatch.setenv(JOB_STORE_KEY_ENV, JOB_STORE_KEY)
    monkeypatch.setenv("FAKECLOUD_ENDPOINT", service.url)
    service.jobs.clear()
    fake_cloud.use_stack(tmp_path, monkeypatch, {"artifact_store": f"s3://{BUCKET}", "default_gpu": "T4",
                                                 "training_image": "registry.fake/train:latest",
                                                 "vector_store": job_vector_store(job_store.url)})
    yield stackwise.connect("dev-fake")
    s3fs.S3FileSystem.clear_instance_cache()  # bound to this module's moto server


def _move(service, job_id, outcome):
    state = {"succeed": "DONE", "fail": "FAILED", "hold": "RUNNING"}[outcome]
    service.move(job_id, state, error="node 0 exited with code 2" if outcome == "fail" else None)


def _run(service, job_id, workdir, env):
    """What the fake cloud does with a job: each node runs the job's command with its env and rank."""
    job = service.jobs[job_id]
    service.move(job_id, "RUNNING")
    env = {**job["env"], **env}
    folder = workdir / job_id
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
    service.move(job_id, "DONE" if set(codes) == {0} else "FAILED")
    return dict(enumerate(codes)), lambda rank: (folder / f"{rank}.log").read_text()


FAKE = ComputeCloud(name="fake", root=f"s3://{BUCKET}", move=_move, run=_run,
                    bad_spec=lambda: index_spec(99, gpu="H100"))  # the fake cloud offers T4 only


class TestFakeCloudContract(ComputeContract):
    @pytest.fixture
    def driver(self, platform, service, s3, job_store, tmp_path):
        compute = platform.compute
        assert type(compute).__name__ == "FakeCompute", "the stack's compute comes from the cloud's registry entry"
        return CloudComputeDriver(FAKE, fast_retries(compute), service, job_store, tmp_path, aws_node_env(s3.endpoint))


def test_without_its_registry_entry_the_fake_cloud_is_unknown(tmp_path, monkeypatch):
    from stackwise.errors import ConfigError
    from stackwise.stack import load_stack

    stacks = tmp_path / "stacks"
    stacks.mkdir()
    (stacks / "Pulumi.dev-fake.yaml").write_text(fake_cloud.STACK_FILE, encoding="utf-8")
    monkeypatch.setenv("STACKWISE_STACKS_DIR", str(stacks))
    with pytest.raises(ConfigError, match="unknown cloud 'fake'"):
        load_stack("dev-fake")
