"""The serving image speaks each cloud's serving contract, for real: the `serve` image built from
this checkout runs as SageMaker, Vertex AI and Azure ML would run it, one container at a time, with
the model where that platform puts it and the environment it (and stackwise's deploy adapter for
it) sets; each test waits (bounded) for the platform's readiness route, sends real generation
requests in the platform's body shape and checks the answers: non-empty, equal across two calls
(greedy decoding) and equal to the same model's generation on this machine.

- SageMaker: `<image> serve`, port 8080 published to a free host port (`-p`, no host network),
  a LoRA adapter at /opt/ml/model (read-only) whose recorded base is missing in the container,
  so it loads onto $STACKWISE_BASE_MODEL (a base folder mounted beside it); GET /ping,
  POST /invocations.
- Vertex AI: no arguments, host network, AIP_HTTP_PORT = a free port, AIP_HEALTH_ROUTE and
  AIP_PREDICT_ROUTE in Vertex's default form, AIP_STORAGE_URI = a gs:// URI served by
  gcp-storage-emulator on the host (read by gcsfs inside the image); {"instances": ...}.
- Azure ML: no arguments, port 8080 published, AZUREML_MODEL_DIR = the mount folder with the model
  in a subfolder (as Azure mounts a model registered from a folder); GET / (liveness),
  GET /health (readiness), POST /v1/completions (the deploy adapter's scoring route) and /score.
- A model folder without a model: the container exits 2 at once with the reason, no traceback.
Deviations from the platforms: the Vertex container uses the host network to reach the GCS
emulator on 127.0.0.1; the base model of the SageMaker adapter is a mounted folder where a cloud
would name a shipped model or a URI.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("peft")
pytest.importorskip("httpx")
pytestmark = pytest.mark.slow

PROMPT = "The Australian government said"
TOKENS = 8
READY_TIMEOUT_S = 300
BUCKET = "sw-vertex-models"
MISSING_BASE = "/trained/elsewhere/tiny-llama"
VERTEX_HEALTH = "/v1/endpoints/1234/deployedModels/5678"
VERTEX_PREDICT = "/v1/endpoints/1234/deployedModels/5678:predict"
# One thread per container: two cores are shared with the test process and other engineers.
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "STACKWISE_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _readable(folder: Path) -> Path:
    """The image runs as uid 1000: bind-mounted models must be world-readable."""
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    """A tiny base model, a LoRA adapter on it recording a base path that no container has, and
    each one's greedy generation of PROMPT on this machine (the same torch build as the image)."""
    gensim = pytest.importorskip("gensim")
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stackwise.evaluation.lm import load
    from stackwise.training.tiny import build_tiny_model

    corpus = Path(gensim.__file__).parent / "test" / "test_data" / "lee_background.cor"
    texts = [x.strip() for x in corpus.read_text(encoding="latin-1").splitlines() if x.strip()][:150]
    root = tmp_path_factory.mktemp("served-models")
    base = build_tiny_model(root / "tiny-llama", texts, vocab_size=400)
    torch.manual_seed(3)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                                LoraConfig(r=4, lora_alpha=64, target_modules="all-linear", init_lora_weights=False))
    adapter = root / "adapter"
    peft_model.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(base).save_pretrained(adapter)
    adapter_says = load(str(adapter), chat_template=False).generate(PROMPT, TOKENS)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = MISSING_BASE
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    base_says = load(str(base), chat_template=False).generate(PROMPT, TOKENS)
    assert base_says and adapter_says and base_says != adapter_says
    return {"base": _readable(Path(base)), "adapter": _readable(adapter), "base_says": base_says,
            "adapter_says": adapter_says}


# -- what each platform and stackwise's deploy adapter put in the container's environment ---------
def _adapter_env(cloud: str, artifact: str, base: str | None = None) -> dict[str, str]:
    from stackwise.contract import EndpointOutput
    from stackwise.deploy import DeployTarget

    stack = SimpleNamespace(name=f"dev-{cloud}", region="r", outputs=SimpleNamespace(
        job_role="arn:aws:iam::123456789012:role/sw", artifact_store="x://s", training_image=None, default_gpu=None,
        network=None))
    out, target = EndpointOutput(name="chat", serving_image="img"), DeployTarget("chat", "3", artifact, base)
    if cloud == "aws":
        from stackwise.adapters.deploy.sagemaker import model_request

        return dict(model_request(stack, out, target)["PrimaryContainer"]["Environment"])
    if cloud == "gcp":
        from stackwise.adapters.deploy.vertex import upload_request

        return {e["name"]: e["value"] for e in upload_request(stack, out, target)["model"]["containerSpec"]["env"]}
    from stackwise.adapters.deploy.azureml import deployment_request

    env = deployment_request(stack, out, target)["environment_variables"]
    # The adapter names the artifact in STACKWISE_MODEL_URI (az://, no storage here) and attaches no
    # model; Azure's own contract, a registered model at AZUREML_MODEL_DIR, is what runs here.
    return {k: v for k, v in env.items() if k != "STACKWISE_MODEL_URI"}


# -- one serving container -------------------------------------------------------------------------
class Served:
    """A detached serving container; its logs; removed at the end."""

    def __init__(self, engine: list[str], image: str, name: str, *, args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, mounts: dict[Path, str] | None = None,
                 publish: tuple[int, int] | None = None, host_network: bool = False):
        self.engine, self.name = engine, f"{name}-{os.getpid()}"
        net = ["--network=host"] if host_network else ["-p", f"127.0.0.1:{publish[0]}:{publish[1]}"]
        self.cmd = [*engine, "run", "-d", "--name", self.name, *net]
        for key, value in sorted({**THREADS, **(env or {})}.items()):
            self.cmd += ["-e", f"{key}={value}"]
        for host, target in (mounts or {}).items():
            self.cmd += ["-v", f"{host}:{target}:ro"]
        self.cmd += [image, *args]

    def __enter__(self) -> Served:
        subprocess.run([*self.engine, "rm", "-f", self.name], capture_output=True, timeout=60)
        proc = subprocess.run(self.cmd, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"{' '.join(self.cmd)}\n{proc.stderr}"
        return self

    def __exit__(self, *exc) -> None:
        subprocess.run([*self.engine, "rm", "-f", "-t", "5", self.name], capture_output=True, timeout=120)

    def logs(self) -> str:
        proc = subprocess.run([*self.engine, "logs", self.name], capture_output=True, text=True, timeout=60)
        return proc.stdout + proc.stderr

    def running(self) -> bool:
        proc = subprocess.run([*self.engine, "inspect", "--format", "{{.State.Running}}", self.name],
                              capture_output=True, text=True, timeout=60)
        return proc.stdout.strip() == "true"

    def wait_ready(self, url: str) -> list[int]:
        """Poll `url` until it answers 200 (bounded); the statuses seen before (503 while loading)."""
        import httpx

        seen: list[int] = []
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                status = httpx.get(url, timeout=3).status_code
            except httpx.HTTPError:
                status = 0
            if status == 200:
                return seen
            if status and (not seen or seen[-1] != status):
                seen.append(status)
            if not self.running():
                pytest.fail(f"the container exited before {url} answered 200:\n{self.logs()[-4000:]}")
            time.sleep(0.5)
        pytest.fail(f"{url} did not answer 200 within {READY_TIMEOUT_S} s (saw {seen}):\n{self.logs()[-4000:]}")


def _generate_twice(url: str, body: dict) -> tuple[object, dict]:
    import httpx

    first = httpx.post(url, json=body, timeout=120)
    second = httpx.post(url, json=body, timeout=120)
    assert first.status_code == 200, first.text

    def content(answer):  # an OpenAI answer's id and latency differ per call; its choices must not
        return answer["choices"] if isinstance(answer, dict) and "choices" in answer else answer

    assert content(first.json()) == content(second.json()), (first.json(), second.json())  # greedy
    return first.json(), dict(first.headers)


def _check_logs(served: Served, folder: str) -> None:
    logs = served.logs()
    assert f"loaded from {folder}" in logs, logs[-3000:]
    assert "Traceback" not in logs, logs[-3000:]


# -- the three contracts -----------------------------------------------------------------------------
def test_sagemaker_container_ping_and_invocations(images, engine, models):
    import httpx

    port = _free_port()
    env = _adapter_env("aws", "s3://bucket/chat/3/", base="/opt/stackwise-base-model")
    with Served(engine, images["serve"]["image"], "sw-serve-sagemaker", args=("serve",), env=env,
                mounts={models["adapter"]: "/opt/ml/model", models["base"]: "/opt/stackwise-base-model"},
                publish=(port, 8080)) as served:
        url = f"http://127.0.0.1:{port}"
        served.wait_ready(f"{url}/ping")
        answer, headers = _generate_twice(f"{url}/invocations", {
            "inputs": PROMPT, "parameters": {"max_new_tokens": TOKENS, "temperature": 0.0}})
        assert answer == [{"generated_text": models["adapter_says"]}]
        assert headers["x-stackwise-version"] == "chat:3"
        openai, _ = _generate_twice(f"{url}/invocations", {"prompt": PROMPT, "max_tokens": TOKENS, "temperature": 0})
        assert openai["choices"][0]["text"] == models["adapter_says"] and openai["model"] == "chat:3"
        bad = httpx.post(f"{url}/invocations", content=b"{oops", headers={"Content-Type": "application/json"})
        assert bad.status_code == 400 and "not JSON" in bad.json()["error"]["message"]
        _check_logs(served, "/opt/ml/model")


@pytest.fixture
def gcs(monkeypatch):
    """gcp-storage-emulator (the GCS JSON API gcsfs speaks) on 127.0.0.1, in memory."""
    pytest.importorskip("gcsfs", reason="install stackwise[gcp]")
    pytest.importorskip("gcp_storage_emulator", reason="install stackwise[dev] (gcp-storage-emulator)")
    from gcp_storage_emulator.server import create_server

    port = _free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    env = {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}", "NO_GCE_CHECK": "true",
           "GOOGLE_CLOUD_PROJECT": "sw-test"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield env
    server.stop()


def test_vertex_container_aip_routes_and_storage_uri(images, engine, models, gcs):
    import gcsfs

    fs = gcsfs.GCSFileSystem(project="sw-test", skip_instance_cache=True)
    for path in models["base"].iterdir():
        fs.put_file(str(path), f"{BUCKET}/models/chat-3/{path.name}")
    port = _free_port()
    storage = f"gs://{BUCKET}/models/chat-3"
    env = {**_adapter_env("gcp", storage), **gcs, "AIP_MODE": "PREDICTION", "AIP_HTTP_PORT": str(port),
           "AIP_HEALTH_ROUTE": VERTEX_HEALTH, "AIP_PREDICT_ROUTE": VERTEX_PREDICT, "AIP_STORAGE_URI": storage}
    with Served(engine, images["serve"]["image"], "sw-serve-vertex", env=env, host_network=True) as served:
        url = f"http://127.0.0.1:{port}"
        served.wait_ready(f"{url}{VERTEX_HEALTH}")
        answer, headers = _generate_twice(f"{url}{VERTEX_PREDICT}", {
            "instances": [PROMPT, {"prompt": PROMPT}], "parameters": {"max_tokens": TOKENS, "temperature": 0}})
        assert answer == {"predictions": [models["base_says"], models["base_says"]]}
        assert headers["x-stackwise-version"] == "chat:3"
        _check_logs(served, "/workspace/.stackwise/models/remote/")  # copied from gs:// into the model cache


def test_azureml_container_liveness_readiness_and_scoring(images, engine, models):
    import httpx

    port = _free_port()
    model_dir = "/var/azureml-app/azureml-models/chat/3"
    env = {**_adapter_env("azure", "az://models/chat/3"), "AZUREML_MODEL_DIR": model_dir}
    with Served(engine, images["serve"]["image"], "sw-serve-azureml", env=env,
                mounts={models["base"]: f"{model_dir}/tiny-llama"}, publish=(port, 8080)) as served:
        url = f"http://127.0.0.1:{port}"
        served.wait_ready(f"{url}/")  # liveness: up before the model is
        served.wait_ready(f"{url}/health")
        for route in ("/v1/completions", "/score"):
            answer, _ = _generate_twice(f"{url}{route}", {"prompt": PROMPT, "max_tokens": TOKENS, "temperature": 0})
            assert answer["choices"][0]["text"] == models["base_says"], route
        bad = httpx.post(f"{url}/score", json={"prompt": PROMPT, "max_tokens": 0})
        assert bad.status_code == 422 and "max_tokens" in bad.json()["error"]["message"]
        _check_logs(served, f"{model_dir}/tiny-llama")


def test_a_model_folder_without_a_model_stops_the_container_with_the_reason(images, engine, tmp_path):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    (empty / "weights.bin").write_bytes(b"\0" * 8)
    _readable(empty)
    cmd = [*engine, "run", "--rm", *[f"-e{k}={v}" for k, v in THREADS.items()], "-v", f"{empty}:/opt/ml/model:ro",
           images["serve"]["image"], "serve"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "no config.json" in out and "weights.bin" in out and "/opt/ml/model" in out, out
    assert "Traceback" not in out, out

