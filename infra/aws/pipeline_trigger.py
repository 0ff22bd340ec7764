"""AWS pipeline trigger: the compiled SageMaker pipeline, started by EventBridge on a schedule and
when an object is created under a prefix of the artifact bucket."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pulumi

from ..config import PipelineTriggerConfig
from ..pipeline_trigger import SAGEMAKER_STEP_ACTIONS, SageMakerDefinition
from ._provider import aws
from .step_permissions import steps_statements

# Step types whose jobs SageMaker runs with a role the pipeline passes (its own).
_PASSES_ROLE = {"Training", "Processing", "Transform", "Tuning", "Model"}


@dataclass
class PipelineTriggerArgs:
    trigger: PipelineTriggerConfig
    definition: SageMakerDefinition
    pipeline_name: str
    """The SageMaker pipeline's name (`sw-<env>-<definition file stem>`)."""
    role_arn: pulumi.Input[str]
    """The stack's job role: the pipeline runs its steps with it (their jobs run as it too)."""
    role_id: pulumi.Input[str]
    """The same role's name, to attach what running the steps needs."""
    bucket: pulumi.Input[str]
    """The artifact bucket whose objects under `trigger.data_prefix` start runs."""
    region: str
    tags: dict[str, str]
    stack: str = ""
    """The Pulumi stack (the steps' `--stack`): the tag the deploy step puts on scalable targets."""
    endpoint_name: str | None = None
    """The stack's SageMaker endpoint, which deploy steps fill; None: no deploy step can run."""


def object_key_filter(prefix: str, suffix: str | None) -> list[dict[str, str]]:
    """The EventBridge filter of `detail.object.key`: a prefix, or with a suffix a wildcard
    (the config's pattern keeps `*` and `\\` out of both, so neither needs escaping)."""
    return [{"prefix": prefix}] if not suffix else [{"wildcard": f"{prefix}*{suffix}"}]


def event_pattern(bucket: str, prefix: str, suffix: str | None) -> dict[str, Any]:
    """S3's "Object Created" events (sent to EventBridge by the bucket) for keys under `prefix`."""
    return {"source": ["aws.s3"], "detail-type": ["Object Created"],
            "detail": {"bucket": {"name": [bucket]}, "object": {"key": object_key_filter(prefix, suffix)}}}


class PipelineTrigger(pulumi.ComponentResource):
    """A SageMaker pipeline from the compiled definition, run by EventBridge rules.

    - the pipeline runs as the stack's job role, which gets the SageMaker actions its step types
      need (on that account's jobs of those kinds) and may pass itself to SageMaker only, and
      what the steps' command calls inside them (step_permissions.py: training jobs `sw-*`, the
      stack's endpoint, its models and configs, and autoscaling of its variants);
    - EventBridge assumes a role of its own that may call StartPipelineExecution on this
      pipeline and nothing else;
    - `schedule`: a rule with that schedule expression (UTC);
    - `dataPrefix`: the bucket sends its events to EventBridge (its only notification
      configuration), and a rule matching "Object Created" under the prefix starts a run.
    With `enabled: false` the rules exist, disabled.
    """

    def __init__(self, name: str, args: PipelineTriggerArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("stackwise:aws:PipelineTrigger", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        trigger, tags = args.trigger, args.tags
        self.pipeline = aws.sagemaker.Pipeline(
            name, pipeline_name=args.pipeline_name, pipeline_display_name=args.pipeline_name,
            pipeline_description="stackwise pipeline, started by schedule and by data changes",
            pipeline_definition=args.definition.text, role_arn=args.role_arn, tags=tags, opts=child)
        account = self.pipeline.arn.apply(lambda arn: arn.split(":")[4])
        steps = _steps_policy(args.definition.step_types, args.region, account, args.role_arn)
        if steps is not None:
            aws.iam.RolePolicy(f"{name}-steps", role=args.role_id, policy=steps, opts=child)
        # What the steps' own command calls inside the containers (step_permissions.py).
        aws.iam.RolePolicy(f"{name}-step-calls", role=args.role_id, policy=pulumi.Output.all(
            account, args.role_arn).apply(lambda v: json.dumps({"Version": "2012-10-17", "Statement": steps_statements(
                args.region, v[0], v[1], args.stack, args.endpoint_name)})), opts=child)

        self.events_role = aws.iam.Role(
            f"{name}-events-role", description=f"EventBridge starts the {args.pipeline_name} pipeline",
            assume_role_policy=pulumi.Output.json_dumps({"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Principal": {"Service": "events.amazonaws.com"}, "Action": "sts:AssumeRole",
                "Condition": {"StringEquals": {"aws:SourceAccount": account}}}]}),
            tags=tags, opts=child)
        aws.iam.RolePolicy(f"{name}-events-policy", role=self.events_role.id, policy=pulumi.Output.json_dumps({
            "Version": "2012-10-17", "Statement": [{"Sid": "StartThisPipeline", "Effect": "Allow",
                                                    "Action": "sagemaker:StartPipelineExecution",
                                                    "Resource": self.pipeline.arn}]}), opts=child)
        state = "ENABLED" if trigger.enabled else "DISABLED"
        parameters = [{"name": k, "value": v} for k, v in sorted(args.definition.parameters.items())]
        self.rules: dict[str, aws.cloudwatch.EventRule] = {}
        if trigger.schedule:
            self.rules["schedule"] = aws.cloudwatch.EventRule(
                f"{name}-schedule", description=f"run {args.pipeline_name} on {trigger.schedule} (UTC)",
                schedule_expression=trigger.schedule, state=state, tags=tags, opts=child)
        if trigger.data_prefix:
            # Replaces the bucket's notification configuration: the platform sets none.
            notification = aws.s3.BucketNotification(f"{name}-bucket-events", bucket=args.bucket, eventbridge=True,
                                                     opts=child)
            self.rules["data"] = aws.cloudwatch.EventRule(
                f"{name}-data", description=f"run {args.pipeline_name} when objects land under {trigger.data_prefix}",
                event_pattern=pulumi.Output.from_input(args.bucket).apply(
                    lambda b: json.dumps(event_pattern(b, trigger.data_prefix, trigger.data_suffix))),
                state=state, tags=tags, opts=pulumi.ResourceOptions(parent=self, depends_on=[notification]))
        for kind, rule in self.rules.items():
            aws.cloudwatch.EventTarget(
                f"{name}-{kind}-target", rule=rule.name, arn=self.pipeline.arn, role_arn=self.events_role.arn,
                sagemaker_pipeline_target={"pipeline_parameter_lists": parameters}, opts=child)
        self.register_outputs({"pipeline_arn": self.pipeline.arn})


def _steps_policy(step_types: tuple[str, ...], region: str, account: pulumi.Output[str],
                  role_arn: pulumi.Input[str]) -> pulumi.Output[str] | None:
    """What the pipeline's role needs to run the definition's steps: per job kind, the step's
    actions and AddTags (Pipelines tag the jobs they start), and passing itself to SageMaker."""
    by_kind: dict[str, list[str]] = {}
    for step in step_types:
        for kind, actions in SAGEMAKER_STEP_ACTIONS[step].items():
            known = by_kind.setdefault(kind, [])
            known.extend(a for a in actions if a not in known)
    if not by_kind:
        return None
    statements: list[dict[str, Any]] = [
        {"Sid": "".join(w.title() for w in kind.split("-")) + "Steps", "Effect": "Allow",
         "Action": [f"sagemaker:{a}" for a in [*actions, "AddTags"]],
         "Resource": account.apply(lambda acct, k=kind: f"arn:aws:sagemaker:{region}:{acct}:{k}/*")}
        for kind, actions in sorted(by_kind.items())]
    if _PASSES_ROLE & set(step_types):
        statements.append({"Sid": "PassJobRole", "Effect": "Allow", "Action": "iam:PassRole", "Resource": role_arn,
                           "Condition": {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}})
    return pulumi.Output.json_dumps({"Version": "2012-10-17", "Statement": statements})
