"""Azure inference endpoint: a managed online endpoint with one deployment, an Azure Monitor
autoscale setting on it, and Azure Monitor alerts on latency and errors.

The autoscale setting adds a replica when any scale-out rule holds: GPU utilization (the
deployment's metric), requests per minute per replica or average request latency (the
endpoint's metrics, filtered to the deployment), per `endpoint.scaling`. It removes one only
when the GPUs are nearly idle: that metric is reported while replicas run, with or without
requests, so the deployment also shrinks when traffic stops.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pulumi

from stackwise.adapters.deploy.azureml import inference_config
from stackwise.catalog import Offer
from stackwise.errors import ConfigError

from ..common import is_hf_model
from ..config import AlarmsConfig, EndpointConfig, ScalingConfig
from . import names
from ._provider import azure

ml = azure.machinelearningservices  # Azure Machine Learning, used throughout
monitor = azure.monitor
# `azureml:<name>:<version>`: the SDK's shorthand for a model version registered in the workspace.
_AZUREML_MODEL = re.compile(r"^azureml:(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*):(?P<version>[A-Za-z0-9._-]+)$")
SCALE_IN_GPU_PERCENT = 25
"""Autoscale: remove a replica below this average GPU utilization (10 minutes), or below half
of endpoint.scaling.gpuPercent where that is lower."""
COOLDOWNS = (300, 600)
"""Default (scale-out, scale-in) cooldowns in seconds: a managed replica takes minutes to start,
and Azure autoscale does not count replicas still starting."""
DEPLOYMENT = "primary"
DEPLOYMENT_METRICS = "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/deployments"
ENDPOINT_METRICS = "Microsoft.MachineLearningServices/workspaces/onlineEndpoints"


def _duration(seconds: int) -> str:
    """ISO 8601, as Azure autoscale cooldowns are written."""
    return f"PT{seconds // 60}M" if seconds % 60 == 0 else f"PT{seconds}S"


def scale_rules(scaling: ScalingConfig, target_invocations: int, stack: str) -> list[dict[str, object]]:
    """The autoscale rules as data: metric, source (`deployment` or `endpoint`), operator,
    threshold, direction, cooldown, and for endpoint metrics the dimension filter and whether the
    value is divided by the instance count. Raises ConfigError for what Azure cannot scale on."""
    if scaling.metric == "concurrency":
        raise ConfigError(
            "endpoint.scaling.metric concurrency is not available on Azure: managed online endpoints publish no "
            "per-replica queue or in-flight request metric",
            where=f"stacks/Pulumi.{stack}.yaml: stackwise:endpoint.scaling.metric",
            fix="use latency (with targetLatencyMs), invocations (endpoint.targetInvocations) or utilization")
    out_s, in_s = scaling.scale_out_cooldown_seconds or COOLDOWNS[0], scaling.scale_in_cooldown_seconds or COOLDOWNS[1]
    scale_out = {"operator": "GreaterThan", "direction": "Increase", "cooldown": _duration(out_s)}
    only_primary = [{"dimension_name": "deployment", "operator": "Equals", "values": [DEPLOYMENT]}]
    latency = {"metric": "RequestLatency", "source": "endpoint", "dimensions": only_primary,
               "divide_per_instance": False, **scale_out}  # milliseconds
    metric = scaling.metric or "utilization"
    if metric == "utilization":
        rules = [{"metric": "GpuUtilizationPercentage", "source": "deployment", "threshold": scaling.gpu_percent,
                  **scale_out}]
    elif metric == "invocations":
        rules = [{"metric": "RequestsPerMinute", "source": "endpoint", "dimensions": only_primary,
                  "divide_per_instance": True, "threshold": target_invocations, **scale_out}]
    else:
        rules = []
    if scaling.target_latency_ms is not None:
        rules.append({**latency, "threshold": scaling.target_latency_ms})
    rules.append({"metric": "GpuUtilizationPercentage", "source": "deployment", "operator": "LessThan",
                  "threshold": max(1, min(SCALE_IN_GPU_PERCENT, scaling.gpu_percent // 2)), "direction": "Decrease",
                  "cooldown": _duration(in_s)})
    return rules


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

        def scale(rule: dict) -> monitor.ScaleRuleArgs:
            deployment_metric = rule["source"] == "deployment"
            return monitor.ScaleRuleArgs(
                metric_trigger=monitor.MetricTriggerArgs(
                    metric_name=rule["metric"],
                    metric_resource_uri=self.deployment.id if deployment_metric else self.endpoint.id,
                    metric_namespace=DEPLOYMENT_METRICS if deployment_metric else ENDPOINT_METRICS,
                    operator=rule["operator"], statistic="Average", threshold=rule["threshold"],
                    time_aggregation="Average", time_grain="PT1M", time_window="PT10M",
                    dimensions=[monitor.ScaleRuleMetricDimensionArgs(**d) for d in rule.get("dimensions", [])] or None,
                    divide_per_instance=rule.get("divide_per_instance")),
                scale_action=monitor.ScaleActionArgs(direction=rule["direction"], type="ChangeCount", value="1",
                                                     cooldown=rule["cooldown"]))

        rules = scale_rules(ep.scaling, ep.target_invocations, pulumi.get_stack())
        self.autoscale = monitor.AutoscaleSetting(
            f"{name}-autoscale", resource_group_name=rg, location=args.location, enabled=True,
            target_resource_uri=self.deployment.id,
            profiles=[monitor.AutoscaleProfileArgs(
                name="default",
                capacity=monitor.ScaleCapacityArgs(minimum=str(ep.min_replicas), maximum=str(ep.max_replicas),
                                                   default=str(ep.min_replicas)),
                rules=[scale(rule) for rule in rules])],
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

        percentile = args.alarms.latency_percentile
        alert("latency-alert", f"RequestLatency_P{percentile}", args.alarms.latency_ms,
              f"p{percentile} request latency above {args.alarms.latency_ms} ms")
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
