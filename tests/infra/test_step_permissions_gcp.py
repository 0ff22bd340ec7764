"""The job service account may make exactly the Vertex AI calls the compiled pipeline's steps make.

The stack's program runs under Pulumi mocks with a pipeline trigger; its contract outputs point
the real Vertex compute and deploy adapters (aiplatform_v1, REST) at the local Vertex server.
The steps' flows run (index, fine-tune and evaluate jobs submitted, followed and submitted again;
two versions deployed with a split, then a change of weights alone), and the server records each
request. Each is mapped to its IAM permission by the Vertex v1 REST reference's rule
(`aiplatform.<collection>.<verb>`: create/list on a collection, get/update/delete on a resource,
and the custom methods `:deployModel` -> deploy, `models:upload` -> upload, `:cancel` -> cancel),
and a CustomJob that names a service account needs `iam.serviceAccounts.actAs` on it. The custom
role the program binds on the project to the job service account must hold exactly those Vertex
permissions, and actAs must be granted on the job service account itself, not on the project.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from .test_pipeline_trigger import run as run_with_trigger

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "emulators"))
pytest.importorskip("pulumi", reason="pip install 'stackwise[infra]'")
pytest.importorskip("google.cloud.aiplatform_v1", reason="pip install 'stackwise[gcp]'")
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning")]

STACK = "dev-gcp"
CUSTOM_VERBS = {"deployModel": "deploy", "undeployModel": "undeploy", "cancel": "cancel", "upload": "upload"}


def permission(method: str, path: str) -> str:
    """The IAM permission Vertex AI checks for one v1 REST request."""
    path = path.split("?", 1)[0].removeprefix("/v1/")
    head, _, custom = path.rpartition(":") if ":" in path.rsplit("/", 1)[-1] else (path, "", "")
    parts = head.split("/")
    if custom:
        collection = parts[-2] if len(parts) % 2 == 0 else parts[-1]
        return f"aiplatform.{collection}.{CUSTOM_VERBS[custom]}"
    if len(parts) % 2:  # projects/P/locations/L/<collection>
        return f"aiplatform.{parts[-1]}.{ {'GET': 'list', 'POST': 'create'}[method]}"
    return f"aiplatform.{parts[-2]}.{ {'GET': 'get', 'PATCH': 'update', 'DELETE': 'delete'}[method]}"


def test_permission_rule_matches_the_reference_pages():
    base = "/v1/projects/p/locations/l"
    assert permission("POST", f"{base}/customJobs") == "aiplatform.customJobs.create"
    assert permission("GET", f"{base}/customJobs?filter=x") == "aiplatform.customJobs.list"
    assert permission("GET", f"{base}/customJobs/12") == "aiplatform.customJobs.get"
    assert permission("POST", f"{base}/customJobs/12:cancel") == "aiplatform.customJobs.cancel"
    assert permission("POST", f"{base}/models:upload") == "aiplatform.models.upload"
    assert permission("POST", f"{base}/endpoints/9:deployModel") == "aiplatform.endpoints.deploy"
    assert permission("PATCH", f"{base}/endpoints/9") == "aiplatform.endpoints.update"


@pytest.fixture(scope="module")
def program():
    return run_with_trigger(STACK)  # the program the trigger tests build (cached there)


@pytest.fixture(scope="module")
def requests(program, tmp_path_factory):
    """(method, path, body) of every request the steps' flows send to the local Vertex server."""
    from vertex_server import VertexServer

    server = VertexServer().start()
    patch = pytest.MonkeyPatch()
    try:
        yield _run_steps(program, server, tmp_path_factory.mktemp("steps-gcp"), patch)
    finally:
        patch.undo()
        server.stop()


def _run_steps(program, server, tmp, patch):
    from google.auth.credentials import AnonymousCredentials

    import stackwise
    from stackwise.adapters.compute.vertex import VertexCompute
    from stackwise.adapters.deploy.vertex import VertexDeploy
    from stackwise.deploy import DeployTarget

    outputs = program.outputs.model_dump(mode="json")
    network = outputs["network"]
    server.peer(network["network"], *network["reserved_ip_ranges"])
    path = tmp / "outputs.json"
    path.write_text(json.dumps(outputs), encoding="utf-8")
    for key, value in {"STACKWISE_OUTPUTS": str(path), "STACKWISE_HOME": str(tmp / ".stackwise"),
                       "NO_GCE_CHECK": "true"}.items():
        patch.setenv(key, value)
    patch.delenv("STACKWISE_STACK", raising=False)
    # A finished job's result is read from the bucket through gcsfs (Cloud Storage, not Vertex AI:
    # the bucket's own grant), which would wait here for credentials that do not exist.
    patch.setattr(VertexCompute, "_read_result", lambda self, uri: None)
    platform = stackwise.connect(STACK)
    compute = VertexCompute(platform.stack, credentials=AnonymousCredentials(), api_endpoint=server.endpoint)
    deployer = VertexDeploy(platform.stack, credentials=AnonymousCredentials(), api_endpoint=server.endpoint)
    server.add_endpoint(deployer.resource())
    server.requests.clear()
    _jobs(compute, server)
    bucket = outputs["artifact_store"]
    versions = [DeployTarget(model="chat", version=str(v), artifact_uri=f"{bucket}/mlflow/chat-{v}/model",
                             base_model="HuggingFaceTB/SmolLM2-135M-Instruct") for v in (1, 2)]
    deployer.deploy([versions[0]], {"chat:1": 100})
    deployer.deploy([versions[1]], {"chat:1": 90, "chat:2": 10})
    deployer.deploy([versions[1]], {"chat:1": 50, "chat:2": 50})  # weights only
    return list(server.requests)


def _jobs(compute, server) -> None:
    from cloud_fixtures import finetune_spec, index_spec

    from stackwise.specs import EvaluateSpec

    specs = [index_spec(1), finetune_spec(gpu="L4", count=1, nodes=1),
             EvaluateSpec(model="smollm2-135m-instruct", suites=["rouge"], data="gs://b/eval.jsonl")]
    for spec in specs:
        for _ in range(2):
            handle = compute.submit(spec)
            assert not handle.info().state.terminal
            server.move(handle.id, "JOB_STATE_SUCCEEDED")
            deadline = time.monotonic() + 10
            while not compute.info(handle.id).state.terminal and time.monotonic() < deadline:
                time.sleep(0.05)
    assert len(server.jobs) == 6


def _grants(program):
    """(project-level roles, service-account-level bindings) of the job service account, with each
    custom role's permissions (None for a predefined role)."""
    account = next(r for r in program.resources if r.type == "gcp:serviceaccount/account:Account"
                   and r.name.endswith("-jobs"))
    member = f"serviceAccount:{account.state['email']}"
    custom = {r.state["name"]: r.inputs["permissions"] for r in program.resources
              if r.type == "gcp:projects/iAMCustomRole:IAMCustomRole"}
    project = [(r.inputs["role"], custom.get(r.inputs["role"])) for r in program.resources
               if r.type == "gcp:projects/iAMMember:IAMMember" and r.inputs["member"] == member
               and r.inputs["project"] == program.config.gcp_project]
    on_accounts = [(r.inputs["serviceAccountId"], r.inputs["role"], custom.get(r.inputs["role"]))
                   for r in program.resources
                   if r.type == "gcp:serviceaccount/iAMMember:IAMMember" and r.inputs["member"] == member]
    return account, project, on_accounts


def _needed(requests):
    vertex = {permission(method, path) for method, path, _ in requests}
    act_as = {(body or {}).get("jobSpec", {}).get("serviceAccount") for method, path, body in requests
              if permission(method, path) == "aiplatform.customJobs.create"}
    return vertex, act_as - {None}


def test_the_steps_role_holds_exactly_the_vertex_permissions_of_the_steps_calls(program, requests):
    vertex, _ = _needed(requests)
    assert {"aiplatform.customJobs.create", "aiplatform.endpoints.deploy", "aiplatform.models.upload"} <= vertex
    _, project, _ = _grants(program)
    custom = [set(permissions) for _, permissions in project if permissions and
              any(p.startswith("aiplatform.") for p in permissions)]
    assert len(custom) == 1, f"one custom Vertex role on the project for the job account, not {project}"
    assert custom[0] == vertex, (f"missing: {sorted(vertex - custom[0])}; granted but never called: "
                                 f"{sorted(custom[0] - vertex)}")


def test_the_job_account_may_act_as_itself_and_no_other_account(program, requests):
    _, act_as = _needed(requests)
    account, project, on_accounts = _grants(program)
    assert act_as == {account.state["email"]}  # the jobs run as the account the steps run as
    acting = [(target, permissions) for target, _, permissions in on_accounts if permissions is not None]
    assert acting == [(account.state["name"], ["iam.serviceAccounts.actAs"])], on_accounts
    # Not on the project: there it would reach every service account of the project.
    for role, permissions in project:
        assert role not in ("roles/iam.serviceAccountUser", "roles/owner", "roles/editor")
        assert not any(p.startswith("iam.") for p in permissions or []), role


def test_a_stack_without_an_endpoint_grants_no_deploy():
    from stackwise.infra.gcp.step_permissions import steps_permissions

    assert not [p for p in steps_permissions(False) if "endpoints" in p or "models" in p]
    assert set(steps_permissions(False)) < set(steps_permissions(True))
