"""Azure inference endpoint: a managed online endpoint with one deployment, an Azure Monitor
autoscale setting on it, and Azure Monitor alerts on latency and errors."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pulumi

from stackwise.adapters.deploy.azureml import inference_config
from stackwise.catalog import Offer
from stackwise.errors import ConfigError

from ..common import is_hf_model
from ..config import AlarmsConfig, EndpointConfig
from . import names
from ._provider import azure

ml = azure.machinelearningservices  # Azure Machine Learning, used throughout
monitor = azure.monitor
# `azureml:<name>:<version>`: the SDK's shorthand for a model version registered in the workspace.
_AZUREML_MODEL = re.compile(r"^azureml:(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*):(?P<version>[A-Za-z0-9._-]+)$")
SCALE_OUT_GPU_PERCENT, SCALE_IN_GPU_PERCENT = 70, 25
"""Autoscale: add a replica above this average GPU utilization (10 minutes), remove one below that."""


def model_reference(model: str, workspace_id: str) -> tuple[str | None, dict[str, str]]:
    """How a deployment gets `model`: (the model asset's ARM id or None, environment variables).

    ARM takes a model version's resource id (or an `azureml://registries/...` id), never the
    SDK's `azureml:name:version` shorthand, which is expanded here against the workspace's id.
    An artifact URI (`az://...`) is read by the serving image (`$STACKWISE_MODEL_URI`); a Hugging
    Face id is downloaded through the managed network's outbound rules (`$HF_MODEL_ID`).
    """
    found = _AZUREML_MODEL.match(model)
    if found:
        return f"{workspace_id}/models/{found['name']}/versions/{found['version']}", {}
    if model.startswith(("/subscriptions/", "azureml://")):
        return model, {}
    if model.startswith("azureml:"):
        raise ConfigError(f"endpoint.model {model!r} is not an Azure ML model version",
                          where="stackwise:endpoint.model",
                          fix="name a registered version as azureml:<name>:<version>, e.g. azureml:chat-model:1")
    if is_hf_model(model):
        return None, {"HF_MODEL_ID": model}
    return None, {"STACKWISE_MODEL_URI": model}


@dataclass
class InferenceEndpointArgs:
    endpoint: EndpointConfig
    """Name, model, replicas."""
    offer: Offer
    """The catalog entry: the deployment's VM size."""
    location: str
    resource_group: pulumi.Input[str]
    workspace: pulumi.Input[str]
    """The Azure ML workspace that owns the endpoint."""
    image: pulumi.Input[str]
    """Serving image (registered as the deployment's environment)."""
    alarms: AlarmsConfig
    alert_emails: list[str]
    tags: dict[str, str]


class InferenceEndpoint(pulumi.ComponentResource):
    """A key-authenticated managed online endpoint with public network access disabled; its
    deployment autoscales between min and max instances (managed endpoints keep >= 1) through an
    Azure Monitor autoscale setting, as managed deployments take only Default scale settings
    (TargetUtilization is for Kubernetes deployments)."""

    def __init__(self, name: str, args: InferenceEndpointArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("stackwise:azure:InferenceEndpoint", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        ep, rg, ws, tags = args.endpoint, args.resource_group, args.workspace, args.tags

        model_reference(ep.model, "")  # a malformed model fails here, before any resource
        client = azure.authorization.get_client_config_output()
        workspace_id = pulumi.Output.all(client.subscription_id, rg, ws).apply(
            lambda v: f"/subscriptions/{v[0]}/resourceGroups/{v[1]}/providers/Microsoft.MachineLearningServices"
                      f"/workspaces/{v[2]}")
        references = workspace_id.apply(lambda w: model_reference(ep.model, w))
        # A custom container: Azure probes and scores on the routes the serving image answers.
        routes = {route: ml.RouteArgs(port=r["port"], path=r["path"]) for route, r in inference_config().items()}
        environment = ml.EnvironmentVersion(
            f"{name}-environment", resource_group_name=rg, workspace_name=ws, name=f"{name}-serve", version="1",
            properties=ml.EnvironmentVersionPropertiesArgs(
                image=args.image, os_type="Linux", inference_config=ml.InferenceContainerPropertiesArgs(**routes)),
            opts=child)
        # Unique per region and at most 32 characters: see infra/azure/names.py.
        endpoint_name = pulumi.Output.all(client.subscription_id, rg).apply(
            lambda v: names.online_endpoint_name(name, names.stable_suffix(*v, name)))
        self.endpoint = ml.OnlineEndpoint(
            f"{name}-endpoint", resource_group_name=rg, workspace_name=ws, location=args.location,
            endpoint_name=endpoint_name, kind="Managed", identity={"type": "SystemAssigned"},
            properties=ml.OnlineEndpointPropertiesArgs(auth_mode="Key", public_network_access="Disabled",
                                                       description=f"stackwise endpoint {ep.name}"),
            tags=tags, opts=child)
        self.deployment = ml.OnlineDeployment(
            f"{name}-deployment", resource_group_name=rg, workspace_name=ws, location=args.location,
            endpoint_name=self.endpoint.name, deployment_name="primary", kind="Managed",
            sku=ml.SkuArgs(name="Default", capacity=ep.min_replicas),
            properties=ml.ManagedOnlineDeploymentArgs(
                endpoint_compute_type="Managed", instance_type=args.offer.instance,
                model=references.apply(lambda r: r[0]), environment_id=environment.id,
                environment_variables=references.apply(lambda r: r[1]), egress_public_network_access="Disabled",
                app_insights_enabled=True, scale_settings=ml.DefaultScaleSettingsArgs(scale_type="Default")),
            # The autoscale setting below moves the instance count; `pulumi up` must not move it back.
            tags=tags, opts=pulumi.ResourceOptions(parent=self, ignore_changes=["sku.capacity"]))

        def scale(operator: str, percent: int, direction: str, cooldown: str) -> monitor.ScaleRuleArgs:
            return monitor.ScaleRuleArgs(
                metric_trigger=monitor.MetricTriggerArgs(
                    metric_name="GpuUtilizationPercentage", metric_resource_uri=self.deployment.id,
                    metric_namespace="Microsoft.MachineLearningServices/workspaces/onlineEndpoints/deployments",
                    operator=operator, statistic="Average", threshold=percent, time_aggregation="Average",
                    time_grain="PT1M", time_window="PT10M"),
                scale_action=monitor.ScaleActionArgs(direction=direction, type="ChangeCount", value="1",
                                                     cooldown=cooldown))

        self.autoscale = monitor.AutoscaleSetting(
            f"{name}-autoscale", resource_group_name=rg, location=args.location, enabled=True,
            target_resource_uri=self.deployment.id,
            profiles=[monitor.AutoscaleProfileArgs(
                name="default",
                capacity=monitor.ScaleCapacityArgs(minimum=str(ep.min_replicas), maximum=str(ep.max_replicas),
                                                   default=str(ep.min_replicas)),
                rules=[scale("GreaterThan", SCALE_OUT_GPU_PERCENT, "Increase", "PT5M"),
                       scale("LessThan", SCALE_IN_GPU_PERCENT, "Decrease", "PT10M")])],
            tags=tags, opts=child)

        group = azure.monitor.ActionGroup(
            f"{name}-alerts", resource_group_name=rg, location="Global", group_short_name=name[-12:], enabled=True,
            email_receivers=[{"name": f"email-{i}", "email_address": e, "use_common_alert_schema": True}
                             for i, e in enumerate(args.alert_emails)],
            tags=tags, opts=child)

        def alert(label: str, metric: str, threshold: float, description: str, dimensions=None) -> None:
            azure.monitor.MetricAlert(
                f"{name}-{label}", resource_group_name=rg, location="global", description=description, severity=2,
                enabled=True, scopes=[self.endpoint.id], evaluation_frequency="PT5M", window_size="PT15M",
                auto_mitigate=True,
                # A typed criteria: the input is a union of three shapes, and a plain dict would
                # reach ARM with its Python keys (`odata_type`, `all_of`) untranslated.
                criteria=monitor.MetricAlertSingleResourceMultipleMetricCriteriaArgs(
                    odata_type="Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria",
                    all_of=[monitor.MetricCriteriaArgs(
                        criterion_type="StaticThresholdCriterion", name=label, metric_name=metric,
                        operator="GreaterThan", threshold=threshold, time_aggregation="Average",
                        dimensions=dimensions or [])]),
                actions=[{"action_group_id": group.id}], tags=tags, opts=child)

        alert("latency-alert", "RequestLatency_P90", args.alarms.latency_ms,
              f"p90 request latency above {args.alarms.latency_ms} ms")
        # Managed endpoints publish requests per minute by status class; alert on the 5xx share
        # expressed against the scaling target (requests per replica per minute).
        alert("error-alert", "RequestsPerMinute",
              max(1.0, ep.target_invocations * args.alarms.error_rate_percent / 100),
              f"5xx responses above {args.alarms.error_rate_percent} % of the per-replica target",
              dimensions=[monitor.MetricDimensionArgs(name="statusCodeClass", operator="Include", values=["5xx"])])

        self.name = self.endpoint.name
        self.url = self.endpoint.properties.apply(lambda p: (p or {}).get("scoring_uri") or (p or {}).get("scoringUri")
                                                  if isinstance(p, dict) else getattr(p, "scoring_uri", None))
        self.register_outputs({"name": self.name})
