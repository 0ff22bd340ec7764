"""Helpers the cloud compute tests share: stack outputs written to a file, specs, and what a
cloud's nodes need when this machine stands in for the training image (`image_process`)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

GOLDEN = Path(__file__).resolve().parents[1] / "golden"

OUTPUTS: dict[str, dict[str, Any]] = {
    "dev-aws": {
        "cloud": "aws", "region": "us-east-1", "artifact_store": "s3://sw-dev-artifacts",
        "job_role": "arn:aws:iam::123456789012:role/sw-dev-jobs-role",
        "training_image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/sw-dev-images:latest",
        "default_gpu": "A10G", "vector_store": {"kind": "embedded", "uri": "s3://sw-dev-artifacts/vectors"},
    },
    "dev-gcp": {
        "cloud": "gcp", "region": "us-central1", "artifact_store": "gs://sw-dev-artifacts",
        "job_role": "sw-dev-jobs@my-project.iam.gserviceaccount.com",
        "training_image": "us-central1-docker.pkg.dev/my-project/sw-dev-images/train:latest",
        "default_gpu": "L4", "vector_store": {"kind": "embedded", "uri": "gs://sw-dev-artifacts/vectors"},
        "gcp_project": "my-project",
    },
    "dev-k8s": {
        "cloud": "aws", "region": "us-east-1", "artifact_store": "s3://sw-dev-artifacts",
        "job_role": "arn:aws:iam::123456789012:role/sw-dev-jobs-role",
        "training_image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/sw-dev-images:train",
        "default_gpu": "A10G", "vector_store": {"kind": "embedded", "uri": "s3://sw-dev-artifacts/vectors"},
        "kubernetes": {"namespace": "sw-dev", "service_account": "stackwise-jobs", "cluster": "sw-dev",
                       "gpu_label": "stackwise.dev/gpu", "gpu_values": {"T4": "T4", "L4": "L4", "A10G": "A10G"},
                       "spot_selector": {"stackwise.dev/spot": "true"},
                       "spot_tolerations": [{"key": "stackwise.dev/spot", "operator": "Equal", "value": "true",
                                             "effect": "NoSchedule"}],
                       "autoscaled_gpus": ["A10G"]},
    },
    "dev-azure": {
        "cloud": "azure", "region": "eastus", "artifact_store": "az://artifacts",
        "job_role": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/sw-dev/providers/"
                    "Microsoft.ManagedIdentity/userAssignedIdentities/sw-dev-jobs",
        "training_image": "swdevimages.azurecr.io/train:latest",
        "default_gpu": "T4", "vector_store": {"kind": "embedded", "uri": "az://artifacts/vectors"},
        "azure_subscription_id": "00000000-0000-0000-0000-000000000000",
        "azure_resource_group": "sw-dev", "azure_workspace": "sw-dev-ws",
        "azure_identity_client_id": "11111111-2222-3333-4444-555555555555",
    },
}


def use_stack(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **changes: Any) -> Any:
    """`connect(name)` with the stack's outputs (with `changes`) from a file, state under tmp_path."""
    import stackwise

    path = tmp_path / f"{name}-outputs.json"
    path.write_text(json.dumps({**OUTPUTS[name], **changes}), encoding="utf-8")
    monkeypatch.setenv("STACKWISE_OUTPUTS", str(path))
    monkeypatch.setenv("STACKWISE_HOME", str(tmp_path / ".stackwise"))
    monkeypatch.delenv("STACKWISE_STACK", raising=False)
    return stackwise.connect(name)


def aws_moto_env(endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point boto3 at moto on `endpoint` with test credentials, one attempt per call, and no
    profile, config file, session token or instance metadata of this machine."""
    for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_MAX_ATTEMPTS": "1", "AWS_EC2_METADATA_DISABLED": "true",
                       "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)


def azure_cli_login(server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, logged_in: bool = True,
                    resource: str | None = None, token: str = "test-arm-token") -> None:
    """Point MLClient at the local ARM server (`STACKWISE_AZURE_ARM_ENDPOINT`, its TLS certificate)
    and sign in the way `az login` would: DefaultAzureCredential, limited to AzureCliCredential,
    runs `az account get-access-token --output json --resource <resource>` from a stub `az` on PATH
    (none on PATH when `logged_in` is False). `resource` defaults to the server's endpoint (ARM);
    the stub answers `token` for it and fails for any other resource."""
    bin_dir = tmp_path / "az-bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    if logged_in:
        az = bin_dir / "az"
        resource = (resource or server.endpoint).rstrip("/")
        az.write_text('#!/bin/sh\n'
                      'case "$*" in *"get-access-token"*"--resource ' + resource + '"*) ;;\n'
                      '  *) echo "ERROR: unexpected az call: $*" >&2; exit 1;; esac\n'
                      'echo \'{"accessToken": "' + token + '", "expires_on": 4102444800, '
                      '"tokenType": "Bearer"}\'\n', encoding="utf-8")
        az.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin")
    monkeypatch.setenv("AZURE_TOKEN_CREDENTIALS", "AzureCliCredential")
    monkeypatch.setenv("STACKWISE_AZURE_ARM_ENDPOINT", server.endpoint)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", server.ca_file)
    monkeypatch.setenv("AZURE_CONFIG_DIR", str(tmp_path / "azure-config"))
    for key in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_USERNAME",
                "AZURE_FEDERATED_TOKEN_FILE", "IDENTITY_ENDPOINT", "MSI_ENDPOINT",
                "AZUREML_CURRENT_CLOUD"):  # azure-ai-ml writes the custom cloud's name into os.environ
        monkeypatch.delenv(key, raising=False)


def finetune_spec(**compute: Any) -> Any:
    from stackwise.specs import FineTuneSpec

    return FineTuneSpec(base="HuggingFaceTB/SmolLM2-135M-Instruct", data="hf://datasets/acme/support/train.jsonl",
                        name="support-bot", training={"max_steps": 200},
                        compute={"gpu": "A100", "count": 8, "nodes": 2, "spot": True, "strategy": "fsdp",
                                 "max_runtime_s": 6 * 3600, **compute})


def index_spec(n: int = 0, **compute: Any) -> Any:
    from stackwise.specs import IndexSpec

    return IndexSpec(source=f"corpus://docs-{n}/", index=f"kb{n}", compute=compute)


def check_golden(name: str, request: Any) -> None:
    """Compare a request with tests/golden/<name>.json; STACKWISE_UPDATE_GOLDEN=1 rewrites it."""
    path = GOLDEN / f"{name}.json"
    text = json.dumps(request, indent=2, sort_keys=True) + "\n"
    if os.environ.get("STACKWISE_UPDATE_GOLDEN") == "1":
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"no golden file {path}: write it with STACKWISE_UPDATE_GOLDEN=1 and review it"
    assert json.loads(path.read_text(encoding="utf-8")) == json.loads(text), f"request differs from {path}"


# -- this machine standing in for the training image ------------------------------------------
# The runners (sagemaker_runner, vertex_runner, azureml_runner) start a job's nodes in containers of
# the training image, or, with no container engine, as processes of this machine: the same command
# (`python -m stackwise.adapters.compute.bootstrap`, `python` being this interpreter, which has
# stackwise installed as the image has) with the environment the cloud gives the node, over a
# clean base (nothing of this machine's environment, no STACKWISE_* variable of the test session).

# SageMaker's contract is files under /opt/ml. A process sees them there through a mount namespace:
# the instance's folder bound on /opt/ml (over a tmpfs on /opt that keeps /opt's entries), as the
# container's volume would be. Unprivileged (`unshare -rm`) where user namespaces are allowed.
_OPT_ML = r"""
set -e
root=$1; shift
if [ ! -d /opt/ml ]; then
  keep=$(mktemp -d); mount --bind /opt "$keep"; mount -t tmpfs tmpfs /opt
  for entry in "$keep"/* "$keep"/.[!.]*; do
    [ -e "$entry" ] || continue
    name=${entry##*/}
    if [ -d "$entry" ]; then mkdir "/opt/$name"; else : > "/opt/$name"; fi
    mount --bind "$entry" "/opt/$name"
  done
  mkdir /opt/ml
fi
mount --bind "$root" /opt/ml
exec "$@"
"""


def opt_ml_available() -> str | None:
    """None when a process can be given its own /opt/ml (unshare and a mount namespace), else why not."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return "no `unshare` (util-linux) to give a process its own /opt/ml"
    probe = subprocess.run([unshare, "-rm", "sh", "-c", "mount -t tmpfs tmpfs /mnt && true"], capture_output=True,
                           text=True, timeout=30)
    if probe.returncode != 0:
        return f"this machine allows no mount namespace (`unshare -rm`): {probe.stderr.strip()[:200]}"
    return None


def image_process(argv: list[str], env: dict[str, str], log: Path, workdir: Path,
                  opt_ml: Path | None = None) -> subprocess.Popen:
    """Start `argv` (a command the image would run; `python` is this interpreter) as a node of a
    job: `env` over a clean base, HOME in `workdir`, output to `log`, in a session of its own (so
    that `stop_process` reaches the workload under it), with `opt_ml` seen as /opt/ml."""
    from stackwise.userinput import cache_dir

    home = workdir / "home"
    home.mkdir(parents=True, exist_ok=True)
    bin_dir = os.path.dirname(sys.executable)
    base = {"PATH": os.pathsep.join([bin_dir, "/usr/local/bin", "/usr/bin", "/bin"]), "HOME": str(home),
            "LANG": "C.UTF-8", "TMPDIR": os.environ.get("TMPDIR", "/tmp"), "OMP_NUM_THREADS": "1",
            "STACKWISE_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
            # The images carry the shipped embedding model exported to ONNX (Containerfile); so does
            # this machine's cache after its first export.
            "STACKWISE_CACHE": str(cache_dir())}
    if argv and argv[0] == "python":
        argv = [sys.executable, *argv[1:]]
    if opt_ml is not None:
        argv = ["unshare", "-rm", "sh", "-c", _OPT_ML, "sh", str(opt_ml), *argv]
    with open(log, "wb") as out:
        return subprocess.Popen(argv, env={**base, **env}, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=workdir, start_new_session=True)


def stop_process(proc: subprocess.Popen, signum: int = signal.SIGKILL) -> None:
    """What a preemption does to a node that runs as a process: `signum` to its session."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            pass


# -- the real jobs of the compute contract -------------------------------------------------------
# An index job over a few short text files on the cloud's object store, into an index that an
# earlier run built: the job reads every document, finds its chunks stored, embeds nothing (no
# model to load: that takes ~20 s per node on 2 shared cores) and prunes the one stored document
# whose file is gone. Its report's counts are known by hand: documents = chunks = unchanged = the
# files, pruned = 1, added = embedded = 0. The index lives in Pinecone (a local server speaking its
# API, tests/servers/pinecone_server.py), which every cloud's nodes reach alike: LanceDB cannot write
# to the GCS emulator (see /work/shared/notes/FEASIBILITY.md), and its import alone takes ~5 s.
JOB_STORE_KEY_ENV = "STACKWISE_TEST_JOB_STORE_KEY"
JOB_STORE_KEY = "pcsk_JOBSTORE_n0tl34k3d_5e1d"
JOB_STORE_DIM = 384  # all-MiniLM-L6-v2's, the model the index was built with
_TEXTS = ["Keys are rotated every ninety days by the platform team.",
          "Backups of the vector store run nightly at two in the morning.",
          "On-call engineers acknowledge pages within fifteen minutes.",
          "Fine-tuning jobs write checkpoints every five hundred steps.",
          "Evaluation reports compare the candidate with the production model."]


def job_vector_store(pinecone_url: str) -> dict[str, str]:
    """The stack outputs' vector store for real jobs: the key reaches each node as a reference."""
    return {"kind": "pinecone", "host": pinecone_url, "api_key_secret": f"env://{JOB_STORE_KEY_ENV}"}


def write_corpus(folder: str, per_shard: tuple[int, ...]) -> str:
    """Text files under `folder` (a URI), `per_shard[i]` of them owned by shard i of
    len(per_shard); returns the folder as an index source."""
    import fsspec

    from stackwise.documents import canonical_doc_id
    from stackwise.workloads.index import shard_of

    folder = folder.rstrip("/")
    # A file's document id is its canonical URI (az:// for Azure, whatever adlfs names first).
    fs, path = fsspec.core.url_to_fs(folder)
    protocol = folder.split("://", 1)[0]
    wanted, names, number = list(per_shard), [], 0
    while any(wanted):
        name = f"doc-{number}.txt"
        doc_id = canonical_doc_id(f"{protocol}://{path}/{name}")
        shard = shard_of(doc_id, len(per_shard)) if len(per_shard) > 1 else 0
        if wanted[shard]:
            wanted[shard] -= 1
            names.append(name)
        number += 1
    assert len(names) <= len(_TEXTS)
    for name, text in zip(names, _TEXTS):
        with fsspec.open(f"{folder}/{name}", "w") as out:
            out.write(text + "\n")
    return folder + "/"


def warm_index(vector_store: dict[str, str], spec: Any) -> None:
    """`spec.index` as an earlier run left it: every chunk of `spec.source` stored (one vector for
    all: the job never embeds them again), plus one document whose file has since been deleted.
    Needs $STACKWISE_TEST_JOB_STORE_KEY in this process."""
    from stackwise.contract import VectorStoreOutput
    from stackwise.documents import Source, chunk_document, read_documents
    from stackwise.embeddings import canonical_name
    from stackwise.vectors import Record, open_store

    store = open_store(VectorStoreOutput.model_validate(vector_store))
    store.create_index(spec.index, JOB_STORE_DIM, canonical_name(spec.embedding.model))
    source = Source(spec.source)
    documents, _ = read_documents(source)
    gone = dataclasses.replace(documents[0], doc_id=source.uri.rstrip("/") + "/deleted.txt")
    vector = [1.0] + [0.0] * (JOB_STORE_DIM - 1)
    records = [Record(id=c.id, vector=vector, text=c.text, doc_id=c.doc_id, source=source.uri, chunk=c.chunk,
                      metadata=c.metadata)
               for doc in [*documents, gone] for c in chunk_document(doc, spec.chunking.size, spec.chunking.overlap)]
    store.replace_documents(spec.index, [doc.doc_id for doc in [*documents, gone]], records)


def real_index_job(root: str, vector_store: dict[str, str], name: str, workers: int = 1,
                   reported_root: str | None = None) -> Any:
    """A RealJob: the corpus written under `root` (the stack's artifact store), its index warmed.
    `reported_root`: how the report spells `root` where it differs."""
    from stackwise.specs import IndexSpec
    from stackwise.testing.compute import RealJob

    per_shard = (3,) if workers == 1 else (2, 1)
    source = write_corpus(f"{root}/data/{name}", per_shard)
    spec = IndexSpec(source=source, index=name, prune=True, workers=workers)
    warm_index(vector_store, spec)
    # By hand: 3 one-line files (one chunk each), all stored already, and the deleted file's chunk pruned.
    return RealJob(spec, {"index": name, "source": f"{reported_root or root}/data/{name}", "model": "all-MiniLM-L6-v2",
                          "documents": 3, "chunks": 3, "unchanged": 3, "added": 0, "replaced": 0, "embedded": 0,
                          "pruned": 1, "skipped": [], "shards": workers})


# Azurite's well-known development account (published in Azurite's README; not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@contextlib.contextmanager
def running_azurite(binary: Path, log_folder: Path, container: str = "artifacts"):
    """Azurite's Blob service (in memory) on a free 127.0.0.1 port with `container` made; yields its
    URL. Fails the test with Azurite's log when it does not start in 60 s; stopped on exit."""
    import socket
    import subprocess

    import pytest
    from azure.storage.blob import BlobServiceClient

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = log_folder / "azurite.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(binary), "--blobHost", "127.0.0.1", "--blobPort", str(port),
                                 "--inMemoryPersistence", "--skipApiVersionCheck"],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"Azurite did not start:\n{log.read_text(errors='replace')[-2000:]}", pytrace=False)
                time.sleep(0.1)
        url = f"http://127.0.0.1:{port}"
        BlobServiceClient.from_connection_string(azurite_connection_string(url)).create_container(container)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def azurite_connection_string(url: str) -> str:
    """Azurite's well-known development account at `url`."""
    return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={url}/{AZURITE_ACCOUNT};")
