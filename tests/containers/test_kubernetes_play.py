"""An index job on Kubernetes, for real as far as one machine allows: `stackwise index --stack dev-k8s
--workers 2` creates an Indexed Job on the Kubernetes API stand-in (tests/emulators/kube_server.py,
every object checked against the Kubernetes OpenAPI schemas); each of its pods, as the Job
controller makes it from the Job's template (completion index, labels, env, the training image
built from this checkout), runs under `podman kube play` (tests/emulators/kube_runner.py), reads
its shard of the Lee corpus from S3 served by moto and writes the embedded index to S3; the host
then searches that index with `stackwise search --stack dev-k8s` and gets the same top 5 as the same
documents indexed on this machine.

Not exercised (no cluster can run here): the scheduler, node selectors and GPU requests, the pod
DNS names of the headless Service, Kueue admission, eviction.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EMULATORS = Path(__file__).resolve().parents[1] / "emulators"
sys.path.insert(0, str(EMULATORS))
sys.path.insert(0, str(EMULATORS.parent))  # tests/kube_validate.py

pytest.importorskip("kubernetes", reason="install stackwise[kubernetes]")
pytest.importorskip("kubernetes_validate", reason="install stackwise[dev]")
pytest.importorskip("boto3", reason="install stackwise[aws]")
pytest.importorskip("moto", reason="install stackwise[dev]")
pytest.importorskip("lancedb", reason="install stackwise[local]")

from _compare import assert_same_top5_as_local, assert_two_shards, host_search, lee_articles, s3_env  # noqa: E402
from kube_runner import KubeRunner  # noqa: E402
from kube_server import KubeServer  # noqa: E402
from sagemaker_emulator import SageMakerEmulator  # noqa: E402

# Its own bucket: moto's servers in one process share their S3 state, and the SageMaker container
# test indexes the same articles into sw-dev-artifacts.
BUCKET = "sw-k8s-artifacts"
NAMESPACE = "sw-dev"
ARTICLES = 12
QUERY = "bushfires threaten homes near Sydney"


def _validate(obj: dict) -> None:
    from kube_validate import validate_manifest

    validate_manifest(obj)


def test_index_pods_of_a_two_worker_job_run_under_podman_kube_play(images, engine, tmp_path, monkeypatch):
    import boto3

    import stackwise
    from stackwise.jobs import JobState

    s3_server = SageMakerEmulator().start()
    kube = KubeServer(validator=_validate).start()
    try:
        for key, value in s3_env(s3_server.endpoint).items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        texts = lee_articles(ARTICLES)
        for number, text in enumerate(texts):
            s3.put_object(Bucket=BUCKET, Key=f"data/docs/lee-{number:03d}.txt", Body=(text + "\n").encode())

        outputs = tmp_path / "dev-k8s-outputs.json"
        outputs.write_text(json.dumps({
            "cloud": "aws", "region": "us-east-1", "artifact_store": f"s3://{BUCKET}",
            "training_image": images["train"]["image"], "default_gpu": "A10G",
            "vector_store": {"kind": "embedded", "uri": f"s3://{BUCKET}/vectors"},
            "kubernetes": {"namespace": NAMESPACE, "service_account": "stackwise-jobs"}}), encoding="utf-8")
        monkeypatch.setenv("STACKWISE_OUTPUTS", str(outputs))
        monkeypatch.setenv("STACKWISE_HOME", str(tmp_path / ".stackwise"))
        monkeypatch.setenv("KUBECONFIG", kube.kubeconfig(str(tmp_path / "kubeconfig"), context="sw-devk8s"))

        # The CLI as a user runs it: the Job and its Service are created, validated, suspended then started.
        env = {k: v for k, v in os.environ.items()}
        proc = subprocess.run([sys.executable, "-m", "stackwise.cli", "index", f"s3://{BUCKET}/data/docs/", "--index",
                               "kb", "--stack", "dev-k8s", "--workers", "2", "--detach", "--json"], env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        job_id = json.loads(proc.stdout)["job"]
        job = kube.get("batch/v1", "jobs", NAMESPACE, job_id)
        assert job["spec"]["completions"] == 2 and job["spec"]["suspend"] is False
        assert kube.get("v1", "services", NAMESPACE, job_id)["spec"]["clusterIP"] == "None"

        runner = KubeRunner(kube, engine, tmp_path / "kube",
                            {**s3_env(s3_server.endpoint), "OMP_NUM_THREADS": "1", "STACKWISE_THREADS": "1"})
        codes = runner.run(job_id, NAMESPACE, timeout=900)
        logs = {i: (tmp_path / "kube" / job_id / f"{i}.log").read_text(errors="replace") for i in codes}
        assert codes == {0: 0, 1: 0}, "\n".join(log[-3000:] for log in logs.values())
        for index, log in logs.items():
            assert f"node {index} of 2" in log and "Traceback" not in log, log[-3000:]

        platform = stackwise.connect("dev-k8s")
        handle = platform.compute.handle(job_id)
        info = handle.wait(timeout=30, poll=0.1)
        assert info.state is JobState.SUCCEEDED, info.error
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"jobs/{job_id}/shards/")["Contents"]]
        assert_two_shards(info.outputs, keys, f"jobs/{job_id}", ARTICLES)
        # The pods' output is their log, as `stackwise jobs logs` reads it from the API.
        lines = list(handle.logs())
        assert any("node 1 of 2" in line for line in lines), lines[-20:]

        cloud_hits = host_search("dev-k8s", QUERY, "kb", tmp_path, **{k: v for k, v in s3_env(s3_server.endpoint).items()})
        assert_same_top5_as_local(cloud_hits, texts, QUERY, tmp_path)
    finally:
        import boto3
        import s3fs

        bucket = boto3.resource("s3", region_name="us-east-1", endpoint_url=s3_server.endpoint).Bucket(BUCKET)
        bucket.objects.all().delete()  # the state moto's other servers in this process would see
        bucket.delete()
        kube.stop()
        s3_server.stop()
        s3fs.S3FileSystem.clear_instance_cache()  # bound to the stopped server (see test_compute_kubernetes.py)
