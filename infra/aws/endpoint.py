"""AWS inference endpoint: SageMaker Model, EndpointConfiguration, Endpoint, autoscaling, alarms.

Autoscaling is Application Auto Scaling on the variant's `DesiredInstanceCount`, with one
target-tracking policy on `endpoint.scaling.metric` and, when `targetLatencyMs` guards another
metric, a second scale-out-only policy on model latency. Application Auto Scaling adds capacity
when any policy asks for it and removes it only when every policy that may scale in agrees.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi

# The scaling policies are built once, in the deploy adapter (pure data, no Pulumi), so the variants
# `stackwise deploy` adds get exactly the policies this program gives the first one.
from stackwise.adapters.deploy.sagemaker import SCALABLE_DIMENSION, tracking_policies, variant_resource_id
from stackwise.catalog import Offer

from ..config import AlarmsConfig, EndpointConfig
from ..common import is_hf_model
from ._provider import aws
from .policy import has_local_nvme

VARIANT = "primary"
"""The production variant the Pulumi program creates (`stackwise deploy` adds `<model>-v<version>` ones)."""


@dataclass
class InferenceEndpointArgs:
    endpoint: EndpointConfig
    """Name, model, replicas and scaling target."""
    offer: Offer
    """The catalog entry: the SageMaker instance type for the endpoint's GPU."""
    image: pulumi.Input[str]
    """Serving container image."""
    role_arn: pulumi.Input[str]
    """Execution role (the stack's job role: it can read the artifact bucket)."""
    kms_key_arn: pulumi.Input[str]
    """Encrypts the endpoint's ML storage volumes (EBS; instance types with local NVMe storage
    encrypt that storage with a hardware key instead, and SageMaker refuses a KMS key for them:
    see docs/stacks.md)."""
    subnet_ids: list[pulumi.Input[str]]
    security_group_id: pulumi.Input[str]
    alarms: AlarmsConfig
    alert_emails: list[str]
    region: str
    """The stack's region (the endpoint's invocation URL)."""
    tags: dict[str, str]


def alerts_key_policy(account_id: str) -> str:
    """The alert topic key's policy: the account administers it (through IAM), CloudWatch (the
    alarms) may generate data keys and decrypt, as SNS encryption requires of a publishing service."""
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "AccountAdministers", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{account_id}:root"},
         "Action": "kms:*", "Resource": "*"},
        {"Sid": "CloudWatchAlarmsPublish", "Effect": "Allow", "Principal": {"Service": "cloudwatch.amazonaws.com"},
         "Action": ["kms:Decrypt", "kms:GenerateDataKey*"], "Resource": "*"},
    ]})


class InferenceEndpoint(pulumi.ComponentResource):
    """A private SageMaker real-time endpoint that scales between min and max replicas.

    SageMaker endpoints answer only IAM-signed requests and run in the stack's private subnets.
    Real-time endpoints without inference components cannot scale to zero, so min is >= 1; a
    stack that needs no standing cost simply omits `endpoint`.
    """

    def __init__(self, name: str, args: InferenceEndpointArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("stackwise:aws:InferenceEndpoint", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        ep, tags = args.endpoint, args.tags
        container: dict = {"image": args.image}
        if is_hf_model(ep.model):
            container["environment"] = {"HF_MODEL_ID": ep.model, "SM_NUM_GPUS": str(args.offer.count)}
        else:
            container["model_data_url"] = ep.model
        model = aws.sagemaker.Model(f"{name}-model", execution_role_arn=args.role_arn, primary_container=container,
                                    vpc_config={"subnets": args.subnet_ids,
                                                "security_group_ids": [args.security_group_id]},
                                    tags=tags, opts=child)
        # Instances with local NVMe storage encrypt it in hardware and refuse a KMS key (see
        # has_local_nvme); the policy pack accepts the missing key only for them.
        config = aws.sagemaker.EndpointConfiguration(
            f"{name}-config", kms_key_arn=None if has_local_nvme(args.offer.instance) else args.kms_key_arn,
            production_variants=[{"variant_name": "primary", "model_name": model.name,
                                  "instance_type": args.offer.instance,
                                  "initial_instance_count": ep.min_replicas}],
            tags=tags, opts=child)
        self.endpoint = aws.sagemaker.Endpoint(f"{name}-endpoint", name=f"{name}", endpoint_config_name=config.name,
                                               tags=tags, opts=child)
        target = aws.appautoscaling.Target(
            f"{name}-scaling", service_namespace="sagemaker", resource_id=self.endpoint.name.apply(variant_resource_id),
            scalable_dimension=SCALABLE_DIMENSION,
            min_capacity=ep.min_replicas, max_capacity=ep.max_replicas, tags=tags, opts=child)
        for suffix, tracking in tracking_policies(ep.scaling, ep.target_invocations, args.offer.count,
                                                  self.endpoint.name).items():
            aws.appautoscaling.Policy(
                f"{name}-{suffix}", policy_type="TargetTrackingScaling", service_namespace=target.service_namespace,
                resource_id=target.resource_id, scalable_dimension=target.scalable_dimension,
                target_tracking_scaling_policy_configuration=tracking, opts=child)

        # CloudWatch alarms cannot publish to a topic encrypted with the AWS-managed key
        # (alias/aws/sns: its policy admits no other service), so the alerts have a key of their own
        # whose policy lets CloudWatch encrypt the messages it publishes.
        account = pulumi.Output.from_input(args.kms_key_arn).apply(lambda arn: arn.split(":")[4])
        self.alerts_key = aws.kms.Key(
            f"{name}-alerts-key", description=f"{name}: alarm notifications (SNS)", enable_key_rotation=True,
            deletion_window_in_days=30, policy=account.apply(alerts_key_policy), tags=tags, opts=child)
        topic = aws.sns.Topic(f"{name}-alerts", kms_master_key_id=self.alerts_key.arn, tags=tags, opts=child)
        for i, email in enumerate(args.alert_emails):
            aws.sns.TopicSubscription(f"{name}-alerts-{i}", topic=topic.arn, protocol="email", endpoint=email, opts=child)
        dims = {"EndpointName": self.endpoint.name, "VariantName": VARIANT}
        percentile = f"p{args.alarms.latency_percentile}"
        aws.cloudwatch.MetricAlarm(
            f"{name}-latency-alarm", namespace="AWS/SageMaker", metric_name="ModelLatency", dimensions=dims,
            extended_statistic=percentile, period=300, evaluation_periods=3, comparison_operator="GreaterThanThreshold",
            threshold=args.alarms.latency_ms * 1000,  # ModelLatency is in microseconds
            alarm_description=f"{percentile} model latency above {args.alarms.latency_ms} ms",
            treat_missing_data="notBreaching", alarm_actions=[topic.arn], tags=tags, opts=child)

        def metric(query_id: str, metric_name: str) -> dict:
            return {"id": query_id, "metric": {"namespace": "AWS/SageMaker", "metric_name": metric_name,
                                               "dimensions": dims, "period": 300, "stat": "Sum"}}

        aws.cloudwatch.MetricAlarm(
            f"{name}-error-rate-alarm", comparison_operator="GreaterThanThreshold", evaluation_periods=3,
            threshold=args.alarms.error_rate_percent, treat_missing_data="notBreaching",
            alarm_description=f"5xx responses above {args.alarms.error_rate_percent} %",
            metric_queries=[metric("errors", "Invocation5XXErrors"), metric("invocations", "Invocations"),
                            {"id": "rate", "expression": "100 * errors / invocations", "label": "5xx %",
                             "return_data": True}],
            alarm_actions=[topic.arn], tags=tags, opts=child)

        self.name = self.endpoint.name
        self.url = self.endpoint.name.apply(
            lambda n: f"https://runtime.sagemaker.{args.region}.amazonaws.com/endpoints/{n}/invocations")
        self.register_outputs({"name": self.name})
