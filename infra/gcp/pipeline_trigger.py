"""GCP pipeline trigger: the compiled Vertex AI pipeline, started by Cloud Scheduler on a schedule
and, through Eventarc and Workflows, when an object is finalized under a prefix of the bucket."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import Any

import pulumi

from ..config import PipelineTriggerConfig
from ..pipeline_trigger import VertexDefinition
from ._provider import gcp
from .step_permissions import ACT_AS, steps_permissions

SCOPE = "https://www.googleapis.com/auth/cloud-platform"
# What the trigger may do besides: create pipeline jobs (nothing else of Vertex AI).
START_PERMISSIONS = ["aiplatform.pipelineJobs.create"]


@dataclass
class PipelineTriggerArgs:
    trigger: PipelineTriggerConfig
    definition: VertexDefinition
    project: str
    region: str
    bucket: pulumi.Input[str]
    """The artifact bucket (name) whose objects under `trigger.data_prefix` start runs."""
    artifact_store: pulumi.Input[str]
    """gs://<bucket>: a run's root is `pipelines/<name>/vertex-root/` there."""
    job_service_account: pulumi.Input[str]
    """Email of the stack's job service account: the pipeline runs as it."""
    job_service_account_id: pulumi.Input[str]
    """Its resource name, to let the trigger act as it."""
    network: pulumi.Input[dict[str, Any]]
    """The platform's peered network (`network`, `reserved_ip_ranges`), as CustomJobs use it."""
    kms_key_id: pulumi.Input[str]
    labels: dict[str, str]
    after: list[pulumi.Resource] = field(default_factory=list)
    """The platform's API enablements."""
    has_endpoint: bool = False
    """Whether the stack has a Vertex endpoint, which deploy steps fill (their permissions)."""


def pipeline_job_body(definition: VertexDefinition, artifact_store: str, service_account: str,
                      network: dict[str, Any], kms_key: str, labels: dict[str, str]) -> dict[str, Any]:
    """The body of `pipelineJobs.create` (Vertex AI v1 REST, camelCase): the spec, where the run
    writes, who it runs as, in which network and with which key."""
    # Where `stackwise pipeline compile --target vertex` tells a manual run to write, too.
    root = f"{artifact_store.rstrip('/')}/pipelines/{definition.name}/vertex-root"
    body: dict[str, Any] = {
        "displayName": definition.name,
        "pipelineSpec": definition.pipeline_spec,
        "runtimeConfig": {"gcsOutputDirectory": root, "parameterValues": dict(definition.parameter_values)},
        "serviceAccount": service_account,
        "encryptionSpec": {"kmsKeyName": kms_key},
        "labels": dict(labels),
    }
    if network.get("network"):
        body["network"] = network["network"]
        body["reservedIpRanges"] = list(network.get("reserved_ip_ranges") or [])
    return body


def object_pattern(prefix: str, suffix: str | None) -> str:
    """An RE2 pattern of the object names under `prefix` (ending with `suffix`), anchored both
    ends, so it means the same whether the matcher searches or matches whole. The config keeps
    names to letters, digits and `_.=/-`; `.` is written `[.]` (no backslash to escape twice)."""
    def literal(text: str) -> str:
        return re.sub(r"\.", "[.]", text)

    return f"^{literal(prefix)}.*{literal(suffix or '')}$"


def workflow_source(url: str, body: dict[str, Any], prefix: str, suffix: str | None) -> str:
    """The workflow Eventarc runs for each finalized object: it starts a pipeline run when the
    object's name matches, else returns. The body travels base64-encoded, so no string in the
    spec is read as a Workflows expression. JSON, which Workflows reads as YAML."""
    encoded = base64.b64encode(json.dumps(body, separators=(",", ":")).encode()).decode()
    steps = [
        {"init": {"assign": [{"object": "${event.data.name}"}, {"request": encoded}]}},
        {"wanted": {"switch": [{"condition": f'${{text.match_regex(object, "{object_pattern(prefix, suffix)}")}}',
                                "next": "start"}]}},
        {"ignore": {"return": '${"not under the trigger prefix: " + object}'}},
        {"start": {"call": "http.post", "args": {"url": url, "auth": {"type": "OAuth2", "scopes": [SCOPE]},
                                                 "body": "${json.decode(base64.decode(request))}"},
                   "result": "created"}},
        {"done": {"return": "${created.body.name}"}},
    ]
    return json.dumps({"main": {"params": ["event"], "steps": steps}}, indent=1)


class PipelineTrigger(pulumi.ComponentResource):
    """Vertex AI pipeline runs on a schedule and on data changes, with one service account that
    may only create pipeline jobs (a custom role), act as the job service account the runs use,
    receive the bucket's events and invoke the workflow.

    - `schedule`: a Cloud Scheduler job POSTs the pipelineJobs.create body (OAuth token of the
      trigger account), in `timeZone` (Etc/UTC by default); paused with `enabled: false`;
    - `dataPrefix`: an Eventarc trigger on `google.cloud.storage.object.v1.finalized` for the
      bucket runs a workflow (CMEK-encrypted) that filters the object name to the prefix and
      suffix (Eventarc filters GCS events by bucket only) and creates the run. The Cloud Storage
      agent publishes the events to Pub/Sub (roles/pubsub.publisher). With `enabled: false` the
      workflow stays and the Eventarc trigger is not created.
    The job service account gets roles/aiplatform.user: a pipeline's runs call Vertex AI as it
    (Google documents that role for a pipeline's service account). It also gets what the steps'
    command calls inside the runs (step_permissions.py): a custom role on the project with the
    Vertex AI permissions of the adapters' calls, and `iam.serviceAccounts.actAs` on itself only.
    """

    def __init__(self, name: str, args: PipelineTriggerArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("stackwise:gcp:PipelineTrigger", name, None, opts)
        project, region, trigger = args.project, args.region, args.trigger
        wanted = ["cloudscheduler"] if trigger.schedule else []
        if trigger.data_prefix:
            wanted += ["workflows", "workflowexecutions", "eventarc", "pubsub"]
        apis = [gcp.projects.Service(f"{name}-api-{api}", project=project, service=f"{api}.googleapis.com",
                                     disable_on_destroy=False, opts=pulumi.ResourceOptions(parent=self))
                for api in wanted]
        after = [*args.after, *apis]
        child = pulumi.ResourceOptions(parent=self, depends_on=after)

        self.service_account = gcp.serviceaccount.Account(
            f"{name}-trigger", account_id=f"{name}-trigger"[:30].rstrip("-"), project=project,
            display_name="stackwise pipeline trigger (starts runs only)", opts=child)
        member = self.service_account.email.apply(lambda e: f"serviceAccount:{e}")
        role = gcp.projects.IAMCustomRole(
            f"{name}-start", project=project, role_id=re.sub(r"[^A-Za-z0-9_.]", "_", f"{name}_start"),
            title="stackwise: start pipeline runs", permissions=START_PERMISSIONS, opts=child)
        grants = [
            gcp.projects.IAMMember(f"{name}-trigger-start", project=project, role=role.name, member=member, opts=child),
            gcp.serviceaccount.IAMMember(f"{name}-trigger-acts-as-jobs", service_account_id=args.job_service_account_id,
                                         role="roles/iam.serviceAccountUser", member=member, opts=child),
            gcp.projects.IAMMember(f"{name}-jobs-run-pipelines", project=project, role="roles/aiplatform.user",
                                   member=pulumi.Output.from_input(args.job_service_account).apply(
                                       lambda e: f"serviceAccount:{e}"), opts=child),
        ]
        grants += self._step_grants(name, args, child)
        self.body = pulumi.Output.all(args.artifact_store, args.job_service_account, args.network,
                                      args.kms_key_id).apply(
            lambda v: pipeline_job_body(args.definition, v[0], v[1], v[2], v[3], args.labels))
        url = f"https://{region}-aiplatform.googleapis.com/v1/projects/{project}/locations/{region}/pipelineJobs"
        after_grants = pulumi.ResourceOptions(parent=self, depends_on=[*after, *grants])

        self.job = None
        if trigger.schedule:
            self.job = gcp.cloudscheduler.Job(
                f"{name}-schedule", project=project, region=region, schedule=trigger.schedule,
                time_zone=trigger.time_zone or "Etc/UTC", paused=not trigger.enabled,
                description=f"start the {args.definition.name} pipeline",
                attempt_deadline="60s", retry_config={"retry_count": 3},
                http_target={"uri": url, "http_method": "POST", "headers": {"Content-Type": "application/json"},
                             "body": self.body.apply(
                                 lambda b: base64.b64encode(json.dumps(b, separators=(",", ":")).encode()).decode()),
                             "oauth_token": {"service_account_email": self.service_account.email, "scope": SCOPE}},
                opts=after_grants)
        self.workflow = self.eventarc = None
        if trigger.data_prefix:
            self._on_data(name, args, url, member, after, grants)
        self.register_outputs({"service_account": self.service_account.email})

    def _step_grants(self, name: str, args: PipelineTriggerArgs, child: pulumi.ResourceOptions) -> list[pulumi.Resource]:
        """What the steps' command calls inside the runs, as the job service account
        (step_permissions.py): a custom role on the project, and acting as itself only."""
        project = args.project
        jobs = pulumi.Output.from_input(args.job_service_account).apply(lambda e: f"serviceAccount:{e}")
        steps = gcp.projects.IAMCustomRole(
            f"{name}-steps", project=project, role_id=re.sub(r"[^A-Za-z0-9_.]", "_", f"{name}_steps"),
            title="stackwise: what pipeline steps call", permissions=steps_permissions(args.has_endpoint), opts=child)
        act_as = gcp.projects.IAMCustomRole(
            f"{name}-act-as", project=project, role_id=re.sub(r"[^A-Za-z0-9_.]", "_", f"{name}_act_as"),
            title="stackwise: run jobs as the job service account", permissions=ACT_AS, opts=child)
        return [
            gcp.projects.IAMMember(f"{name}-jobs-steps", project=project, role=steps.name, member=jobs, opts=child),
            gcp.serviceaccount.IAMMember(f"{name}-jobs-act-as-itself", service_account_id=args.job_service_account_id,
                                         role=act_as.name, member=jobs, opts=child),
        ]

    def _on_data(self, name: str, args: PipelineTriggerArgs, url: str, member: pulumi.Output[str],
                 after: list[pulumi.Resource], grants: list[pulumi.Resource]) -> None:
        project, region, trigger = args.project, args.region, args.trigger
        child = pulumi.ResourceOptions(parent=self, depends_on=after)
        # Workflows encrypts the workflow (and its executions' data) with the stack's key
        # through its service agent, which must exist and hold the key first.
        agent = gcp.projects.ServiceIdentity(f"{name}-agent-workflows", project=project,
                                             service="workflows.googleapis.com", opts=child)
        number = gcp.organizations.get_project_output(project_id=project).number
        key_grant = gcp.kms.CryptoKeyIAMMember(
            f"{name}-key-workflows-agent", crypto_key_id=args.kms_key_id,
            role="roles/cloudkms.cryptoKeyEncrypterDecrypter",
            member=number.apply(lambda n: f"serviceAccount:service-{n}@gcp-sa-workflows.iam.gserviceaccount.com"),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*after, agent]))
        self.workflow = gcp.workflows.Workflow(
            f"{name}-on-data", project=project, region=region, name=f"{name}-on-data",
            description=f"start the {args.definition.name} pipeline for objects under {trigger.data_prefix}",
            service_account=self.service_account.email, crypto_key_name=args.kms_key_id,
            call_log_level="LOG_ERRORS_ONLY", deletion_protection=False, labels=args.labels,
            source_contents=self.body.apply(
                lambda b: workflow_source(url, b, trigger.data_prefix or "", trigger.data_suffix)),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*after, *grants, key_grant]))
        storage_agent = gcp.storage.get_project_service_account_output(
            project=project, opts=pulumi.InvokeOutputOptions(parent=self, depends_on=after))
        receive = [
            gcp.projects.IAMMember(f"{name}-storage-publishes", project=project, role="roles/pubsub.publisher",
                                   member=storage_agent.email_address.apply(lambda e: f"serviceAccount:{e}"),
                                   opts=child),
            gcp.projects.IAMMember(f"{name}-trigger-receives", project=project, role="roles/eventarc.eventReceiver",
                                   member=member, opts=child),
            gcp.projects.IAMMember(f"{name}-trigger-invokes", project=project, role="roles/workflows.invoker",
                                   member=member, opts=child),
        ]
        if trigger.enabled:
            self.eventarc = gcp.eventarc.Trigger(
                f"{name}-data", project=project, location=region, name=f"{name}-data",
                matching_criterias=[{"attribute": "type", "value": "google.cloud.storage.object.v1.finalized"},
                                    {"attribute": "bucket", "value": args.bucket}],
                destination={"workflow": self.workflow.id}, service_account=self.service_account.email,
                labels=args.labels, opts=pulumi.ResourceOptions(parent=self, depends_on=[*after, *receive]))
