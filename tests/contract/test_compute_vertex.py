"""The Vertex AI adapter against a local server speaking Vertex v1 REST (tests/emulators/vertex_server.py).

`aiplatform_v1.JobServiceClient(transport="rest")` with AnonymousCredentials sends real HTTP to
127.0.0.1. Verified: the CustomJob JSON (golden file, and as the server received it), worker
pools, Spot scheduling, state mapping, wait, outputs, cancel, one job per client token even
when the create's answer is lost, retries on 429/503, quota, machine type and credential
errors, logs from Cloud Logging `entries:list` (tests/emulators/gcp_logging_server.py), sharded
index requests, local paths refused. The contract's real jobs run each replica's command (the
bootstrap, then the index workload) as processes of this machine with the environment Vertex gives
it (tests/emulators/vertex_runner.py: CLUSTER_SPEC, AIP_*, containerSpec env), and their reports
go through gcsfs to gcp-storage-emulator, where the adapter reads them back.
Not verified here: the image itself (tests/containers runs it).
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "emulators"))

pytest.importorskip("google.cloud.aiplatform_v1", reason="install stackwise[gcp]")

from cloud_fixtures import check_golden, finetune_spec, index_spec, use_stack  # noqa: E402
from drivers import CloudComputeDriver, ComputeCloud, contract_stack, fast_retries, offline_stack, served  # noqa: E402
from vertex_runner import VertexRunner  # noqa: E402
from vertex_server import VertexServer  # noqa: E402

from stackwise.jobs import JobState  # noqa: E402
from stackwise.testing.compute import ComputeContract  # noqa: E402

server = served(VertexServer)


@pytest.fixture(scope="module")
def gcs():
    """gcp-storage-emulator (GCS's JSON API, which gcsfs speaks): where jobs leave result.json."""
    pytest.importorskip("gcp_storage_emulator", reason="install stackwise[dev] (gcp-storage-emulator)")
    import socket

    from gcp_storage_emulator.server import create_server

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    srv = create_server("127.0.0.1", port, in_memory=True, default_bucket="sw-dev-artifacts")
    srv.start()
    yield f"http://127.0.0.1:{port}"
    srv.stop()


@pytest.fixture
def gcp_env(server, gcs, tmp_path, monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs)
    monkeypatch.setenv("NO_GCE_CHECK", "true")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-such-key.json"))
    server.reset()
    return server


@pytest.fixture
def platform(gcp_env, tmp_path, monkeypatch):
    return use_stack("dev-gcp", tmp_path, monkeypatch)


@pytest.fixture
def compute(platform, server):
    from google.auth.credentials import AnonymousCredentials

    from stackwise.adapters.compute.vertex import VertexCompute

    backend = fast_retries(VertexCompute(platform.stack, credentials=AnonymousCredentials(),
                                         api_endpoint=server.endpoint))
    platform._compute = backend
    return backend


def _move(server, job_id, outcome):
    state = {"succeed": "JOB_STATE_SUCCEEDED", "fail": "JOB_STATE_FAILED", "hold": "JOB_STATE_RUNNING"}[outcome]
    server.move(job_id, state, error="The replica workerpool0-0 exited with a non-zero status of 2."
                if outcome == "fail" else None)


def _run(server, job_id, workdir, env):
    runner = VertexRunner(server, None, workdir / "vertex", env)
    return runner.run(job_id, timeout=120), lambda task: runner.log(job_id, task)


VERTEX = ComputeCloud(name="gcp", root="gs://sw-dev-artifacts", move=_move, run=_run,
                      bad_spec=lambda: index_spec(99, gpu="A10G"),  # the catalog has no A10G on GCP
                      folder=lambda server, job_id: server.jobs[job_id]["displayName"])


class TestVertexContract(ComputeContract):
    @pytest.fixture
    def platform(self, gcp_env, job_store, tmp_path, monkeypatch):
        return contract_stack("dev-gcp", job_store, tmp_path, monkeypatch)

    @pytest.fixture
    def driver(self, compute, gcp_env, job_store, gcs, tmp_path):
        # What a replica needs to reach the emulators (Vertex would give the job's service account).
        # gcsfs's bucket-type probe asks the Storage Control API, which the emulator lacks; its
        # fallback costs seconds in every process, so the probe is off.
        env = {"STORAGE_EMULATOR_HOST": gcs, "NO_GCE_CHECK": "true", "GOOGLE_CLOUD_PROJECT": "my-project",
               "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
        return CloudComputeDriver(VERTEX, compute, gcp_env, job_store, tmp_path, env)


def test_finetune_request_matches_golden():
    from stackwise.adapters.compute.vertex import build_request

    request = build_request(finetune_spec(), offline_stack("dev-gcp"))
    check_golden("vertex_finetune", request)
    chief, workers = request["jobSpec"]["workerPoolSpecs"]
    assert chief["machineSpec"] == {"machineType": "a2-highgpu-8g", "acceleratorType": "NVIDIA_TESLA_A100",
                                    "acceleratorCount": 8}
    assert (chief["replicaCount"], workers["replicaCount"]) == ("1", "1")
    assert request["jobSpec"]["scheduling"] == {"timeout": "21600s", "strategy": "SPOT"}
    check_golden("vertex_index", build_request(index_spec(0), offline_stack("dev-gcp")))


def test_the_server_receives_the_request_and_the_spec(compute, server):
    spec = finetune_spec()
    handle = compute.submit(spec)
    (method, path, body), = [r for r in server.requests if r[0] == "POST"]
    assert path == "/v1/projects/my-project/locations/us-central1/customJobs"
    assert body["displayName"] == f"sw-finetune-{spec.digest()}-1"
    assert body["labels"]["stackwise-identity"] == spec.identity and body["labels"]["stackwise-attempt"] == "1"
    from google.cloud import aiplatform_v1

    # The REST transport sends enums as integers.
    assert body["jobSpec"]["scheduling"]["strategy"] == aiplatform_v1.Scheduling.Strategy.SPOT.value
    assert (body["jobSpec"]["workerPoolSpecs"][0]["machineSpec"]["acceleratorType"]
            == aiplatform_v1.AcceleratorType.NVIDIA_TESLA_A100.value)
    assert [p["replicaCount"] for p in body["jobSpec"]["workerPoolSpecs"]] == ["1", "1"]
    env = {e["name"]: e["value"] for e in body["jobSpec"]["workerPoolSpecs"][0]["containerSpec"]["env"]}
    assert json.loads(base64.b64decode(env["STACKWISE_SPEC_B64"])) == json.loads(spec.model_dump_json())
    context = json.loads(base64.b64decode(env["STACKWISE_CONTEXT_B64"]))
    assert (context["artifact_store"], context["cloud"], context["attempt"]) == ("gs://sw-dev-artifacts", "gcp", 1)
    assert "STACKWISE_STACK" not in env, "a job must not look its stack up by name"
    assert handle.status() is JobState.PENDING
    assert handle.info().spec["base"] == spec.base
    server.move(handle.id, "JOB_STATE_SUCCEEDED")
    outputs = handle.outputs
    assert outputs["artifacts"] == f"gs://sw-dev-artifacts/jobs/{body['displayName']}/"
    assert outputs["checkpoints"] == f"gs://sw-dev-artifacts/checkpoints/{spec.output_name}/"


def test_retries_and_a_lost_answer_make_one_job(compute, server):
    server.faults.extend(["throttle", "unavailable"])
    compute.submit(index_spec(1))
    assert server.create_calls == 3 and len(server.jobs) == 1
    server.faults.append("lost-answer")
    compute.submit(index_spec(2))
    assert len(server.jobs) == 2


def test_quota_and_machine_errors_say_how_to_fix(compute, server):
    from stackwise.errors import CloudError, QuotaError

    server.faults.append("quota")
    with pytest.raises(QuotaError, match="Quotas"):
        compute.submit(index_spec(3))
    server.faults.append("bad-machine")
    with pytest.raises(CloudError, match="does not offer"):
        compute.submit(index_spec(4))
    assert server.jobs == {}


def test_routing_without_credentials_says_how_to_log_in(platform):
    from stackwise.errors import CredentialsError

    with pytest.raises(CredentialsError, match="gcloud auth application-default login"):
        platform.compute


# -- index shards, local paths, Cloud Logging --------------------------------------------------
def test_sharded_index_request_runs_one_replica_per_worker():
    from stackwise.adapters.compute.vertex import build_request
    from stackwise.specs import IndexSpec

    request = build_request(IndexSpec(source="gs://sw-dev-artifacts/data/corpus/", index="kb", workers=4),
                            offline_stack("dev-gcp"))
    check_golden("vertex_index_sharded", request)
    assert [p["replicaCount"] for p in request["jobSpec"]["workerPoolSpecs"]] == ["1", "3"]


def test_local_paths_are_refused_before_anything_is_sent(compute, server):
    from stackwise.errors import SpecError
    from stackwise.specs import EvaluateSpec, IndexSpec

    with pytest.raises(SpecError, match="a path on this machine") as caught:
        compute.submit(IndexSpec(source="docs/", index="kb"))
    assert "gs://sw-dev-artifacts/data/" in caught.value.fix and "gcloud storage cp" in caught.value.fix
    with pytest.raises(SpecError, match="train_data"):
        compute.submit(EvaluateSpec(model="smollm2-135m-instruct", suites=["rouge"], data="gs://b/eval.jsonl",
                                    train_data=["file:///home/me/train.jsonl"]))
    assert [r for r in server.requests if r[0] == "POST"] == []
    compute.submit(IndexSpec(source="gs://sw-dev-artifacts/data/docs/", index="kb"))  # a URI is fine


@pytest.fixture(scope="module")
def log_server():
    from gcp_logging_server import LoggingServer

    srv = LoggingServer().start()
    yield srv
    srv.stop()


def test_logs_come_from_cloud_logging(platform, server, log_server):
    from google.auth.credentials import AnonymousCredentials

    from stackwise.errors import CredentialsError
    from stackwise.adapters.compute.vertex import VertexCompute

    log_server.reset()
    compute = fast_retries(VertexCompute(platform.stack, credentials=AnonymousCredentials(),
                                         api_endpoint=server.endpoint, logging_endpoint=log_server.endpoint))
    handle = compute.submit(index_spec(30))
    other = compute.submit(index_spec(31))
    assert list(handle.logs()) == []
    log_server.add(other.id, ["not this job"])
    log_server.add(handle.id, ["loading spec", "@@progress {}"])
    server.move(handle.id, "JOB_STATE_RUNNING")
    follow = compute.logs(handle.id, follow=True, poll=0.05)
    assert [next(follow), next(follow)] == ["loading spec", "@@progress {}"]
    log_server.faults.append("throttle")  # retried
    log_server.add(handle.id, [f"line {i}" for i in range(1500)])  # two pages
    server.move(handle.id, "JOB_STATE_SUCCEEDED")
    assert list(follow) == [f"line {i}" for i in range(1500)]
    sent = log_server.requests[-1]
    assert sent["resourceNames"] == ["projects/my-project"] and sent["orderBy"] == "timestamp asc"
    assert f'resource.type="ml_job" AND resource.labels.job_id="{handle.id}"' in sent["filter"]
    # A sharded job's lines name their replica.
    from stackwise.specs import IndexSpec

    sharded = compute.submit(IndexSpec(source="gs://sw-dev-artifacts/data/docs/", index="kb", workers=2))
    log_server.add(sharded.id, ["shard 0 here"])
    log_server.add(sharded.id, ["shard 1 here"], task="workerpool1-0")
    assert list(sharded.logs()) == ["[workerpool0-0] shard 0 here", "[workerpool1-0] shard 1 here"]
    log_server.faults.append("denied")
    with pytest.raises(CredentialsError, match="Logs Viewer"):
        list(handle.logs())

