"""Azure inference endpoint: a managed online endpoint with one deployment, and Azure Monitor
alerts on latency and errors."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from stackwise.catalog import Offer

from ..common import is_hf_model
from ..config import AlarmsConfig, EndpointConfig
from ._provider import azure

ml = azure.machinelearningservices  # Azure Machine Learning, used throughout


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
    deployment autoscales between min and max instances (managed endpoints keep >= 1)."""

    def __init__(self, name: str, args: InferenceEndpointArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("stackwise:azure:InferenceEndpoint", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        ep, rg, ws, tags = args.endpoint, args.resource_group, args.workspace, args.tags

        environment = ml.EnvironmentVersion(
            f"{name}-environment", resource_group_name=rg, workspace_name=ws, name=f"{name}-serve", version="1",
            properties=ml.EnvironmentVersionPropertiesArgs(image=args.image, os_type="Linux"), opts=child)
        self.endpoint = ml.OnlineEndpoint(
            f"{name}-endpoint", resource_group_name=rg, workspace_name=ws, location=args.location,
            endpoint_name=name, kind="Managed", identity={"type": "SystemAssigned"},
            properties=ml.OnlineEndpointPropertiesArgs(auth_mode="Key", public_network_access="Disabled",
                                                       description=f"stackwise endpoint {ep.name}"),
            tags=tags, opts=child)
        variables = {"HF_MODEL_ID": ep.model} if is_hf_model(ep.model) else {}
        ml.OnlineDeployment(
            f"{name}-deployment", resource_group_name=rg, workspace_name=ws, location=args.location,
            endpoint_name=self.endpoint.name, deployment_name="primary", kind="Managed",
            sku={"name": "Default", "capacity": ep.min_replicas},
            properties=ml.ManagedOnlineDeploymentArgs(
                endpoint_compute_type="Managed", instance_type=args.offer.instance,
                model=None if is_hf_model(ep.model) else ep.model, environment_id=environment.id,
                environment_variables=variables, egress_public_network_access="Disabled", app_insights_enabled=True,
                scale_settings=ml.TargetUtilizationScaleSettingsArgs(
                    scale_type="TargetUtilization", min_instances=ep.min_replicas, max_instances=ep.max_replicas,
                    target_utilization_percentage=70)),
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
                criteria={"odata_type": "Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria",
                          "all_of": [{"criterion_type": "StaticThresholdCriterion", "name": label,
                                      "metric_name": metric, "operator": "GreaterThan", "threshold": threshold,
                                      "time_aggregation": "Average", "dimensions": dimensions or []}]},
                actions=[{"action_group_id": group.id}], tags=tags, opts=child)

        alert("latency-alert", "RequestLatency_P90", args.alarms.latency_ms,
              f"p90 request latency above {args.alarms.latency_ms} ms")
        # Managed endpoints publish requests per minute by status class; alert on the 5xx share
        # expressed against the scaling target (requests per replica per minute).
        alert("error-alert", "RequestsPerMinute",
              max(1.0, ep.target_invocations * args.alarms.error_rate_percent / 100),
              f"5xx responses above {args.alarms.error_rate_percent} % of the per-replica target",
              dimensions=[{"name": "statusCodeClass", "operator": "Include", "values": ["5xx"]}])

        self.name = self.endpoint.name
        self.url = self.endpoint.properties.apply(lambda p: (p or {}).get("scoring_uri") or (p or {}).get("scoringUri")
                                                  if isinstance(p, dict) else getattr(p, "scoring_uri", None))
        self.register_outputs({"name": self.name})
