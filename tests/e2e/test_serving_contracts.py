"""The serving contracts of SageMaker, Vertex AI and Azure ML, in process and over real HTTP: the
app `stackwise serve` runs in the serving image, in model source mode (one model from the folder or
URI the platform hands the container), with a tiny random Llama and a LoRA adapter on it.

Each platform's test sets the environment that platform would set plus the one stackwise's own
deploy adapter asks for (its request builders: `model_request`, `upload_request`,
`deployment_request`), calls that platform's routes with its body shapes, and checks the answers
against the same model's own generation on this machine (greedy: equal, and equal across calls).
Shown besides: readiness is 503 until the model is loaded; an adapter trained elsewhere loads
onto $STACKWISE_BASE_MODEL; bad folders and bad bodies get error JSON with 400/422/503; the CLI
(`stackwise serve --model`, or a Vertex environment with no flags) serves over a real socket.
tests/containers/test_serving_image.py runs the same contracts in the serving image.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("peft")
pytest.importorskip("fastapi", reason="install stackwise[serve]")
pytest.importorskip("uvicorn", reason="install stackwise[serve]")

from stackwise.contract import EndpointOutput  # noqa: E402
from stackwise.deploy import DeployTarget  # noqa: E402
from stackwise.serving import create_app, model_source  # noqa: E402

from .conftest import stackwise_env, tiny_lora_model  # noqa: E402
from .conftest import free_port as _free_port, start_serve as _serve, wait_serve_ready as _wait_ready  # noqa: E402

PROMPT = "The Australian government said"
PROMPT2 = "Fire crews in Sydney"
TOKENS = 8
LOAD_TIMEOUT_S = 120
VERTEX_HEALTH = "/v1/endpoints/1234/deployedModels/5678"  # Vertex's default routes when the Model names none
VERTEX_PREDICT = "/v1/endpoints/1234/deployedModels/5678:predict"
MISSING_BASE = "/trained/elsewhere/tiny-llama"  # an adapter's recorded base that is not on this machine


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    """A tiny base model; a LoRA adapter on it that records a base path missing here (as one trained
    in another container would); and each one's own greedy generations, made on this machine."""
    from stackwise.evaluation.lm import load

    root = tmp_path_factory.mktemp("serving")
    base, adapter = tiny_lora_model(root, lora_alpha=64)
    merged = load(str(adapter), chat_template=False)  # recorded base is `base` here: the reference
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = MISSING_BASE
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    plain = load(str(base), chat_template=False)
    return {"base": Path(base), "adapter": adapter, "root": root,
            "base_says": {p: plain.generate(p, TOKENS) for p in (PROMPT, PROMPT2)},
            "adapter_says": {p: merged.generate(p, TOKENS) for p in (PROMPT, PROMPT2)}}


# -- what each platform (and stackwise's deploy adapter for it) puts in the container's environment
def _stack(cloud: str) -> SimpleNamespace:
    return SimpleNamespace(name=f"dev-{cloud}", region="r", outputs=SimpleNamespace(
        job_role="arn:aws:iam::123456789012:role/sw", artifact_store="x://store", training_image=None,
        default_gpu=None, network=None))


def _target(uri: str, base: str | None = None) -> DeployTarget:
    return DeployTarget(model="chat", version="3", artifact_uri=uri, base_model=base)


def sagemaker_env(base: str | None = None) -> dict[str, str]:
    from stackwise.adapters.deploy.sagemaker import model_request

    request = model_request(_stack("aws"), EndpointOutput(name="chat", serving_image="img"),
                            _target("s3://b/chat/3/", base))
    return dict(request["PrimaryContainer"]["Environment"])


def vertex_env(storage_uri: str, routes: dict[str, str] | None = None) -> dict[str, str]:
    """Vertex sets AIP_STORAGE_URI (where it copied artifactUri), AIP_HTTP_PORT and the routes the
    Model's containerSpec names (`routes` overrides them: Vertex's defaults when it names none)."""
    from stackwise.adapters.deploy.vertex import upload_request

    spec = upload_request(_stack("gcp"), EndpointOutput(name="chat", serving_image="img"),
                          _target("gs://b/chat/3"))["model"]["containerSpec"]
    env = {e["name"]: e["value"] for e in spec["env"]}
    env.update(AIP_MODE="PREDICTION", AIP_HTTP_PORT=str(spec["ports"][0]["containerPort"]),
               AIP_HEALTH_ROUTE=spec["healthRoute"], AIP_PREDICT_ROUTE=spec["predictRoute"],
               AIP_STORAGE_URI=storage_uri)
    env.update(routes or {})
    return env


def azureml_env(model_dir: str) -> dict[str, str]:
    """Azure ML sets AZUREML_MODEL_DIR when a registered model is attached to the deployment. The
    deploy adapter attaches none and names the artifact in STACKWISE_MODEL_URI instead (az://,
    not reachable here): that variable is left out, the platform's own contract is what is tested."""
    from stackwise.adapters.deploy.azureml import deployment_request

    request = deployment_request(_stack("azure"), EndpointOutput(name="chat", serving_image="img"),
                                 _target("az://models/chat/3"))
    env = {k: v for k, v in request["environment_variables"].items() if k != "STACKWISE_MODEL_URI"}
    env["AZUREML_MODEL_DIR"] = model_dir
    return env


# -- helpers ---------------------------------------------------------------------------------------
@contextmanager
def started(app) -> Iterator[Any]:
    """A TestClient that ran the app's startup (the model load begins) and waited for the load."""
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        assert app.state.server.wait(LOAD_TIMEOUT_S), "the model did not load in time"
        yield client


def no_traceback(response) -> None:
    assert "Traceback" not in response.text and 'File "' not in response.text


@pytest.fixture
def model_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("STACKWISE_MODEL_CACHE", str(tmp_path / "model-cache"))
    return tmp_path / "model-cache"


# -- SageMaker -------------------------------------------------------------------------------------
def test_sagemaker_ping_and_invocations(models, tmp_path):
    from fastapi.testclient import TestClient

    opt_ml_model = tmp_path / "opt" / "ml" / "model"
    shutil.copytree(models["base"], opt_ml_model)
    source = model_source(None, {}, sagemaker_dir=opt_ml_model)
    assert source is not None and source.platform == "sagemaker"
    app = create_app(source=source, environ=sagemaker_env())

    # Before startup nothing is loaded: /ping says so (SageMaker sends no traffic until it is 200).
    cold = TestClient(app)
    ping = cold.get("/ping")
    assert ping.status_code == 503 and ping.json()["status"] == "loading"
    early = cold.post("/invocations", json={"inputs": PROMPT})
    assert early.status_code == 503 and early.headers["Retry-After"] == "5"
    assert "still loading" in early.json()["error"]["message"]

    with started(app) as client:
        ping = client.get("/ping")
        assert ping.status_code == 200 and ping.json()["status"] == "ready"
        hf = {"inputs": PROMPT, "parameters": {"max_new_tokens": TOKENS, "temperature": 0}}
        first, second = client.post("/invocations", json=hf), client.post("/invocations", json=hf)
        assert first.status_code == 200, first.text
        assert first.json() == second.json() == [{"generated_text": models["base_says"][PROMPT]}]
        assert models["base_says"][PROMPT]
        assert first.headers["X-Stackwise-Version"] == "chat:3"  # STACKWISE_MODEL, STACKWISE_MODEL_VERSION
        batch = client.post("/invocations", json={"inputs": [PROMPT, PROMPT2],
                                                  "parameters": {"max_new_tokens": TOKENS}})
        assert batch.json() == [{"generated_text": models["base_says"][p]} for p in (PROMPT, PROMPT2)]
        openai = client.post("/invocations", json={"prompt": PROMPT, "max_tokens": TOKENS}).json()
        assert openai["object"] == "text_completion" and openai["model"] == "chat:3"
        assert openai["choices"][0]["text"] == models["base_says"][PROMPT]


def test_sagemaker_adapter_trained_elsewhere_loads_onto_the_lineage_base(models, tmp_path):
    opt_ml_model = tmp_path / "model"
    shutil.copytree(models["adapter"], opt_ml_model)
    source = model_source(None, {}, sagemaker_dir=opt_ml_model)

    # Without the base the deploy names, the adapter's recorded base is missing: 503 and why.
    with started(create_app(source=source, environ=sagemaker_env(base=None))) as client:
        ping = client.get("/ping")
        assert ping.status_code == 503 and ping.json()["status"] == "failed"
        assert MISSING_BASE in ping.json()["error"]["message"]
        failed = client.post("/invocations", json={"inputs": PROMPT})
        assert failed.status_code == 503 and "failed to load" in failed.json()["error"]["message"]
        no_traceback(failed)

    with started(create_app(source=source, environ=sagemaker_env(base=str(models["base"])))) as client:
        assert client.get("/ping").status_code == 200
        answer = client.post("/invocations", json={"inputs": PROMPT, "parameters": {"max_new_tokens": TOKENS}}).json()
        assert answer == [{"generated_text": models["adapter_says"][PROMPT]}]
        assert models["adapter_says"][PROMPT] != models["base_says"][PROMPT]  # the adapter is merged, not ignored


# -- Vertex AI -------------------------------------------------------------------------------------
def _upload(folder: Path, uri: str) -> None:
    import fsspec

    fs, root = fsspec.core.url_to_fs(uri)
    for path in folder.iterdir():
        fs.put_file(str(path), f"{root}/{path.name}")


@pytest.mark.parametrize("routes", [None, {"AIP_HEALTH_ROUTE": VERTEX_HEALTH, "AIP_PREDICT_ROUTE": VERTEX_PREDICT}],
                         ids=["adapter-routes", "vertex-default-routes"])
def test_vertex_routes_instances_and_storage_uri(models, model_cache, routes):
    # AIP_STORAGE_URI is a gs:// URI on Vertex; fsspec's in-memory filesystem takes the same code path
    # (a URI copied once into the model cache), with no GCS server.
    uri = f"memory://vertex-artifacts/{'default' if routes else 'adapter'}/chat-3"
    _upload(models["base"], uri)
    env = vertex_env(uri, routes)
    source = model_source(None, env, sagemaker_dir=Path("/nonexistent"))
    assert source is not None and (source.platform, source.uri) == ("vertex", uri)
    with started(create_app(source=source, environ=env)) as client:
        health = client.get(env["AIP_HEALTH_ROUTE"])
        assert health.status_code == 200, health.text
        body = {"instances": [PROMPT, {"prompt": PROMPT2}], "parameters": {"max_tokens": TOKENS, "temperature": 0.0}}
        first, second = (client.post(env["AIP_PREDICT_ROUTE"], json=body) for _ in range(2))
        assert first.status_code == 200, first.text
        expected = [models["base_says"][PROMPT], models["base_says"][PROMPT2]]
        assert first.json() == second.json() == {"predictions": expected}
        assert (model_cache / "remote").is_dir()  # fetched through fsspec, not read in place


# -- Azure ML --------------------------------------------------------------------------------------
def test_azureml_liveness_readiness_and_scoring(models, tmp_path):
    from fastapi.testclient import TestClient

    # A model registered from a folder is mounted as $AZUREML_MODEL_DIR/<folder name>.
    model_dir = tmp_path / "var" / "azureml-app" / "azureml-models" / "chat" / "3"
    shutil.copytree(models["base"], model_dir / "tiny-llama")
    env = azureml_env(str(model_dir))
    source = model_source(None, env, sagemaker_dir=Path("/nonexistent"))
    assert source is not None and source.platform == "azureml"
    app = create_app(source=source, environ=env)
    cold = TestClient(app)
    assert cold.get("/").status_code == 200  # liveness: alive while loading (no restart)
    assert cold.get("/health").status_code == 503  # readiness: no traffic yet

    with started(app) as client:
        assert client.get("/").status_code == 200 and client.get("/health").status_code == 200
        # The deploy adapter's scoring route (adapters/deploy/azureml.py) and the inference server's /score.
        for route in ("/v1/completions", "/score"):
            first = client.post(route, json={"prompt": PROMPT, "max_tokens": TOKENS, "temperature": 0})
            second = client.post(route, json={"prompt": PROMPT, "max_tokens": TOKENS, "temperature": 0})
            assert first.status_code == 200, first.text
            assert first.json()["choices"] == second.json()["choices"]
            assert first.json()["choices"][0]["text"] == models["base_says"][PROMPT]


# -- refusals ------------------------------------------------------------------------------------
def test_a_folder_without_a_model_fails_readiness_with_the_reason(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"\0" * 16)
    with started(create_app(source=model_source(str(folder)), environ={})) as client:
        for route in ("/ping", "/health"):
            response = client.get(route)
            assert response.status_code == 503 and response.json()["status"] == "failed"
            assert "no config.json" in response.json()["error"]["message"]
            no_traceback(response)
        answer = client.post("/invocations", json={"inputs": PROMPT})
        assert answer.status_code == 503 and "no config.json" in answer.json()["error"]["message"]
        no_traceback(answer)


def test_malformed_requests_get_400_or_422(models):
    with started(create_app(source=model_source(str(models["base"])), environ={})) as client:
        cases = [(b"{broken", 400, "not JSON"), (b'"just a string"', 422, "JSON object"),
                 (b'{"other": []}', 422, "none of the fields"),
                 (b'{"messages": []}', 400, "messages"),  # a chat body: answered as chat, OpenAI's 400
                 (b'{"prompt": "x", "max_tokens": 0}', 422, "max_tokens"),
                 (b'{"instances": []}', 422, "instances"), (b'{"inputs": 7}', 422, "inputs")]
        for raw, status, says in cases:
            for route in ("/invocations", "/v1/completions", "/score"):
                response = client.post(route, content=raw, headers={"Content-Type": "application/json"})
                assert response.status_code == status, (route, raw, response.text)
                assert says in response.json()["error"]["message"]
                no_traceback(response)


# -- the CLI over a real socket ------------------------------------------------------------------
def test_cli_serves_a_model_folder_and_a_vertex_environment(models, sw_home, cleanup_pids):
    import httpx

    port = _free_port()
    proc = _serve(sw_home, ["--model", str(models["base"]), "--port", str(port)], cleanup_pids)
    _wait_ready(proc, f"http://127.0.0.1:{port}/ping")
    answer = httpx.post(f"http://127.0.0.1:{port}/invocations", json={"inputs": PROMPT, "parameters": {
        "max_new_tokens": TOKENS}}, timeout=60).json()
    assert answer == [{"generated_text": models["base_says"][PROMPT]}]
    proc.terminate()
    proc.wait(timeout=30)

    # No flags at all, as the image's entrypoint runs it on Vertex: port and routes from AIP_*.
    port = _free_port()
    env = vertex_env(models["base"].as_uri(), {"AIP_HEALTH_ROUTE": VERTEX_HEALTH, "AIP_PREDICT_ROUTE": VERTEX_PREDICT})
    env["AIP_HTTP_PORT"] = str(port)
    proc = _serve(sw_home, [], cleanup_pids, env)
    _wait_ready(proc, f"http://127.0.0.1:{port}{VERTEX_HEALTH}")
    answer = httpx.post(f"http://127.0.0.1:{port}{VERTEX_PREDICT}", json={"instances": [PROMPT], "parameters": {
        "max_tokens": TOKENS}}, timeout=60).json()
    assert answer == {"predictions": [models["base_says"][PROMPT]]}
    proc.terminate()
    proc.wait(timeout=30)


def test_cli_refuses_a_folder_without_a_model_before_listening(tmp_path, sw_home):
    empty = tmp_path / "empty-model"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    run = subprocess.run([sys.executable, "-m", "stackwise.cli", "serve", "--model", str(empty), "--port",
                          str(_free_port())], cwd=str(sw_home), env=stackwise_env(sw_home), capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "no config.json" in run.stderr and "notes.txt" in run.stderr
    assert "Traceback" not in run.stderr
    both = subprocess.run([sys.executable, "-m", "stackwise.cli", "serve", "--model", str(empty), "--endpoint", "x"],
                          cwd=str(sw_home), env=stackwise_env(sw_home), capture_output=True, text=True, timeout=120)
    assert both.returncode == 2 and "not both" in both.stderr
