"""Azure ML's command-job contract, for real: the adapter registers the training image as an
environment and PUTs a command job on the local ARM server, a runner plays Azure ML
(tests/emulators/azureml_runner.py: the environment's image, one container per instance, the
command in a shell, the PyTorch distribution's MASTER_ADDR/NODE_RANK/WORLD_SIZE/RANK), and the
training image built from this repository runs the bootstrap and the index workload inside.

adapter -> ARM (local server) -> containers -> Blob storage (Azurite) -> adapter state, outputs
and logs -> `stackwise search` is one flow here: an index job with `workers: 2` (two instances,
one shard each) reads documents from `az://` and writes the embedded index (LanceDB) to
`az://artifacts/vectors` on Azurite; the host then searches it with
`stackwise search --stack dev-azure` and gets the same top 5 as the same documents indexed on
this machine.

Azurite comes from npm (`azurite@3`): installed once into $STACKWISE_AZURITE_DIR (default
~/.cache/stackwise/azurite) with `npm install --prefix DIR azurite@3` when it is not there; the
test skips only when neither it nor npm is available. The containers and the host reach it with
environment variables only: adlfs reads `AZURE_STORAGE_CONNECTION_STRING`; LanceDB's object store
reads `AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_USE_EMULATOR` and `AZURITE_BLOB_STORAGE_URL`
(the emulator's address; 127.0.0.1:10000 when unset).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS / "emulators") not in sys.path:
    sys.path.insert(0, str(TESTS / "emulators"))

pytest.importorskip("azure.ai.ml", reason="install stackwise[azure]")
pytest.importorskip("adlfs", reason="install stackwise[azure]")
pytest.importorskip("azure.storage.blob", reason="install stackwise[azure]")
pytest.importorskip("lancedb", reason="install stackwise[local]")

from _compare import assert_same_top5_as_local, assert_two_shards, host_search  # noqa: E402
from azureml_runner import AzureMLRunner  # noqa: E402
from azureml_server import AzureMLServer  # noqa: E402
from cloud_fixtures import (AZURITE_ACCOUNT, AZURITE_KEY, azure_cli_login, azurite_connection_string,  # noqa: E402
                            running_azurite)

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:The `context` parameter is deprecated")]

CONTAINER = "artifacts"
ARTICLES = 12
QUERY = "bushfires threaten homes near Sydney"
# Azurite's well-known development account (docs: "Use the Azurite emulator", connection strings).
ACCOUNT, ACCOUNT_KEY = AZURITE_ACCOUNT, AZURITE_KEY
SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _azurite_bin() -> Path:
    """azurite-blob from $STACKWISE_AZURITE_DIR (default ~/.cache/stackwise/azurite), installed there
    with npm the first time."""
    folder = Path(os.environ.get("STACKWISE_AZURITE_DIR") or "~/.cache/stackwise/azurite").expanduser()
    binary = folder / "node_modules" / ".bin" / "azurite-blob"
    if binary.exists():
        return binary
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.skip(f"Azurite is not installed in {folder} and node/npm are missing to install it "
                    "(apt-get install -y nodejs npm; npm install --prefix DIR azurite@3)")
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([npm, "install", "--prefix", str(folder), "--no-audit", "--no-fund", "azurite@3"],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not binary.exists():
        pytest.fail(f"npm install --prefix {folder} azurite@3 failed:\n{proc.stderr[-2000:]}", pytrace=False)
    return binary


@pytest.fixture(scope="module")
def azurite(tmp_path_factory):
    """Azurite's Blob service on 127.0.0.1 (in memory), with the container `artifacts`."""
    with running_azurite(_azurite_bin(), tmp_path_factory.mktemp("azurite"), CONTAINER) as url:
        yield {"AZURE_STORAGE_CONNECTION_STRING": azurite_connection_string(url),
               "AZURE_STORAGE_ACCOUNT_NAME": ACCOUNT, "AZURE_STORAGE_ACCOUNT_KEY": ACCOUNT_KEY,
               "AZURE_STORAGE_USE_EMULATOR": "true", "AZURITE_BLOB_STORAGE_URL": url}


@pytest.fixture(scope="module")
def arm():
    server = AzureMLServer().start()
    yield server
    server.stop()


@pytest.fixture
def azure(arm, azurite, tmp_path, monkeypatch):
    arm.reset()
    arm.clusters.clear()
    arm.add_cluster("gpu", "Standard_NC4as_T4_v3", "LowPriority")  # what stacks/Pulumi.dev-azure.yaml makes
    azure_cli_login(arm, tmp_path, monkeypatch)
    for key, value in azurite.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("STACKWISE_STACK", raising=False)
    return arm


def _articles() -> list[str]:
    gensim = pytest.importorskip("gensim")
    path = Path(gensim.__file__).parent / "test" / "test_data" / "lee_background.cor"
    return [x.strip() for x in path.read_text(encoding="latin-1").splitlines() if x.strip()][:ARTICLES]


def _outputs(tmp_path: Path, image: str) -> Path:
    path = tmp_path / "dev-azure-outputs.json"
    path.write_text(json.dumps({
        "cloud": "azure", "region": "eastus", "artifact_store": f"az://{CONTAINER}", "training_image": image,
        "job_role": f"/subscriptions/{SUBSCRIPTION}/resourceGroups/sw-dev/providers/"
                    "Microsoft.ManagedIdentity/userAssignedIdentities/sw-dev-jobs",
        "vector_store": {"kind": "embedded", "uri": f"az://{CONTAINER}/vectors"},
        "azure_subscription_id": SUBSCRIPTION, "azure_resource_group": "sw-dev", "azure_workspace": "sw-dev-ws",
    }), encoding="utf-8")
    return path


def test_a_sharded_index_job_runs_in_containers_and_the_host_searches_its_index(azure, azurite, images, engine,
                                                                                 tmp_path, monkeypatch):
    import adlfs

    import stackwise
    from stackwise.jobs import JobState
    from stackwise.workloads.index import merge_reports

    fs = adlfs.AzureBlobFileSystem(connection_string=azurite["AZURE_STORAGE_CONNECTION_STRING"],
                                   skip_instance_cache=True)
    texts = _articles()
    for number, text in enumerate(texts):
        fs.pipe(f"{CONTAINER}/data/docs/lee-{number:03d}.txt", (text + "\n").encode())
    image = images["train"]["image"]
    monkeypatch.setenv("STACKWISE_OUTPUTS", str(_outputs(tmp_path, image)))
    monkeypatch.setenv("STACKWISE_HOME", str(tmp_path / ".stackwise"))
    platform = stackwise.connect("dev-azure")
    handle = platform.index(source=f"az://{CONTAINER}/data/docs/", index="kb", workers=2)
    assert handle.status() is JobState.PENDING
    properties = azure.jobs[handle.id]["properties"]
    assert properties["resources"]["instanceCount"] == 2 and properties["distribution"]["distributionType"] == "PyTorch"
    runner = AzureMLRunner(azure, engine, tmp_path / "azureml", {"OMP_NUM_THREADS": "1", "STACKWISE_THREADS": "1",
                                                                  **azurite})
    assert runner.image(handle.id) == image  # followed environmentId to the registered environment's image

    codes = runner.run(handle.id, timeout=600)
    logs = [runner.log(handle.id, rank) for rank in (0, 1)]
    assert codes == [0, 0], "\n".join(log[-3000:] for log in logs)
    for log in logs:
        assert "Traceback" not in log, log[-3000:]
    info = handle.wait(timeout=30, poll=0.1)
    assert info.state is JobState.SUCCEEDED, info.error
    # Each node indexed its own shard (NODE_RANK from the PyTorch distribution, the node count
    # from STACKWISE_NNODES) and wrote its report under shards/<rank>/ on Blob storage.
    root = f"{CONTAINER}/jobs/{handle.id}"
    listed = fs.find(f"{root}/shards/")
    shards = [json.loads(fs.cat(f"{root}/shards/{rank}/result.json")) for rank in (0, 1)]
    assert all(0 < s["documents"] < ARTICLES for s in shards), shards
    merged = merge_reports(shards)
    assert_two_shards(merged, listed, root, ARTICLES)
    assert fs.find(f"{CONTAINER}/vectors/kb.lance/"), "no LanceDB table written to az://artifacts/vectors"
    # Run history's user logs, one file per process, through the handle.
    lines = list(handle.logs())
    assert any(line.startswith("[std_log_process_0] ") for line in lines), lines[:20]
    assert any(line.startswith("[std_log_process_1] ") for line in lines), lines[:20]
    # Resubmitting the spec now that its job ended starts attempt 2 of the same identity.
    again = platform.index(source=f"az://{CONTAINER}/data/docs/", index="kb", workers=2)
    assert again.id.endswith("-2") and again.info().identity == info.identity

    # The host searches the index the containers wrote to Blob storage ...
    cloud_hits = host_search("dev-azure", QUERY, "kb", tmp_path)
    # ... and gets the top 5 of the same documents indexed on this machine.
    assert_same_top5_as_local(cloud_hits, texts, QUERY, tmp_path)

    # The adapter's outputs hold the merged report of the shards, read from the object store.
    assert (info.outputs["documents"], info.outputs["shards"]) == (ARTICLES, 2), info.outputs


def test_the_runner_gives_each_node_what_azure_ml_gives_it(azure, tmp_path, monkeypatch):
    """No container: the environment of each node of a 3-worker job, and what the bootstrap makes
    of it (the container test above runs it for real with 2)."""
    import stackwise
    from stackwise.adapters.compute.bootstrap import cluster_env

    monkeypatch.setenv("STACKWISE_OUTPUTS", str(_outputs(tmp_path, "example.azurecr.io/train:1")))
    monkeypatch.setenv("STACKWISE_HOME", str(tmp_path / ".stackwise"))
    handle = stackwise.connect("dev-azure").index(source=f"az://{CONTAINER}/data/docs/", index="kb", workers=3)
    runner = AzureMLRunner(azure, ["podman"], tmp_path, {})
    assert runner.image(handle.id) == "example.azurecr.io/train:1"
    for rank in range(3):
        env = runner.node_env(handle.id, rank)
        assert (env["AZUREML_RUN_ID"], env["AZUREML_ARM_SUBSCRIPTION"], env["AZUREML_ARM_RESOURCEGROUP"],
                env["AZUREML_ARM_WORKSPACE_NAME"], env["AZUREML_ARM_PROJECT_NAME"]) == \
               (handle.id, SUBSCRIPTION, "sw-dev", "sw-dev-ws", "stackwise-dev-azure")
        assert (env["WORLD_SIZE"], env["RANK"], env["LOCAL_RANK"]) == ("3", str(rank), "0")
        assert env["STACKWISE_JOB_URI"] == f"az://{CONTAINER}/jobs/{handle.id}" and env["STACKWISE_CONTEXT_B64"]
        assert cluster_env(env, sagemaker_config=str(tmp_path / "none.json")) == {
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "6105", "NODE_RANK": str(rank), "NNODES": "3"}


def test_a_failing_job_ends_failed_and_points_at_its_error_json(azure, azurite, images, engine, tmp_path,
                                                                 monkeypatch):
    import adlfs

    import stackwise
    from stackwise.jobs import JobState

    monkeypatch.setenv("STACKWISE_OUTPUTS", str(_outputs(tmp_path, images["train"]["image"])))
    monkeypatch.setenv("STACKWISE_HOME", str(tmp_path / ".stackwise"))
    handle = stackwise.connect("dev-azure").index(source=f"az://{CONTAINER}/data/no-such-folder/", index="kb",
                                                  preflight=False)
    assert "distribution" not in azure.jobs[handle.id]["properties"]  # one instance: no PyTorch distribution
    runner = AzureMLRunner(azure, engine, tmp_path / "azureml", {"OMP_NUM_THREADS": "1", **azurite})
    codes = runner.run(handle.id, timeout=300)
    assert len(codes) == 1 and codes[0] not in (0, 125, 126, 127), runner.log(handle.id)[-3000:]
    info = handle.wait(timeout=30, poll=0.1)
    assert info.state is JobState.FAILED and info.outputs == {}
    assert f"az://{CONTAINER}/jobs/{handle.id}/error.json" in info.error
    fs = adlfs.AzureBlobFileSystem(connection_string=azurite["AZURE_STORAGE_CONNECTION_STRING"],
                                   skip_instance_cache=True)
    error = json.loads(fs.cat(f"{CONTAINER}/jobs/{handle.id}/error.json"))
    assert "no-such-folder" in error["error"], error
    # The single node's log is run history's std_log.txt (no process suffix), read through the handle.
    assert list(handle.logs()) and runner.log(handle.id) and azure.logs[handle.id].keys() == {"user_logs/std_log.txt"}
