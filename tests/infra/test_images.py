"""The images `pulumi up` builds and pushes (pulumi-docker-build), under mocks for every stack file:
one Image per target, children of the platform, pushed to the stack's own registry with that
registry's credential, and the exported images pinned to the digest the push reports.

The assertions read what the mocks recorded after the program ran (`offline_run`, preview=False),
not values inside `.apply`, so none can pass unchecked. Not verified: a real build and push (the
provider's engine needs the Pulumi CLI); tests/contract/test_registry_login.py pushes for real.
"""

from __future__ import annotations

import pytest

from stackwise.contract import StackOutputs

from .conftest import CLOUD_STACKS, REPO, stack_config

pytest.importorskip("pulumi", reason="pip install 'stackwise[infra]'")
pytest.importorskip("pulumi_docker_build", reason="pip install 'stackwise[infra]'")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

IMAGE = "docker-build:index:Image"
REGISTRY = {"aws": ("123456789012.dkr.ecr.us-east-1.amazonaws.com", "AWS"),
            "gcp": ("us-central1-docker.pkg.dev", "oauth2accesstoken")}


def _images(run) -> dict[str, object]:
    return {r.inputs["target"]: r for r in run.resources if r.type == IMAGE}


def _registries(image) -> list[dict]:
    value = image.inputs.get("registries")
    if isinstance(value, dict) and "value" in value:  # a secret: the password is in it
        return value["value"]
    return value or []


@pytest.mark.parametrize("name", CLOUD_STACKS)
def test_each_stack_builds_both_targets_as_children_of_its_platform(name, offline_run):
    run = offline_run(name)
    images = _images(run)
    assert sorted(images) == ["serve", "train"]
    prefix = f"sw-{run.config.env}"
    (platform,) = [r for r in run.resources if r.type == f"stackwise:{run.config.cloud}:TrainingPlatform"]
    for target, image in images.items():
        assert image.name == f"{prefix}-{target}-image" and image.parent == platform.name == prefix
        assert image.parent_urn == platform.urn
        inputs = image.inputs
        assert inputs["push"] is True and inputs["buildOnPreview"] is False
        assert inputs["context"]["location"] == str(REPO)
        assert inputs["dockerfile"]["location"] == str(REPO / "Containerfile")
        assert set(inputs["context"]["named"]) == {"wheels"}
        assert inputs["buildArgs"] == {"BASE_IMAGE": run.config.images.base_image, "EXTRAS": run.config.images.extras}
        assert inputs["platforms"] == ["linux/amd64"]
        (tag,) = inputs["tags"]
        assert tag.split("/")[0] == run.outputs.training_image.split("/")[0]  # the stack's own registry


@pytest.mark.parametrize("name", CLOUD_STACKS)
def test_images_are_pushed_with_the_registrys_own_credential(name, offline_run):
    from stackwise.infra.offline import PLAN_SECRET

    run = offline_run(name)
    for image in _images(run).values():
        registries = _registries(image)
        if run.config.cloud == "azure":  # admin user off: the docker login of the machine running `pulumi up`
            assert registries == []
            continue
        assert isinstance(image.inputs["registries"], dict), "the registry credential must be a secret"
        (registry,) = registries
        assert (registry["address"], registry["username"]) == REGISTRY[run.config.cloud]
        assert registry["password"] == PLAN_SECRET  # from the ECR token / the client config, as mocked


@pytest.mark.parametrize("name", CLOUD_STACKS)
def test_exported_images_are_pinned_to_the_pushed_digest(name, offline_run):
    run = offline_run(name)
    images = _images(run)
    train = images["train"]
    (tag,) = train.inputs["tags"]
    digest = train.state["digest"]
    name_only = tag.rsplit(":", 1)[0]
    assert run.exported["training_image"] == f"{name_only}@{digest}"
    assert StackOutputs.model_validate(run.exported).training_image == f"{name_only}@{digest}"
    raw, _ = stack_config(name)
    for endpoint in run.outputs.endpoints:
        if not raw["endpoint"].get("image"):
            (serve_tag,) = images["serve"].inputs["tags"]
            assert endpoint.serving_image == f"{serve_tag.rsplit(':', 1)[0]}@{images['serve'].state['digest']}"


def test_images_build_false_creates_no_image_and_exports_tags():
    from stackwise.infra.config import InfraConfig
    from stackwise.infra.offline import run_offline

    raw, source = stack_config("dev-aws")
    run = run_offline(InfraConfig.load({**raw, "images": {"build": False}}, source), "dev-aws")
    assert not _images(run)
    assert run.outputs.training_image.endswith(":latest") and "@" not in run.outputs.training_image
    assert all(e.serving_image.endswith(":serve") for e in run.outputs.endpoints)


def test_images_config_is_checked_naming_the_key():
    from stackwise.errors import ConfigError
    from stackwise.infra.config import InfraConfig

    raw, source = stack_config("dev-gcp")
    with pytest.raises(ConfigError) as caught:
        InfraConfig.load({**raw, "images": {"build": True, "platform": "windows/amd64"}}, source)
    assert "images.platform" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        InfraConfig.load({**raw, "images": {"push": True}}, source)
    assert "images.push" in str(caught.value)


def test_plan_shows_the_image_resources(monkeypatch):
    from stackwise.infra.plan import plan
    from stackwise.stack import load_stack

    result = plan(load_stack("dev-gcp"))
    rows = [r for r in result["resources"] if r["type"] == IMAGE]
    assert [(r["name"], r["parent"], r["settings"].get("target"), r["settings"].get("push")) for r in rows] == [
        ("sw-dev-serve-image", "sw-dev", "serve", True), ("sw-dev-train-image", "sw-dev", "train", True)]
    assert "@sha256:" in result["outputs"]["training_image"]
    assert "offline-placeholder-not-a-key" not in str(result)
