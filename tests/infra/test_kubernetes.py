"""A kubernetes stack's infrastructure (stackwise:compute {kind: kubernetes}): the manifests the program
installs, validated by kubernetes-validate (core objects, strict, the pinned version) and the vendored
upstream CRDs (Kueue, PodMonitor); the clusters it creates on each cloud under Pulumi mocks
(preview=False); the contract's `kubernetes` entry; bad config; the plan's line items; the policies."""

from __future__ import annotations

import copy
import json

import pytest
from kube_validate import ManifestError, validate_manifest

from stackwise.errors import ConfigError

from .conftest import load_with, stack_config

pulumi = pytest.importorskip("pulumi", reason="pip install 'stackwise[infra]'")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

K8S = {"compute": {"kind": "kubernetes"}}
VARIANTS = {
    "gcp-created": ("dev-gcp", {**K8S, "kubernetes": {
        "createCluster": True, "nodePool": {"gpu": "L4", "minNodes": 1, "maxNodes": 2, "spot": False},
        "queue": {"gpus": 2}, "metricsUrl": "http://prometheus.monitoring:9090", "submitters": ["ml-team"]}}),
    "azure-created": ("dev-azure", {**K8S, "kubernetes": {
        "createCluster": True, "nodePool": {"gpu": "T4", "maxNodes": 2}, "clusterTier": "standard"}}),
    "aws-existing": ("dev-aws", {**K8S, "kubernetes": {"clusterName": "team-eks", "context": "team-eks",
                                                       "queue": "team-a", "gateway": "infra/shared"}}),
    "gcp-existing": ("dev-gcp", {**K8S, "kubernetes": {"context": "gke_p_us-central1_team",
                                                       "gpuValues": {"L4": "NVIDIA-L4"}}}),
    "azure-existing": ("dev-azure", {**K8S, "kubernetes": {
        "oidcIssuer": "https://eastus.oic.prod-aks.azure.com/tenant/cluster/", "podLabels": {"team": "ml"}}}),
}
_RUNS: dict[str, object] = {}


config = load_with  # the stack's typed config with changes


def variant(name: str):
    from stackwise.infra.offline import run_offline

    if name not in _RUNS:
        stack, changes = VARIANTS[name]
        _RUNS[name] = run_offline(config(stack, **copy.deepcopy(changes)), stack)
    return _RUNS[name]


def by_type(run, suffix: str):
    return [r for r in run.resources if r.type.endswith(suffix)]


def kube_objects(run) -> dict[str, dict]:
    """kind/name -> the object as the engine received it (pulumi-kubernetes' inputs are the manifest)."""
    return {f"{r.inputs['kind']}/{r.inputs['metadata']['name']}": r.inputs
            for r in run.resources if r.type.startswith("kubernetes:")}


# -- the manifests ----------------------------------------------------------------------------------
def test_every_manifest_validates_against_its_schema():
    from stackwise.infra.cloud import infra_cloud
    from stackwise.infra.kubernetes import manifests as m

    queue = m.Queue(name="stackwise", cluster_queue="sw-dev-stackwise", gpus=4, cpu=64, memory="256Gi",
                    gpu_node_labels={"stackwise.dev/gpu": "A10G"})
    for cloud, identity in (("aws", None), ("gcp", "jobs@p.iam.gserviceaccount.com"), ("azure", "client-id")):
        annotations, labels = infra_cloud(cloud).workload_identity(identity)
        install = m.Install(namespace="sw-dev", service_account="stackwise-jobs", sa_annotations=annotations,
                            submitters=("ml-team", "oidc:ml-admins"), queue=queue, pod_monitor=True, stack="dev-k8s")
        objects = m.manifests(install)
        assert [o["kind"] for o in objects] == ["Namespace", "ServiceAccount", "Role", "RoleBinding", "ResourceFlavor",
                                                "ResourceFlavor", "ClusterQueue", "LocalQueue", "PodMonitor"]
        for obj in objects:
            validate_manifest(obj)


def test_the_validator_refuses_what_the_api_server_would():
    from stackwise.infra.kubernetes import manifests as m

    queue = m.Queue(name="q", cluster_queue="cq", gpus=1, cpu=1, memory="1Gi")
    bad_queue = m.cluster_queue(queue, "sw-dev")
    bad_queue["spec"]["resourceGroups"][0]["flavours"] = bad_queue["spec"]["resourceGroups"][0].pop("flavors")
    bad_role = m.submitter_role("sw-dev")
    bad_role["rules"][0]["verb"] = bad_role["rules"][0].pop("verbs")
    bad_monitor = m.pod_monitor("sw-dev")
    bad_monitor["spec"]["podMetricsEndpoints"][0]["port"] = 8000  # a port *name* (string)
    typo = m.pod_monitor("sw-dev")
    typo["spec"]["podMetricsEndpoints"][0]["intervall"] = "15s"  # an unknown field: strict validation refuses it
    for obj, fragment in ((bad_queue, "'flavors' is a required property"), (bad_role, "'verbs' is a required"),
                          (bad_monitor, "8000"), (typo, "'intervall' was unexpected"),
                          (m.namespace("Sw_Dev"), "DNS subdomain")):
        with pytest.raises(ManifestError, match=fragment):
            validate_manifest(obj)
    with pytest.raises(ManifestError, match="no vendored CRD"):
        validate_manifest({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}})


def test_submitters_get_exactly_the_adapters_verbs_in_their_namespace():
    from stackwise.infra.kubernetes import manifests as m

    role, binding = m.submitter_role("sw-dev"), m.submitter_binding("sw-dev", ["ml-team"])
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "sw-dev"
    granted = {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert granted[("batch", "jobs")] == {"create", "get", "list", "watch", "delete", "patch"}
    assert granted[("", "pods/log")] == {"get"}
    assert ("", "nodes") not in granted and ("", "secrets") not in granted  # no ClusterRole, no secrets
    assert not any("*" in verbs for verbs in granted.values())
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "stackwise-submitter"}
    assert binding["subjects"] == [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "ml-team"}]


@pytest.mark.parametrize("build", ["eks", "gke", "aks"])
def test_kubeconfigs_use_an_exec_plugin_and_hold_no_credential(build):
    from kubernetes.config.kube_config import KubeConfigLoader

    from stackwise.infra.kubernetes import manifests as m
    from stackwise.infra.offline import FAKE_CA

    text = {"eks": lambda: m.eks_kubeconfig("c", "https://x.eks.amazonaws.com", FAKE_CA, "us-east-1"),
            "gke": lambda: m.gke_kubeconfig("c", "172.16.0.34", FAKE_CA),
            "aks": lambda: m.aks_kubeconfig("c", "https://c.privatelink.eastus.azmk8s.io:443", FAKE_CA)}[build]()
    document = json.loads(text)
    loader = KubeConfigLoader(config_dict=document)  # the official client reads it as a kubeconfig
    assert loader.current_context["name"] == "c"
    user = document["users"][0]["user"]
    assert set(user) == {"exec"} and user["exec"]["command"] in ("aws", "gke-gcloud-auth-plugin", "kubelogin")
    assert not {"token", "password", "client-key-data", "client-certificate-data"} & set(user)
    assert document["clusters"][0]["cluster"]["server"].startswith("https://")


@pulumi.runtime.test
def test_cluster_install_creates_the_typed_objects_from_the_manifests():
    """ClusterInstall on its own, under this test's mocks: each object is the typed pulumi-kubernetes
    resource for its kind, with the manifest as its inputs, on the provider for the stack's context."""
    from stackwise.infra.kubernetes import manifests as m
    from stackwise.infra.kubernetes.install import ClusterInstall, ClusterInstallArgs

    registered: list = []

    class Mocks(pulumi.runtime.Mocks):
        def new_resource(self, args):
            registered.append((args.typ, args.name, dict(args.inputs)))
            return f"{args.name}-id", dict(args.inputs)

        def call(self, args):
            return {}, []

    pulumi.runtime.set_mocks(Mocks(), preview=False)
    install = m.Install(namespace="sw-dev", service_account="jobs", submitters=("ml",),
                        queue=m.Queue(name="q", cluster_queue="sw-dev-q", gpus=1, cpu=4, memory="16Gi"))
    component = ClusterInstall("t", ClusterInstallArgs(install=install, context="team-eks"))

    def check(_):
        types = {name: typ for typ, name, _ in registered}
        assert types["t-provider"] == "pulumi:providers:kubernetes"
        assert types["t-namespace-sw-dev"] == "kubernetes:core/v1:Namespace"
        assert types["t-serviceaccount-jobs"] == "kubernetes:core/v1:ServiceAccount"
        assert types["t-rolebinding-stackwise-submitter"] == "kubernetes:rbac.authorization.k8s.io/v1:RoleBinding"
        assert types["t-localqueue-q"] == "kubernetes:kueue.x-k8s.io/v1beta1:LocalQueue"
        inputs = {name: i for _, name, i in registered}
        assert inputs["t-provider"] == {"context": "team-eks"}
        for obj in m.manifests(install):
            sent = inputs[f"t-{obj['kind'].lower()}-{obj['metadata']['name']}"]
            assert sent == obj
            validate_manifest(sent)

    return pulumi.Output.all(component.provider.id, *[o.id for o in component.objects.values()]).apply(check)


# -- the program under mocks, per cloud -------------------------------------------------------------
def test_dev_k8s_installs_valid_objects_on_the_eks_cluster_it_creates(offline_run):
    run = offline_run("dev-k8s")
    objects = kube_objects(run)
    assert set(objects) == {"Namespace/sw-dev", "ServiceAccount/stackwise-jobs", "Role/stackwise-submitter",
                            "RoleBinding/stackwise-submitter", "ResourceFlavor/sw-dev-stackwise-cpu",
                            "ResourceFlavor/sw-dev-stackwise-gpu", "ClusterQueue/sw-dev-stackwise",
                            "LocalQueue/stackwise"}
    for obj in objects.values():
        validate_manifest(obj)
    assert objects["ResourceFlavor/sw-dev-stackwise-gpu"]["spec"] == {"nodeLabels": {"stackwise.dev/gpu": "A10G"}}
    quota = objects["ClusterQueue/sw-dev-stackwise"]["spec"]["resourceGroups"][1]["flavors"][0]["resources"]
    assert quota == [{"name": "nvidia.com/gpu", "nominalQuota": 2}]
    (provider,) = by_type(run, "pulumi:providers:kubernetes")
    assert "context" not in provider.inputs  # the created cluster's kubeconfig, not the SDK's context
    kubeconfig = provider.inputs["kubeconfig"]
    assert isinstance(kubeconfig, dict) and "value" in kubeconfig  # a secret
    users = json.loads(kubeconfig["value"])["users"]
    assert users[0]["user"]["exec"]["args"][:4] == ["eks", "get-token", "--cluster-name", "sw-devk8s-k8s"]


def test_dev_k8s_eks_gpu_node_group(offline_run):
    run = offline_run("dev-k8s")
    groups = {r.inputs["nodeGroupName"]: r.inputs for r in by_type(run, "eks/nodeGroup:NodeGroup")}
    gpu = groups["gpu"]
    assert (gpu["instanceTypes"], gpu["amiType"], gpu["capacityType"]) == (["g5.xlarge"], "AL2023_x86_64_NVIDIA", "SPOT")
    assert gpu["scalingConfig"] == {"desiredSize": 0, "minSize": 0, "maxSize": 2}
    assert gpu["labels"] == {"stackwise.dev/gpu": "A10G", "stackwise.dev/spot": "true"}
    assert gpu["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NO_SCHEDULE"},
                             {"key": "stackwise.dev/spot", "value": "true", "effect": "NO_SCHEDULE"}]
    assert groups["system"]["amiType"] == "AL2023_x86_64_STANDARD" and "taints" not in groups["system"]
    (cluster,) = by_type(run, "eks/cluster:Cluster")
    assert cluster.inputs["vpcConfig"]["subnetIds"] == run.outputs.network.subnets
    assert cluster.inputs["vpcConfig"]["endpointPublicAccess"] is False


def test_dev_k8s_pods_run_as_the_job_role_through_eks_pod_identity(offline_run):
    run = offline_run("dev-k8s")
    (association,) = by_type(run, "eks/podIdentityAssociation:PodIdentityAssociation")
    assert (association.inputs["namespace"], association.inputs["serviceAccount"]) == ("sw-dev", "stackwise-jobs")
    assert association.inputs["roleArn"] == run.outputs.job_role
    assert association.inputs["clusterName"] == run.outputs.kubernetes.cluster
    (agent,) = by_type(run, "eks/addon:Addon")
    assert agent.inputs["addonName"] == "eks-pod-identity-agent"
    (role,) = [r for r in by_type(run, "iam/role:Role") if r.name.endswith("-jobs-role")]
    trusted = {s["Principal"]["Service"] for s in json.loads(role.inputs["assumeRolePolicy"])["Statement"]}
    assert trusted == {"sagemaker.amazonaws.com", "pods.eks.amazonaws.com"}
    assert kube_objects(run)["ServiceAccount/stackwise-jobs"]["metadata"].get("annotations") is None


def test_dev_k8s_exports_the_cluster_in_the_contract(offline_run):
    k8s = offline_run("dev-k8s").outputs.kubernetes
    assert (k8s.namespace, k8s.service_account, k8s.queue, k8s.cluster) == ("sw-dev", "stackwise-jobs", "stackwise",
                                                                           "sw-devk8s-k8s")
    assert (k8s.gpu_label, k8s.gpu_values, k8s.autoscaled_gpus) == ("stackwise.dev/gpu", {"A10G": "A10G"}, ["A10G"])
    assert k8s.spot_selector == {"stackwise.dev/spot": "true"}
    assert k8s.spot_tolerations == [{"key": "stackwise.dev/spot", "operator": "Equal", "value": "true",
                                     "effect": "NoSchedule"}]


def test_managed_stacks_install_nothing_on_a_cluster(offline_run):
    run = offline_run("dev-aws")
    assert run.outputs.kubernetes is None
    assert not [r for r in run.resources if r.type.startswith(("kubernetes:", "pulumi:providers:kubernetes",
                                                               "aws:eks/"))]
    (role,) = [r for r in by_type(run, "iam/role:Role") if r.name.endswith("-jobs-role")]
    assert "pods.eks.amazonaws.com" not in role.inputs["assumeRolePolicy"]


def test_a_k8s_stack_exports_its_endpoint_instead_of_creating_a_managed_one():
    from stackwise.infra.offline import run_offline

    raw, _ = stack_config("dev-aws")
    cfg = config("dev-k8s", endpoint={**raw["endpoint"], "maxReplicas": 2})
    run = run_offline(cfg, "dev-k8s")
    assert not [r for r in run.resources if r.type.startswith("aws:sagemaker/") or "appautoscaling" in r.type]
    (endpoint,) = run.outputs.endpoints
    assert (endpoint.name, endpoint.url, endpoint.gpu, endpoint.gpu_count, endpoint.min_replicas) == \
        ("chat", None, "A10G", 1, 1)
    assert endpoint.scaling.max_replicas == 2
    assert "@sha256:" in endpoint.serving_image  # the serve image `pulumi up` pushed, digest-pinned


def test_gke_cluster_with_workload_identity_and_an_l4_pool():
    run = variant("gcp-created")
    project = run.config.gcp_project
    (cluster,) = by_type(run, "container/cluster:Cluster")
    assert cluster.inputs["workloadIdentityConfig"] == {"workloadPool": f"{project}.svc.id.goog"}
    assert cluster.inputs["removeDefaultNodePool"] is True
    pools = {r.inputs["name"]: r.inputs for r in by_type(run, "container/nodePool:NodePool")}
    gpu = pools["gpu"]
    node = gpu["nodeConfig"]
    assert node["machineType"] == "g2-standard-8" and node["spot"] is False
    assert node["guestAccelerators"] == [{"type": "nvidia-l4", "count": 1,
                                          "gpuDriverInstallationConfig": {"gpuDriverVersion": "LATEST"}}]
    assert node["labels"] == {"stackwise.dev/gpu": "L4"} and node["taints"] == []
    assert node["workloadMetadataConfig"] == {"mode": "GKE_METADATA"}
    assert (gpu["autoscaling"]["totalMinNodeCount"], gpu["autoscaling"]["totalMaxNodeCount"]) == (1, 2)
    (binding,) = by_type(run, "serviceaccount/iAMMember:IAMMember")
    assert binding.inputs["role"] == "roles/iam.workloadIdentityUser"
    assert binding.inputs["member"] == f"serviceAccount:{project}.svc.id.goog[sw-dev/stackwise-jobs]"
    objects = kube_objects(run)
    sa = objects["ServiceAccount/stackwise-jobs"]
    assert sa["metadata"]["annotations"] == {"iam.gke.io/gcp-service-account": run.outputs.job_role}
    assert "PodMonitor/stackwise-endpoints" in objects  # metricsUrl set: the scrape config is installed
    for obj in objects.values():
        validate_manifest(obj)
    assert run.outputs.kubernetes.metrics_url == "http://prometheus.monitoring:9090"
    assert not run.outputs.kubernetes.spot_selector  # an on-demand pool


def test_aks_cluster_with_workload_identity_and_a_spot_t4_pool():
    run = variant("azure-created")
    (cluster,) = by_type(run, "containerservice:ManagedCluster")
    assert cluster.inputs["oidcIssuerProfile"] == {"enabled": True}
    assert cluster.inputs["securityProfile"] == {"workloadIdentity": {"enabled": True}}
    assert cluster.inputs["sku"] == {"name": "Base", "tier": "Standard"}
    (pool,) = by_type(run, "containerservice:AgentPool")
    assert (pool.inputs["vmSize"], pool.inputs["scaleSetPriority"], pool.inputs["minCount"], pool.inputs["maxCount"]) \
        == ("Standard_NC4as_T4_v3", "Spot", 0, 2)
    assert pool.inputs["nodeTaints"] == ["nvidia.com/gpu=present:NoSchedule", "stackwise.dev/spot=true:NoSchedule"]
    (federation,) = by_type(run, "FederatedIdentityCredential")
    assert federation.inputs["subject"] == "system:serviceaccount:sw-dev:stackwise-jobs"
    assert federation.inputs["issuer"] == cluster.state["oidcIssuerProfile"]["issuerURL"]
    assert federation.inputs["audiences"] == ["api://AzureADTokenExchange"]
    (identity,) = by_type(run, "UserAssignedIdentity")
    sa = kube_objects(run)["ServiceAccount/stackwise-jobs"]
    assert sa["metadata"]["annotations"] == {"azure.workload.identity/client-id": identity.state["clientId"]}
    k8s = run.outputs.kubernetes
    assert k8s.pod_labels == {"azure.workload.identity/use": "true"}
    assert {"key": "kubernetes.azure.com/scalesetpriority", "operator": "Equal", "value": "spot",
            "effect": "NoSchedule"} in k8s.spot_tolerations  # AKS taints its own spot nodes too
    (provider,) = by_type(run, "pulumi:providers:kubernetes")
    assert json.loads(provider.inputs["kubeconfig"]["value"])["users"][0]["user"]["exec"]["command"] == "kubelogin"


@pytest.mark.parametrize("name", sorted(n for n in VARIANTS if n.endswith("-existing")))
def test_an_existing_cluster_is_reached_by_context_and_bound_not_created(name):
    run = variant(name)
    assert not [r for r in run.resources if r.type in ("aws:eks/cluster:Cluster", "gcp:container/cluster:Cluster",
                                                       "azure-native:containerservice:ManagedCluster")]
    (provider,) = by_type(run, "pulumi:providers:kubernetes")
    k8s = run.config.kubernetes
    assert provider.inputs == ({"context": k8s.context} if k8s.context else {})
    for obj in kube_objects(run).values():
        validate_manifest(obj)
    out = run.outputs.kubernetes
    assert out.gpu_label == "nvidia.com/gpu.product" and out.autoscaled_gpus == []
    if name == "aws-existing":
        (association,) = by_type(run, "PodIdentityAssociation")
        assert association.inputs["clusterName"] == out.cluster == "team-eks"
        assert (out.queue, out.gateway) == ("team-a", "infra/shared")
        assert "ResourceFlavor" not in {o["kind"] for o in kube_objects(run).values()}  # an existing queue
    if name == "gcp-existing":
        assert out.gpu_values == {"L4": "NVIDIA-L4"}
    if name == "azure-existing":
        (federation,) = by_type(run, "FederatedIdentityCredential")
        assert federation.inputs["issuer"] == k8s.oidc_issuer
        assert out.pod_labels == {"team": "ml", "azure.workload.identity/use": "true"}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variants_pass_the_policies_and_the_provider_schemas(name):
    from stackwise.infra.policy import check

    from .test_provider_schemas import findings_of

    run = variant(name)
    assert check(run.resources, {"gpu-allow-list": {"allowedGpus": run.config.allowed_gpus},
                                 "bounded-replicas": {"maxReplicas": run.config.max_endpoint_replicas}}) == []
    assert findings_of(run) == {}


# -- bad config --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("changes", "key", "fragment"), [
    ({"kubernetes": {"namespace": "x"}}, "stackwise:kubernetes", "only with compute: {kind: kubernetes}"),
    ({**K8S, "kubernetes": {"nodePool": {"gpu": "A10G"}, "clusterName": "c"}}, "stackwise:kubernetes",
     "nodePool is for a cluster the program creates"),
    ({**K8S, "kubernetes": {"createCluster": True}}, "stackwise:kubernetes", "createCluster needs nodePool"),
    ({**K8S, "kubernetes": {"createCluster": True, "nodePool": {"gpu": "H100"}}}, "stackwise:kubernetes.nodePool.gpu",
     "H100 is not in allowedGpus"),
    ({**K8S, "kubernetes": {"createCluster": True, "nodePool": {"gpu": "A10G", "count": 3}}},
     "stackwise:kubernetes.nodePool", "does not offer 3 x A10G"),
    ({**K8S, "kubernetes": {"createCluster": True, "nodePool": {"gpu": "T4"}}}, "stackwise:kubernetes.nodePool.gpu",
     "training asks for 1 x A10G"),
    ({**K8S, "kubernetes": {"createCluster": True, "nodePool": {"gpu": "A10G", "minNodes": 3, "maxNodes": 2}}},
     "stackwise:kubernetes.nodePool", "maxNodes (2) is below minNodes (3)"),
    ({**K8S, "kubernetes": {"createCluster": True, "nodePool": {"gpu": "A10G", "maxNodes": 40}}},
     "stackwise:kubernetes.nodePool.maxNodes", "exceeds maxEndpointReplicas 10"),
    ({**K8S, "kubernetes": {"createCluster": True, "nodePool": {"gpu": "A10G"}, "gpuLabel": "x"}},
     "stackwise:kubernetes", "gpuLabel describe an existing cluster"),
    ({**K8S}, "stackwise:kubernetes.clusterName", "needed on aws for an existing cluster"),
    ({**K8S, "kubernetes": {"clusterName": "c", "namespace": "Team_A"}}, "stackwise:kubernetes.namespace",
     "should match pattern"),
    ({**K8S, "kubernetes": {"clusterName": "c", "queue": {"name": "q"}}}, "stackwise:kubernetes.queue", "gpus"),
    ({**K8S, "kubernetes": {"clusterName": "c", "gateway": "shared"}}, "stackwise:kubernetes.gateway", "pattern"),
    ({**K8S, "kubernetes": {"clusterName": "c", "podMonitor": True}}, "stackwise:kubernetes", "podMonitor needs "
     "metricsUrl"),
    ({**K8S, "kubernetes": {"clusterName": "c", "oidcIssuer": "https://x"}}, "stackwise:kubernetes.oidcIssuer",
     "for azure (AKS) only"),
    ({"compute": {"kind": "kubernets"}}, "stackwise:compute.kind", "'managed' or 'kubernetes'"),
])
def test_bad_kubernetes_config_names_the_key(changes, key, fragment):
    with pytest.raises(ConfigError) as err:
        config("dev-aws", **changes)
    assert err.value.what.startswith(f"bad value for {key}:") or err.value.what.startswith(f"missing key {key}"), \
        err.value.what
    assert fragment in err.value.what, err.value.what
    assert err.value.where.endswith("Pulumi.dev-aws.yaml") and err.value.fix


def test_unknown_kubernetes_key_lists_the_known_ones():
    with pytest.raises(ConfigError) as err:
        config("dev-k8s", kubernetes={"namespace": "sw-dev", "nodepool": {}})
    assert err.value.what == "unknown key stackwise:kubernetes.nodepool"
    assert "nodePool" in err.value.fix and "createCluster" in err.value.fix


def test_azure_existing_cluster_needs_its_issuer():
    with pytest.raises(ConfigError, match="kubernetes.oidcIssuer is needed on azure"):
        config("dev-azure", compute={"kind": "kubernetes"})


# -- plan --------------------------------------------------------------------------------------------
def items(run) -> dict[str, dict]:
    from stackwise.infra.plan import estimate

    return {i["resource"]: i for i in estimate(run.resources, run.config.cloud)["items"]}


def test_plan_prices_the_control_plane_and_the_node_pools(offline_run):
    found = items(offline_run("dev-k8s"))
    assert found["sw-devk8s-k8s-eks"]["monthly_usd"] == 73.00  # $0.10/h x 730 h
    assert "unverified" in found["sw-devk8s-k8s-eks"]["basis"]
    assert found["sw-devk8s-k8s-system"]["monthly_usd"] == 70.08  # 1 x m5.large
    gpu = found["sw-devk8s-k8s-gpu"]
    assert gpu["monthly_usd"] == 0  # minNodes 0: no idle GPU cost
    assert "0 x g5.xlarge (1 x A10G) minimum nodes at $0.422/h spot" in gpu["basis"]
    assert "ceiling 2 nodes: $616.12/month" in gpu["basis"]  # 2 x $0.422 x 730


def test_plan_prices_minimum_gpu_nodes_and_the_aks_tier():
    gke = items(variant("gcp-created"))
    assert gke["sw-dev-k8s-gke"]["monthly_usd"] == 73.00
    from stackwise import catalog

    l4 = catalog.offer("L4", "gcp", 1)
    assert gke["sw-dev-k8s-gpu"]["monthly_usd"] == round(l4.on_demand_hourly * 730, 2)
    assert "ceiling 2 nodes" in gke["sw-dev-k8s-gpu"]["basis"]
    aks = items(variant("azure-created"))
    assert aks["sw-dev-k8s-aks"]["monthly_usd"] == 73.00 and "AKS Standard tier" in aks["sw-dev-k8s-aks"]["basis"]
    assert aks["sw-dev-k8s-aks/system"]["monthly_usd"] == 70.08  # 1 x Standard_D2s_v5
    assert aks["sw-dev-k8s-gpu"]["monthly_usd"] == 0 and "spot" in aks["sw-dev-k8s-gpu"]["basis"]
    free = items(_aks_free())
    assert free["sw-dev-k8s-aks"]["monthly_usd"] == 0 and "Free tier" in free["sw-dev-k8s-aks"]["basis"]


def _aks_free():
    from stackwise.infra.offline import run_offline

    stack, changes = VARIANTS["azure-created"]
    changes = copy.deepcopy(changes)
    del changes["kubernetes"]["clusterTier"]
    return run_offline(config(stack, **changes), stack)


def test_plan_cli_for_the_k8s_stack(tmp_path):
    from .test_plan_cli import plan

    proc = plan(tmp_path, "--stack", "dev-k8s", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["outputs"]["kubernetes"]["namespace"] == "sw-dev"
    types = {r["type"] for r in result["resources"]}
    assert {"aws:eks/cluster:Cluster", "aws:eks/nodeGroup:NodeGroup", "kubernetes:core/v1:Namespace",
            "kubernetes:kueue.x-k8s.io/v1beta1:ClusterQueue"} <= types
    assert result["over_budget"] is False
    assert "BEGIN CERTIFICATE" not in proc.stdout  # the provider's kubeconfig is a secret: masked


# -- policies ----------------------------------------------------------------------------------------
def violations(run, resources):
    from stackwise.infra.policy import check

    return check(resources, {"gpu-allow-list": {"allowedGpus": run.config.allowed_gpus},
                             "bounded-replicas": {"maxReplicas": run.config.max_endpoint_replicas}})


def mutated(run, type_suffix: str, change, name: str | None = None) -> list:
    resources = copy.deepcopy(run.resources)
    hits = [r for r in resources if r.type.endswith(type_suffix) and (name is None or r.name == name)]
    assert hits, type_suffix
    for r in hits:
        change(r)
    return resources


def test_a_node_pool_gpu_off_the_allow_list_is_caught(offline_run):
    run = offline_run("dev-k8s")
    resources = mutated(run, "eks/nodeGroup:NodeGroup", lambda r: r.inputs.update(instanceTypes=["p5.48xlarge"]),
                        "sw-devk8s-k8s-gpu")
    assert violations(run, resources) == [("gpu-allow-list", "sw-devk8s-k8s-gpu",
                                           "GPU H100 (ml.p5.48xlarge) is not on the allow-list: T4, L4, A10G")]


def test_unbounded_node_pools_are_caught():
    run = variant("azure-created")
    resources = mutated(run, "containerservice:AgentPool", lambda r: r.inputs.update(maxCount=50))
    assert violations(run, resources) == [("bounded-replicas", "sw-dev-k8s-gpu",
                                           "maximum replicas 50 exceeds the bound 10")]
    run = variant("gcp-created")
    resources = mutated(run, "container/nodePool:NodePool", lambda r: r.inputs["autoscaling"].update(
        totalMaxNodeCount=64), "sw-dev-k8s-gpu")
    assert [v[2] for v in violations(run, resources)] == ["maximum replicas 64 exceeds the bound 10"]


def test_bad_names_are_caught(offline_run):
    run = offline_run("dev-k8s")
    resources = mutated(run, "core/v1:Namespace", lambda r: r.inputs["metadata"].update(name="sw.dev"))
    assert violations(run, resources) == [("kubernetes-names", "sw-devk8s-k8s-install-namespace-sw-dev",
                                           "Namespace name 'sw.dev' is not a valid Kubernetes name (lower-case "
                                           "letters, digits and '-'; at most 63 characters)")]
    run = variant("azure-created")
    resources = mutated(run, "containerservice:AgentPool", lambda r: r.inputs.update(agentPoolName="gpu-pool"))
    assert [v[2] for v in violations(run, resources)] == [
        "agentPoolName 'gpu-pool' is not a name the cloud accepts: 1-12 lower-case letters or digits, starting "
        "with a letter"]


def test_public_or_unencrypted_clusters_are_caught(offline_run):
    run = offline_run("dev-k8s")
    resources = mutated(run, "eks/cluster:Cluster", lambda r: (r.inputs["vpcConfig"].update(endpointPublicAccess=True),
                                                               r.inputs.pop("encryptionConfig")))
    assert sorted(v[0] for v in violations(run, resources)) == ["encryption-at-rest", "no-public-access"]
    resources = mutated(run, "eks/nodeGroup:NodeGroup", lambda r: r.inputs["tags"].pop("owner"), "sw-devk8s-k8s-gpu")
    assert violations(run, resources) == [("required-tags", "sw-devk8s-k8s-gpu", "missing required tags: owner")]
