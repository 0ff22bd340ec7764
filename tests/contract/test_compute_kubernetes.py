"""The Kubernetes compute adapter against a Kubernetes API stand-in (tests/emulators/kube_server.py):
real HTTP, the official `kubernetes` client, every object the adapter creates validated against
the Kubernetes OpenAPI schemas (kubernetes-validate, strict, the version the adapter targets).

Verified: the Job and Service manifests (golden file, schema), GPU requests, node selectors and
tolerations per catalog GPU, spot placement, Kueue's queue label and suspend semantics, the
state mapping on the client's own V1Job / V1Pod models for every phase (queued, unschedulable,
running, evicted, complete, backoff-limit and pod-failure-policy failure, deleted), the compute
contract (one job per identity, attempts, cancel by deletion with foreground propagation, wait,
outputs; real index jobs whose pods run as processes with the environment a Job's pods get,
reading and writing S3 served by moto), logs from the pods, retries on 503, and bad input: no
kubeconfig, an unknown context, a forbidden namespace (403), an unschedulable GPU, each exit 2
with nothing created. The pods of a generated index job run for real under `podman kube play`
in tests/containers/test_kubernetes_play.py. Not verified: a real cluster (none can run here).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "emulators"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/kube_validate.py

pytest.importorskip("kubernetes", reason="install stackwise[kubernetes]")
pytest.importorskip("kubernetes_validate", reason="install stackwise[dev]")
pytest.importorskip("boto3", reason="install stackwise[aws]")
pytest.importorskip("moto", reason="install stackwise[dev]")

from cloud_fixtures import (JOB_STORE_KEY, JOB_STORE_KEY_ENV, OUTPUTS, aws_moto_env, check_golden,  # noqa: E402
                            finetune_spec, index_spec, job_vector_store, real_index_job, use_stack)
from kube_runner import KubeRunner  # noqa: E402
from kube_server import KubeServer  # noqa: E402
from sagemaker_emulator import SageMakerEmulator  # noqa: E402

from stackwise.jobs import JobState  # noqa: E402
from stackwise.testing.compute import ComputeContract, ComputeDriver  # noqa: E402

BUCKET = "sw-dev-artifacts"
NAMESPACE = "sw-dev"
CONTEXT = "sw-devk8s"  # stackwise:kubernetes.context of stacks/Pulumi.dev-k8s.yaml
TOKEN = "kube-t0ken-n0t-f0r-l0gs"


def validate(obj: dict) -> None:
    """What the API server checks first: the object against its OpenAPI schema (strict), and its names."""
    from kube_validate import validate_manifest

    validate_manifest(obj)


@pytest.fixture(scope="module")
def kube():
    server = KubeServer(validator=validate).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def s3():
    server = SageMakerEmulator().start()  # moto in server mode: S3 is what the jobs use here
    yield server
    server.stop()


@pytest.fixture
def aws_env(s3, monkeypatch, tmp_path):
    aws_moto_env(s3.endpoint, tmp_path, monkeypatch)
    s3.reset()
    import boto3

    client = boto3.client("s3", region_name="us-east-1")
    if BUCKET not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
        client.create_bucket(Bucket=BUCKET)
    return s3


@pytest.fixture
def cluster(kube, tmp_path, monkeypatch):
    kube.reset()
    monkeypatch.setenv("KUBECONFIG", kube.kubeconfig(str(tmp_path / "kubeconfig"), context=CONTEXT, token=TOKEN))
    return kube


def _platform(tmp_path, monkeypatch, **changes):
    outputs = dict(OUTPUTS["dev-k8s"])
    if "kubernetes" in changes:
        changes["kubernetes"] = {**outputs["kubernetes"], **changes["kubernetes"]}
    return use_stack("dev-k8s", tmp_path, monkeypatch, **changes)


@pytest.fixture
def platform(cluster, aws_env, tmp_path, monkeypatch):
    return _platform(tmp_path, monkeypatch)


@pytest.fixture
def compute(platform):
    from stackwise.adapters.compute.kubernetes import KubernetesCompute

    backend = platform.compute
    assert isinstance(backend, KubernetesCompute)
    backend.retry = type(backend.retry)(attempts=4, base_s=0.01, max_s=0.05)
    return backend


def _node_env(endpoint: str) -> dict[str, str]:
    """What a pod needs to reach moto's S3 (on a cluster, the service account's cloud identity)."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def _status(kube, name, status):
    kube.update_status("batch/v1", "jobs", NAMESPACE, name, status)


class KubeDriver(ComputeDriver):
    timeout = 10.0

    def __init__(self, compute, kube, s3, job_store=None, workdir=None):
        self.compute, self.kube, self.s3, self.job_store, self.workdir = compute, kube, s3, job_store, workdir

    def backend(self):
        return self.compute

    def spec(self, outcome, n=0):
        return index_spec(n)

    def real_job(self, workers=1):
        return real_index_job(f"s3://{BUCKET}", job_vector_store(self.job_store.url), f"k8s-real-{workers}", workers)

    def leave_stale_result(self, handle, report):
        import boto3

        workers = handle.info().spec.get("workers") or 1
        keys = ["result.json"] + ([f"shards/{i}/result.json" for i in range(workers)] if workers > 1 else [])
        for key in keys:
            boto3.client("s3").put_object(Bucket=BUCKET, Key=f"jobs/{handle.id}/{key}", Body=json.dumps(report).encode())

    def run(self, handle):
        runner = KubeRunner(self.kube, None, self.workdir / "kube",
                            {**_node_env(self.s3.endpoint), JOB_STORE_KEY_ENV: JOB_STORE_KEY})
        codes = runner.run(handle.id, NAMESPACE, timeout=120)
        assert set(codes.values()) == {0}, "\n".join(
            (self.workdir / "kube" / handle.id / f"{i}.log").read_text()[-3000:] for i in codes)

    def advance(self, handle, outcome):
        if outcome == "succeed":
            _status(self.kube, handle.id, {"active": 0, "ready": 0, "succeeded": 1, "completionTime": "2026-12-05T10:00:00Z",
                                           "conditions": [{"type": "Complete", "status": "True"}]})
        elif outcome == "fail":
            _status(self.kube, handle.id, {"active": 0, "ready": 0, "failed": 3, "conditions": [
                {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                 "message": "Job has reached the specified backoff limit"}]})
        else:
            _status(self.kube, handle.id, {"active": 1, "ready": 1, "startTime": "2026-12-05T10:00:00Z"})

    def bad_spec(self):
        return index_spec(99, gpu="H100")  # dev-k8s says which nodes carry T4, L4 and A10G only


class TestKubernetesContract(ComputeContract):
    @pytest.fixture
    def platform(self, cluster, aws_env, job_store, tmp_path, monkeypatch):
        job_store.reset()
        monkeypatch.setenv(JOB_STORE_KEY_ENV, JOB_STORE_KEY)
        return _platform(tmp_path, monkeypatch, vector_store=job_vector_store(job_store.url))

    @pytest.fixture
    def driver(self, compute, cluster, aws_env, job_store, tmp_path):
        return KubeDriver(compute, cluster, aws_env, job_store, tmp_path)


# -- manifests ---------------------------------------------------------------------------------

def _stack(monkeypatch, tmp_path, **changes):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    return _platform(tmp_path, monkeypatch, **changes).stack


def test_finetune_manifests_validate_and_match_golden(monkeypatch, tmp_path):
    from stackwise.adapters.compute.kubernetes import build_manifests, decode_env_spec

    spec = finetune_spec(gpu="A10G", count=4, nodes=2)
    job, service = build_manifests(spec, _stack(monkeypatch, tmp_path), "sw-finetune-0123456789abcdef-1")
    for manifest in (job, service):
        validate(manifest)
    # The spec and the job context travel inline; the golden file shows them decoded, not as base64.
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert decode_env_spec(job) == json.loads(spec.model_dump_json())
    container["env"] = [e if e["name"] not in ("STACKWISE_SPEC_B64", "STACKWISE_CONTEXT_B64") else
                        {"name": e["name"], "value": "<base64>"} for e in container["env"]]
    job["metadata"]["annotations"]["stackwise.dev/spec"] = "<spec json>"
    check_golden("kubernetes_finetune", [job, service])
    pod = job["spec"]["template"]["spec"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "4"}
    assert pod["nodeSelector"] == {"stackwise.dev/gpu": "A10G", "stackwise.dev/spot": "true"}
    assert {"key": "stackwise.dev/spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"} in pod["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 2
    assert job["spec"]["backoffLimit"] == 0, "a node of a multi-node training run cannot be retried alone"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MASTER_ADDR"] == "sw-finetune-0123456789abcdef-1-0.sw-finetune-0123456789abcdef-1.sw-dev.svc"
    assert env["STACKWISE_NNODES"] == "2" and pod["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"stackwise.dev/job": "sw-finetune-0123456789abcdef-1"}
    assert job["spec"]["template"]["metadata"]["labels"]["stackwise.dev/job"] == "sw-finetune-0123456789abcdef-1"


def test_index_with_two_workers_is_an_indexed_job_of_two_cpu_pods(monkeypatch, tmp_path):
    from stackwise.adapters.compute.kubernetes import build_manifests
    from stackwise.specs import IndexSpec

    spec = IndexSpec(source="s3://sw-dev-artifacts/data/docs/", index="kb", workers=2)
    manifests = build_manifests(spec, _stack(monkeypatch, tmp_path), "sw-index-0123456789abcdef-1")
    for manifest in manifests:
        validate(manifest)
    job = manifests[0]
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 2
    assert job["spec"]["backoffLimit"] == 2, "an index shard is retried on its own"
    pod = job["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in json.dumps(pod) and "nodeSelector" not in pod and "tolerations" not in pod
    assert pod["serviceAccountName"] == "stackwise-jobs" and pod["restartPolicy"] == "Never"


def test_queue_label_and_gfd_node_labels_of_an_existing_cluster(monkeypatch, tmp_path):
    from stackwise.adapters.compute.kubernetes import build_manifests

    stack = _stack(monkeypatch, tmp_path, kubernetes={"queue": "team-a", "gpu_label": "nvidia.com/gpu.product",
                                                      "gpu_values": {}, "pod_labels": {"azure.workload.identity/use": "true"}})
    job = build_manifests(finetune_spec(gpu="H100", count=8, nodes=1, spot=False), stack, "sw-finetune-0123456789abcdef-1")[0]
    validate(job)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a" and job["spec"]["suspend"] is True
    pod = job["spec"]["template"]
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"


def test_a_gpu_the_stack_cannot_place_is_refused_naming_the_key(monkeypatch, tmp_path):
    from stackwise.adapters.compute.kubernetes import build_manifests
    from stackwise.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        build_manifests(index_spec(1, gpu="H100"), _stack(monkeypatch, tmp_path), "sw-index-0123456789abcdef-1")
    assert "gpuValues" in caught.value.fix and "H100" in caught.value.what


# -- states on the client's models ---------------------------------------------------------------

def _job(spec=None, status=None, labels=None, deleting=False):
    from kubernetes.client import V1Job, V1JobSpec, V1JobStatus, V1ObjectMeta, V1PodTemplateSpec

    return V1Job(metadata=V1ObjectMeta(name="sw-index-0123456789abcdef-1", labels=labels or {},
                                       deletion_timestamp="2026-12-05T10:00:00Z" if deleting else None),
                 spec=V1JobSpec(template=V1PodTemplateSpec(), **(spec or {})), status=V1JobStatus(**(status or {})))


def _condition(kind, reason=None, message=None):
    from kubernetes.client import V1JobCondition

    return V1JobCondition(type=kind, status="True", reason=reason, message=message)


def _pod(phase="Pending", conditions=(), waiting=None, exit_code=None, reason=None, message=None):
    from kubernetes.client import (V1ContainerState, V1ContainerStateTerminated, V1ContainerStateWaiting,
                                   V1ContainerStatus, V1ObjectMeta, V1Pod, V1PodCondition, V1PodStatus)

    state = None
    if waiting:
        state = V1ContainerState(waiting=V1ContainerStateWaiting(reason=waiting, message="pull access denied"))
    if exit_code is not None:
        state = V1ContainerState(terminated=V1ContainerStateTerminated(exit_code=exit_code, reason="Error",
                                                                       message="CUDA out of memory"))
    statuses = [V1ContainerStatus(name="job", image="i", image_id="", ready=False, restart_count=0, state=state)] \
        if state else None
    return V1Pod(metadata=V1ObjectMeta(name="sw-index-0123456789abcdef-1-0-abcde"),
                 status=V1PodStatus(phase=phase, reason=reason, message=message, container_statuses=statuses,
                                    conditions=[V1PodCondition(type=t, status=s, reason=r, message=m)
                                                for t, s, r, m in conditions]))


def test_every_phase_maps_to_the_same_states_as_other_stacks():
    from stackwise.adapters.compute.kubernetes import job_state

    queued = job_state(_job({"suspend": True}, labels={"kueue.x-k8s.io/queue-name": "team-a"}), [])
    assert queued[0] is JobState.PENDING and "Kueue" in queued[1] and "team-a" in queued[1]
    assert job_state(_job({"suspend": True}), [])[0] is JobState.PENDING
    unschedulable = job_state(_job({"suspend": False}, {"active": 1}), [_pod(conditions=[
        ("PodScheduled", "False", "Unschedulable", "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")])])
    assert unschedulable[0] is JobState.PENDING and "Insufficient nvidia.com/gpu" in unschedulable[1]
    pulling = job_state(_job({"suspend": False}, {"active": 1}), [_pod(waiting="ImagePullBackOff")])
    assert pulling[0] is JobState.PENDING and "ImagePullBackOff" in pulling[1]
    assert job_state(_job({"suspend": False}, {"active": 1, "ready": 1}), [_pod("Running")])[0] is JobState.RUNNING
    evicted = job_state(_job({"suspend": False}, {"active": 1, "ready": 0}), [_pod(
        "Failed", [("DisruptionTarget", "True", "TerminationByKubelet", "node shutdown")], reason="Evicted",
        message="The node was low on resource: memory.")])
    assert evicted[0] is JobState.PENDING and "evicted" in evicted[1] and "checkpoints" in evicted[1]
    done = job_state(_job(status={"succeeded": 1, "conditions": [_condition("Complete")]}), [])
    assert done == (JobState.SUCCEEDED, None, 0)
    backoff = job_state(_job(status={"failed": 3, "conditions": [
        _condition("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")]}),
        [_pod("Failed", exit_code=137)])
    assert backoff[0] is JobState.FAILED and "BackoffLimitExceeded" in backoff[1] and backoff[2] == 137
    assert "CUDA out of memory" in backoff[1]
    policy = job_state(_job(status={"failed": 1, "conditions": [_condition("FailureTarget", "PodFailurePolicy",
                                                                           "exit code 2 matching FailJob rule")]}),
                       [_pod("Failed", exit_code=2)])
    assert policy[0] is JobState.FAILED and policy[2] == 2
    deadline = job_state(_job(status={"conditions": [_condition("Failed", "DeadlineExceeded",
                                                                "Job was active longer than specified deadline")]}), [])
    assert deadline[0] is JobState.FAILED and "DeadlineExceeded" in deadline[1]
    assert job_state(_job(status={"active": 1, "ready": 1}, deleting=True), [])[0] is JobState.CANCELLED


# -- the adapter against the API stand-in ---------------------------------------------------------

def _calls(kube, method=None):
    return [(m, p, b) for m, p, b in kube.requests if method is None or m == method]


def test_a_job_is_created_suspended_then_started(compute, cluster):
    handle = compute.submit(index_spec(1))
    created = [b for m, p, b in _calls(cluster, "POST") if p.endswith("/jobs")]
    assert len(created) == 1 and created[0]["spec"]["suspend"] is True
    patches = [b for m, p, b in _calls(cluster, "PATCH")]
    assert patches == [{"spec": {"suspend": False}}]
    job = cluster.get("batch/v1", "jobs", NAMESPACE, handle.id)
    assert job["spec"]["suspend"] is False and handle.status() is JobState.PENDING


def test_with_kueue_the_job_stays_suspended_until_admitted(cluster, aws_env, tmp_path, monkeypatch):
    platform = _platform(tmp_path, monkeypatch, kubernetes={"queue": "team-a"})
    handle = platform.compute.submit(index_spec(2))
    assert _calls(cluster, "PATCH") == [], "Kueue unsuspends an admitted Job; stackwise must not"
    info = handle.info()
    assert info.state is JobState.PENDING
    cluster.objects[("batch/v1", "jobs", NAMESPACE, handle.id)]["spec"]["suspend"] = False  # Kueue admits it
    _status(cluster, handle.id, {"active": 1, "ready": 1})
    assert handle.status() is JobState.RUNNING


def _two_workers(n):
    from stackwise.specs import IndexSpec

    return IndexSpec(source=f"corpus://docs-{n}/", index=f"kb{n}", workers=2)


def test_a_multi_node_job_gets_a_headless_service_owned_by_it(compute, cluster):
    handle = compute.submit(_two_workers(3))
    service = cluster.get("v1", "services", NAMESPACE, handle.id)
    job = cluster.get("batch/v1", "jobs", NAMESPACE, handle.id)
    assert service["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
    handle.cancel()
    assert cluster.get("v1", "services", NAMESPACE, handle.id) is None, "deleting the Job takes its Service along"
    deletes = [p for m, p, b in _calls(cluster, "DELETE")]
    assert deletes and "propagationPolicy=Foreground" in deletes[-1]
    assert handle.status() is JobState.CANCELLED


def test_a_failure_after_the_job_was_created_leaves_nothing(compute, cluster):
    def refuse_services(obj):
        if obj["kind"] == "Service":
            raise ValueError("spec.ports[0].port: Invalid value")
        validate(obj)

    cluster.validator = refuse_services
    try:
        with pytest.raises(Exception) as caught:
            compute.submit(_two_workers(4))
        assert "Invalid value" in str(caught.value)
    finally:
        cluster.validator = validate
    assert cluster.find("Job") == [] and cluster.find("Service") == []


def test_throttling_is_retried_and_makes_one_job(compute, cluster):
    cluster.fail_next(2, 503)
    handle = compute.submit(index_spec(5))
    assert [j["metadata"]["name"] for j in cluster.find("Job")] == [handle.id]


def test_logs_come_from_the_pods_and_only_new_lines_each_time(compute, cluster):
    handle = compute.submit(index_spec(6))
    runner = KubeRunner(cluster, None, Path("/tmp"), {})
    job = cluster.get("batch/v1", "jobs", NAMESPACE, handle.id)
    pod = runner.pod_manifest(job, 0)
    cluster.put_object(pod)
    cluster.append_log(NAMESPACE, pod["metadata"]["name"], "stackwise bootstrap: index job")
    lines, cursor = compute._log_lines(handle.id, None)
    assert lines == ["stackwise bootstrap: index job"]
    cluster.append_log(NAMESPACE, pod["metadata"]["name"], "indexed 3 documents")
    lines, cursor = compute._log_lines(handle.id, cursor)
    assert lines == ["indexed 3 documents"]
    assert compute._log_lines(handle.id, cursor)[0] == []


# -- bad input: exit 2, what / where / fix, nothing created ----------------------------------------

class _Run:
    def __init__(self, proc):
        self.exit_code, self.stdout, self.output = proc.returncode, proc.stdout, proc.stdout + proc.stderr


def _cli(args):
    """The CLI as a user runs it (exit codes and messages as printed, no traceback)."""
    import os
    import subprocess

    import boto3

    s3 = boto3.client("s3")
    s3.put_object(Bucket=BUCKET, Key="data/docs/a.txt", Body=b"hello cluster\n")
    s3.put_object(Bucket=BUCKET, Key="data/train.jsonl", Body=b'{"text": "hello"}\n')
    return _Run(subprocess.run([sys.executable, "-m", "stackwise.cli", *args], env=dict(os.environ, COLUMNS="300"),
                               capture_output=True, text=True, timeout=120))


INDEX = ["index", f"s3://{BUCKET}/data/docs/", "--index", "kb", "--stack", "dev-k8s", "--detach", "--json"]


def test_cli_index_routes_to_kubernetes(cluster, aws_env, tmp_path, monkeypatch):
    _platform(tmp_path, monkeypatch)
    result = _cli([*INDEX[:-2], "--workers", "2", "--detach", "--json"])
    assert result.exit_code == 0, result.output
    job_id = json.loads(result.stdout)["job"]
    job = cluster.get("batch/v1", "jobs", NAMESPACE, job_id)
    assert job["spec"]["completions"] == 2 and cluster.get("v1", "services", NAMESPACE, job_id) is not None


def test_no_kubeconfig_is_exit_2_saying_how_to_write_one(aws_env, tmp_path, monkeypatch):
    _platform(tmp_path, monkeypatch)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    result = _cli(INDEX)
    assert result.exit_code == 2, result.output
    assert "no kubeconfig" in result.output and "update-kubeconfig" in result.output
    assert "Traceback" not in result.output


def test_an_unknown_context_is_exit_2_naming_the_known_ones(cluster, aws_env, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", cluster.kubeconfig(str(tmp_path / "other"), context="sw-devk9s", token=TOKEN))
    _platform(tmp_path, monkeypatch)
    result = _cli(INDEX)
    assert result.exit_code == 2, result.output
    assert "no context 'sw-devk8s'" in result.output and "did you mean 'sw-devk9s'" in result.output
    assert cluster.requests == [], "nothing may reach the cluster"


def test_a_forbidden_namespace_is_exit_2_and_creates_nothing(cluster, aws_env, tmp_path, monkeypatch):
    _platform(tmp_path, monkeypatch)
    cluster.forbid(NAMESPACE)
    result = _cli(INDEX)
    assert result.exit_code == 2, result.output
    assert "forbidden" in result.output and "namespace sw-dev" in result.output and "submitters" in result.output
    assert TOKEN not in result.output
    assert cluster.find("Job") == []


def test_an_unschedulable_gpu_is_exit_2_naming_the_gpus_the_cluster_has(cluster, aws_env, tmp_path, monkeypatch):
    _platform(tmp_path, monkeypatch, kubernetes={"autoscaled_gpus": []})
    for name, gpu, count in (("node-a", "T4", 1), ("node-b", "A10G", 1)):
        cluster.put_object({"apiVersion": "v1", "kind": "Node",
                            "metadata": {"name": name, "labels": {"stackwise.dev/gpu": gpu}},
                            "status": {"allocatable": {"nvidia.com/gpu": str(count), "cpu": "4"}}})
    finetune = ["finetune", "--base", "HuggingFaceTB/SmolLM2-135M-Instruct", "--data",
                f"s3://{BUCKET}/data/train.jsonl", "--stack", "dev-k8s", "--detach", "--json"]
    result = _cli([*finetune, "--gpu", "L4"])
    assert result.exit_code == 2, result.output
    assert "no node of the cluster has a L4" in result.output and "A10G (up to 1 per node)" in result.output
    assert cluster.find("Job") == []
    too_many = _cli([*finetune, "--gpu", "A10G:4"])
    assert too_many.exit_code == 2 and "at most 1 allocatable" in too_many.output, too_many.output
    assert cluster.find("Job") == []
    fits = _cli([*finetune, "--gpu", "A10G"])
    assert fits.exit_code == 0, fits.output
    assert len(cluster.find("Job")) == 1


def test_dry_run_prints_manifests_that_validate_and_creates_nothing(cluster, aws_env, tmp_path, monkeypatch):
    import yaml

    _platform(tmp_path, monkeypatch)
    finetune = _cli(["finetune", "--base", "HuggingFaceTB/SmolLM2-135M-Instruct", "--data",
                     f"s3://{BUCKET}/data/train.jsonl", "--stack", "dev-k8s", "--gpu", "A10G:4", "--nodes", "2",
                     "--spot", "--dry-run"])
    assert finetune.exit_code == 0, finetune.output
    job, service = list(yaml.safe_load_all(finetune.stdout))
    for manifest in (job, service):
        validate(manifest)
    assert (job["kind"], service["kind"]) == ("Job", "Service")
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "4"}
    index = _cli([*INDEX[:-2], "--workers", "2", "--dry-run"])
    assert index.exit_code == 0, index.output
    docs = list(yaml.safe_load_all(index.stdout))
    for manifest in docs:
        validate(manifest)
    assert docs[0]["spec"]["completions"] == 2
    assert cluster.requests == [], "a dry run sends nothing to the cluster"


def test_dry_run_on_the_local_stack_says_there_is_nothing_to_print(tmp_path, monkeypatch):
    import os
    import subprocess

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("hello\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKWISE_")}
    proc = subprocess.run([sys.executable, "-m", "stackwise.cli", "index", str(tmp_path / "docs"), "--index", "kb",
                           "--dry-run"], env=dict(env, STACKWISE_HOME=str(tmp_path / ".sw")), capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and "no job request to print" in proc.stderr, proc.stderr
