"""The Azure pipeline trigger under Pulumi mocks: the job body the Logic Apps send (read back by
azure-ai-ml's own REST model), the components and environments it names, the recurrence and the
Event Grid subscription that start it, and the identity's one custom role on the workspace."""

from __future__ import annotations

import json

import pytest

from .test_pipeline_trigger import of, one, plain, run

pytest.importorskip("pulumi", reason="pip install 'stackwise[infra]'")
pytest.importorskip("azure.ai.ml", reason="pip install 'stackwise[azure]'")
pytestmark = [pytest.mark.filterwarnings("ignore:The `context` parameter is deprecated"),
              pytest.mark.filterwarnings("ignore:`Number` field should not be instantiated"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]
ARM = "https://management.azure.com"


def mock_id(provider: str, name: str) -> str:
    """The id the mocks give an Azure resource (infra/offline.py), as ARM would its resource id."""
    return f"/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/{provider}/{name}"


def workflow(found, label):
    return one(found, "logic:Workflow", f"pipeline-{label}")


def submit(definition: dict) -> dict:
    """The Http action that PUTs the job, wherever the definition nests it."""
    actions = definition["actions"]
    if "submit" in actions:
        return actions["submit"]
    return actions["route"]["else"]["actions"]["submit"]


def test_the_job_body_names_the_registered_components_and_reads_back_as_a_pipeline_job():
    from azure.ai.ml._restclient.arm_ml_service.models import JobBase
    from azure.ai.ml.entities import Job, PipelineJob

    found = run("dev-azure")
    workspace = one(found, "machinelearningservices:Workspace")
    workspace_id = mock_id("machinelearningservices", workspace.state["name"])
    body = workflow(found, "schedule").inputs["parameters"]["job"]["value"]
    job = Job._from_rest_object(JobBase(body))  # the SDK's own model of what the jobs API returns
    assert isinstance(job, PipelineJob) and job.display_name == "train"
    components = {r.inputs["name"]: r for r in of(found, "machinelearningservices:ComponentVersion")}
    assert set(components) == {"stackwise_train_index", "stackwise_train_finetune"}  # evaluate is registered
    ids = {name: str(node.component) for name, node in job.jobs.items()}
    for node in ("index", "finetune"):
        version = components[f"stackwise_train_{node}"].inputs["version"]
        assert ids[node] == f"{workspace_id}/components/stackwise_train_{node}/versions/{version}"
    assert ids["evaluate"] == f"{workspace_id}/components/stackwise_evaluate/versions/2"
    assert body["properties"]["settings"]["default_compute"] == f"{workspace_id}/computes/gpu"
    assert body["properties"]["jobType"] == "Pipeline"


def test_inline_images_become_environments_the_components_run_in():
    found = run("dev-azure")
    environment = one(found, "machinelearningservices:EnvironmentVersion", "pipeline-")
    assert environment.inputs["properties"]["image"] == "swdevacr.azurecr.io/train:latest"
    index = one(found, "machinelearningservices:ComponentVersion", "pipeline-index")
    spec = index.inputs["properties"]["componentSpec"]
    assert spec["environment"] == mock_id("machinelearningservices", environment.inputs["name"])  # its id
    assert spec["type"] == "command" and spec["command"].startswith("python -m stackwise.workloads.index")
    finetune = one(found, "machinelearningservices:ComponentVersion", "pipeline-finetune")
    assert finetune.inputs["properties"]["componentSpec"]["environment"].endswith(
        "/environments/stackwise-train/versions/3")  # azureml:stackwise-train:3, as the SDK resolves it


def test_recurrence_submits_the_job_with_the_trigger_identity():
    found = run("dev-azure")
    schedule = workflow(found, "schedule")
    definition = schedule.inputs["definition"]
    assert definition["triggers"] == {"schedule": {"type": "Recurrence", "recurrence": {
        "frequency": "Week", "interval": 1, "schedule": {"hours": [3], "minutes": [0], "weekDays": ["Monday"]},
        "timeZone": "W. Europe Standard Time", "startTime": "2000-01-01T00:00:00"}}}
    action = submit(definition)
    identity = one(found, "managedidentity:UserAssignedIdentity", "pipeline-identity")
    identity_id = mock_id("managedidentity", identity.state["name"])
    assert action["inputs"]["authentication"] == {"type": "ManagedServiceIdentity", "identity": identity_id,
                                                  "audience": f"{ARM}/"}
    assert action["inputs"]["method"] == "PUT" and action["inputs"]["body"] == "@parameters('job')"
    assert action["inputs"]["uri"].startswith("@{parameters('jobsUri')}/") and "api-version=2024-04-01" in \
        action["inputs"]["uri"]
    uri = schedule.inputs["parameters"]["jobsUri"]["value"]
    assert uri.startswith(f"{ARM}/subscriptions/") and uri.endswith("/jobs") and "machinelearningservices/" in uri
    assert schedule.inputs["identity"] == {"type": "UserAssigned", "userAssignedIdentities": [identity_id]}
    assert schedule.inputs["state"] == "Enabled"
    assert set(definition["parameters"]) == set(schedule.inputs["parameters"]) == {"job", "jobsUri"}


def test_blob_created_under_the_prefix_reaches_the_workflow():
    found = run("dev-azure")
    topic = one(found, "eventgrid:SystemTopic")
    blob_endpoint = one(found, "network:PrivateEndpoint", "blob-pe")  # names the storage account by its id
    assert topic.inputs["topicType"] == "Microsoft.Storage.StorageAccounts"
    assert topic.inputs["source"] == blob_endpoint.inputs["privateLinkServiceConnections"][0]["privateLinkServiceId"]
    subscription = one(found, "eventgrid:SystemTopicEventSubscription")
    filters = subscription.inputs["filter"]
    assert filters["includedEventTypes"] == ["Microsoft.Storage.BlobCreated"]
    begins = filters["subjectBeginsWith"]
    assert begins == "/blobServices/default/containers/artifacts/blobs/data/raw/"
    # Subjects of BlobCreated events (Event Grid's storage event schema) and the filter's verdict.
    for blob, wanted in (("data/raw/a.jsonl", True), ("data/raw/2026/b.parquet", True), ("data/rawer/a", False),
                         ("models/data/raw/a", False)):
        assert f"/blobServices/default/containers/artifacts/blobs/{blob}".startswith(begins) is wanted
    destination = plain(subscription.inputs["destination"])
    assert destination["endpointType"] == "WebHook" and destination["maxEventsPerBatch"] == 1
    on_data = workflow(found, "on-data")
    assert f"/workflows/{on_data.state['name']}/triggers/manual/" in destination["endpointUrl"]
    assert on_data.inputs["definition"]["triggers"]["manual"]["type"] == "Request"
    assert submit(on_data.inputs["definition"])["inputs"]["body"] == "@parameters('job')"
    suffixed = one(run("dev-azure", dataSuffix="_SUCCESS"), "eventgrid:SystemTopicEventSubscription")
    assert suffixed.inputs["filter"]["subjectEndsWith"] == "_SUCCESS"


def test_the_callback_url_is_a_secret_the_plan_masks():
    from stackwise.infra.offline import PLAN_SECRET
    from stackwise.infra.plan import mask_secrets

    subscription = one(run("dev-azure"), "eventgrid:SystemTopicEventSubscription")
    assert PLAN_SECRET in json.dumps(subscription.inputs)  # what the provider gets
    assert PLAN_SECRET not in json.dumps(mask_secrets(subscription.inputs))  # what `stackwise plan` shows


def test_event_workflow_answers_event_grids_validation():
    route = workflow(run("dev-azure"), "on-data").inputs["definition"]["actions"]["route"]
    assert route["expression"] == {"and": [{"equals": ["@triggerBody()?[0]?['eventType']",
                                                       "Microsoft.EventGrid.SubscriptionValidationEvent"]}]}
    answer = route["actions"]["answer"]["inputs"]
    assert answer == {"statusCode": 200, "body": {"validationResponse": "@triggerBody()?[0]?['data']?['validationCode']"}}
    accepted = route["else"]["actions"]["accepted"]
    assert accepted["runAfter"] == {"submit": ["Succeeded"]} and accepted["inputs"]["statusCode"] == 202


def test_the_identity_may_read_workspace_assets_and_create_jobs_there_only():
    from stackwise.infra.azure.pipeline_trigger import SUBMIT_ACTIONS

    found = run("dev-azure")
    workspace = one(found, "machinelearningservices:Workspace")
    role = one(found, "authorization:RoleDefinition", "pipeline-submit-role")
    (permission,) = role.inputs["permissions"]
    assert permission["actions"] == SUBMIT_ACTIONS == [
        "Microsoft.MachineLearningServices/workspaces/read", "Microsoft.MachineLearningServices/workspaces/*/read",
        "Microsoft.MachineLearningServices/workspaces/jobs/write"]
    assert not permission.get("dataActions")
    workspace_scope = role.inputs["scope"]
    assert workspace_scope.endswith(f"/machinelearningservices/{workspace.state['name']}")
    assert role.inputs["assignableScopes"] == [workspace_scope]
    (grant,) = [r for r in of(found, "authorization:RoleAssignment") if r.name.endswith("pipeline-submit")]
    identity = one(found, "managedidentity:UserAssignedIdentity", "pipeline-identity")
    assert grant.inputs["scope"] == workspace_scope
    assert grant.inputs["principalId"] == identity.state["principalId"]
    assert grant.inputs["roleDefinitionId"].endswith(f"/authorization/{role.state['name']}")
    # The platform's job identity gains only what the steps call (test_step_permissions_azure.py).
    assert sorted(r.name for r in of(found, "authorization:RoleAssignment")
                  if "pipeline" in r.name and r.inputs["principalId"] != identity.state["principalId"]) == [
        "sw-dev-pipeline-steps", "sw-dev-pipeline-steps-autoscale"]


def test_disabled_keeps_the_workflows_off_and_subscribes_nothing():
    found = run("dev-azure", enabled=False)
    assert {r.inputs["state"] for r in of(found, "logic:Workflow")} == {"Disabled"}
    assert not of(found, "eventgrid:SystemTopicEventSubscription")
