"""The jobs' managed identity may make exactly the ARM calls the compiled pipeline's steps make,
in the stack's workspace (and, for autoscale settings, its resource group) only.

The stack's program runs under Pulumi mocks with a pipeline trigger; its contract outputs
(subscription, resource group, workspace, identity, endpoint) point the real Azure ML compute
and deploy adapters (azure-ai-ml's MLClient, and ARM REST for autoscale) at the local ARM server.
The steps' flows run (index, fine-tune and evaluate jobs submitted, followed and submitted again;
two versions deployed with a split, then a change of weights alone), and the server records each
request. ARM authorizes a request as `<provider>/<resource type>/<read|write|delete>` (a POST to
`.../<name>/<verb>` as `<type>/<verb>/action`) at the request's resource; each must be allowed by
a role the program assigns to the jobs' identity at a scope holding that resource, and each
action of the steps' roles must be needed by some request.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest

from .test_pipeline_trigger import run as run_with_trigger

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "emulators"))
pytest.importorskip("pulumi", reason="pip install 'stackwise[infra]'")
pytest.importorskip("azure.ai.ml", reason="pip install 'stackwise[azure]'")
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning")]

STACK = "dev-azure"
_PROVIDER = re.compile(r"^(?P<scope>.*?)/providers/(?P<provider>[^/]+)/(?P<rest>.+)$", re.IGNORECASE)


def arm_action(method: str, path: str) -> tuple[str, str]:
    """(the RBAC action ARM checks, the resource id it checks it on) for one ARM request."""
    match = _PROVIDER.match(path.split("?", 1)[0])
    assert match, f"not an ARM resource request: {method} {path}"
    parts = match["rest"].split("/")
    verb = None
    if method == "POST" and len(parts) % 2 == 1:  # .../<type>/<name>/<verb>
        verb, parts = parts[-1], parts[:-1]
    types = parts[0::2]
    resource = f"{match['scope']}/providers/{match['provider']}/{'/'.join(parts)}"
    kind = f"{match['provider']}/{'/'.join(types)}"
    if verb:
        return f"{kind}/{verb}/action", resource
    return f"{kind}/{ {'GET': 'read', 'HEAD': 'read', 'PUT': 'write', 'PATCH': 'write', 'DELETE': 'delete'}[method]}", \
        resource


def test_arm_action_rule():
    ws = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/w"
    assert arm_action("PUT", f"{ws}/jobs/j?api-version=1") == ("Microsoft.MachineLearningServices/workspaces/jobs/write",
                                                             f"{ws}/jobs/j")
    assert arm_action("GET", f"{ws}/onlineEndpoints/e/deployments")[0] == \
        "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/deployments/read"
    assert arm_action("POST", f"{ws}/jobs/j/cancel")[0] == "Microsoft.MachineLearningServices/workspaces/jobs/cancel/action"


@pytest.fixture(scope="module")
def program():
    return run_with_trigger(STACK)  # the program the trigger tests build (cached there)


@pytest.fixture(scope="module")
def requests(program, tmp_path_factory):
    from azureml_server import AzureMLServer

    server = AzureMLServer().start()
    patch = pytest.MonkeyPatch()
    try:
        yield _run_steps(program, server, tmp_path_factory.mktemp("steps-azure"), patch)
    finally:
        patch.undo()
        server.stop()


def _run_steps(program, server, tmp, patch):
    from cloud_fixtures import azure_cli_login

    import stackwise
    from stackwise.adapters.compute.azureml import workspace_id
    from stackwise.deploy import DeployTarget

    outputs = program.outputs.model_dump(mode="json")
    outputs["artifact_store"] = "az://artifacts"  # results are not read here (no Blob storage)
    endpoint = outputs["endpoints"][0]["name"]
    server.reset()
    server.add_cluster("gpu", "Standard_NC4as_T4_v3")
    server.add_endpoint(endpoint)
    path = tmp / "outputs.json"
    path.write_text(json.dumps(outputs), encoding="utf-8")
    azure_cli_login(server, tmp, patch)
    for key, value in {"STACKWISE_OUTPUTS": str(path), "STACKWISE_HOME": str(tmp / ".stackwise")}.items():
        patch.setenv(key, value)
    patch.delenv("STACKWISE_STACK", raising=False)
    platform = stackwise.connect(STACK)
    # The endpoint where the program made it (the server's own id names another workspace).
    server.endpoints[endpoint]["id"] = f"{workspace_id(platform.stack)}/onlineEndpoints/{endpoint}"
    compute = platform.compute
    compute.retry = type(compute.retry)(attempts=3, base_s=0.01, max_s=0.05)
    server.requests.clear()
    _jobs(compute, server)
    versions = [DeployTarget(model="chat", version=str(v), artifact_uri=f"az://artifacts/mlflow/chat-{v}/model",
                             base_model="HuggingFaceTB/SmolLM2-135M-Instruct") for v in (1, 2)]
    deployer = platform.deployer
    deployer.deploy([versions[0]], {"chat:1": 100})
    deployer.deploy([versions[1]], {"chat:1": 90, "chat:2": 10})
    deployer.deploy([versions[1]], {"chat:1": 50, "chat:2": 50})  # weights only
    assert server.autoscale, "the deployments got no autoscale settings"
    return [(m, p) for m, p, _ in server.requests if p != "/discovery"]


def _jobs(compute, server) -> None:
    from cloud_fixtures import finetune_spec, index_spec

    from stackwise.specs import EvaluateSpec

    specs = [index_spec(1), finetune_spec(gpu="T4", count=1, nodes=1),
             EvaluateSpec(model="smollm2-135m-instruct", suites=["rouge"], data="az://artifacts/eval.jsonl")]
    for spec in specs:
        for _ in range(2):
            handle = compute.submit(spec)
            assert not handle.info().state.terminal
            server.move(handle.id, "Completed")
            deadline = time.monotonic() + 10
            while not compute.info(handle.id).state.terminal and time.monotonic() < deadline:
                time.sleep(0.05)
    assert len(server.jobs) == 6


def _mock_id(resource) -> str:
    """The id the mocks give an Azure resource (infra/offline.py), standing for its ARM id."""
    return f"/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/" \
           f"{resource.type.split(':')[1]}/{resource.state['name']}"


def _steps_roles(program):
    """(scope as ARM names it, actions) of each custom role with Azure ML or autoscale actions that
    the program assigns to the jobs' identity."""
    from stackwise.adapters.compute.azureml import workspace_id

    def only(suffix):
        (found,) = [r for r in program.resources if r.type == f"azure-native:{suffix}" and r.parent_urn and
                    "TrainingPlatform" in r.parent_urn]
        return found

    identity, workspace, group = (only(t) for t in ("managedidentity:UserAssignedIdentity",
                                                    "machinelearningservices:Workspace", "resources:ResourceGroup"))
    outputs = program.outputs
    real = workspace_id(type("Stack", (), {"outputs": outputs, "name": STACK, "cloud": "azure"})())
    arm = {_mock_id(workspace): real, _mock_id(group): real.split("/providers/")[0]}
    roles = {_mock_id(r): r for r in program.resources if r.type == "azure-native:authorization:RoleDefinition"}
    found = []
    for a in program.resources:
        if a.type != "azure-native:authorization:RoleAssignment" or a.inputs["principalId"] != identity.state["principalId"]:
            continue
        role = roles.get(a.inputs["roleDefinitionId"])
        actions = [x for p in (role.inputs["permissions"] if role else []) for x in p.get("actions", [])]
        if any(x.startswith(("Microsoft.MachineLearningServices/", "Microsoft.Insights/")) for x in actions):
            found.append((arm.get(a.inputs["scope"], a.inputs["scope"]), actions))
    return found


def _within(resource: str, scope: str) -> bool:
    return resource.lower() == scope.lower() or resource.lower().startswith(scope.lower().rstrip("/") + "/")


def _allowed(roles, action: str, resource: str) -> bool:
    return any(_within(resource, scope) and any(a.lower() == action.lower() for a in actions)
               for scope, actions in roles)


def test_every_arm_call_of_the_steps_is_allowed_where_it_is_made(program, requests):
    roles = _steps_roles(program)
    needed = {arm_action(m, p) for m, p in requests}
    actions = {a for a, _ in needed}
    assert {"Microsoft.MachineLearningServices/workspaces/jobs/write",
            "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/deployments/write",
            "Microsoft.Insights/autoscalesettings/write"} <= {a.replace("autoscaleSettings", "autoscalesettings")
                                                              for a in actions}
    refused = sorted(f"{a} on {r}" for a, r in needed if not _allowed(roles, a, r))
    assert not refused, "the jobs' identity may not:\n" + "\n".join(refused)


def test_the_steps_roles_grant_nothing_the_steps_do_not_use_and_only_in_the_stacks_scopes(program, requests):
    from stackwise.adapters.compute.azureml import workspace_id

    needed = {arm_action(m, p) for m, p in requests}
    roles = _steps_roles(program)
    unused = [f"{a} on {scope}" for scope, actions in roles for a in actions
              if not any(a.lower() == n.lower() and _within(r, scope) for n, r in needed)]
    assert not unused, "granted but never called:\n" + "\n".join(unused)
    workspace = workspace_id(type("Stack", (), {"outputs": program.outputs, "name": STACK, "cloud": "azure"})())
    group = workspace.split("/providers/")[0]
    for scope, actions in roles:
        assert scope.lower() in (workspace.lower(), group.lower()), scope
        if scope.lower() == group.lower():  # the group only for what lives in the group: autoscale settings
            assert [a.lower() for a in actions] == ["microsoft.insights/autoscalesettings/write"], actions


def test_a_stack_without_an_endpoint_grants_no_deploy():
    from stackwise.infra.azure.step_permissions import workspace_actions

    assert not [a for a in workspace_actions(False) if "onlineEndpoints" in a]
    assert set(workspace_actions(False)) < set(workspace_actions(True))
