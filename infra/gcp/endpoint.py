"""GCP inference endpoint: a private Vertex AI endpoint, the model deployed when configured,
and Cloud Monitoring alerts on latency and errors.

Vertex scales a deployed model on resource utilization only (the metric specs pulumi-gcp 10
documents: CPU utilization and accelerator duty cycle), so `endpoint.scaling.metric` may be
`utilization` or unset here; request-based metrics and latency targets are refused, naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi

from stackwise.catalog import Offer
from stackwise.errors import ConfigError

from ..common import is_hf_model
from ..config import AlarmsConfig, EndpointConfig, ScalingConfig
from ._provider import gcp

DUTY_CYCLE = "aiplatform.googleapis.com/prediction/online/accelerator/duty_cycle"
CPU_UTILIZATION = "aiplatform.googleapis.com/prediction/online/cpu/utilization"
LATENCY = "aiplatform.googleapis.com/prediction/online/prediction_latencies"
ERRORS = "aiplatform.googleapis.com/prediction/online/error_count"
# Cloud Monitoring's percentile aligners (no 90th: it is watched as the 95th).
_ALIGNERS = {50: "ALIGN_PERCENTILE_50", 90: "ALIGN_PERCENTILE_95", 95: "ALIGN_PERCENTILE_95",
             99: "ALIGN_PERCENTILE_99"}


def latency_aligner(percentile: int) -> tuple[str, int]:
    """The aligner for an alarm percentile, and the percentile it really computes."""
    aligner = _ALIGNERS[percentile]
    return aligner, int(aligner.rsplit("_", 1)[-1])


def autoscaling_metric_specs(scaling: ScalingConfig, stack: str) -> list[dict[str, object]]:
    """Vertex `autoscalingMetricSpecs` for `scaling` (empty: Vertex's own 60 % targets).

    Raises ConfigError for what Vertex cannot scale on, naming the stack file's key.
    """
    where = f"stacks/Pulumi.{stack}.yaml: stackwise:endpoint.scaling"
    if scaling.metric not in (None, "utilization"):
        raise ConfigError(
            f"endpoint.scaling.metric {scaling.metric} is not available on GCP: Vertex AI scales deployed models on "
            "CPU utilization and GPU duty cycle only", where=f"{where}.metric",
            fix="set endpoint.scaling.metric: utilization (with gpuPercent, cpuPercent) or remove it; latency and "
            "errors are alerted on through stackwise:alarms")
    if scaling.target_latency_ms is not None:
        raise ConfigError("endpoint.scaling.targetLatencyMs is not available on GCP: Vertex AI cannot scale on "
                          "latency", where=f"{where}.targetLatencyMs",
                          fix="remove it; stackwise:alarms.latencyMs alerts on latency")
    if scaling.cooldowns_set:
        raise ConfigError("endpoint.scaling cooldowns are not available on GCP: Vertex AI sets its own",
                          where=where, fix="remove scaleOutCooldownSeconds and scaleInCooldownSeconds")
    if scaling.metric is None:
        return []
    return [{"metric_name": DUTY_CYCLE, "target": scaling.gpu_percent},
            {"metric_name": CPU_UTILIZATION, "target": scaling.cpu_percent}]


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
    model, and an empty endpoint costs nothing. Its autoscaling then belongs to the deployed
    models the deploy adapter creates: `autoscaling_metric_specs` (REST JSON) is what it must send.
    """

    def __init__(self, name: str, args: InferenceEndpointArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("stackwise:gcp:InferenceEndpoint", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, depends_on=args.after)
        ep, project, region = args.endpoint, args.project, args.region
        psc = {"enable_private_service_connect": True, "project_allowlists": [project]}
        specs = autoscaling_metric_specs(ep.scaling, pulumi.get_stack())
        self.autoscaling_metric_specs = [{"metricName": s["metric_name"], "target": s["target"]} for s in specs]
        if is_hf_model(ep.model):
            resources = {"min_replica_count": ep.min_replicas, "max_replica_count": ep.max_replicas}
            if specs:
                resources["autoscaling_metric_specs"] = specs
            deployed = gcp.vertex.AiEndpointWithModelGardenDeployment(
                f"{name}-deployment", project=project, location=region, hugging_face_model_id=ep.model,
                endpoint_config={"endpoint_display_name": name, "private_service_connect_config": psc},
                model_config={"accept_eula": True, "model_display_name": name},
                deploy_config={"dedicated_resources": {
                    "machine_spec": {"machine_type": args.offer.instance, "accelerator_type": args.offer.accelerator,
                                     "accelerator_count": args.offer.count}, **resources}},
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

        aligner, percentile = latency_aligner(args.alarms.latency_percentile)
        gcp.monitoring.AlertPolicy(
            f"{name}-latency-alert", project=project,
            display_name=f"{name}: p{percentile} latency > {args.alarms.latency_ms} ms",
            combiner="OR", notification_channels=channel_names, user_labels=args.labels,
            conditions=[{"display_name": f"p{percentile} prediction latency", "condition_threshold": {
                "filter": metric_filter(LATENCY),  # a distribution in milliseconds
                "comparison": "COMPARISON_GT", "threshold_value": args.alarms.latency_ms, "duration": "300s",
                "aggregations": [{"alignment_period": "300s", "per_series_aligner": aligner}]}}],
            opts=child)
        gcp.monitoring.AlertPolicy(
            f"{name}-error-alert", project=project,
            display_name=f"{name}: error rate > {args.alarms.error_rate_percent} %",
            combiner="OR", notification_channels=channel_names, user_labels=args.labels,
            conditions=[{"display_name": "error responses per second", "condition_threshold": {
                "filter": metric_filter(ERRORS),
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
