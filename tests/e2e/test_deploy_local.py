"""Deploy on the local stack, for real: two LoRA adapters on the tiny random-init Llama the
fine-tuning tests build, registered in the local MLflow registry, deployed with `stackwise deploy`
(subprocesses), served by `stackwise serve` (a real uvicorn process) and called over HTTP.

Shown: the deploy contract on the local backend; a 90/10 split answered exactly 90/10 over 100
requests, each answer being that version's own generation; sticky routing per `user`; a traffic
change taking effect without a restart; bad refs and splits exit 2 with a clear message.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("peft")
pytest.importorskip("fastapi", reason="install stackwise[serve]")
pytest.importorskip("uvicorn", reason="install stackwise[serve]")

from stackwise.deploy import DeployTarget  # noqa: E402
from stackwise.testing.deploy import DeployContract, DeployDriver  # noqa: E402

from .conftest import lee_articles, run_cli, stackwise_env, wait_for  # noqa: E402

PROMPT = "The Australian government said"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """The tiny base model and two LoRA adapters on it (random, different B matrices)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stackwise.training.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("deploy")
    base = build_tiny_model(root / "tiny-llama", lee_articles()[:150], vocab_size=400)
    out = {"base": Path(base)}
    for version, seed in ((1, 1), (2, 2)):
        torch.manual_seed(seed)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                               LoraConfig(r=4, lora_alpha=64, target_modules="all-linear", init_lora_weights=False))
        folder = root / f"adapter-{version}"
        model.save_pretrained(folder)
        AutoTokenizer.from_pretrained(base).save_pretrained(folder)
        out[f"v{version}"] = folder
    return out


# -- the contract on the local backend -----------------------------------------------------------
class LocalDriver(DeployDriver):
    def __init__(self, models):
        self.models = models
        self._backend = None

    def backend(self):
        import stackwise

        self._backend = stackwise.connect("local").deployer
        return self._backend

    def backend_without_endpoint(self):
        raise AssertionError("the local stack always has its endpoint: see the override below")

    def target(self, version):
        return DeployTarget(model="chat", version=str(version), artifact_uri=self.models["v1"].as_uri(),
                            base_model=str(self.models["base"]))

    def created(self):
        return len(self._backend.describe().variants) if self._backend else 0


class TestLocalDeployContract(DeployContract):
    @pytest.fixture
    def driver(self, sdk_env, models):
        return LocalDriver(models)

    def test_a_stack_without_an_endpoint_says_how_to_add_one(self, driver) -> None:
        # The local stack always has its one endpoint; naming another is the error to explain.
        from stackwise.errors import ConfigError

        with pytest.raises(ConfigError, match="no endpoint named 'blue'") as caught:
            driver.backend().describe("blue")
        assert "'local'" in caught.value.fix


# -- the whole path: registry -> deploy -> serve -> HTTP -----------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def register(home: Path, models: dict[str, Path]) -> Path:
    """chat versions 1 and 2 (the two adapters, base in lineage) in home's registry; candidate = 1.
    One process, through the SDK the `models register` command calls."""
    script = ("import sys, stackwise\n"
              "r = stackwise.connect().models\n"
              "for v, folder in enumerate(sys.argv[2:], 1):\n"
              "    assert r.register(folder, 'chat', {'base': sys.argv[1]}) == str(v)\n"
              "r.set_alias('chat', 'candidate', '1')\n")
    subprocess.run([sys.executable, "-c", script, str(models["base"]), str(models["v1"]), str(models["v2"])],
                   cwd=str(home.parent), env=stackwise_env(home), check=True, timeout=300, capture_output=True)
    return home


@pytest.fixture
def registered(sw_home, models):
    return register(sw_home, models)


@pytest.fixture(scope="module")
def registered_once(models, tmp_path_factory):
    """A registry nothing is deployed from (the refused-input tests share it)."""
    home = tmp_path_factory.mktemp("refused") / "sw-home"
    home.mkdir()
    return register(home, models)


@pytest.fixture
def server(registered, cleanup_pids):
    import httpx

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "stackwise.cli", "serve", "--port", str(port)],
                            cwd=str(registered.parent), env=stackwise_env(registered),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    cleanup_pids.append(proc.pid)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"stackwise serve exited: {proc.stdout.read()}")
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code in (200, 503)
        except httpx.HTTPError:
            return False

    wait_for(up, timeout=120, what="stackwise serve listening")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def _ask(client, url: str, **fields) -> tuple[str, str]:
    response = client.post(f"{url}/v1/completions", json={"prompt": PROMPT, "max_tokens": 6, **fields}, timeout=120)
    assert response.status_code == 200, response.text
    body = response.json()
    assert response.headers["X-Stackwise-Version"] == body["model"]
    return body["model"], body["choices"][0]["text"]


def test_deploy_split_and_serve_over_http(registered, server, models):
    import httpx

    home = registered
    # An empty endpoint answers 503 until something is deployed.
    assert httpx.get(f"{server}/health").status_code == 503
    first = run_cli(home, "deploy", "chat@candidate", "--json").json()
    assert first["traffic"] == {"chat:1": 100} and first["cloud"] == "local" and first["state"] == "ready"
    second = run_cli(home, "deploy", "chat:2", "--traffic", "chat:1=90", "--traffic", "chat:2=10", "--json").json()
    assert second["traffic"] == {"chat:1": 90, "chat:2": 10}
    shown = run_cli(home, "endpoints", "--json").json()
    assert shown["traffic"] == {"chat:1": 90, "chat:2": 10}
    assert [v["base_model"] for v in shown["variants"]] == [str(models["base"])] * 2

    with httpx.Client() as client:
        models = client.get(f"{server}/v1/models").json()["data"]
        assert {m["id"]: m["traffic"] for m in models} == {"chat:1": 90, "chat:2": 10}
        # Each version's own greedy generation, pinned.
        own = {key: _ask(client, server, model=key)[1] for key in ("chat:1", "chat:2")}
        assert own["chat:1"] and own["chat:2"] and own["chat:1"] != own["chat:2"]
        # Weighted routing: exactly 90/10 over 100 requests, each answer from the version named.
        answers = [_ask(client, server) for _ in range(100)]
        assert Counter(key for key, _ in answers) == {"chat:1": 90, "chat:2": 10}
        assert all(text == own[key] for key, text in answers)
        # Sticky per user: one user always meets one version; about 10% of users meet chat:2.
        for user in ("alice", "bob"):
            assert len({_ask(client, server, user=user)[0] for _ in range(5)}) == 1
        by_user = Counter(_ask(client, server, user=f"user-{i}")[0] for i in range(50))
        assert 1 <= by_user["chat:2"] <= 12, by_user  # 5 expected; the share itself is unit-tested
        # A traffic change takes effect without restarting the server.
        run_cli(home, "deploy", "chat:2", "--traffic", "chat:2=100", "--json")
        assert {_ask(client, server)[0] for _ in range(10)} == {"chat:2"}
        bad = client.post(f"{server}/v1/completions", json={"prompt": "x", "model": "chat:7"})
        assert bad.status_code == 400 and "not on endpoint" in bad.json()["error"]["message"]


@pytest.mark.parametrize("args, message", [
    (["deploy", "chat:7"], "model chat version 7 is not in the model registry"),
    (["deploy", "chat@champion"], "alias 'champion' of model chat"),
    (["deploy", "chat:2", "--traffic", "chat:2=60", "--traffic", "chat:1=30"], "chat:1, which is neither"),
    (["deploy", "chat:2", "--traffic", "chat:2=abc"], "not an integer percent"),
    (["endpoints", "--endpoint", "prod"], "no endpoint named 'prod'"),
])
def test_bad_input_exits_2(registered_once, args, message):
    result = run_cli(registered_once, *args, expect=2)
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (registered_once / "endpoints").exists()  # nothing deployed
