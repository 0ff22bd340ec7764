"""The SageMaker adapter against moto in server mode on 127.0.0.1 (real HTTP, real boto3).

What is verified here: the CreateTrainingJob request (golden file, and as moto stores it), the
spec uploaded to S3, state mapping, wait, outputs (artifact URIs and the result JSON), cancel
through StopTrainingJob, one job per client token even when the create's answer is lost,
retries on throttling, clear errors for quota, instance type and missing credentials, logs
from CloudWatch Logs, and `stackwise index --stack dev-aws` routed here with no code change.
Not verified: a container really running (no SageMaker runs here).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "emulators"))

pytest.importorskip("boto3", reason="install stackwise[aws]")
pytest.importorskip("moto", reason="install stackwise[dev]")

from cloud_fixtures import check_golden, finetune_spec, index_spec, opt_ml_available, use_stack  # noqa: E402
from drivers import (CloudComputeDriver, ComputeCloud, aws_node_env, cloud_backend, contract_stack,  # noqa: E402
                     moto_s3, offline_stack, served)
from sagemaker_emulator import SageMakerEmulator  # noqa: E402
from sagemaker_runner import SageMakerRunner  # noqa: E402

from stackwise.jobs import JobState  # noqa: E402
from stackwise.testing.compute import ComputeContract  # noqa: E402

BUCKET = "sw-dev-artifacts"

emulator = served(SageMakerEmulator)


@pytest.fixture
def aws_env(emulator, monkeypatch, tmp_path):
    return moto_s3(emulator, tmp_path, monkeypatch, BUCKET)


@pytest.fixture
def platform(aws_env, tmp_path, monkeypatch):
    return use_stack("dev-aws", tmp_path, monkeypatch)


@pytest.fixture
def compute(platform):
    from stackwise.adapters.compute.sagemaker import SageMakerCompute

    return cloud_backend(platform.compute, SageMakerCompute)


@pytest.fixture(scope="module")
def opt_ml():
    """Why the instances cannot run as processes here (no mount namespace for /opt/ml), or None."""
    return opt_ml_available()


def _move(emulator, job_id, outcome):
    if outcome == "succeed":
        emulator.move(job_id, "Completed")
    elif outcome == "fail":
        emulator.move(job_id, "Failed", failure="AlgorithmError: the workload exited with code 2")
    else:
        emulator.move(job_id, "InProgress", secondary="Training")


def _run(emulator, job_id, workdir, env):
    runner = SageMakerRunner(emulator, None, workdir / "sagemaker", env)
    codes = runner.run(job_id, timeout=120)
    return {f"algo-{i + 1}": code for i, code in enumerate(codes)}, lambda host: runner.log(job_id, host)


SAGEMAKER = ComputeCloud(name="aws", root=f"s3://{BUCKET}", move=_move, run=_run,
                         # the catalog has no 3 x H100 instance on AWS
                         bad_spec=lambda: index_spec(99, gpu="H100", count=3))


class TestSageMakerContract(ComputeContract):
    @pytest.fixture
    def platform(self, aws_env, job_store, tmp_path, monkeypatch):
        return contract_stack("dev-aws", job_store, tmp_path, monkeypatch)

    @pytest.fixture
    def driver(self, compute, aws_env, job_store, tmp_path, opt_ml):
        return CloudComputeDriver(SAGEMAKER, compute, aws_env, job_store, tmp_path, aws_node_env(aws_env.endpoint),
                                  skip=opt_ml)


def test_finetune_request_matches_golden():
    from stackwise.adapters.compute.sagemaker import build_request

    stack = offline_stack("dev-aws")
    spec = finetune_spec()
    request = build_request(spec, stack)
    check_golden("sagemaker_finetune", request)
    assert request["ResourceConfig"] == {"InstanceType": "ml.p4d.24xlarge", "InstanceCount": 2, "VolumeSizeInGB": 100}
    assert request["EnableManagedSpotTraining"] is True
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 21600, "MaxWaitTimeInSeconds": 43200}
    # checkpoints live under the identity, shared by every attempt, where the trainer resumes from,
    # below the top-level prefix the bucket's lifecycle rule targets
    assert request["CheckpointConfig"] == {"S3Uri": f"s3://sw-dev-artifacts/checkpoints/{spec.output_name}",
                                           "LocalPath": "/opt/ml/checkpoints"}
    assert request["Environment"]["STACKWISE_CHECKPOINT_DIR"] == "/opt/ml/checkpoints"
    assert "STACKWISE_STACK" not in request["Environment"], "a job must not look its stack up by name"
    assert request["HyperParameters"]["stackwise_strategy"] == "fsdp"
    check_golden("sagemaker_index", build_request(index_spec(0), stack))


def test_submit_uploads_the_spec_and_sends_the_request(compute, aws_env):
    import boto3

    spec = finetune_spec()
    handle = compute.submit(spec)
    job = aws_env.job(handle.id)
    assert handle.id == f"sw-finetune-{spec.digest()}-1"
    assert job.resource_config["InstanceType"] == "ml.p4d.24xlarge"
    assert job.enable_managed_spot_training is True
    assert job.checkpoint_config["S3Uri"] == f"s3://{BUCKET}/checkpoints/{spec.output_name}"
    s3 = boto3.client("s3")
    body = s3.get_object(Bucket=BUCKET, Key=f"jobs/{handle.id}/input/spec.json")["Body"].read()
    assert json.loads(body) == json.loads(spec.model_dump_json())
    context = json.loads(s3.get_object(Bucket=BUCKET, Key=f"jobs/{handle.id}/input/context.json")["Body"].read())
    assert context["artifact_store"] == f"s3://{BUCKET}" and context["vector_store"]["uri"] == f"s3://{BUCKET}/vectors"
    assert (context["job_id"], context["attempt"], context["stack"]) == (handle.id, 1, "dev-aws")
    channel = job.input_data_config[0]
    assert channel["ChannelName"] == "stackwise"
    assert channel["DataSource"]["S3DataSource"]["S3Uri"] == f"s3://{BUCKET}/jobs/{handle.id}/input/"
    assert handle.status() is JobState.PENDING
    aws_env.move(handle.id, "InProgress", secondary="Training")
    assert handle.status() is JobState.RUNNING
    assert handle.info().spec["base"] == spec.base


def test_throttling_is_retried_and_a_lost_answer_never_makes_a_second_job(compute, aws_env):
    aws_env.faults.extend(["throttle", "throttle"])
    first = compute.submit(index_spec(1))
    assert aws_env.create_calls == 3
    aws_env.faults.append("lost-answer")
    second = compute.submit(index_spec(2))
    # Exactly one more CreateTrainingJob call: the one whose answer was lost. The job exists, so
    # the retry finds it by name instead of creating again.
    assert aws_env.create_calls == 4
    assert set(aws_env.backend.training_jobs) == {first.id, second.id} and first.id != second.id
    assert second.info().attempt == 1
    assert compute.submit(index_spec(2)).id == second.id  # the running job, no new create
    assert aws_env.create_calls == 4


def test_quota_and_instance_type_errors_say_how_to_fix(compute, aws_env):
    from stackwise.errors import CloudError, QuotaError

    aws_env.faults.append("quota")
    with pytest.raises(QuotaError, match="Service Quotas"):
        compute.submit(index_spec(3))
    aws_env.faults.append("instance-type")
    with pytest.raises(CloudError, match="instance type"):
        compute.submit(index_spec(4))
    aws_env.faults.extend(["throttle"] * 10)
    with pytest.raises(CloudError, match="kept failing"):
        compute.submit(index_spec(5))
    assert aws_env.backend.training_jobs == {}


def test_missing_credentials_say_how_to_configure_them(platform, monkeypatch):
    from stackwise.errors import CredentialsError

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(CredentialsError, match="aws configure"):
        platform.compute.submit(index_spec(6))


def test_logs_come_from_cloudwatch(compute, aws_env):
    handle = compute.submit(index_spec(7))
    assert list(handle.logs()) == []
    aws_env.write_logs(handle.id, ["loading spec", "@@progress {}"])
    aws_env.move(handle.id, "InProgress", secondary="Training")
    follow = handle.logs(follow=True)
    assert [next(follow), next(follow)] == ["loading spec", "@@progress {}"]
    aws_env.write_logs(handle.id, ["done"])
    aws_env.move(handle.id, "Completed")
    assert list(follow) == ["done"]


def test_list_and_get_by_id_from_a_new_platform(compute, aws_env, tmp_path, monkeypatch):
    handle = compute.submit(index_spec(8))
    again = use_stack("dev-aws", tmp_path, monkeypatch)
    assert again.jobs.get(handle.id).status() is JobState.PENDING
    assert handle.id in [info.id for info in again.jobs.list()]


def test_cli_index_routes_to_sagemaker(aws_env, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from stackwise.cli import app

    import boto3

    use_stack("dev-aws", tmp_path, monkeypatch)
    boto3.client("s3").put_object(Bucket=BUCKET, Key="data/docs/a.txt", Body=b"hello cloud\n")
    result = CliRunner().invoke(app, ["index", f"s3://{BUCKET}/data/docs/", "--index", "kb", "--stack", "dev-aws",
                                      "--detach", "--json"])
    assert result.exit_code == 0, result.output
    job_id = json.loads(result.stdout)["job"]
    assert job_id.startswith("sw-index-") and job_id in aws_env.backend.training_jobs


def test_connect_to_a_cloud_stack_stays_light_until_the_first_cloud_call(tmp_path):
    import os
    import subprocess

    from cloud_fixtures import OUTPUTS

    outputs = tmp_path / "out.json"
    outputs.write_text(json.dumps(OUTPUTS["dev-aws"]))
    script = (
        "import sys\n"
        "base = set(sys.modules)  # a .pth of google-cloud-aiplatform imports `google` at start-up\n"
        "import stackwise\n"
        "p = stackwise.connect('dev-aws'); p.stack.outputs\n"
        "before = {m.split('.')[0] for m in set(sys.modules) - base} & {'boto3', 'botocore', 'google', 'azure'}\n"
        "p.compute\n"
        "after = {m.split('.')[0] for m in sys.modules} & {'boto3', 'botocore'}\n"
        "print(sorted(before), sorted(after))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKWISE_")}
    env.update(STACKWISE_OUTPUTS=str(outputs), STACKWISE_HOME=str(tmp_path / "h"), AWS_EC2_METADATA_DISABLED="true",
               AWS_MAX_ATTEMPTS="1")
    proc = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[2], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[] ['boto3', 'botocore']"


# -- index shards, local paths -----------------------------------------------------------------
def _sharded_spec(n: int = 20):
    from stackwise.specs import IndexSpec

    return IndexSpec(source=f"s3://{BUCKET}/corpus-{n}/", index=f"kb{n}", workers=3)


def test_sharded_index_request_runs_one_instance_per_worker():
    from stackwise.adapters.compute.sagemaker import build_request

    stack = offline_stack("dev-aws")
    request = build_request(_sharded_spec(), stack)
    check_golden("sagemaker_index_sharded", request)
    assert request["ResourceConfig"]["InstanceCount"] == 3
    assert request["HyperParameters"]["stackwise_nodes"] == "3"


def test_sharded_index_outputs_sum_the_shard_reports(compute, aws_env):
    import boto3

    handle = compute.submit(_sharded_spec(21))
    s3 = boto3.client("s3")
    base = {"index": "kb21", "source": f"s3://{BUCKET}/corpus-21", "model": "all-MiniLM-L6-v2"}
    for shard, (docs, chunks) in enumerate([(4, 9), (3, 5), (5, 8)]):
        report = {**base, "documents": docs, "chunks": chunks, "added": chunks, "embedded": chunks,
                  "seconds": 10.0 + shard, "skipped": [{"path": f"s3://x/{shard}.bin", "reason": "binary"}] if shard else []}
        s3.put_object(Bucket=BUCKET, Key=f"jobs/{handle.id}/shards/{shard}/result.json", Body=json.dumps(report).encode())
    aws_env.move(handle.id, "Completed")
    outputs = handle.outputs
    assert (outputs["documents"], outputs["chunks"], outputs["added"], outputs["shards"]) == (12, 22, 22, 3)
    assert outputs["seconds"] == 12.0 and [s["path"] for s in outputs["skipped"]] == ["s3://x/1.bin", "s3://x/2.bin"]


def test_local_paths_are_refused_before_anything_is_sent(compute, aws_env, tmp_path):
    from stackwise.errors import SpecError
    from stackwise.specs import IndexSpec

    with pytest.raises(SpecError, match="a path on this machine") as caught:
        compute.submit(IndexSpec(source="./docs", index="kb"))
    assert f"s3://{BUCKET}/data/" in caught.value.fix
    with pytest.raises(SpecError, match="data 'train.jsonl'"):
        compute.submit(finetune_spec().model_copy(update={"data": "train.jsonl"}))
    with pytest.raises(SpecError, match="base"):
        compute.submit(finetune_spec().model_copy(update={"base": str(tmp_path)}))
    assert aws_env.create_calls == 0 and aws_env.backend.training_jobs == {}


def test_cli_refuses_a_local_source_on_a_cloud_stack(aws_env, tmp_path, monkeypatch):
    import os
    import subprocess

    use_stack("dev-aws", tmp_path, monkeypatch)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("hello cloud\n")
    proc = subprocess.run([sys.executable, "-m", "stackwise.cli", "index", str(docs), "--index", "kb", "--stack",
                           "dev-aws", "--detach"], env=dict(os.environ, COLUMNS="300"), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "cannot read" in proc.stderr and f"s3://{BUCKET}/data/" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert aws_env.backend.training_jobs == {}


def test_a_stack_whose_outputs_lack_the_training_image_is_exit_2_and_no_job(aws_env, tmp_path, monkeypatch):
    import os
    import subprocess

    from cloud_fixtures import OUTPUTS

    import boto3

    boto3.client("s3").put_object(Bucket=BUCKET, Key="data/docs/a.txt", Body=b"hello cloud\n")
    before = {o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix="jobs/").get("Contents", [])}
    outputs = {k: v for k, v in OUTPUTS["dev-aws"].items() if k != "training_image"}
    path = tmp_path / "no-image.json"
    path.write_text(json.dumps(outputs))
    env = dict(os.environ, COLUMNS="300", STACKWISE_OUTPUTS=str(path), STACKWISE_HOME=str(tmp_path / ".stackwise"))
    proc = subprocess.run([sys.executable, "-m", "stackwise.cli", "index", f"s3://{BUCKET}/data/docs/", "--index",
                           "kb", "--stack", "dev-aws", "--detach"], env=env, capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 2, proc.stderr
    assert "no training_image" in proc.stderr and "fix:" in proc.stderr and "Traceback" not in proc.stderr
    assert aws_env.backend.training_jobs == {}
    after = {o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix="jobs/").get("Contents", [])}
    assert after == before, "nothing uploaded for a job that cannot start"
