"""`stackwise plan`: the real entry point in a subprocess, offline, for every cloud stack."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import CLOUD_STACKS, STACKS, cli_env

pytest.importorskip("pulumi", reason="pip install 'stackwise[infra]'")


def plan(tmp_path: Path, *args: str, stacks_dir: Path = STACKS, flags: tuple[str, ...] = ()):
    return subprocess.run([sys.executable, *flags, "-m", "stackwise.cli", "plan", *args], cwd=tmp_path,
                          env=cli_env(tmp_path, stacks_dir), capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", ["dev-aws", "dev-gcp", "dev-azure"])
def test_plan_json_lists_resources_outputs_and_cost(name, tmp_path):
    proc = plan(tmp_path, "--stack", name, "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["stack"] == name and result["over_budget"] is False
    kinds = {r["type"] for r in result["resources"]}
    assert any(k.startswith("stackwise:") for k in kinds)
    children = [r for r in result["resources"] if not r["component"]]
    assert children and all(r["parent"] for r in children if not r["type"].startswith("pulumi:providers:"))
    from stackwise.contract import StackOutputs

    assert StackOutputs.model_validate(result["outputs"]).cloud == result["cloud"]
    cost = result["cost"]
    assert 0 < cost["monthly_usd"] <= result["budget_usd"]
    gpu_items = [i for i in cost["items"] if "on demand" in i["basis"]]
    assert gpu_items, cost["items"]  # the endpoint at its minimum replicas, priced from the catalog
    assert abs(sum(i["monthly_usd"] for i in cost["items"]) - cost["monthly_usd"]) < 0.01


def test_plan_table_output(tmp_path):
    proc = plan(tmp_path, "--stack", "dev-aws")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "aws:sagemaker/endpointConfiguration:EndpointConfiguration" in proc.stdout
    # 730 h x $1.408 + the data key and the alert topic key + 2 alarms
    # + 5 interface endpoints (ECR api/dkr, logs, STS, Secrets Manager) x 2 zones x 730 h x $0.01
    assert "estimated monthly cost: $1,103.04" in proc.stdout


def test_the_network_is_priced(offline_run):
    """What the private networks cost while idle: AWS interface endpoints per zone (the S3 gateway
    endpoint is free), Azure private endpoints and the firewall the FQDN outbound rules run on."""
    from stackwise.infra.plan import estimate

    def items(name: str, cloud: str) -> dict[str, float]:
        return {i["resource"]: i["monthly_usd"] for i in estimate(offline_run(name).resources, cloud)["items"]}

    aws = items("dev-aws", "aws")
    endpoints = {k: v for k, v in aws.items() if k.endswith("-endpoint")}
    assert endpoints == {f"sw-dev-{s}-endpoint": 14.60 for s in ("ecr-api", "ecr-dkr", "logs", "sts", "secretsmanager")}
    azure = items("dev-azure", "azure")
    assert {k: v for k, v in azure.items() if k.endswith("-pe")} == {
        f"sw-dev-{s}-pe": 7.30 for s in ("amlworkspace", "blob", "dfs", "registry", "vault")}
    firewall = azure["sw-dev-mlw"]
    assert firewall == 288.35  # Basic: 730 h x $0.395


def test_over_budget_exits_3(tmp_path):
    stacks = tmp_path / "project" / "stacks"
    stacks.mkdir(parents=True)
    text = (STACKS / "Pulumi.dev-aws.yaml").read_text().replace("monthlyBudgetUsd: 1500", "monthlyBudgetUsd: 100")
    (stacks / "Pulumi.tight-aws.yaml").write_text(text)
    proc = plan(tmp_path, "--stack", "tight-aws", "--json", stacks_dir=stacks)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["over_budget"] is True
    assert "exceeds monthlyBudgetUsd $100.00" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_stack_key_exits_2_naming_key_and_file(tmp_path):
    stacks = tmp_path / "project" / "stacks"
    stacks.mkdir(parents=True)
    text = (STACKS / "Pulumi.dev-gcp.yaml").read_text().replace("stackwise:env: dev", "stackwise:env: dev\n  stackwise:gpus: 2")
    (stacks / "Pulumi.broken.yaml").write_text(text)
    proc = plan(tmp_path, "--stack", "broken", stacks_dir=stacks)
    assert proc.returncode == 2
    assert "unknown key stackwise:gpus" in proc.stderr and "Pulumi.broken.yaml" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_local_stack_has_nothing_to_plan(tmp_path):
    proc = plan(tmp_path, "--stack", "local")
    assert proc.returncode == 2 and "no cloud infrastructure to plan" in proc.stderr


def test_plan_help_loads_no_pulumi(tmp_path):
    proc = plan(tmp_path, "--help", flags=("-X", "importtime"))
    assert proc.returncode == 0 and "monthlyBudgetUsd" in proc.stdout
    loaded = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in proc.stderr.splitlines()
              if line.startswith("import time:") and "|" in line}
    assert "stackwise" in loaded and not {"pulumi", "pulumi_aws", "pulumi_gcp", "pulumi_azure_native"} & loaded


def test_every_stack_is_planned(tmp_path, monkeypatch):
    """Every cloud stack file in stacks/ plans through the CLI (in-process): exit 0, and its plan
    lists the stack's components and their cloud resources, outputs and a cost."""
    from typer.testing import CliRunner

    from stackwise.cli import app

    assert {"dev-aws", "prod-aws", "dev-gcp", "dev-azure"} <= set(CLOUD_STACKS)
    monkeypatch.setenv("STACKWISE_HOME", str(tmp_path / ".stackwise"))
    monkeypatch.chdir(tmp_path)
    for name in CLOUD_STACKS:
        result = CliRunner().invoke(app, ["plan", "--stack", name, "--json"])
        assert result.exit_code == 0, (name, result.output[-3000:], result.exception)
        planned = json.loads(result.stdout)
        assert planned["stack"] == name
        resources = planned["resources"]
        assert any(r["type"].startswith("stackwise:") and r["component"] for r in resources), name
        children = [r for r in resources if not r["component"]]
        assert children and all(r["type"] and r["name"] for r in children), name
        provider = {"aws": "aws:", "gcp": "gcp:", "azure": "azure-native:"}[planned["cloud"]]
        assert sum(r["type"].startswith(provider) for r in children) >= 3, (name, [r["type"] for r in children])
        assert planned["outputs"] and planned["cost"]["monthly_usd"] > 0, name


PLANTED = "planted-s3cr3t-f00d-never-printed"


@pytest.mark.parametrize("name", CLOUD_STACKS)
def test_plan_json_has_every_resource_with_full_inputs_and_no_secret(name, tmp_path, monkeypatch, offline_run):
    """`plan --json` carries `pulumi preview --json`'s steps: one "create" per resource with its URN,
    type, parent and full inputs, so a reviewer or a policy tool checks them without running the
    program; every secret (the Pinecone key, registry passwords, provider tokens) is "[secret]"."""
    from typer.testing import CliRunner

    from stackwise.cli import app
    from stackwise.infra import offline

    # Plant the secret everywhere the offline run invents one: the stack's Pinecone API key (a
    # config secret) and the registry password and access tokens the mocked provider calls answer.
    monkeypatch.setattr(offline, "PLAN_SECRET", PLANTED)
    monkeypatch.setenv("STACKWISE_HOME", str(tmp_path / ".stackwise"))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["plan", "--stack", name, "--json"])
    assert result.exit_code == 0, (result.output[-3000:], result.exception)
    assert PLANTED not in result.output
    planned = json.loads(result.stdout)

    steps = planned["steps"]
    assert planned["changeSummary"] == {"create": len(steps)}
    assert steps[0]["newState"]["type"] == "pulumi:pulumi:Stack"
    assert all(s["op"] == "create" and s["urn"] == s["newState"]["urn"] for s in steps)
    by_urn = {s["urn"]: s["newState"] for s in steps}
    recorded = offline_run(name).resources  # the same program under the same mocks, secrets unplanted
    assert set(by_urn) == {r.urn for r in recorded} | {steps[0]["urn"]}
    for r in recorded:
        state = by_urn[r.urn]
        assert state["type"] == r.type and state["custom"] == r.custom
        assert state["parent"] == (r.parent_urn or steps[0]["urn"])
        shown = json.dumps(state["inputs"], sort_keys=True)
        if "[secret]" not in shown:
            assert state["inputs"] == r.inputs, r.name  # full inputs, not a summary
    assert all("inputs" in r for r in planned["resources"])
    if planned["outputs"]["vector_store"]["kind"] == "pinecone":
        assert '"apiKey": "[secret]"' in result.stdout  # the planted config secret, masked


def test_mask_secrets_masks_secret_values_and_credential_names_only():
    from stackwise.infra.plan import mask_secrets

    secret = {"4dabf18193072939515e22adb298388d": "1b47061264138c4ac30d75fd1eb44270", "value": PLANTED}
    inputs = {"apiKey": secret, "data": {"nested": [secret]}, "registries": [{"password": PLANTED, "username": "u"}],
              "authToken": PLANTED, "clientSecret": PLANTED, "connectionString": PLANTED, "accessKey": PLANTED,
              "kmsKeyId": "arn:key", "secretName": "pinecone-api-key", "keyName": "k", "enableKeyRotation": True,
              "tags": {"token": ""}, "name": "sw-dev"}
    masked = mask_secrets(inputs)
    assert PLANTED not in json.dumps(masked)
    assert masked["apiKey"] == masked["data"]["nested"][0] == masked["registries"][0]["password"] == "[secret]"
    assert masked["registries"][0]["username"] == "u"
    assert {k: masked[k] for k in ("kmsKeyId", "secretName", "keyName", "enableKeyRotation", "name")} == {
        "kmsKeyId": "arn:key", "secretName": "pinecone-api-key", "keyName": "k", "enableKeyRotation": True,
        "name": "sw-dev"}
    assert masked["tags"] == {"token": ""}  # no value, nothing to hide
