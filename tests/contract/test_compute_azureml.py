"""The Azure ML adapter against a local server speaking ARM over HTTPS (tests/emulators/azureml_server.py).

`azure-ai-ml`'s MLClient, built by the adapter through the registry with custom cloud metadata,
signs in through DefaultAzureCredential (limited to AzureCliCredential, which runs a stub `az`
that prints a token) and sends real ARM requests to 127.0.0.1. Verified: the command job JSON
(golden files, and as the server received it), cluster vs serverless routing, low priority,
PyTorch distribution, instance count, environment registration, state mapping, wait, outputs,
cancel (begin_cancel), one job per client token (also after a lost answer and a 409), 429 with
Retry-After honoured, 5xx exhaustion, quota, VM size and credential errors, logs read from run
history (workspace discovery, run details, log files by SAS URL, as `jobs.stream` reads them), the
CLI routed to Azure, and the infra's cluster name. The contract's real jobs run the job's command
(the bootstrap, then the index workload) on each node as a process of this machine with the
environment Azure ML gives it (tests/emulators/azureml_runner.py: PyTorch distribution variables,
AZUREML_*), and their reports go through adlfs to Azurite, where the adapter reads them back.
Not verified here: the image itself (tests/containers runs it), the exact error bodies Azure sends
for quota and VM size (the server's are modelled on them).
"""

from __future__ import annotations

import base64
import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "emulators"))

pytest.importorskip("azure.ai.ml", reason="install stackwise[azure]")
pytest.importorskip("azure.identity", reason="install stackwise[azure]")
pytest.importorskip("cryptography", reason="install stackwise[azure]")

from azureml_runner import AzureMLRunner  # noqa: E402
from azureml_server import AzureMLServer  # noqa: E402
from cloud_fixtures import OUTPUTS, azure_cli_login, check_golden, finetune_spec, index_spec, use_stack  # noqa: E402
from drivers import CloudComputeDriver, ComputeCloud, cloud_backend, contract_stack, offline_stack, served  # noqa: E402

from stackwise.jobs import JobState  # noqa: E402
from stackwise.testing.compute import ComputeContract  # noqa: E402

# azure-ai-ml's own use of marshmallow warns on every schema; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:The `context` parameter is deprecated")

WS = ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/sw-dev/providers/"
      "Microsoft.MachineLearningServices/workspaces/sw-dev-ws")

server = served(AzureMLServer)


@pytest.fixture
def azure_env(server, tmp_path, monkeypatch):
    server.reset()
    server.clusters.clear()
    server.add_cluster("gpu", "Standard_NC4as_T4_v3", "LowPriority")  # what stacks/Pulumi.dev-azure.yaml makes
    azure_cli_login(server, tmp_path, monkeypatch)
    return server


@pytest.fixture
def platform(azure_env, tmp_path, monkeypatch):
    return use_stack("dev-azure", tmp_path, monkeypatch)


@pytest.fixture
def compute(platform):
    from stackwise.adapters.compute.azureml import AzureMLCompute

    return cloud_backend(platform.compute, AzureMLCompute)


def _run(server, name, workdir, env):
    runner = AzureMLRunner(server, None, workdir / "azureml", env)
    return dict(enumerate(runner.run(name, timeout=120))), lambda rank: runner.log(name, rank)


# The report spells the source as canonical_source does: az://, not adlfs's first name abfs://.
AZUREML = ComputeCloud(name="azure", root="az://artifacts", run=_run,
                       move=lambda server, name, outcome: server.move(
                           name, {"succeed": "Completed", "fail": "Failed", "hold": "Running"}[outcome]),
                       bad_spec=lambda: index_spec(99, gpu="L4"))  # the catalog has no L4 on Azure


class TestAzureMLContract(ComputeContract):
    @pytest.fixture
    def platform(self, azure_env, job_store, azurite, tmp_path, monkeypatch):
        for key, value in azurite.items():
            monkeypatch.setenv(key, value)
        yield contract_stack("dev-azure", job_store, tmp_path, monkeypatch)
        # adlfs (here and in the adapter's result reader) makes fsspec's IO loop, which runs in another
        # thread, this thread's event loop; a later asyncio user here (Pulumi's offline run in
        # test_the_cluster_name_and_size_are_the_ones_infra_creates) then runs that loop and breaks.
        import asyncio
        import warnings

        import fsspec.asyn

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            current = asyncio.get_event_loop()
        if current is fsspec.asyn.loop[0]:
            asyncio.set_event_loop(asyncio.new_event_loop())

    @pytest.fixture
    def driver(self, compute, azure_env, job_store, azurite, tmp_path):
        # What a node needs to reach Azurite (Azure ML would give the job's managed identity).
        return CloudComputeDriver(AZUREML, compute, azure_env, job_store, tmp_path, dict(azurite))


def _stack():
    return offline_stack("dev-azure")


def _job_puts(server):
    return [(path, body) for method, path, body in server.requests if method == "PUT" and "/jobs/" in path]


# -- requests as data ---------------------------------------------------------------------------
def test_requests_match_golden():
    from stackwise.adapters.compute.azureml import build_request

    request = build_request(finetune_spec(), _stack())
    check_golden("azureml_finetune", request)
    # 8 x A100 40GB is the ND96asr_v4 size; not the stack's T4 cluster, so serverless, Spot tier.
    assert request["resources"] == {"instanceCount": 2, "instanceType": "Standard_ND96asr_v4"}
    assert request["queueSettings"] == {"jobTier": "Spot"}
    assert "computeId" not in request
    assert request["distribution"] == {"distributionType": "PyTorch", "processCountPerInstance": 1}
    assert request["limits"] == {"jobLimitsType": "Command", "timeout": "PT6H"}
    assert request["command"] == "python -m stackwise.adapters.compute.bootstrap"
    env = request["environmentVariables"]
    assert json.loads(base64.b64decode(env["STACKWISE_SPEC_B64"])) == json.loads(finetune_spec().model_dump_json())
    assert env["STACKWISE_JOB_URI"] == f"az://artifacts/jobs/{request['displayName']}"
    assert env["STACKWISE_NNODES"] == "2"
    assert request["tags"]["stackwise-processes-per-node"] == "8"
    assert request["identity"] == {"identityType": "Managed", "resourceId": OUTPUTS["dev-azure"]["job_role"]}
    assert request["environmentId"].startswith(f"{WS}/environments/stackwise-train/versions/")
    check_golden("azureml_index", build_request(index_spec(0), _stack()))


def test_routing_spot_distribution_and_instance_count():
    from stackwise.adapters.compute.azureml import CLUSTER, build_request
    from stackwise.specs import IndexSpec

    t4_spot = {"vmSize": "Standard_NC4as_T4_v3", "vmPriority": "LowPriority"}
    on_cluster = build_request(finetune_spec(gpu="T4", count=1, nodes=1, strategy=None), _stack(), cluster=t4_spot)
    assert on_cluster["computeId"] == f"{WS}/computes/{CLUSTER}"
    assert "queueSettings" not in on_cluster and "instanceType" not in on_cluster["resources"]
    assert "distribution" not in on_cluster and on_cluster["resources"]["instanceCount"] == 1
    # Dedicated wanted, the cluster is low priority: serverless, Standard tier.
    dedicated = build_request(finetune_spec(gpu="T4", count=1, nodes=1, strategy=None, spot=False), _stack(),
                              cluster=t4_spot)
    assert "computeId" not in dedicated
    assert dedicated["queueSettings"] == {"jobTier": "Standard"}
    assert dedicated["resources"]["instanceType"] == "Standard_NC4as_T4_v3"
    four = build_request(finetune_spec(gpu="A100-80GB", count=4, nodes=3), _stack(), cluster=t4_spot)
    assert four["resources"] == {"instanceCount": 3, "instanceType": "Standard_NC96ads_A100_v4"}
    # An index job with 3 workers: one instance per shard, each told its rank by the distribution.
    sharded = build_request(IndexSpec(source="az://artifacts/docs/", index="kb", workers=3), _stack())
    assert sharded["resources"] == {"instanceCount": 3, "instanceType": "Standard_D8s_v3"}
    assert sharded["distribution"]["processCountPerInstance"] == 1
    assert sharded["environmentVariables"]["STACKWISE_NNODES"] == "3"


def test_the_cluster_name_and_size_are_the_ones_infra_creates(offline_run_azure):
    from stackwise.adapters.compute.azureml import CLUSTER, build_request

    (cluster,) = [r for r in offline_run_azure.resources if r.type.endswith("machinelearningservices:Compute")]
    assert cluster.inputs["computeName"] == CLUSTER
    props = cluster.inputs["properties"]["properties"]
    described = {"vmSize": props["vmSize"], "vmPriority": props["vmPriority"]}
    # A job for the stack's own GPU (T4, spot in stacks/Pulumi.dev-azure.yaml) runs on that cluster.
    request = build_request(finetune_spec(gpu="T4", count=1, nodes=1, strategy=None), _stack(), cluster=described)
    assert request["computeId"].endswith(f"/computes/{CLUSTER}")


@pytest.fixture
def offline_run_azure(monkeypatch):
    pytest.importorskip("pulumi", reason="pip install 'stackwise[infra]'")
    from stackwise.infra.config import InfraConfig
    from stackwise.infra.offline import run_offline
    from stackwise.stack import _read_config

    repo = Path(__file__).resolve().parents[2]
    path = repo / "stacks" / "Pulumi.dev-azure.yaml"
    monkeypatch.setenv("STACKWISE_STACKS_DIR", str(repo / "stacks"))
    raw = _read_config(path.read_text(encoding="utf-8"), str(path))
    return run_offline(InfraConfig.load(raw, str(path)), "dev-azure")


# -- over HTTP ------------------------------------------------------------------------------------
def test_the_server_receives_the_request_and_the_environment(compute, azure_env):
    from stackwise.adapters.compute.azureml import build_request

    spec = finetune_spec()
    handle = compute.submit(spec)
    name = f"sw-finetune-{spec.digest()}-1"
    assert handle.id == name
    (path, body), = _job_puts(azure_env)
    assert path == f"{WS}/jobs/{name}"
    sent = body["properties"]
    expected = build_request(spec, _stack(), name, cluster=compute.cluster())
    for key, value in expected.items():
        if key == "resources":
            assert {k: sent[key][k] for k in value} == value
        else:
            assert sent[key] == value, key
    assert sent.get("computeId") is None  # serverless: 8 x A100 is not the stack's T4 cluster
    # What went over the wire, judged by azure-ai-ml's own REST models (keys, required fields, enums).
    from test_request_schemas import _azure_models, azure_findings

    assert azure_findings(_azure_models().JobBase, body, "JobBase") == []
    # The environment was registered before the job, under the id the job names.
    env_puts = [p for m, p, _ in azure_env.requests if m == "PUT" and "/environments/" in p]
    assert env_puts == [sent["environmentId"]]
    assert handle.status() is JobState.PENDING
    azure_env.move(name, "Running")
    assert handle.status() is JobState.RUNNING
    assert handle.info().spec["base"] == spec.base
    azure_env.move(name, "Completed")
    info = handle.wait(timeout=5, poll=0.05)
    assert info.outputs["checkpoints"] == f"az://artifacts/finetune/{spec.output_name}/checkpoints/"
    env = sent["environmentVariables"]
    context = json.loads(base64.b64decode(env["STACKWISE_CONTEXT_B64"]))
    assert (context["artifact_store"], context["job_id"], context["attempt"]) == ("az://artifacts", name, 1)
    assert "STACKWISE_STACK" not in env, "a job must not look its stack up by name"
    # The job's DefaultAzureCredential picks the stack's user-assigned identity by its client id.
    assert env["AZURE_CLIENT_ID"] == "11111111-2222-3333-4444-555555555555"
    assert info.outputs["azureml_job"] == f"{WS}/jobs/{name}"
    # A second job reuses the registered environment.
    compute.submit(index_spec(1))
    assert len([1 for m, p, _ in azure_env.requests if m == "PUT" and "/environments/" in p]) == 1


def test_a_t4_spot_job_runs_on_the_stacks_cluster(compute, azure_env):
    compute.submit(finetune_spec(gpu="T4", count=1, nodes=1, strategy=None))
    (_, body), = _job_puts(azure_env)
    assert body["properties"]["computeId"] == f"{WS}/computes/gpu"
    assert "queueSettings" not in body["properties"]


def test_state_mapping(compute, azure_env):
    handle = compute.submit(index_spec(2))
    for status, state in [("Queued", JobState.PENDING), ("Preparing", JobState.PENDING),
                          ("Provisioning", JobState.PENDING), ("Starting", JobState.PENDING),
                          ("Running", JobState.RUNNING), ("Finalizing", JobState.RUNNING),
                          ("NotResponding", JobState.RUNNING), ("Paused", JobState.PENDING),
                          ("CancelRequested", JobState.RUNNING), ("Failed", JobState.FAILED),
                          ("Canceled", JobState.CANCELLED), ("Completed", JobState.SUCCEEDED)]:
        azure_env.move(handle.id, status)
        assert handle.status() is state, status


def test_a_lost_answer_or_a_conflict_makes_one_job(compute, azure_env):
    azure_env.faults.append("lost-answer")
    first = compute.submit(index_spec(3))
    assert azure_env.create_calls == 1 and list(azure_env.jobs) == [first.id]
    # Another process created the same name between our GET and PUT: the PUT answers 409.
    azure_env.faults.append("race")
    second = compute.submit(index_spec(4))
    assert second.id in azure_env.jobs and len(azure_env.jobs) == 2
    assert compute.submit(index_spec(4)).id == second.id
    assert len(azure_env.jobs) == 2 and azure_env.create_calls == 2


def test_throttling_honours_retry_after_then_succeeds(compute, azure_env):
    azure_env.faults.append("throttle")
    start = time.monotonic()
    handle = compute.submit(index_spec(5))
    assert time.monotonic() - start >= azure_env.retry_after_s
    assert azure_env.create_calls == 2 and list(azure_env.jobs) == [handle.id]


def test_errors_say_how_to_fix(compute, azure_env, caplog):
    from stackwise.errors import CloudError, QuotaError

    caplog.set_level("DEBUG")
    azure_env.faults.append("quota")
    with pytest.raises(QuotaError, match="Quotas") as quota:
        compute.submit(index_spec(6))
    assert "NDASv4_A100" in str(quota.value)
    azure_env.faults.append("bad-vm-size")
    with pytest.raises(CloudError, match="does not offer the requested VM size"):
        compute.submit(index_spec(7))
    azure_env.faults.extend(["unavailable"] * 10)
    with pytest.raises(CloudError, match="kept failing") as failing:
        compute.submit(index_spec(8))
    assert azure_env.jobs == {} and len(azure_env.faults) == 10 - 4  # 4 attempts: azure-core's own retries are off
    # The bearer token the stub `az` hands out never shows in errors or logs.
    assert "test-arm-token" not in str(failing.value) + str(quota.value) + caplog.text


def test_missing_credentials_say_how_to_sign_in(azure_env, tmp_path, monkeypatch):
    from stackwise.errors import CredentialsError

    azure_cli_login(azure_env, tmp_path / "nobody", monkeypatch, logged_in=False)
    platform = use_stack("dev-azure", tmp_path, monkeypatch)
    with pytest.raises(CredentialsError, match="az login") as raised:
        platform.compute.submit(index_spec(9))
    assert "AZURE_CLIENT_SECRET" in str(raised.value)
    assert azure_env.jobs == {}
    assert not [1 for m, _, _ in azure_env.requests if m == "PUT"]


def test_logs_come_from_the_run_history(compute, azure_env):
    handle = compute.submit(index_spec(11))
    assert list(handle.logs()) == []
    azure_env.write_logs(handle.id, ["loading spec", "@@progress {}"])
    azure_env.move(handle.id, "Running")
    follow = compute.logs(handle.id, follow=True, poll=0.05)
    assert [next(follow), next(follow)] == ["loading spec", "@@progress {}"]
    azure_env.write_logs(handle.id, ["done"])
    azure_env.move(handle.id, "Completed")
    assert list(follow) == ["done"]
    # Two nodes' files: each line names its file, nothing is read twice.
    azure_env.write_logs(handle.id, ["node 1 up"], file="user_logs/std_log_node_1.txt")
    assert list(handle.logs()) == ["[std_log] loading spec", "[std_log] @@progress {}", "[std_log] done",
                                   "[std_log_node_1] node 1 up"]


def test_list_and_get_from_a_new_platform(compute, azure_env, tmp_path, monkeypatch):
    handle = compute.submit(index_spec(10))
    again = use_stack("dev-azure", tmp_path, monkeypatch)
    assert again.jobs.get(handle.id).status() is JobState.PENDING
    assert handle.id in [info.id for info in again.jobs.list()]


def test_cli_finetune_routes_to_azure(azure_env, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from stackwise.cli import app

    use_stack("dev-azure", tmp_path, monkeypatch)
    result = CliRunner().invoke(app, ["finetune", "--base", "HuggingFaceTB/SmolLM2-135M-Instruct",
                                      "--data", "az://artifacts/data/train.jsonl", "--gpu", "T4", "--spot",
                                      "--max-steps", "100", "--stack", "dev-azure", "--detach", "--json"])
    assert result.exit_code == 0, result.output
    job_id = json.loads(result.stdout)["job"]
    assert job_id.startswith("sw-finetune-") and job_id in azure_env.jobs
    assert azure_env.jobs[job_id]["properties"]["computeId"] == f"{WS}/computes/gpu"
    shown = CliRunner().invoke(app, ["jobs", "show", job_id, "--stack", "dev-azure", "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["state"] == "PENDING"


def test_cli_without_credentials_exits_2_without_a_traceback(azure_env, tmp_path, monkeypatch):
    import os
    import subprocess

    azure_cli_login(azure_env, tmp_path / "nobody", monkeypatch, logged_in=False)
    use_stack("dev-azure", tmp_path, monkeypatch)
    proc = subprocess.run([sys.executable, "-m", "stackwise.cli", "finetune", "--base",
                           "HuggingFaceTB/SmolLM2-135M-Instruct", "--data", "az://artifacts/data/train.jsonl",
                           "--gpu", "T4", "--stack", "dev-azure", "--detach"],
                          env=dict(os.environ, COLUMNS="200"), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2, proc.stderr
    assert "az login" in proc.stderr and "AZURE_CLIENT_ID" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert azure_env.jobs == {}


def test_bootstrap_reads_azure_pytorch_variables():
    from stackwise.adapters.compute.bootstrap import cluster_env

    # What Azure ML sets on node 1 of a 2-instance PyTorch job (one process per instance), plus
    # STACKWISE_NNODES from the request.
    env = {"MASTER_ADDR": "10.0.0.4", "MASTER_PORT": "6105", "NODE_RANK": "1", "RANK": "1", "WORLD_SIZE": "2",
           "STACKWISE_NNODES": "2"}
    assert cluster_env(env, sagemaker_config="/nonexistent") == {"MASTER_ADDR": "10.0.0.4", "MASTER_PORT": "6105",
                                                                  "NODE_RANK": "1", "NNODES": "2"}


def test_connect_to_an_azure_stack_stays_light_until_the_first_cloud_call(tmp_path):
    import os
    import subprocess

    outputs = tmp_path / "out.json"
    outputs.write_text(json.dumps(OUTPUTS["dev-azure"]))
    script = (
        "import sys\n"
        "base = set(sys.modules)\n"
        "import stackwise\n"
        "p = stackwise.connect('dev-azure'); p.stack.outputs\n"
        "before = sorted({m for m in set(sys.modules) - base if m.split('.')[0] == 'azure'})\n"
        "p.compute\n"
        "after = sorted({m for m in ('azure.ai.ml', 'azure.identity') if m in sys.modules})\n"
        "print(before, after)\n"
    )
    # Without AZUREML_CURRENT_CLOUD: an earlier MLClient in this process wrote its test cloud's name there.
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKWISE_") and k != "AZUREML_CURRENT_CLOUD"}
    env.update(STACKWISE_OUTPUTS=str(outputs), STACKWISE_HOME=str(tmp_path / "h"))
    proc = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[2], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[] ['azure.ai.ml', 'azure.identity']"


def test_reading_a_result_leaves_the_callers_event_loop_alone(compute, azurite, monkeypatch):
    """adlfs makes fsspec's I/O loop the event loop of the thread that first uses it; the adapter
    reads results in a thread of its own, so a caller's asyncio (Pulumi's engine, a notebook's
    loop) is left as it was."""
    import asyncio
    import threading

    for key, value in azurite.items():
        monkeypatch.setenv(key, value)

    def write() -> None:
        import fsspec

        with fsspec.open("az://artifacts/loop-check/result.json", "w") as out:
            out.write('{"added": 3}')

    writer = threading.Thread(target=write)
    writer.start()
    writer.join()
    policy = asyncio.get_event_loop_policy()
    previous = policy.get_event_loop()  # the thread's loop, restored after: later tests (Pulumi) use it
    mine = asyncio.new_event_loop()
    asyncio.set_event_loop(mine)
    try:
        assert compute._read_result("az://artifacts/loop-check/result.json") == {"added": 3}
        assert policy.get_event_loop() is mine
    finally:
        asyncio.set_event_loop(previous)
        mine.close()
