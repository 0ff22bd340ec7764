"""SageMaker's training contract, for real: the adapter creates the job in moto, a runner plays
SageMaker (tests/emulators/sagemaker_runner.py: /opt/ml laid out, the input channel downloaded
from S3, one container per instance started as `<image> train`), and the training image built
from this repository runs the bootstrap and the workload inside.

adapter -> SageMaker API (moto) -> containers -> S3 (moto) -> adapter outputs -> `stackwise search`
is one flow here: an index job on 2 instances (one shard each) reads documents from S3 and writes
the embedded index to S3; the host then searches it with `stackwise search --stack dev-aws` and
gets the same top 5 as the same documents indexed on this machine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

EMULATORS = Path(__file__).resolve().parents[1] / "emulators"
sys.path.insert(0, str(EMULATORS))

pytest.importorskip("boto3", reason="install stackwise[aws]")
pytest.importorskip("moto", reason="install stackwise[dev]")
pytest.importorskip("lancedb", reason="install stackwise[local]")

from _compare import assert_same_top5_as_local, assert_two_shards, host_search, lee_articles, s3_env  # noqa: E402
from sagemaker_emulator import SageMakerEmulator  # noqa: E402
from sagemaker_runner import SageMakerRunner  # noqa: E402

BUCKET = "sw-dev-artifacts"
ARTICLES = 12
QUERY = "bushfires threaten homes near Sydney"


@pytest.fixture(scope="module")
def emulator():
    server = SageMakerEmulator().start()
    yield server
    server.stop()


@pytest.fixture
def aws(emulator, monkeypatch, tmp_path):
    for key, value in s3_env(emulator.endpoint).items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    emulator.reset()
    import boto3

    s3 = boto3.client("s3", region_name="us-east-1")
    if BUCKET not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
        s3.create_bucket(Bucket=BUCKET)
    return emulator


def _outputs(tmp_path: Path, image: str) -> Path:
    path = tmp_path / "dev-aws-outputs.json"
    path.write_text(json.dumps({
        "cloud": "aws", "region": "us-east-1", "artifact_store": f"s3://{BUCKET}",
        "job_role": "arn:aws:iam::123456789012:role/sw-dev-jobs-role", "training_image": image,
        "vector_store": {"kind": "embedded", "uri": f"s3://{BUCKET}/vectors"},
    }), encoding="utf-8")
    return path


def test_a_sharded_index_job_runs_in_containers_and_the_host_searches_its_index(aws, images, engine, tmp_path,
                                                                                 monkeypatch):
    import boto3

    import stackwise
    from stackwise.jobs import JobState

    s3 = boto3.client("s3", region_name="us-east-1")
    texts = lee_articles(ARTICLES)
    for number, text in enumerate(texts):
        s3.put_object(Bucket=BUCKET, Key=f"data/docs/lee-{number:03d}.txt", Body=(text + "\n").encode())
    monkeypatch.setenv("STACKWISE_OUTPUTS", str(_outputs(tmp_path, images["train"]["image"])))
    monkeypatch.setenv("STACKWISE_HOME", str(tmp_path / ".stackwise"))
    platform = stackwise.connect("dev-aws")
    handle = platform.index(source=f"s3://{BUCKET}/data/docs/", index="kb", workers=2)
    assert handle.status() is JobState.PENDING

    runner = SageMakerRunner(aws, engine, tmp_path / "sagemaker",
                             {**s3_env(aws.endpoint), "OMP_NUM_THREADS": "1", "STACKWISE_THREADS": "1"})
    codes = runner.run(handle.id, timeout=900)
    assert codes == [0, 0], runner.log(handle.id, "algo-1")[-3000:] + runner.log(handle.id, "algo-2")[-3000:]
    for host in ("algo-1", "algo-2"):
        log = runner.log(handle.id, host)
        assert "Traceback" not in log, log[-3000:]
    info = handle.wait(timeout=30, poll=0.1)
    assert info.state is JobState.SUCCEEDED, info.error
    # Each instance read only its own shard's files and reported under shards/<rank>/.
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"jobs/{handle.id}/shards/")["Contents"]]
    assert_two_shards(info.outputs, keys, f"jobs/{handle.id}", ARTICLES)
    # Resubmitting the spec now that its job ended starts attempt 2 of the same identity.
    again = platform.index(source=f"s3://{BUCKET}/data/docs/", index="kb", workers=2)
    assert again.id.endswith("-2") and again.info().identity == info.identity

    # The host searches the index the containers wrote to S3 ...
    cloud_hits = host_search("dev-aws", QUERY, "kb", tmp_path)
    # ... and gets the top 5 of the same documents indexed on this machine.
    assert_same_top5_as_local(cloud_hits, texts, QUERY, tmp_path)


def test_a_finetune_killed_in_its_container_resumes_in_the_next_attempts_container(aws, images, engine, tmp_path,
                                                                                   monkeypatch):
    """Attempt 1 is SIGKILLed after its first checkpoint (what a spot interruption does); SageMaker
    uploads /opt/ml/checkpoints to the job's CheckpointConfig, which lives under the spec's identity;
    submitting the spec again starts attempt 2, whose container finds the checkpoint restored in
    /opt/ml/checkpoints and resumes from it."""
    import time

    import boto3

    import stackwise
    from stackwise.jobs import JobState
    from stackwise.specs import FineTuneSpec
    from stackwise.training.tiny import build_tiny_model

    texts = lee_articles(ARTICLES) * 8
    model = build_tiny_model(tmp_path / "tiny", texts, vocab_size=300)
    s3 = boto3.client("s3", region_name="us-east-1")
    for path in model.iterdir():
        s3.upload_file(str(path), BUCKET, f"models/tiny/{path.name}")
    s3.put_object(Bucket=BUCKET, Key="data/train.jsonl",
                  Body="".join(json.dumps({"text": t}) + "\n" for t in texts).encode())
    monkeypatch.setenv("STACKWISE_OUTPUTS", str(_outputs(tmp_path, images["train"]["image"])))
    monkeypatch.setenv("STACKWISE_HOME", str(tmp_path / ".stackwise"))
    platform = stackwise.connect("dev-aws")
    spec = FineTuneSpec(base=f"s3://{BUCKET}/models/tiny", data=f"s3://{BUCKET}/data/train.jsonl", name="tiny-chat",
                        lora={"r": 4, "alpha": 8, "target_modules": "all-linear"},
                        training={"max_steps": 300, "checkpoint_every": 50, "batch_size": 2, "max_seq_length": 48,
                                  "logging_every": 5, "eval_max_examples": 8, "precision": "fp32"})
    first = platform.finetune(spec)
    runner = SageMakerRunner(aws, engine, tmp_path / "sagemaker",
                             {**s3_env(aws.endpoint), "OMP_NUM_THREADS": "2", "STACKWISE_THREADS": "2"})
    running = runner.start(first.id)
    marker = running[0][2] / "checkpoints" / "checkpoint-50" / "stackwise-complete"
    deadline = time.monotonic() + 600
    while not marker.is_file():
        assert time.monotonic() < deadline, runner.log(first.id)[-3000:]
        assert running[0][1].poll() is None, runner.log(first.id)[-3000:]
        time.sleep(0.5)
    runner.kill(first.id)
    assert runner.finish(first.id, running, timeout=120) != [0]
    assert first.wait(timeout=30, poll=0.1).state is JobState.FAILED
    # SageMaker uploaded the checkpoint under the identity, not under attempt 1's job, in the
    # top-level folder the bucket's lifecycle rule targets (stackwise.contract.CHECKPOINTS_PREFIX).
    prefix = f"checkpoints/{spec.output_name}/checkpoint-50/"
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("KeyCount", 0) > 0

    second = platform.finetune(spec)
    assert second.id == f"sw-{spec.identity}-2"
    assert runner.run(second.id, timeout=900) == [0], runner.log(second.id)[-3000:]
    report = second.result(timeout=30)
    assert report["resumed_from_step"] is not None and 50 <= report["resumed_from_step"] < 300, report
    assert report["steps"] == 300
    assert "resuming from checkpoint-" in runner.log(second.id)
