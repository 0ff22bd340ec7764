"""What the compiled pipeline's steps do on AWS as the stack's job role, as one IAM policy.

A compiled step runs `stackwise pipeline run --only STEP` in the training image as the job role.
Index, fine-tune and evaluate steps submit SageMaker training jobs and follow them (the compute
adapter: ListTrainingJobs, CreateTrainingJob, DescribeTrainingJob); a deploy step rolls a
version onto the stack's endpoint (the deploy adapter: models, endpoint configs, the endpoint,
and Application Auto Scaling on each variant it adds). Those are the calls granted here, on the
names the adapters give:

- training jobs `sw-*` (`JOB_NAME_PREFIX`, adapters/compute/base.py `job_name`); listing
  cannot be scoped (ListTrainingJobs supports no resource);
- the endpoint `<endpoint>` itself (described and updated, never created: the program makes
  it), and models and endpoint configs `<endpoint>-*` (`owned_name_pattern`,
  adapters/deploy/sagemaker.py; the Pulumi program's own model and config are named
  `<endpoint>-model-*` and `<endpoint>-config-*`, which the pattern covers);
- AddTags on the jobs, models and configs, because their create requests carry tags (SageMaker
  authorizes tags on create as AddTags);
- iam:PassRole of the job role itself, to SageMaker only (the jobs and models run as it);
- registering and putting target-tracking policies on scalable targets of this account and
  region, for SageMaker variants only (`service-namespace` and `scalable-dimension` conditions: a
  scalable target's ARN holds a generated id, not the endpoint's name), tagging a target only
  with the stack's tag, and the CloudWatch alarms target tracking makes for this endpoint's
  variants (`TargetTracking-endpoint/<endpoint>/variant/...`), which AWS documents the caller
  must be allowed to manage. Deregistering is not granted (only `stackwise undeploy` removes a
  variant), nor is Application Auto Scaling's service-linked role: the program's own scalable
  target creates it with the endpoint.

Without an endpoint in the stack, no deploy step can run, and nothing of it is granted.
tests/infra/test_step_permissions_aws.py derives the calls from the adapters themselves.
"""

from __future__ import annotations

from typing import Any

from stackwise.adapters.compute.base import JOB_NAME_PREFIX
from stackwise.adapters.deploy.sagemaker import SCALABLE_DIMENSION, owned_name_pattern

SAGEMAKER = "sagemaker.amazonaws.com"
# The tag the deploy adapter puts on each scalable target it registers (`scaling_requests`).
SCALING_TAG = "stackwise-stack"


def steps_statements(region: str, account: str, role_arn: str, stack: str,
                     endpoint: str | None) -> list[dict[str, Any]]:
    """The IAM statements of what the compiled steps call, for the job role `role_arn` of `stack`
    in `account` and `region`, with `endpoint` the stack's SageMaker endpoint name (or None)."""
    arn = f"arn:aws:sagemaker:{region}:{account}"
    statements: list[dict[str, Any]] = [
        {"Sid": "StepTrainingJobs", "Effect": "Allow",
         "Action": ["sagemaker:CreateTrainingJob", "sagemaker:DescribeTrainingJob", "sagemaker:AddTags"],
         "Resource": f"{arn}:training-job/{JOB_NAME_PREFIX}*"},
        {"Sid": "StepListTrainingJobs", "Effect": "Allow", "Action": "sagemaker:ListTrainingJobs", "Resource": "*"},
        {"Sid": "StepPassJobRole", "Effect": "Allow", "Action": "iam:PassRole", "Resource": role_arn,
         "Condition": {"StringEquals": {"iam:PassedToService": SAGEMAKER}}},
    ]
    if endpoint is None:
        return statements
    owned = owned_name_pattern(endpoint)
    targets = f"arn:aws:application-autoscaling:{region}:{account}:scalable-target/*"
    statements += [
        {"Sid": "StepEndpoint", "Effect": "Allow",
         "Action": ["sagemaker:DescribeEndpoint", "sagemaker:UpdateEndpoint",
                    "sagemaker:UpdateEndpointWeightsAndCapacities"],
         "Resource": f"{arn}:endpoint/{endpoint}"},
        {"Sid": "StepEndpointConfigs", "Effect": "Allow",
         "Action": ["sagemaker:DescribeEndpointConfig", "sagemaker:CreateEndpointConfig", "sagemaker:UpdateEndpoint",
                    "sagemaker:AddTags"],
         "Resource": f"{arn}:endpoint-config/{owned}"},
        {"Sid": "StepModels", "Effect": "Allow",
         "Action": ["sagemaker:DescribeModel", "sagemaker:CreateModel", "sagemaker:AddTags"],
         "Resource": f"{arn}:model/{owned}"},
        {"Sid": "StepScaleVariants", "Effect": "Allow",
         "Action": ["application-autoscaling:RegisterScalableTarget", "application-autoscaling:PutScalingPolicy"],
         "Resource": targets,
         "Condition": {"StringEquals": {"application-autoscaling:service-namespace": "sagemaker",
                                        "application-autoscaling:scalable-dimension": SCALABLE_DIMENSION}}},
        {"Sid": "StepTagScalableTargets", "Effect": "Allow", "Action": "application-autoscaling:TagResource",
         "Resource": targets, "Condition": {"StringEquals": {f"aws:RequestTag/{SCALING_TAG}": stack}}},
        {"Sid": "StepScalingAlarms", "Effect": "Allow",
         "Action": ["cloudwatch:DescribeAlarms", "cloudwatch:PutMetricAlarm", "cloudwatch:DeleteAlarms"],
         "Resource": f"arn:aws:cloudwatch:{region}:{account}:alarm:TargetTracking-endpoint/{endpoint}/variant/*"},
    ]
    return statements
