"""What the compiled pipeline's steps do on GCP as the stack's job service account.

A compiled step runs `stackwise pipeline run --only STEP` in the training image as the job
service account. Index, fine-tune and evaluate steps create Vertex AI CustomJobs that run as that
same account and follow them (the compute adapter: customJobs create, list by label, get); a
deploy step uploads a model per version and deploys it to the stack's endpoint, then sets the
traffic split (the deploy adapter: models upload and get, endpoints get, deployModel, patch).
Those are the permissions of the custom role here, bound on the project; creating a job that runs
as the account needs `iam.serviceAccounts.actAs` on it, which a second custom role grants on that
account only (not on the project, where it would reach every service account).
Without an endpoint in the stack, no deploy step can run, and nothing of it is granted.
tests/infra/test_step_permissions_gcp.py derives the permissions from the requests the adapters
send (to the local Vertex server) and the Vertex REST reference's permission of each method.
"""

from __future__ import annotations

JOB_PERMISSIONS = ["aiplatform.customJobs.create", "aiplatform.customJobs.get", "aiplatform.customJobs.list"]
DEPLOY_PERMISSIONS = ["aiplatform.endpoints.get", "aiplatform.endpoints.deploy", "aiplatform.endpoints.update",
                      "aiplatform.models.get", "aiplatform.models.upload"]
ACT_AS = ["iam.serviceAccounts.actAs"]


def steps_permissions(has_endpoint: bool) -> list[str]:
    """The project permissions the steps' calls need (deploy ones only with an endpoint)."""
    return JOB_PERMISSIONS + (DEPLOY_PERMISSIONS if has_endpoint else [])
