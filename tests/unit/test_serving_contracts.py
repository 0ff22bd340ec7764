"""The serving contracts' pure parts (sdk/serve_protocol.py, sdk/serve_source.py, sdk/serving.py):
request bodies in the OpenAI, Hugging Face (SageMaker) and Vertex AI shapes and their refusals,
answers in the same shapes, where a cloud container's model comes from (and in which order), how
its folder is found, the listening port, and the routes each contract needs on the app (no model
is loaded here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stackwise.serving import (
    Generation,
    ModelSource,
    PredictRequest,
    RequestError,
    find_model_folder,
    listen_port,
    model_source,
    parse_predict,
    render,
)


def body(value) -> bytes:
    return json.dumps(value).encode()


# -- request bodies ----------------------------------------------------------------------------
def test_openai_prompt_string_and_list():
    req = parse_predict(body({"prompt": "hi", "max_tokens": 7, "user": "u-1", "model": "chat:2", "temperature": 0}))
    assert (req.shape, req.prompts, req.max_tokens, req.user, req.model) == ("openai", ["hi"], 7, "u-1", "chat:2")
    req = parse_predict(body({"prompt": ["a", "b"]}))
    assert (req.prompts, req.max_tokens) == (["a", "b"], 16)


def test_hugging_face_inputs_with_parameters():
    params = {"max_new_tokens": 5, "temperature": 0.0, "do_sample": False}
    req = parse_predict(body({"inputs": "hi", "parameters": params}))
    assert (req.shape, req.prompts, req.max_tokens) == ("hf", ["hi"], 5)
    req = parse_predict(body({"inputs": ["a", "b"]}))
    assert (req.shape, req.prompts, req.max_tokens) == ("hf", ["a", "b"], 16)


def test_vertex_instances_strings_or_objects():
    req = parse_predict(body({"instances": ["a", {"prompt": "b"}, {"inputs": "c"}], "parameters": {"max_tokens": 3}}))
    assert (req.shape, req.prompts, req.max_tokens) == ("vertex", ["a", "b", "c"], 3)
    assert parse_predict(body({"instances": ["a"], "parameters": {"max_new_tokens": 4}})).max_tokens == 4
    assert parse_predict(body({"instances": ["a"]})).max_tokens == 16


@pytest.mark.parametrize("raw, status, says", [
    (b"{not json", 400, "not JSON"),
    (b"", 400, "not JSON"),
    (b"\xff\xfe", 400, "not JSON"),
    (body(["a list"]), 422, "JSON object"),
    (body({"text": "hi"}), 422, "none of the fields prompt, inputs or instances (it has: text)"),
    (body({"prompt": 3}), 422, "prompt"),
    (body({"prompt": "x", "max_tokens": 0}), 422, "max_tokens"),
    (body({"prompt": "x", "max_tokens": "many"}), 422, "max_tokens"),
    (body({"inputs": []}), 422, "non-empty list of strings"),
    (body({"inputs": "x", "parameters": {"max_new_tokens": True}}), 422, "whole number"),
    (body({"inputs": "x", "parameters": {"max_new_tokens": -2}}), 422, "whole number"),
    (body({"inputs": "x", "parameters": "fast"}), 422, "parameters must be a JSON object"),
    (body({"instances": []}), 422, "non-empty list"),
    (body({"instances": "abc"}), 422, "non-empty list"),
    (body({"instances": [{"text": "x"}]}), 422, "instance 0"),
    (body({"instances": ["ok", 5]}), 422, "instance 1"),
])
def test_bad_bodies_are_refused_with_a_status_and_the_accepted_shapes(raw, status, says):
    with pytest.raises(RequestError) as info:
        parse_predict(raw)
    assert info.value.status == status
    assert says in str(info.value) and "fix: " in str(info.value)


def test_a_body_of_no_known_shape_is_told_the_shapes_that_work():
    with pytest.raises(RequestError) as info:
        parse_predict(body({"text": "hi"}))
    for shape in ('"prompt"', '"inputs"', '"instances"'):
        assert shape in info.value.fix


# -- answers -----------------------------------------------------------------------------------
def test_answers_take_the_shape_of_the_request():
    gen = Generation(key="chat:3", version="3", texts=["one", "two"], latency_ms=1.5, endpoint="chat:3")
    assert render(PredictRequest("vertex", ["a", "b"]), gen) == {"predictions": ["one", "two"]}
    assert render(PredictRequest("hf", ["a", "b"]), gen) == [{"generated_text": "one"}, {"generated_text": "two"}]
    openai = render(PredictRequest("openai", ["a", "b"]), gen)
    assert openai["object"] == "text_completion" and openai["model"] == "chat:3"
    assert [c["text"] for c in openai["choices"]] == ["one", "two"]
    assert [c["index"] for c in openai["choices"]] == [0, 1]
    assert openai["stackwise"]["version"] == "3"


# -- where the model comes from ----------------------------------------------------------------
def test_model_source_precedence(tmp_path):
    sagemaker = tmp_path / "opt-ml-model"
    sagemaker.mkdir()
    (sagemaker / "config.json").write_text("{}")
    env = {"STACKWISE_MODEL_URI": "az://models/chat/3", "AIP_STORAGE_URI": "gs://b/m", "AZUREML_MODEL_DIR": "/var/m"}
    assert model_source("/explicit", env, sagemaker) == ModelSource("/explicit", "--model", "explicit")
    assert model_source(None, env, sagemaker) == ModelSource("az://models/chat/3", "$STACKWISE_MODEL_URI", "stackwise")
    del env["STACKWISE_MODEL_URI"]
    assert model_source(None, env, sagemaker) == ModelSource("gs://b/m", "$AIP_STORAGE_URI", "vertex")
    del env["AIP_STORAGE_URI"]
    assert model_source(None, env, sagemaker) == ModelSource("/var/m", "$AZUREML_MODEL_DIR", "azureml")
    env = {"AZUREML_MODEL_DIR": "  ", "AIP_STORAGE_URI": ""}  # blank variables do not count
    assert model_source(None, env, sagemaker) == ModelSource(str(sagemaker), str(sagemaker), "sagemaker")


def test_no_model_source_means_deploy_state(tmp_path):
    empty = tmp_path / "opt-ml-model"
    assert model_source(None, {}, empty) is None  # absent
    empty.mkdir()
    assert model_source(None, {}, empty) is None  # present but empty (the image makes /opt/ml, not a model)


def _model(folder: Path, adapter: bool = False) -> Path:
    folder.mkdir(parents=True)
    (folder / ("adapter_config.json" if adapter else "config.json")).write_text("{}")
    return folder


def test_model_folder_is_the_folder_or_its_one_model_subfolder(tmp_path):
    direct = _model(tmp_path / "direct")
    assert find_model_folder(direct) == direct
    adapter = _model(tmp_path / "adapter", adapter=True)
    assert find_model_folder(adapter) == adapter
    # Azure ML mounts a model registered from a folder as $AZUREML_MODEL_DIR/<folder name>.
    inner = _model(tmp_path / "azureml" / "chat-model")
    (tmp_path / "azureml" / "README.md").write_text("x")
    assert find_model_folder(tmp_path / "azureml") == inner


def test_model_folder_refusals_say_what_is_there(tmp_path):
    with pytest.raises(ValueError, match="does not exist") as info:
        find_model_folder(tmp_path / "missing", "$AZUREML_MODEL_DIR")
    assert "$AZUREML_MODEL_DIR" in str(info.value)
    empty = tmp_path / "weights"
    empty.mkdir()
    (empty / "model.safetensors").write_text("x")
    with pytest.raises(ValueError, match="no config.json") as info:
        find_model_folder(empty, "/opt/ml/model")
    assert "model.safetensors" in str(info.value) and "/opt/ml/model" in str(info.value)
    _model(tmp_path / "two" / "a")
    _model(tmp_path / "two" / "b")
    with pytest.raises(ValueError, match="holds 2 models"):
        find_model_folder(tmp_path / "two")


def test_listen_port():
    assert listen_port(9000, {"AIP_HTTP_PORT": "7000"}) == 9000
    assert listen_port(None, {"AIP_HTTP_PORT": "7000", "SAGEMAKER_BIND_TO_PORT": "7001"}) == 7000
    assert listen_port(None, {"SAGEMAKER_BIND_TO_PORT": "7001"}) == 7001
    assert listen_port(None, {}) == 8080
    with pytest.raises(ValueError, match="not a port number"):
        listen_port(None, {"AIP_HTTP_PORT": "http"})


# -- the app's routes (no model loaded) --------------------------------------------------------
VERTEX_ROUTES = {"AIP_HEALTH_ROUTE": "/v1/endpoints/123/deployedModels/456",
                 "AIP_PREDICT_ROUTE": "/v1/endpoints/123/deployedModels/456:predict"}


def _routes(app) -> set[tuple[str, str]]:
    return {(method, route.path) for route in app.routes for method in getattr(route, "methods", ()) or ()}


def test_every_contract_route_is_on_the_app_in_both_modes(tmp_path):
    pytest.importorskip("fastapi", reason="install stackwise[serve]")
    from stackwise.serving import create_app

    wanted = {("GET", "/health"), ("GET", "/ping"), ("GET", "/"), ("GET", "/v1/models"),
              ("POST", "/v1/completions"), ("POST", "/invocations"), ("POST", "/score"),
              ("GET", VERTEX_ROUTES["AIP_HEALTH_ROUTE"]), ("POST", VERTEX_ROUTES["AIP_PREDICT_ROUTE"])}
    assert wanted <= _routes(create_app("local", environ=VERTEX_ROUTES))
    source = ModelSource(str(tmp_path), "--model", "explicit")
    assert wanted <= _routes(create_app(source=source, environ=VERTEX_ROUTES))
    plain = _routes(create_app(source=source, environ={}))
    assert ("POST", VERTEX_ROUTES["AIP_PREDICT_ROUTE"]) not in plain


def test_deploy_state_mode_answers_the_contract_routes_before_anything_is_deployed():
    pytest.importorskip("fastapi", reason="install stackwise[serve]")
    from fastapi.testclient import TestClient

    from stackwise.serving import create_app

    client = TestClient(create_app("local", environ=VERTEX_ROUTES))
    assert client.get("/").status_code == 200  # liveness: the process serves
    for path in ("/health", "/ping", VERTEX_ROUTES["AIP_HEALTH_ROUTE"]):
        response = client.get(path)
        assert response.status_code == 503 and response.json()["status"] == "empty", path
    for path in ("/invocations", VERTEX_ROUTES["AIP_PREDICT_ROUTE"], "/v1/completions"):
        response = client.post(path, json={"inputs": "hi"})
        assert response.status_code == 503, path
        assert "no version on the endpoint carries traffic" in response.json()["error"]["message"]
    bad = client.post("/invocations", content=b"{")
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
