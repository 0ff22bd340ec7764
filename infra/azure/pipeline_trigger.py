"""Azure pipeline trigger: the compiled Azure ML pipeline job, submitted by Logic Apps on a
recurrence and when Event Grid reports a blob created under a prefix of the artifact container."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import pulumi

from ..config import PipelineTriggerConfig, RecurrenceConfig
from ._provider import azure
from .pipeline_job import JOBS_API_VERSION, AzurePipelineJob, fill_spec
from .step_permissions import AUTOSCALE_ACTIONS, workspace_actions

ml = azure.machinelearningservices
ARM = "https://management.azure.com/"
SCHEMA = "https://schema.management.azure.com/providers/Microsoft.Logic/schemas/2016-06-01/workflowdefinition.json#"
# What the trigger's identity may do in the workspace: read its assets (components, environments,
# computes, datastores the job names) and create jobs. Nothing else: no keys, no secrets.
SUBMIT_ACTIONS = ["Microsoft.MachineLearningServices/workspaces/read",
                  "Microsoft.MachineLearningServices/workspaces/*/read",
                  "Microsoft.MachineLearningServices/workspaces/jobs/write"]
VALIDATION_EVENT = "Microsoft.EventGrid.SubscriptionValidationEvent"


@dataclass
class PipelineTriggerArgs:
    trigger: PipelineTriggerConfig
    job: AzurePipelineJob
    location: str
    resource_group: pulumi.Input[str]
    workspace: pulumi.Input[str]
    """The workspace's name."""
    workspace_id: pulumi.Input[str]
    storage_account_id: pulumi.Input[str]
    container: str
    """The artifact container whose blobs under `trigger.data_prefix` start runs."""
    tags: dict[str, str]
    job_principal_id: pulumi.Input[str] | None = None
    """The jobs' managed identity, which the compiled nodes run as: it gets what the steps call."""
    resource_group_id: pulumi.Input[str] | None = None
    """The stack's resource group (where a deploy step's autoscale settings go)."""
    has_endpoint: bool = False
    """Whether the stack has an online endpoint, which deploy steps fill."""


def _custom_role(name: str, scope: pulumi.Output[str], label: str, description: str, actions: list[str],
                 principal: pulumi.Input[str], parent: pulumi.Resource) -> azure.authorization.RoleAssignment:
    """A custom role assignable on `scope` only, with `actions`, assigned to `principal` there."""
    child = pulumi.ResourceOptions(parent=parent)
    role = azure.authorization.RoleDefinition(
        f"{name}-role", scope=scope, assignable_scopes=[scope], description=description,
        # Custom role names are unique in the whole tenant: this one is the scope's.
        role_name=scope.apply(lambda s: f"stackwise {label} {hashlib.sha256(s.lower().encode()).hexdigest()[:12]}"),
        permissions=[azure.authorization.PermissionArgs(actions=actions)], opts=child)
    return azure.authorization.RoleAssignment(f"{name}", principal_id=principal, principal_type="ServicePrincipal",
                                              scope=scope, role_definition_id=role.id, opts=child)


def recurrence(config: RecurrenceConfig, time_zone: str | None) -> dict[str, Any]:
    """A Logic Apps Recurrence trigger's `recurrence` (workflow definition language)."""
    schedule = {key: value for key, value in (("hours", config.hours), ("minutes", config.minutes),
                                              ("weekDays", config.week_days), ("monthDays", config.month_days))
                if value}
    result: dict[str, Any] = {"frequency": config.frequency, "interval": config.interval}
    if schedule:
        result["schedule"] = schedule
    if time_zone:
        # Logic Apps reads timeZone only with a startTime (no offset); a past one just anchors it.
        result.update(timeZone=time_zone, startTime="2000-01-01T00:00:00")
    return result


def submit_action(identity_id: str) -> dict[str, Any]:
    """PUT the job (a new name per run) with the trigger's managed identity."""
    return {"type": "Http", "runAfter": {}, "inputs": {
        "method": "PUT", "uri": f"@{{parameters('jobsUri')}}/@{{concat('sw-', guid())}}?api-version={JOBS_API_VERSION}",
        "body": "@parameters('job')",
        "authentication": {"type": "ManagedServiceIdentity", "identity": identity_id, "audience": ARM}}}


def definition(triggers: dict[str, Any], actions: dict[str, Any]) -> dict[str, Any]:
    """A workflow definition whose job body and jobs URI are workflow parameters: values, never
    read as expressions, so nothing in the compiled job can be taken for one."""
    return {"$schema": SCHEMA, "contentVersion": "1.0.0.0",
            "parameters": {"job": {"type": "Object"}, "jobsUri": {"type": "String"}},
            "triggers": triggers, "actions": actions, "outputs": {}}


def event_actions(identity_id: str) -> dict[str, Any]:
    """Answer Event Grid's subscription validation; else submit the job and answer 202 (no
    answer on a failed submit: Event Grid retries the delivery)."""
    submit = submit_action(identity_id)
    return {"route": {"type": "If", "runAfter": {}, "expression": {
        "and": [{"equals": ["@triggerBody()?[0]?['eventType']", VALIDATION_EVENT]}]},
        "actions": {"answer": {"type": "Response", "kind": "Http", "runAfter": {}, "inputs": {
            "statusCode": 200, "body": {"validationResponse": "@triggerBody()?[0]?['data']?['validationCode']"}}}},
        "else": {"actions": {"submit": submit, "accepted": {
            "type": "Response", "kind": "Http", "runAfter": {"submit": ["Succeeded"]}, "inputs": {"statusCode": 202}}}}}}


def subject_filter(container: str, prefix: str, suffix: str | None) -> dict[str, Any]:
    """Event Grid's filter of blob-created events under `prefix` of `container` (subjects are
    `/blobServices/default/containers/<container>/blobs/<name>`)."""
    found: dict[str, Any] = {"included_event_types": ["Microsoft.Storage.BlobCreated"],
                             "subject_begins_with": f"/blobServices/default/containers/{container}/blobs/{prefix}",
                             "is_subject_case_sensitive": True}
    if suffix:
        found["subject_ends_with"] = suffix
    return found


class PipelineTrigger(pulumi.ComponentResource):
    """The pipeline's inline components (and inline images, as environments) registered in the
    workspace, and Logic Apps (Consumption) that submit the job through the ARM jobs API with a
    user-assigned identity of their own, allowed only to read the workspace's assets and write
    jobs (a custom role on the workspace).

    - `recurrence`: a workflow with a Recurrence trigger;
    - `dataPrefix`: a workflow with a Request trigger and an Event Grid system topic on the
      storage account, with a subscription (blob created, subject under the prefix, one event a
      delivery) to the workflow's callback URL, a secret.
    With `enabled: false` the workflows are Disabled and no event subscription is made.
    The jobs' identity, which the compiled nodes run as, gets what the steps' command calls
    (step_permissions.py): a custom role on the workspace, and with an endpoint one on the
    resource group limited to autoscale settings.
    """

    def __init__(self, name: str, args: PipelineTriggerArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("stackwise:azure:PipelineTrigger", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        trigger, job, rg, tags = args.trigger, args.job, args.resource_group, args.tags
        workspace_id = pulumi.Output.from_input(args.workspace_id)

        self.identity = azure.managedidentity.UserAssignedIdentity(f"{name}-identity", resource_group_name=rg,
                                                                   location=args.location, tags=tags, opts=child)
        role = azure.authorization.RoleDefinition(
            f"{name}-submit-role", scope=workspace_id, assignable_scopes=[workspace_id],
            # Custom role names are unique in the whole tenant: this one is the workspace's.
            role_name=workspace_id.apply(
                lambda w: f"stackwise pipeline submitter {hashlib.sha256(w.lower().encode()).hexdigest()[:12]}"),
            description="read workspace assets, create jobs",
            permissions=[azure.authorization.PermissionArgs(actions=SUBMIT_ACTIONS)], opts=child)
        grant = azure.authorization.RoleAssignment(
            f"{name}-submit", principal_id=self.identity.principal_id, principal_type="ServicePrincipal",
            scope=workspace_id, role_definition_id=role.id, opts=child)

        if args.job_principal_id is not None:
            self._step_grants(name, args, workspace_id)
        registered: list[pulumi.Resource] = []
        for component in job.components:
            environment_id = None
            if component.image:
                environment = ml.EnvironmentVersion(
                    f"{name}-{component.node}-env", resource_group_name=rg, workspace_name=args.workspace,
                    name=f"{component.name}_env", version=component.version,
                    properties=ml.EnvironmentVersionPropertiesArgs(image=component.image, os_type="Linux",
                                                                   description="stackwise pipeline step image"),
                    opts=child)
                registered.append(environment)
                environment_id = environment.id
            spec = pulumi.Output.all(workspace_id, environment_id).apply(
                lambda v, c=component: fill_spec(c, v[0], v[1]))
            registered.append(ml.ComponentVersion(
                f"{name}-{component.node}", resource_group_name=rg, workspace_name=args.workspace,
                name=component.name, version=component.version,
                properties=ml.ComponentVersionPropertiesArgs(component_spec=spec,
                                                             description=f"stackwise pipeline {job.name}"),
                opts=child))

        parameters = {"job": {"type": "Object", "value": workspace_id.apply(job.fill)},
                      "jobsUri": {"type": "String", "value": workspace_id.apply(
                          lambda w: f"{ARM.rstrip('/')}{w}/jobs")}}
        workflow_args = dict(
            resource_group_name=rg, location=args.location, tags=tags, parameters=parameters,
            state="Enabled" if trigger.enabled else "Disabled",
            identity=azure.logic.ManagedServiceIdentityArgs(type="UserAssigned",
                                                            user_assigned_identities=[self.identity.id]))
        after = pulumi.ResourceOptions(parent=self, depends_on=[grant, *registered])
        self.workflows: dict[str, azure.logic.Workflow] = {}
        if trigger.recurrence is not None:
            triggers = {"schedule": {"type": "Recurrence", "recurrence": recurrence(trigger.recurrence,
                                                                                    trigger.time_zone)}}
            self.workflows["schedule"] = azure.logic.Workflow(
                f"{name}-schedule", **workflow_args,
                definition=self.identity.id.apply(lambda i, t=triggers: definition(t, {"submit": submit_action(i)})),
                opts=after)
        self.subscription = None
        if trigger.data_prefix:
            triggers = {"manual": {"type": "Request", "kind": "Http", "inputs": {"schema": {"type": "array"}}}}
            workflow = self.workflows["data"] = azure.logic.Workflow(
                f"{name}-on-data", **workflow_args,
                definition=self.identity.id.apply(lambda i, t=triggers: definition(t, event_actions(i))),
                opts=after)
            topic = azure.eventgrid.SystemTopic(
                f"{name}-storage-events", resource_group_name=rg, location=args.location, source=args.storage_account_id,
                topic_type="Microsoft.Storage.StorageAccounts", tags=tags, opts=child)
            if trigger.enabled:
                callback = azure.logic.list_workflow_trigger_callback_url_output(
                    resource_group_name=rg, workflow_name=workflow.name, trigger_name="manual",
                    opts=pulumi.InvokeOutputOptions(parent=self))
                self.subscription = azure.eventgrid.SystemTopicEventSubscription(
                    f"{name}-data", resource_group_name=rg, system_topic_name=topic.name,
                    event_delivery_schema="EventGridSchema",
                    # A union of destination types: typed Args, so the engine gets its camelCase names.
                    destination=azure.eventgrid.WebHookEventSubscriptionDestinationArgs(
                        endpoint_type="WebHook", endpoint_url=pulumi.Output.secret(callback.value),
                        max_events_per_batch=1),
                    filter=azure.eventgrid.EventSubscriptionFilterArgs(
                        **subject_filter(args.container, trigger.data_prefix, trigger.data_suffix)),
                    retry_policy=azure.eventgrid.RetryPolicyArgs(max_delivery_attempts=10,
                                                                 event_time_to_live_in_minutes=1440),
                    opts=child)
        self.register_outputs({"identity": self.identity.id})

    def _step_grants(self, name: str, args: PipelineTriggerArgs, workspace_id: pulumi.Output[str]) -> None:
        """What the steps' command calls inside the nodes, as the jobs' identity (step_permissions.py)."""
        assert args.job_principal_id is not None
        _custom_role(f"{name}-steps", workspace_id, "pipeline steps", "what stackwise pipeline steps call",
                     workspace_actions(args.has_endpoint), args.job_principal_id, self)
        if args.has_endpoint and args.resource_group_id is not None:
            _custom_role(f"{name}-steps-autoscale", pulumi.Output.from_input(args.resource_group_id),
                         "deployment autoscale", "autoscale settings of the deployments stackwise adds",
                         AUTOSCALE_ACTIONS, args.job_principal_id, self)
