"""The deploy half of "add a cloud": the cloud of tests/fake_cloud.py, plugged in through
`stackwise.clouds.CLOUDS` alone, gets its deploy adapter from its registry entry (as the platform
picks every cloud's) and passes the same deploy contract as SageMaker, Vertex AI, Azure ML and
Kubernetes, over HTTP against the fake cloud's endpoint API."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
for folder in (TESTS, TESTS / "emulators"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import fake_cloud  # noqa: E402
from drivers import CloudDeployDriver, chat_target  # noqa: E402

from stackwise.errors import ConfigError, SpecError  # noqa: E402
from stackwise.testing.deploy import DeployContract  # noqa: E402

STORE = "s3://sw-fake-artifacts"
ENDPOINT = {"name": "chat", "url": "https://chat.fake-east-1.fake/v1", "serving_image": "registry.fake/serve:latest",
            "gpu": "T4", "min_replicas": 1}


@pytest.fixture(scope="module")
def service():
    server = fake_cloud.FakeCloudAPI()
    yield server
    server.stop()


@pytest.fixture
def api(service, monkeypatch):
    fake_cloud.plugged_in(monkeypatch)
    monkeypatch.setenv("FAKECLOUD_ENDPOINT", service.url)
    service.endpoints.clear()
    service.created = 0
    service.add_endpoint("chat")
    return service


def connect(folder: Path, monkeypatch, endpoints=None):
    """`stackwise.connect("dev-fake")` with outputs in `folder`; `endpoints` None is the test's endpoint."""
    import stackwise

    fake_cloud.use_stack(folder, monkeypatch, {
        "artifact_store": STORE, "training_image": "registry.fake/train:latest", "default_gpu": "T4",
        "vector_store": {"kind": "embedded", "uri": f"{STORE}/vectors"},
        "endpoints": [ENDPOINT] if endpoints is None else endpoints})
    return stackwise.connect("dev-fake")


def target(version: int):
    return chat_target(f"{STORE}/mlflow", version)


class TestFakeCloudDeployContract(DeployContract):
    @pytest.fixture
    def driver(self, api, tmp_path, monkeypatch):
        return CloudDeployDriver(tmp_path, lambda folder, endpoints: connect(folder, monkeypatch, endpoints).deployer,
                                 target, count=lambda: api.created, server=api)


def test_the_platform_picks_the_deploy_adapter_from_the_registry_entry(api, tmp_path, monkeypatch):
    platform = connect(tmp_path, monkeypatch)
    assert type(platform.deployer) is fake_cloud.FakeDeploy
    platform.deployer.deploy([target(1)], {"chat:1": 100})
    assert api.endpoints["chat"]["versions"]["chat-v1"] == {
        "model": "chat", "version": "1", "artifact": f"{STORE}/mlflow/chat-1/model", "image": ENDPOINT["serving_image"]}
    dep = platform.deployer.describe()
    assert (dep.cloud, dep.url, dep.traffic) == ("fake", ENDPOINT["url"], {"chat:1": 100})


def test_the_cli_shows_the_endpoint(api, tmp_path, monkeypatch, capsys):
    from stackwise.cli import main

    connect(tmp_path, monkeypatch).deployer.deploy([target(1), target(2)], {"chat:1": 80, "chat:2": 20})
    monkeypatch.setattr(sys, "argv", ["stackwise", "endpoints", "--stack", "dev-fake"])
    with pytest.raises(SystemExit) as exit_:
        main()
    out = capsys.readouterr().out
    assert exit_.value.code in (0, None), out
    assert "chat:1" in out and "80" in out and "chat:2" in out and "20" in out


def test_a_version_outside_the_artifact_store_is_refused_before_anything_is_made(api, tmp_path, monkeypatch):
    from stackwise.deploy import DeployTarget

    deployer = connect(tmp_path, monkeypatch).deployer
    with pytest.raises(SpecError, match="cannot read"):
        deployer.deploy([DeployTarget(model="chat", version="1", artifact_uri=str(tmp_path / "m"))], {"chat:1": 100})
    assert api.created == 0


def test_an_endpoint_the_cloud_lacks_says_to_run_pulumi_up(api, tmp_path, monkeypatch):
    api.endpoints.clear()
    with pytest.raises(ConfigError, match="pulumi up"):
        connect(tmp_path, monkeypatch).deployer.describe()


def test_without_its_registry_entry_the_stack_is_refused(tmp_path, monkeypatch):
    """The entry is all that plugs the cloud in (the fixture `api`, which adds it, is not used here)."""
    with pytest.raises(ConfigError, match="unknown cloud .fake."):
        connect(tmp_path, monkeypatch).deployer
