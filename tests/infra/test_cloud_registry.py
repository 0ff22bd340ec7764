"""Clouds are declared once (`stackwise.clouds.CLOUDS`): a cloud defined in one test module
(tests/fake_cloud.py) and added there gets a stack, an offline plan and a Pulumi program run
whose outputs are the stack contract, with no shared file naming it."""

from __future__ import annotations

import pytest

from .conftest import REPO

pytest.importorskip("pulumi", reason="pip install 'stackwise[infra]'")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def fake_stack(tmp_path, monkeypatch):
    """The fake cloud declared, and a stack file `dev-fake` on it."""
    import fake_cloud

    fake_cloud.plugged_in(monkeypatch)
    fake_cloud.use_stack(tmp_path, monkeypatch)
    from stackwise.stack import load_stack

    return load_stack("dev-fake")


def test_every_list_of_clouds_derives_from_the_registry():
    from stackwise import clouds, contract, registry
    from stackwise.infra.cloud import infra_clouds

    assert contract.CLOUDS == ("local", *clouds.CLOUDS)
    for name, ref in clouds.CLOUDS.items():
        assert registry.COMPUTE[name].path == ref.compute and registry.DEPLOY[name].path == ref.deploy
        assert registry.COMPUTE[name].extra == ref.extra
    assert [c.name for c in infra_clouds()] == list(clouds.CLOUDS)


def test_a_cloud_added_to_the_registry_plans_offline(fake_stack):
    from stackwise.contract import StackOutputs
    from stackwise.infra.plan import plan

    planned = plan(fake_stack)
    assert (planned["stack"], planned["cloud"], planned["region"]) == ("dev-fake", "fake", "fake-east-1")
    types = {r["type"] for r in planned["resources"]}
    assert {"stackwise:fake:TrainingPlatform", "fakecloud:storage:Bucket", "fakecloud:serving:Endpoint",
            "fakecloud:billing:Budget"} <= types
    outputs = StackOutputs.model_validate(planned["outputs"])
    assert outputs.cloud == "fake" and outputs.artifact_store.startswith("fake://")
    assert outputs.vector_store.uri == outputs.artifact_store + "/vectors"
    (endpoint,) = outputs.endpoints
    assert endpoint.url.startswith("https://") and endpoint.serving_image.endswith("/serve:latest")
    (item,) = planned["cost"]["items"]  # the endpoint's minimum replica, priced from the fake cloud's offer
    assert item["monthly_usd"] == 365.0 and "fake.t4.small" in item["basis"]
    assert not planned["over_budget"]


def test_a_cloud_added_to_the_registry_runs_under_mocks_and_passes_the_policies(fake_stack):
    from stackwise.contract import StackOutputs
    from stackwise.infra.config import InfraConfig
    from stackwise.infra.offline import run_offline
    from stackwise.infra.policy import check

    run = run_offline(InfraConfig.load(fake_stack.config, fake_stack.source), "dev-fake")
    assert set(run.exported) == set(StackOutputs.model_fields)
    assert StackOutputs.model_validate(run.exported) == run.outputs
    assert run.outputs.job_role.startswith("principal/") and run.outputs.default_gpu == "T4"
    assert check(run.resources, {"gpu-allow-list": {"allowedGpus": ["T4"]}}) == []
    without_budget = [r for r in run.resources if r.type != "fakecloud:billing:Budget"]
    assert check(without_budget) == [("budget-present", "", "the stack has no monthly budget (AWS Budgets, "
                                      "GCP billing budget, Azure consumption budget or Fake budget)")]


def test_a_cloud_not_in_the_registry_is_refused_naming_the_registered_ones(tmp_path, monkeypatch):
    from stackwise.errors import ConfigError
    from stackwise.infra.config import InfraConfig

    import fake_cloud

    raw = {"cloud": "fake", "region": "fake-east-1", "env": "dev", "monthlyBudgetUsd": 5,
           "tags": {"project": "p", "owner": "o", "cost-center": "c"}, "budgetAlertEmails": ["a@b.co"],
           "allowedGpus": ["T4"], "training": {"gpu": "T4"}}
    with pytest.raises(ConfigError) as err:
        InfraConfig.load(raw, "Pulumi.dev-fake.yaml")
    assert "stackwise:cloud" in err.value.what and "'aws', 'gcp' or 'azure'" in err.value.what
    fake_cloud.plugged_in(monkeypatch)
    assert InfraConfig.load(raw, "Pulumi.dev-fake.yaml").cloud == "fake"


def test_no_shared_file_names_the_fake_cloud():
    shared = [p for folder in ("sdk", "infra", "adapters") for p in (REPO / folder).rglob("*.py")]
    assert shared and not [p for p in shared if "fakecloud" in p.read_text(encoding="utf-8")
                           or "fake_cloud" in p.read_text(encoding="utf-8")]
