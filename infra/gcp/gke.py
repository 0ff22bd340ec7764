"""The stack's Kubernetes cluster on GCP: a private, regional GKE cluster with workload identity on
the platform's network, a small system node pool and the GPU node pool (`createCluster: true`),
and, created or existing, the binding that lets the stack's Kubernetes service account act as the
platform's job service account (roles/iam.workloadIdentityUser)."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from stackwise.catalog import Offer

from ..config import NodePoolConfig
from ..kubernetes import manifests
from ._provider import gcp

SYSTEM_MACHINE = "e2-standard-2"
SYSTEM_NODES = (1, 3)
"""Total nodes across the region's zones (the autoscaler's bounds)."""
MASTER_CIDR = "172.16.0.32/28"
"""The control plane's private range (outside the stack's network range)."""
_EFFECT = {"NoSchedule": "NO_SCHEDULE", "NoExecute": "NO_EXECUTE", "PreferNoSchedule": "PREFER_NO_SCHEDULE"}
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]


@dataclass
class GkeClusterArgs:
    create: bool
    project: str
    region: str
    namespace: str
    service_account: str
    job_service_account_id: pulumi.Input[str]
    """The platform's job service account (`projects/P/serviceAccounts/EMAIL`)."""
    job_service_account_email: pulumi.Input[str]
    labels: dict[str, str]
    node_pool: NodePoolConfig | None = None
    offer: Offer | None = None
    network: pulumi.Input[str] | None = None
    subnetwork: pulumi.Input[str] | None = None
    cidr: str = "10.42.0.0/16"
    """The stack's network range: the only one allowed to reach the private control plane."""
    kms_key_id: pulumi.Input[str] | None = None
    """Encrypts the cluster's Kubernetes secrets (application-layer secrets encryption)."""
    after: list[pulumi.Resource] | None = None
    """The platform's enabled APIs (container.googleapis.com among them)."""


def accelerator_type(offer: Offer) -> str:
    """GKE's accelerator name for a catalog offer (Vertex's enum NVIDIA_TESLA_T4 -> nvidia-tesla-t4)."""
    assert offer.accelerator, f"{offer.instance} has no accelerator in the catalog"
    return offer.accelerator.lower().replace("_", "-")


class GkeCluster(pulumi.ComponentResource):
    """`name`, `kubeconfig` (exec gke-gcloud-auth-plugin) and `ready` (what installs wait for)."""

    def __init__(self, name: str, args: GkeClusterArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("stackwise:gcp:GkeCluster", name, None, opts)
        project = args.project
        after = list(args.after or [])
        child = pulumi.ResourceOptions(parent=self, depends_on=after)
        member = f"serviceAccount:{project}.svc.id.goog[{args.namespace}/{args.service_account}]"
        self.kubeconfig: pulumi.Output[str] | None = None
        self.ready: list[pulumi.Resource] = []
        binding = gcp.serviceaccount.IAMMember(
            f"{name}-workload-identity", service_account_id=args.job_service_account_id,
            role="roles/iam.workloadIdentityUser", member=member, opts=child)
        self.ready.append(binding)
        if not args.create:
            self.name: pulumi.Output[str] | None = None
            self.register_outputs({})
            return
        assert args.node_pool is not None and args.offer is not None
        pool, offer = args.node_pool, args.offer
        number = gcp.organizations.get_project_output(project_id=project).number
        # GKE's service agent encrypts the cluster's secrets with the stack's key.
        key_grant = gcp.kms.CryptoKeyIAMMember(
            f"{name}-key-gke-agent", crypto_key_id=args.kms_key_id, role="roles/cloudkms.cryptoKeyEncrypterDecrypter",
            member=number.apply(lambda n: f"serviceAccount:service-{n}@container-engine-robot.iam.gserviceaccount.com"),
            opts=child)
        node_role = gcp.projects.IAMMember(
            f"{name}-nodes", project=project, role="roles/container.defaultNodeServiceAccount",
            member=pulumi.Output.concat("serviceAccount:", args.job_service_account_email), opts=child)
        self.cluster = gcp.container.Cluster(
            f"{name}-gke", name=name, project=project, location=args.region, network=args.network,
            subnetwork=args.subnetwork, remove_default_node_pool=True, initial_node_count=1,
            networking_mode="VPC_NATIVE", ip_allocation_policy={"cluster_ipv4_cidr_block": "/17",
                                                                "services_ipv4_cidr_block": "/22"},
            workload_identity_config={"workload_pool": f"{project}.svc.id.goog"},
            # Private nodes and a private control plane, reached from the stack's network only.
            private_cluster_config={"enable_private_nodes": True, "enable_private_endpoint": True,
                                    "master_ipv4_cidr_block": MASTER_CIDR},
            master_authorized_networks_config={"cidr_blocks": [{"cidr_block": args.cidr,
                                                                "display_name": "stack network"}]},
            database_encryption={"state": "ENCRYPTED", "key_name": args.kms_key_id},
            release_channel={"channel": "REGULAR"}, resource_labels=args.labels, deletion_protection=False,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*after, key_grant]))
        self.name = self.cluster.name
        node_config = {"service_account": args.job_service_account_email, "oauth_scopes": SCOPES,
                       "workload_metadata_config": {"mode": "GKE_METADATA"}, "resource_labels": args.labels,
                       "shielded_instance_config": {"enable_secure_boot": True}}
        low, high = SYSTEM_NODES
        pool_opts = pulumi.ResourceOptions(parent=self, depends_on=[node_role])
        system = gcp.container.NodePool(
            f"{name}-system", name="system", project=project, location=args.region, cluster=self.cluster.name,
            initial_node_count=1, autoscaling={"total_min_node_count": low, "total_max_node_count": high,
                                               "location_policy": "BALANCED"},
            node_config={**node_config, "machine_type": SYSTEM_MACHINE, "labels": {"stackwise.dev/pool": "system"}},
            management={"auto_repair": True, "auto_upgrade": True}, opts=pool_opts)
        labels, taints = manifests.pool_labels_and_taints(offer.gpu, pool.spot)
        # GKE taints GPU nodes with nvidia.com/gpu=present:NoSchedule itself (and installs the device
        # plugin): only stackwise's own spot taint is set here.
        own_taints = [{"key": t["key"], "value": t["value"], "effect": _EFFECT[t["effect"]]}
                      for t in taints if t["key"] != "nvidia.com/gpu"]
        gpu = gcp.container.NodePool(
            f"{name}-gpu", name="gpu", project=project, location=args.region, cluster=self.cluster.name,
            autoscaling={"total_min_node_count": pool.min_nodes, "total_max_node_count": pool.max_nodes,
                         "location_policy": "ANY"},
            node_config={**node_config, "machine_type": offer.instance, "spot": pool.spot, "labels": labels,
                         "taints": own_taints,
                         "guest_accelerators": [{"type": accelerator_type(offer), "count": offer.count,
                                                 "gpu_driver_installation_config": {"gpu_driver_version": "LATEST"}}]},
            management={"auto_repair": True, "auto_upgrade": True}, opts=pool_opts)
        self.ready += [system, gpu]
        self.kubeconfig = pulumi.Output.all(self.cluster.name, self.cluster.endpoint,
                                            self.cluster.master_auth.cluster_ca_certificate).apply(
            lambda v: manifests.gke_kubeconfig(v[0], v[1], v[2]))
        self.register_outputs({"name": self.name})
