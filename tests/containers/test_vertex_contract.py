"""Vertex AI's custom-container contract, for real: the adapter creates a CustomJob on the local
Vertex server, a runner plays Vertex (tests/emulators/vertex_runner.py: one container per replica
of each worker pool, `CLUSTER_SPEC`, `AIP_*`, containerSpec command and env), and the training
image built from this repository runs the bootstrap and the index workload inside.

adapter -> Vertex API (local server) -> containers -> GCS (gcp-storage-emulator) + Pinecone (local
server) -> adapter state, outputs and logs -> `stackwise search` is one flow here: an index job
with `workers: 2` (worker pool 0 and worker pool 1, one shard each) reads documents from GCS and
upserts into Pinecone, whose API key each replica resolves itself from Secret Manager
(`gcp-sm://...`, tests/emulators/secretmanager_server.py): the key is never in the job's request or
environment. The host then searches with `stackwise search --stack dev-gcp` and gets the same top 5
as the same documents indexed on this machine.

The index goes to Pinecone, not to the embedded store on GCS, because LanceDB cannot write to
gcp-storage-emulator (it lists through GCS's XML API, which the emulator answers 501; see
/work/shared/notes/FEASIBILITY.md): an embedded index on gs:// is not tested here.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
for folder in (TESTS / "emulators", TESTS / "servers"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

pytest.importorskip("google.cloud.aiplatform_v1", reason="install stackwise[gcp]")
pytest.importorskip("gcsfs", reason="install stackwise[gcp]")
pytest.importorskip("pinecone", reason="install stackwise[pinecone]")
pytest.importorskip("lancedb", reason="install stackwise[local]")
pytest.importorskip("gcp_storage_emulator", reason="install stackwise[dev] (gcp-storage-emulator)")

from gcp_logging_server import LoggingServer  # noqa: E402
from pinecone_server import PineconeServer  # noqa: E402
from secretmanager_server import SecretManagerServer  # noqa: E402
from _compare import assert_same_top5_as_local, assert_two_shards, host_search  # noqa: E402
from vertex_runner import VertexRunner  # noqa: E402
from vertex_server import VertexServer  # noqa: E402

pytestmark = pytest.mark.slow

PROJECT = "my-project"
BUCKET = "sw-dev-artifacts"
SECRET = "pinecone-api-key"
PINECONE_KEY = "pcsk_VERTEXJOB_d0n0tl34k_41c2"  # grepped for in every log and request
ARTICLES = 12
QUERY = "bushfires threaten homes near Sydney"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def gcs():
    """gcp-storage-emulator (the GCS JSON API, which gcsfs speaks) on 127.0.0.1, in memory."""
    from gcp_storage_emulator.server import create_server

    port = _free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="module")
def servers(gcs):
    vertex, secrets, logging = VertexServer().start(), SecretManagerServer().start(), LoggingServer().start()
    pinecone = PineconeServer(dimension=384, api_key=PINECONE_KEY).start()
    yield {"vertex": vertex, "secrets": secrets, "logging": logging, "pinecone": pinecone, "gcs": gcs}
    for server in (vertex, secrets, logging, pinecone):
        server.stop()


def _gcp_env(servers: dict) -> dict[str, str]:
    """What the containers and the host need to reach the emulators (a real job would reach Google's
    endpoints with its service account): no key, no token, no metadata server."""
    return {"STORAGE_EMULATOR_HOST": servers["gcs"], "STACKWISE_SECRETMANAGER_ENDPOINT": servers["secrets"].url,
            "NO_GCE_CHECK": "true", "GOOGLE_CLOUD_PROJECT": PROJECT}


@pytest.fixture
def gcp(servers, monkeypatch, tmp_path):
    for key, value in _gcp_env(servers).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-such-key.json"))
    for key in ("PINECONE_API_KEY", "STACKWISE_STACK"):
        monkeypatch.delenv(key, raising=False)
    for name in ("vertex", "secrets", "logging", "pinecone"):
        servers[name].reset()
    servers["secrets"].add_version(PROJECT, SECRET, PINECONE_KEY)
    return servers


def _articles() -> list[str]:
    gensim = pytest.importorskip("gensim")
    path = Path(gensim.__file__).parent / "test" / "test_data" / "lee_background.cor"
    return [x.strip() for x in path.read_text(encoding="latin-1").splitlines() if x.strip()][:ARTICLES]


def _outputs(tmp_path: Path, image: str, pinecone_url: str) -> Path:
    path = tmp_path / "dev-gcp-outputs.json"
    path.write_text(json.dumps({
        "cloud": "gcp", "region": "us-central1", "artifact_store": f"gs://{BUCKET}", "gcp_project": PROJECT,
        "job_role": f"sw-dev-jobs@{PROJECT}.iam.gserviceaccount.com", "training_image": image,
        "vector_store": {"kind": "pinecone", "host": pinecone_url,
                         "api_key_secret": f"gcp-sm://projects/{PROJECT}/secrets/{SECRET}"},
    }), encoding="utf-8")
    return path


def test_a_sharded_index_job_runs_in_containers_and_the_host_searches_its_index(gcp, images, engine, tmp_path,
                                                                                 monkeypatch):
    import gcsfs
    from google.auth.credentials import AnonymousCredentials

    import stackwise
    from stackwise.adapters.compute.vertex import VertexCompute
    from stackwise.jobs import JobState
    from stackwise.workloads.index import merge_reports

    fs = gcsfs.GCSFileSystem(project=PROJECT, skip_instance_cache=True)
    texts = _articles()
    for number, text in enumerate(texts):
        fs.pipe(f"{BUCKET}/data/docs/lee-{number:03d}.txt", (text + "\n").encode())
    monkeypatch.setenv("STACKWISE_OUTPUTS", str(_outputs(tmp_path, images["train"]["image"], gcp["pinecone"].url)))
    monkeypatch.setenv("STACKWISE_HOME", str(tmp_path / ".stackwise"))
    platform = stackwise.connect("dev-gcp")
    # What test_compute_vertex.py does: the adapter with anonymous credentials, at the local server.
    platform._compute = VertexCompute(platform.stack, credentials=AnonymousCredentials(),
                                      api_endpoint=gcp["vertex"].endpoint, logging_endpoint=gcp["logging"].endpoint)
    handle = platform.index(source=f"gs://{BUCKET}/data/docs/", index="kb", workers=2)
    assert handle.status() is JobState.PENDING
    job = gcp["vertex"].jobs[handle.id]
    assert [p["replicaCount"] for p in job["jobSpec"]["workerPoolSpecs"]] == ["1", "1"]
    assert PINECONE_KEY not in json.dumps(job), "the key must reach the job as a reference only"

    runner = VertexRunner(gcp["vertex"], engine, tmp_path / "vertex",
                          {**_gcp_env(gcp), "OMP_NUM_THREADS": "1", "STACKWISE_THREADS": "1"}, logging=gcp["logging"])
    codes = runner.run(handle.id, timeout=600)
    logs = {task: runner.log(handle.id, task) for task in ("workerpool0-0", "workerpool1-0")}
    assert codes == {"workerpool0-0": 0, "workerpool1-0": 0}, "\n".join(t[-3000:] for t in logs.values())
    for task, log in logs.items():
        assert "Traceback" not in log, (task, log[-3000:])
        assert PINECONE_KEY not in log, task
    info = handle.wait(timeout=30, poll=0.1)
    assert info.state is JobState.SUCCEEDED, info.error
    # Each replica read the key from Secret Manager itself (the host has not searched yet).
    accesses = [p for m, p in gcp["secrets"].requests if p.endswith(":access")]
    assert accesses == [f"/v1/projects/{PROJECT}/secrets/{SECRET}/versions/latest:access"] * 2, accesses
    # Each replica indexed its own shard (rank 0 = workerpool0, rank 1 = workerpool1-0, from
    # CLUSTER_SPEC) and wrote its report under shards/<rank>/ in GCS.
    root = f"{BUCKET}/jobs/{info.outputs['artifacts'].rstrip('/').rsplit('/', 1)[1]}"
    listed = fs.find(f"{root}/shards/")
    shards = [json.loads(fs.cat(f"{root}/shards/{rank}/result.json")) for rank in (0, 1)]
    assert all(0 < s["documents"] < ARTICLES for s in shards), shards
    merged = merge_reports(shards)
    assert_two_shards(merged, listed, root, ARTICLES)
    namespace = gcp["pinecone"].state.namespaces["kb"]
    assert len(namespace) == merged["chunks"]
    # Vertex's logs (Cloud Logging entries the runner shipped per replica) through the handle.
    lines = list(handle.logs())
    assert any(line.startswith("[workerpool0-0] ") for line in lines), lines[:20]
    assert any(line.startswith("[workerpool1-0] ") for line in lines), lines[:20]
    # Resubmitting the spec now that its job ended starts attempt 2 of the same identity.
    again = platform.index(source=f"gs://{BUCKET}/data/docs/", index="kb", workers=2)
    assert again.id != handle.id and again.info().attempt == 2 and again.info().identity == info.identity

    # The host searches the index the containers wrote to Pinecone ...
    cloud_hits = host_search("dev-gcp", QUERY, "kb", tmp_path, secret=PINECONE_KEY,
                             STACKWISE_SECRETMANAGER_ENDPOINT=gcp["secrets"].url)
    # ... and gets the top 5 of the same documents indexed on this machine.
    assert_same_top5_as_local(cloud_hits, texts, QUERY, tmp_path)

    # The adapter's outputs hold the merged report of the shards, read from the object store.
    assert (info.outputs["documents"], info.outputs["shards"]) == (ARTICLES, 2), info.outputs


def test_the_runner_gives_each_replica_what_vertex_gives_it(gcp, tmp_path, monkeypatch):
    """No container: the environment of each replica of a 3-worker job, and what the bootstrap makes
    of it (the container test above runs it for real with 2)."""
    from google.auth.credentials import AnonymousCredentials

    import stackwise
    from stackwise.adapters.compute.bootstrap import cluster_env
    from stackwise.adapters.compute.vertex import VertexCompute

    monkeypatch.setenv("STACKWISE_OUTPUTS", str(_outputs(tmp_path, "example.com/train:1", gcp["pinecone"].url)))
    monkeypatch.setenv("STACKWISE_HOME", str(tmp_path / ".stackwise"))
    platform = stackwise.connect("dev-gcp")
    platform._compute = VertexCompute(platform.stack, credentials=AnonymousCredentials(),
                                      api_endpoint=gcp["vertex"].endpoint)
    handle = platform.index(source=f"gs://{BUCKET}/data/docs/", index="kb", workers=3)
    runner = VertexRunner(gcp["vertex"], ["podman"], tmp_path, {})
    folder = gcp["vertex"].jobs[handle.id]["jobSpec"]["baseOutputDirectory"]["outputUriPrefix"].rstrip("/")
    hosts = {(p, i): f"{runner.host(handle.id, p, i)}:2222" for p, i in ((0, 0), (1, 0), (1, 1))}
    for rank, (pool, index) in enumerate(hosts):
        env = runner.replica_env(handle.id, pool, index)
        spec = json.loads(env["CLUSTER_SPEC"])
        assert spec["cluster"] == {"workerpool0": [hosts[0, 0]], "workerpool1": [hosts[1, 0], hosts[1, 1]]}
        assert (spec["environment"], spec["task"]) == ("cloud", {"type": f"workerpool{pool}", "index": index})
        assert spec["job"]["workerPoolSpecs"][1]["replicaCount"] == "2"
        assert (env["AIP_MODEL_DIR"], env["AIP_CHECKPOINT_DIR"], env["AIP_TENSORBOARD_LOG_DIR"]) == \
               (f"{folder}/model/", f"{folder}/checkpoints/", f"{folder}/logs/")
        assert env["CLOUD_ML_JOB_ID"] == handle.id and "TF_CONFIG" not in env
        assert env["STACKWISE_JOB_URI"] == folder and env["STACKWISE_CONTEXT_B64"]
        assert cluster_env(env, sagemaker_config=str(tmp_path / "none.json")) == {
            "MASTER_ADDR": runner.host(handle.id, 0, 0), "MASTER_PORT": "2222", "NODE_RANK": str(rank), "NNODES": "3"}


def test_a_failing_job_ends_failed_with_vertex_reason_and_its_error_json(gcp, images, engine, tmp_path, monkeypatch):
    import gcsfs
    from google.auth.credentials import AnonymousCredentials

    import stackwise
    from stackwise.adapters.compute.vertex import VertexCompute
    from stackwise.jobs import JobState

    monkeypatch.setenv("STACKWISE_OUTPUTS", str(_outputs(tmp_path, images["train"]["image"], gcp["pinecone"].url)))
    monkeypatch.setenv("STACKWISE_HOME", str(tmp_path / ".stackwise"))
    platform = stackwise.connect("dev-gcp")
    platform._compute = VertexCompute(platform.stack, credentials=AnonymousCredentials(),
                                      api_endpoint=gcp["vertex"].endpoint)
    handle = platform.index(source=f"gs://{BUCKET}/data/no-such-folder/", index="kb", preflight=False)
    runner = VertexRunner(gcp["vertex"], engine, tmp_path / "vertex", {**_gcp_env(gcp), "OMP_NUM_THREADS": "1"})
    codes = runner.run(handle.id, timeout=300)
    assert list(codes) == ["workerpool0-0"] and codes["workerpool0-0"] not in (0, 125, 126, 127), \
        runner.log(handle.id)[-3000:]
    info = handle.wait(timeout=30, poll=0.1)
    assert info.state is JobState.FAILED and info.outputs == {}
    assert info.error.startswith(f"The replica workerpool0-0 exited with a non-zero status of {codes['workerpool0-0']}")
    # The bootstrap of the primary replica left the workload's error in the job's folder.
    fs = gcsfs.GCSFileSystem(project=PROJECT, skip_instance_cache=True)
    error = json.loads(fs.cat(f"{BUCKET}/jobs/sw-{info.identity}-1/error.json"))
    assert "no-such-folder" in error["error"], error
