"""GCP's part of the policy pack (infra/policy): its encrypted, private, labelled, bounded and
budgeted resource types. Needs nothing beyond the standard library."""

from __future__ import annotations

import re

from ..cloud import PolicyRules, Report, get, name_check

_PUBLIC_MEMBERS = ("allUsers", "allAuthenticatedUsers")


def _needs(path: tuple[str, ...], message: str):
    """A check that the property at `path` is set."""
    def check(p: dict, report: Report) -> None:
        if not get(p, *path):
            report(message)

    return check


def _gke_encryption(p: dict, report: Report) -> None:
    if get(p, "databaseEncryption", "state") != "ENCRYPTED" or not get(p, "databaseEncryption", "keyName"):
        report("GKE clusters must encrypt Kubernetes secrets with the stack's key (databaseEncryption)")


def _bucket_closed(p: dict, report: Report) -> None:
    if p.get("publicAccessPrevention") != "enforced":
        report("GCS buckets must enforce public access prevention")


def _no_public_member(p: dict, report: Report) -> None:
    members = [p.get("member")] + list(p.get("members") or [])
    if any(m in _PUBLIC_MEMBERS for m in members):
        report("bucket IAM must not grant allUsers or allAuthenticatedUsers")


def _endpoint_private(p: dict, report: Report) -> None:
    if not (p.get("network") or get(p, "privateServiceConnectConfig", "enablePrivateServiceConnect")):
        report("Vertex AI endpoints must be private (Private Service Connect or a VPC network)")


def _garden_endpoint_private(p: dict, report: Report) -> None:
    if not get(p, "endpointConfig", "privateServiceConnectConfig", "enablePrivateServiceConnect"):
        report("Vertex AI endpoints must be private (Private Service Connect)")


def _gke_private(p: dict, report: Report) -> None:
    private = p.get("privateClusterConfig") or {}
    if not (private.get("enablePrivateNodes") and private.get("enablePrivateEndpoint")):
        report("GKE clusters must have private nodes and a private endpoint (privateClusterConfig)")


def _pool_bounds(p: dict) -> tuple:
    a = p.get("autoscaling") or {}
    return a.get("totalMinNodeCount", a.get("minNodeCount")), a.get("totalMaxNodeCount", a.get("maxNodeCount"))


_GARDEN = "gcp:vertex/aiEndpointWithModelGardenDeployment:AiEndpointWithModelGardenDeployment"
_LABELLED = (
    "gcp:kms/cryptoKey:CryptoKey", "gcp:storage/bucket:Bucket", "gcp:artifactregistry/repository:Repository",
    "gcp:secretmanager/secret:Secret", "gcp:vertex/aiEndpoint:AiEndpoint",
    # The pipeline trigger's (stackwise:pipelineTrigger).
    "gcp:workflows/workflow:Workflow", "gcp:eventarc/trigger:Trigger",
)
_NAME = (re.compile(r"^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$"), "1-40 lower-case letters, digits or -, starting with a letter")

RULES = PolicyRules(
    encryption={
        "gcp:storage/bucket:Bucket": _needs(("encryption", "defaultKmsKeyName"),
                                            "GCS buckets must use a customer-managed key (encryption.defaultKmsKeyName)"),
        "gcp:artifactregistry/repository:Repository": _needs(
            ("kmsKeyName",), "Artifact Registry repositories must use a customer-managed key (kmsKeyName)"),
        # A pipeline trigger's workflow carries the pipeline's request; its executions, their data.
        "gcp:workflows/workflow:Workflow": _needs(("cryptoKeyName",),
                                                  "workflows must use a customer-managed key (cryptoKeyName)"),
        "gcp:vertex/aiEndpoint:AiEndpoint": _needs(
            ("encryptionSpec", "kmsKeyName"),
            "Vertex AI endpoints must use a customer-managed key (encryptionSpec.kmsKeyName)"),
        "gcp:container/cluster:Cluster": _gke_encryption,
    },
    not_public={
        "gcp:storage/bucket:Bucket": _bucket_closed,
        "gcp:storage/bucketIAMMember:BucketIAMMember": _no_public_member,
        "gcp:storage/bucketIAMBinding:BucketIAMBinding": _no_public_member,
        "gcp:vertex/aiEndpoint:AiEndpoint": _endpoint_private,
        _GARDEN: _garden_endpoint_private,
        "gcp:container/cluster:Cluster": _gke_private,
    },
    # GCP calls tags labels; a GKE cluster's own are `resourceLabels`.
    tags={**dict.fromkeys(_LABELLED, "labels"), "gcp:container/cluster:Cluster": "resourceLabels"},
    instances={
        _GARDEN: lambda p: [get(p, "deployConfig", "dedicatedResources", "machineSpec", "machineType") or ""],
        # A node pool with guest accelerators.
        "gcp:container/nodePool:NodePool": lambda p: [get(p, "nodeConfig", "machineType") or ""]
        if get(p, "nodeConfig", "guestAccelerators") else [],
    },
    replicas={
        _GARDEN: lambda p: (get(p, "deployConfig", "dedicatedResources", "minReplicaCount"),
                            get(p, "deployConfig", "dedicatedResources", "maxReplicaCount")),
        "gcp:container/nodePool:NodePool": _pool_bounds,
    },
    budgets=("gcp:billing/budget:Budget",),
    budget_label="GCP billing budget",
    names={
        "gcp:container/cluster:Cluster": name_check("name", *_NAME),
        "gcp:container/nodePool:NodePool": name_check("name", *_NAME),
    },
)
