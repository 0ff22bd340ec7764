"""GCP inference endpoint: a private Vertex AI endpoint, the model deployed when configured,
and Cloud Monitoring alerts on latency and errors."""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi

from stackwise.catalog import Offer

from ..common import is_hf_model
from ..config import AlarmsConfig, EndpointConfig
from ._provider import gcp


@dataclass
class InferenceEndpointArgs:
    endpoint: EndpointConfig
    """Name, model, replicas."""
    offer: Offer
    """The catalog entry: machine type and accelerator for the endpoint's GPU."""
    project: str
    region: str
    kms_key_id: pulumi.Input[str]
    """Encrypts the (empty) endpoint's data."""
    alarms: AlarmsConfig
    alert_emails: list[str]
    labels: dict[str, str]
    after: list[pulumi.Resource] = field(default_factory=list)
    """What must exist first: the platform's enabled APIs (Vertex AI, Monitoring)."""


class InferenceEndpoint(pulumi.ComponentResource):
    """A Vertex AI endpoint reachable only through Private Service Connect (so it exports no URL).

    A Hugging Face model id is deployed through Model Garden on the catalog's machine with
    autoscaling between min and max replicas. An artifact URI (gs://...) gets an empty,
    CMEK-encrypted endpoint that `stackwise deploy` fills: no Pulumi resource deploys a custom
    model, and an empty endpoint costs nothing.
    """

    def __init__(self, name: str, args: InferenceEndpointArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("stackwise:gcp:InferenceEndpoint", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, depends_on=args.after)
        ep, project, region = args.endpoint, args.project, args.region
        psc = {"enable_private_service_connect": True, "project_allowlists": [project]}
        if is_hf_model(ep.model):
            deployed = gcp.vertex.AiEndpointWithModelGardenDeployment(
                f"{name}-deployment", project=project, location=region, hugging_face_model_id=ep.model,
                endpoint_config={"endpoint_display_name": name, "private_service_connect_config": psc},
                model_config={"accept_eula": True, "model_display_name": name},
                deploy_config={"dedicated_resources": {
                    "machine_spec": {"machine_type": args.offer.instance, "accelerator_type": args.offer.accelerator,
                                     "accelerator_count": args.offer.count},
                    "min_replica_count": ep.min_replicas, "max_replica_count": ep.max_replicas}},
                opts=child)
            self.endpoint_id = deployed.endpoint.apply(lambda e: e.rsplit("/", 1)[-1])
        else:
            endpoint = gcp.vertex.AiEndpoint(
                f"{name}-endpoint", project=project, location=region, region=region, display_name=name,
                description=f"stackwise endpoint {ep.name}", encryption_spec={"kms_key_name": args.kms_key_id},
                private_service_connect_config=psc, labels=args.labels, opts=child)
            self.endpoint_id = endpoint.name

        channels = [gcp.monitoring.NotificationChannel(
            f"{name}-alerts-{i}", project=project, type="email", display_name=f"{name} alerts {email}",
            labels={"email_address": email}, user_labels=args.labels, opts=child)
            for i, email in enumerate(args.alert_emails)]
        channel_names = [c.name for c in channels]

        def metric_filter(metric: str) -> pulumi.Output[str]:
            return self.endpoint_id.apply(
                lambda e: f'resource.type = "aiplatform.googleapis.com/Endpoint" AND '
                          f'resource.labels.endpoint_id = "{e}" AND metric.type = "{metric}"')

        gcp.monitoring.AlertPolicy(
            f"{name}-latency-alert", project=project, display_name=f"{name}: p90 latency > {args.alarms.latency_ms} ms",
            combiner="OR", notification_channels=channel_names, user_labels=args.labels,
            conditions=[{"display_name": "p90 prediction latency", "condition_threshold": {
                "filter": metric_filter("aiplatform.googleapis.com/prediction/online/prediction_latencies"),
                "comparison": "COMPARISON_GT", "threshold_value": args.alarms.latency_ms, "duration": "300s",
                "aggregations": [{"alignment_period": "300s", "per_series_aligner": "ALIGN_PERCENTILE_90"}]}}],
            opts=child)
        gcp.monitoring.AlertPolicy(
            f"{name}-error-alert", project=project,
            display_name=f"{name}: error rate > {args.alarms.error_rate_percent} %",
            combiner="OR", notification_channels=channel_names, user_labels=args.labels,
            conditions=[{"display_name": "error responses per second", "condition_threshold": {
                "filter": metric_filter("aiplatform.googleapis.com/prediction/online/error_count"),
                "comparison": "COMPARISON_GT", "threshold_value": args.alarms.error_rate_percent / 100,
                "duration": "300s",
                "aggregations": [{"alignment_period": "300s", "per_series_aligner": "ALIGN_RATE"}]}}],
            opts=child)

        self.name = self.endpoint_id
        # No URL: a Private Service Connect endpoint does not answer on the public REST host
        # ({region}-aiplatform.googleapis.com); it answers at the address of a PSC forwarding rule
        # that a consumer network creates for the deployed model's service attachment, which
        # exists only once a model is deployed (docs/stacks.md, "GCP network").
        self.url: pulumi.Output[str | None] = pulumi.Output.from_input(None)
        self.register_outputs({"name": self.name})
