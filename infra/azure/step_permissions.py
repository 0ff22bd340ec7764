"""What the compiled pipeline's steps do on Azure as the stack's managed identity.

A compiled node runs `stackwise pipeline run --only STEP` in the training image as the jobs'
user-assigned identity (`azure_identity_client_id`). Index, fine-tune and evaluate steps read
the stack's cluster, register the training image as an environment version and create command
jobs, then follow them (the compute adapter, through azure-ai-ml's MLClient); a deploy step
creates a deployment on the stack's online endpoint (its environment registered the same way)
and sets the endpoint's traffic (the deploy adapter), and gives the deployment an Azure Monitor
autoscale setting. Those are the ARM actions granted here:

- a custom role on the workspace only, with the workspace actions of those calls (ARM names an
  action `<provider>/<resource type>/<read|write|delete>` after the request's resource type);
- with an endpoint, a custom role on the stack's resource group with only
  `Microsoft.Insights/autoscalesettings/write`: the settings are resources of the group
  (`<endpoint>-<deployment>-autoscale`), and a role cannot be assigned on one that does not exist yet.

Without an endpoint in the stack, no deploy step can run, and nothing of it is granted.
tests/infra/test_step_permissions_azure.py derives the actions from the ARM requests the adapters
send to the local ARM server.
"""

from __future__ import annotations

_WS = "Microsoft.MachineLearningServices/workspaces"
JOB_ACTIONS = [f"{_WS}/computes/read", f"{_WS}/environments/versions/read", f"{_WS}/environments/versions/write",
               f"{_WS}/jobs/read", f"{_WS}/jobs/write"]
# azure-ai-ml reads the workspace (its location) when it creates a deployment or updates the endpoint.
DEPLOY_ACTIONS = [f"{_WS}/read", f"{_WS}/onlineEndpoints/read", f"{_WS}/onlineEndpoints/write",
                  f"{_WS}/onlineEndpoints/deployments/read", f"{_WS}/onlineEndpoints/deployments/write"]
AUTOSCALE_ACTIONS = ["Microsoft.Insights/autoscalesettings/write"]


def workspace_actions(has_endpoint: bool) -> list[str]:
    """The workspace actions the steps' calls need (deploy ones only with an endpoint)."""
    return JOB_ACTIONS + ([a for a in DEPLOY_ACTIONS if a not in JOB_ACTIONS] if has_endpoint else [])
