"""The Azure endpoint component as the engine receives it (dev-azure under mocks): inputs shaped by
the provider's typed Args (camelCase keys, union inputs with their discriminator), a Default-scaled
managed deployment driven by an Azure Monitor autoscale setting, the model as an ARM id, and the
serving image's routes on the environment. The installed pulumi_azure_native and azure-ai-ml are
the judges (their enums, Args classes and validators)."""

from __future__ import annotations

import pytest

pytest.importorskip("pulumi", reason="pip install 'stackwise[infra]'")


def by_type(run, suffix):
    return [r for r in run.resources if r.type.endswith(suffix)]


def snake_keys(value, path="", free=("tags", "environmentVariables", "outboundRules")):
    """Keys with `_` anywhere in the inputs, except under maps whose keys are data."""
    found = []
    if isinstance(value, dict):
        for key, inner in value.items():
            if "_" in key and path.rsplit(".", 1)[-1] not in free:
                found.append(f"{path}.{key}")
            found += snake_keys(inner, f"{path}.{key}", free)
    elif isinstance(value, list):
        for inner in value:
            found += snake_keys(inner, path, free)
    return found


def test_no_azure_input_reaches_the_engine_with_python_keys(offline_run):
    # A plain dict for a union-typed input (MetricAlert criteria, outbound rules, scale settings)
    # is sent as written: ARM would get `odata_type`, `all_of` and ignore them.
    run = offline_run("dev-azure")
    found = {r.name: snake_keys(r.inputs) for r in run.resources if r.type.startswith("azure-native:")}
    assert {k: v for k, v in found.items() if v} == {}


def test_metric_alert_criteria_are_the_typed_single_resource_shape(offline_run):
    from pulumi_azure_native import monitor

    run = offline_run("dev-azure")
    alerts = by_type(run, "monitor:MetricAlert")
    assert len(alerts) == 2
    for alert in alerts:
        criteria = alert.inputs["criteria"]
        # The provider's schema name of ARM's `odata.type` (the provider renames it on the wire).
        assert criteria["odataType"] == "Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria"
        (criterion,) = criteria["allOf"]
        assert criterion["criterionType"] == "StaticThresholdCriterion"
        assert monitor.AggregationTypeEnum(criterion["timeAggregation"])
        assert monitor.Operator(criterion["operator"]) == monitor.Operator.GREATER_THAN
        assert criterion["metricName"] in ("RequestLatency_P90", "RequestsPerMinute")
    (errors,) = [a for a in alerts if a.inputs["criteria"]["allOf"][0]["metricName"] == "RequestsPerMinute"]
    assert errors.inputs["criteria"]["allOf"][0]["dimensions"] == [
        {"name": "statusCodeClass", "operator": "Include", "values": ["5xx"]}]


def test_the_managed_deployment_uses_default_scale_settings(offline_run):
    # azure-ai-ml refuses anything else on a managed deployment ("ManagedOnlineEndpoint supports
    # DefaultScaleSettings only"); TargetUtilization is for Kubernetes deployments.
    pytest.importorskip("azure.ai.ml", reason="install stackwise[azure]")
    from azure.ai.ml.entities import DefaultScaleSettings, ManagedOnlineDeployment, TargetUtilizationScaleSettings

    run = offline_run("dev-azure")
    (deployment,) = by_type(run, "OnlineDeployment")
    settings = deployment.inputs["properties"]["scaleSettings"]
    assert deployment.inputs["properties"]["endpointComputeType"] == deployment.inputs["kind"] == "Managed"
    sdk_settings = {"Default": DefaultScaleSettings, "TargetUtilization": TargetUtilizationScaleSettings}[
        settings["scaleType"]]()
    ManagedOnlineDeployment(name=deployment.inputs["deploymentName"], endpoint_name="e",
                            instance_type=deployment.inputs["properties"]["instanceType"],
                            scale_settings=sdk_settings)._validate()
    assert deployment.inputs["sku"] == {"name": "Default", "capacity": run.config.endpoint.min_replicas}


def test_an_autoscale_setting_bounds_the_deployment(offline_run):
    from pulumi_azure_native import monitor

    run = offline_run("dev-azure")
    ep = run.config.endpoint
    (deployment,) = by_type(run, "OnlineDeployment")
    (autoscale,) = by_type(run, "monitor:AutoscaleSetting")
    # The mocks make a resource's id from its auto-name (`<logical name>-<digest>`).
    deployment_id = autoscale.inputs["targetResourceUri"]
    assert f"/{deployment.name}-" in deployment_id and autoscale.inputs["enabled"] is True
    (profile,) = autoscale.inputs["profiles"]
    assert profile["capacity"] == {"minimum": str(ep.min_replicas), "maximum": str(ep.max_replicas),
                                   "default": str(ep.min_replicas)}
    directions = set()
    for rule in profile["rules"]:
        trigger, action = rule["metricTrigger"], rule["scaleAction"]
        assert trigger["metricResourceUri"] == deployment_id
        assert trigger["metricName"] == "GpuUtilizationPercentage"
        monitor.ComparisonOperationType(trigger["operator"])
        monitor.MetricStatisticType(trigger["statistic"])
        monitor.TimeAggregationType(trigger["timeAggregation"])
        monitor.ScaleType(action["type"])
        directions.add(monitor.ScaleDirection(action["direction"]))
    assert directions == {monitor.ScaleDirection.INCREASE, monitor.ScaleDirection.DECREASE}


def test_the_shorthand_model_becomes_the_model_version_s_arm_id(offline_run):
    run = offline_run("dev-azure")
    assert run.config.endpoint.model == "azureml:chat-model:1"
    (deployment,) = by_type(run, "OnlineDeployment")
    (group,) = by_type(run, "resources:ResourceGroup")
    (workspace,) = by_type(run, "machinelearningservices:Workspace")
    from stackwise.infra.azure.cloud import FAKE_SUBSCRIPTION

    assert deployment.inputs["properties"]["model"] == (
        f"/subscriptions/{FAKE_SUBSCRIPTION}/resourceGroups/{group.state['name']}/providers/"
        f"Microsoft.MachineLearningServices/workspaces/{workspace.state['name']}/models/chat-model/versions/1")
    assert deployment.inputs["properties"]["environmentVariables"] == {}


@pytest.mark.parametrize("model,expected", [
    ("azureml:chat-model:1", ("W/models/chat-model/versions/1", {})),
    ("azureml:chat.v2_x:12", ("W/models/chat.v2_x/versions/12", {})),
    ("azureml://registries/r/models/m/versions/3", ("azureml://registries/r/models/m/versions/3", {})),
    ("/subscriptions/s/x/models/m/versions/3", ("/subscriptions/s/x/models/m/versions/3", {})),
    ("HuggingFaceTB/SmolLM2-135M-Instruct", (None, {"HF_MODEL_ID": "HuggingFaceTB/SmolLM2-135M-Instruct"})),
    ("az://artifacts/mlflow/chat-2/model", (None, {"STACKWISE_MODEL_URI": "az://artifacts/mlflow/chat-2/model"})),
])
def test_model_references(model, expected):
    from stackwise.infra.azure.endpoint import model_reference

    assert model_reference(model, "W") == expected


def test_a_malformed_azureml_model_names_the_key():
    from stackwise.errors import ConfigError
    from stackwise.infra.azure.endpoint import model_reference

    with pytest.raises(ConfigError, match="azureml:<name>:<version>"):
        model_reference("azureml:chat-model", "W")


def test_the_environment_carries_the_serving_image_s_routes(offline_run):
    # The same routes the deploy adapter gives its environments: one definition for both.
    from stackwise.adapters.deploy.azureml import inference_config

    run = offline_run("dev-azure")
    (environment,) = by_type(run, "EnvironmentVersion")
    config = environment.inputs["properties"]["inferenceConfig"]
    assert config == {"livenessRoute": inference_config()["liveness_route"],
                      "readinessRoute": inference_config()["readiness_route"],
                      "scoringRoute": inference_config()["scoring_route"]}
    assert config["livenessRoute"] == {"port": 8080, "path": "/"}
    assert config["readinessRoute"]["path"] == "/health" and config["scoringRoute"]["path"] == "/v1/completions"


@pytest.mark.parametrize("model,cloud,error", [
    ("azureml:chat-model", "azure", "not an Azure ML model version"),
    ("azureml:chat-model:1", "aws", "only azure stacks can serve"),
])
def test_a_bad_azureml_model_fails_at_config_load_naming_the_key(model, cloud, error):
    from stackwise.errors import ConfigError
    from stackwise.infra.config import InfraConfig

    from .conftest import stack_config

    raw, _ = stack_config("dev-azure" if cloud == "azure" else "dev-aws")
    with pytest.raises(ConfigError) as caught:
        InfraConfig.load({**raw, "endpoint": {**raw["endpoint"], "model": model}}, "stacks/Pulumi.x.yaml")
    assert "endpoint" in caught.value.what and error in caught.value.what
