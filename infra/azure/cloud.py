"""Azure for the Pulumi program: the training platform (an Azure ML workspace with an AmlCompute
cluster at 0..N), a managed online endpoint, the pipeline trigger, a consumption budget and AKS;
what the mocks fake (ARM ids, Key Vault URIs, trigger URLs), and how `stackwise plan` prices it.
Components are imported when a hook runs (see infra/cloud.py).
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import TYPE_CHECKING, Any

from ..cloud import ClusterOutputs, Fake, InfraCloud, PlatformOutputs, PolicyRules

if TYPE_CHECKING:
    import pulumi

    from stackwise.catalog import Offer

    from ..config import InfraConfig
    from ..offline import RecordedResource
    from ..plan import Pricer
    from ..program import Secrets

FAKE_SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
FAKE_TENANT = "11111111-1111-1111-1111-111111111111"
# Resources whose name the program sets through a type-specific input.
_NAME_KEYS = {"BlobContainer": "containerName", "OnlineEndpoint": "endpointName", "OnlineDeployment": "deploymentName",
              "Compute": "computeName", "Secret": "secretName", "Vault": "vaultName", "StorageAccount": "accountName",
              "Registry": "registryName", "ManagedCluster": "resourceName"}
AKS_CLIENT_ID_ANNOTATION = "azure.workload.identity/client-id"
AKS_USE_LABEL = "azure.workload.identity/use"


class AzureCloud(InfraCloud):
    name = "azure"
    provider = "azure-native"
    pipeline_target = "azureml"
    # AKS taints its spot nodes itself.
    spot_tolerations = ({"key": "kubernetes.azure.com/scalesetpriority", "operator": "Equal", "value": "spot",
                         "effect": "NoSchedule"},)

    @property
    def policy(self) -> PolicyRules:
        from .policy import RULES

        return RULES

    def check_config(self, config: InfraConfig) -> None:
        ep = config.endpoint
        if ep is not None and ep.model.startswith("azureml:") and config.cloud != self.name:
            raise ValueError(f"endpoint.model {ep.model!r} names an Azure ML model, which only azure stacks can "
                             "serve; use a Hugging Face id or an artifact URI of this stack")
        if config.compute.kind != "kubernetes":
            return
        k8s = config.cluster
        if config.cloud == self.name and not k8s.create_cluster and not k8s.oidc_issuer:
            raise ValueError("kubernetes.oidcIssuer is needed on azure for an existing cluster: its OIDC issuer URL "
                             "(`az aks show --query oidcIssuerProfile.issuerUrl`), so its pods run as the job "
                             "identity (workload identity); or set createCluster: true")
        if config.cloud != self.name and (k8s.oidc_issuer or k8s.cluster_tier != "free"):
            raise ValueError("kubernetes.oidcIssuer and kubernetes.clusterTier are for azure (AKS) only")

    def check_schedule(self, trigger: Any, source: str) -> None:
        from ..pipeline_trigger import check_recurrence

        check_recurrence(trigger, source)

    def read_pipeline(self, path: Any, text: str, parameters: dict[str, Any], source: str) -> Any:
        from .pipeline_job import read_pipeline_job

        return read_pipeline_job(path, parameters, source)

    def platform(self, prefix: str, config: InfraConfig, secrets: Secrets) -> PlatformOutputs:
        from stackwise import catalog

        from ..program import image_build_args
        from .platform import TrainingPlatform, TrainingPlatformArgs

        platform = TrainingPlatform(prefix, TrainingPlatformArgs(
            location=config.region, cidr=config.network.cidr, tags=config.all_tags, training=config.training,
            training_offer=catalog.offer(config.training.gpu, self.name, config.training.count),
            pinecone_api_key=secrets.pinecone_api_key if config.vector_store.kind == "pinecone" else None,
            images=image_build_args(config)))
        return PlatformOutputs(
            artifact_store=platform.artifact_store, job_role=platform.identity.id,
            training_image=platform.training_image,
            serving_image=platform.serving_image or platform.registry.login_server.apply(lambda s: f"{s}/serve:latest"),
            secrets=platform.secret_refs, component=platform, contract={
                "azure_subscription_id": platform.subscription_id,
                "azure_resource_group": platform.resource_group.name,
                "azure_workspace": platform.workspace.name,
                "azure_identity_client_id": platform.identity.client_id})

    def endpoint(self, prefix: str, config: InfraConfig, platform: PlatformOutputs, image: pulumi.Input[str]) -> Any:
        from stackwise import catalog

        from .endpoint import InferenceEndpoint, InferenceEndpointArgs

        ep, p = config.endpoint, platform.component
        assert ep is not None
        return InferenceEndpoint(f"{prefix}-{ep.name}", InferenceEndpointArgs(
            endpoint=ep, offer=catalog.offer(ep.gpu, self.name, ep.count), location=config.region,
            resource_group=p.resource_group.name, workspace=p.workspace.name, image=image,
            alarms=config.alarms, alert_emails=config.budget_alert_emails, tags=config.all_tags))

    def pipeline_trigger(self, prefix: str, config: InfraConfig, platform: PlatformOutputs, definition: Any,
                         pipeline_name: str) -> None:
        from .platform import ARTIFACTS_CONTAINER
        from .pipeline_trigger import PipelineTrigger, PipelineTriggerArgs

        assert config.pipeline_trigger is not None
        p = platform.component
        PipelineTrigger(f"{prefix}-pipeline", PipelineTriggerArgs(
            trigger=config.pipeline_trigger, job=definition, location=config.region,
            resource_group=p.resource_group.name, workspace=p.workspace.name, workspace_id=p.workspace.id,
            storage_account_id=p.storage.id, container=ARTIFACTS_CONTAINER, tags=config.all_tags,
            job_principal_id=p.identity.principal_id, resource_group_id=p.resource_group.id,
            has_endpoint=config.endpoint is not None))

    def budget(self, prefix: str, config: InfraConfig, platform: PlatformOutputs) -> None:
        from .budget import Budget, BudgetArgs

        Budget(f"{prefix}-budget", BudgetArgs(amount_usd=config.monthly_budget_usd,
                                              resource_group_id=platform.component.resource_group.id,
                                              emails=config.budget_alert_emails))

    def cluster(self, prefix: str, config: InfraConfig, platform: PlatformOutputs,
                offer: Offer | None) -> ClusterOutputs:
        from ..common import subnets
        from .aks import AksCluster, AksClusterArgs

        k8s, p = config.cluster, platform.component
        cluster = AksCluster(f"{prefix}-k8s", AksClusterArgs(
            create=k8s.create_cluster, location=config.region, resource_group=p.resource_group.name,
            namespace=k8s.namespace or "", service_account=k8s.service_account, identity_name=p.identity.name,
            tags=config.all_tags, oidc_issuer=k8s.oidc_issuer, node_pool=k8s.node_pool, offer=offer,
            tier=k8s.cluster_tier, vnet_name=p.vnet.name, subnet_cidr=subnets(config.network.cidr, 2)[1]))
        return ClusterOutputs(name=cluster.name, kubeconfig=cluster.kubeconfig, ready=cluster.ready,
                              identity=p.identity.client_id)

    def workload_identity(self, identity: Any) -> tuple[dict[str, Any], dict[str, str]]:
        """AKS workload identity: the user-assigned identity's client id, and the pod label that
        makes the webhook inject the token."""
        return {AKS_CLIENT_ID_ANNOTATION: identity}, {AKS_USE_LABEL: "true"}

    # -- the mocks: what ARM answers -----------------------------------------------------------------
    def fake_resource(self, typ: str, inputs: dict[str, Any], state: dict[str, Any], fake: Fake) -> str:
        region, digest = fake.config.region, fake.digest
        rid = f"/subscriptions/{FAKE_SUBSCRIPTION}/resourceGroups/rg/providers/{typ.split(':')[1]}/{fake.physical}"
        key = _NAME_KEYS.get(typ.rsplit(":", 1)[-1])
        if key and inputs.get(key):
            state["name"] = inputs[key]
        state.setdefault("name", fake.physical)
        identity = state.get("identity")
        if isinstance(identity, dict) and isinstance(identity.get("userAssignedIdentities"), list):
            # Inputs list identity ids; ARM answers with a map keyed by id.
            state["identity"] = {**identity, "userAssignedIdentities": {
                i: {"principalId": "principal", "clientId": "client"} for i in identity["userAssignedIdentities"]}}
        if typ == "azure-native:managedidentity:UserAssignedIdentity":
            state.update(principalId=f"{digest}-principal", clientId=f"{digest}-client")
        if typ == "azure-native:keyvault:Vault":
            state["properties"] = {**(inputs.get("properties") or {}), "vaultUri": f"https://{state['name']}.vault.azure.net/"}
        if typ == "azure-native:keyvault:Key":
            # What Key Vault answers: the key's URI, and the same pinned to its first version.
            state["keyUri"] = f"https://{inputs.get('vaultName', 'vault')}.vault.azure.net/keys/{state['name']}"
            state["keyUriWithVersion"] = f"{state['keyUri']}/{hashlib.sha1(rid.encode()).hexdigest()[:32]}"
        if typ == "azure-native:containerservice:ManagedCluster":
            state.update(oidcIssuerProfile={"enabled": True, "issuerURL": f"https://{region}.oic.prod-aks.azure.com/"
                                            f"{FAKE_TENANT}/{digest}/"},
                         privateFQDN=f"{state['name']}-{digest}.privatelink.{region}.azmk8s.io")
        if typ == "azure-native:containerregistry:Registry":
            state["loginServer"] = f"{state['name']}.azurecr.io"
        if typ == "azure-native:machinelearningservices:OnlineEndpoint":
            state["properties"] = {**inputs.get("properties", {}),
                                   "scoringUri": f"https://{state['name']}.{region}.inference.ml.azure.com/score"}
        return rid

    def fake_call(self, token: str, args: dict[str, Any], fake: Fake) -> dict[str, Any] | None:
        region = fake.config.region
        if token.endswith("getClientConfig"):
            return {"subscriptionId": FAKE_SUBSCRIPTION, "tenantId": FAKE_TENANT, "clientId": "client",
                    "objectId": "object"}
        if token == "azure-native:logic:listWorkflowTriggerCallbackUrl":
            # A Logic App trigger's URL carries its SAS signature: a secret the plan never shows.
            workflow, name = args.get("workflowName", "workflow"), args.get("triggerName", "manual")
            return {"value": f"https://prod-00.{region}.logic.azure.com/workflows/{workflow}/triggers/"
                             f"{name}/paths/invoke?api-version=2016-10-01&sp=%2Ftriggers%2F{name}%2Frun&sv=1.0"
                             f"&sig={fake.secret}", "method": "POST"}
        if token == "azure-native:containerservice:listManagedClusterUserCredentials":
            return {"kubeconfigs": [{"name": "clusterUser", "value": _user_kubeconfig(
                args.get("resourceName", "cluster"), region)}]}
        return None

    # -- stackwise plan ------------------------------------------------------------------------------
    def price(self, resource: RecordedResource, pricer: Pricer) -> bool:
        from stackwise import catalog

        r, inputs = resource, resource.inputs
        if r.type == "azure-native:machinelearningservices:OnlineDeployment":
            props = inputs.get("properties") or {}
            minimum = (props.get("scaleSettings") or {}).get("minInstances") or (inputs.get("sku") or {}).get("capacity")
            pricer.gpu(r, props.get("instanceType"), float(minimum or 0), "minimum instances")
        elif r.type == "azure-native:machinelearningservices:Compute":
            props = (inputs.get("properties") or {}).get("properties") or {}
            nodes = float((props.get("scaleSettings") or {}).get("minNodeCount") or 0)
            pricer.gpu(r, props.get("vmSize"), nodes, "idle cluster nodes")
        elif r.type == "azure-native:containerservice:AgentPool":
            pricer.node_pool(r, inputs.get("vmSize") or "", inputs.get("minCount"), inputs.get("maxCount"),
                             inputs.get("scaleSetPriority") == "Spot")
        elif r.type == "azure-native:containerservice:ManagedCluster":
            tier = (inputs.get("sku") or {}).get("tier") or "Free"
            if fixed := catalog.fixed_monthly(f"{r.type}#{tier}"):
                pricer.add(r, fixed.usd, f"AKS {tier} tier control plane: {fixed.source}")
            for profile in inputs.get("agentPoolProfiles") or []:
                pricer.node_pool(r, profile.get("vmSize") or "", profile.get("minCount") or profile.get("count"),
                                 profile.get("maxCount"), profile.get("scaleSetPriority") == "Spot", profile.get("name"))
        elif r.type == "azure-native:machinelearningservices:Workspace":
            network = inputs.get("managedNetwork") or {}
            rules = (network.get("outboundRules") or {}).values()
            # FQDN outbound rules run on an Azure Firewall the workspace provisions and bills.
            if any(rule.get("type") == "FQDN" for rule in rules):
                sku = network.get("firewallSku") or "Standard"
                if fixed := catalog.fixed_monthly(f"{r.type}#firewall-{sku}"):
                    pricer.add(r, fixed.usd, fixed.source)
        else:
            return False
        return True


def _user_kubeconfig(name: str, region: str) -> str:
    """An Entra ID cluster's user kubeconfig, as AKS answers it (base64): server and CA, and
    kubelogin to get a token (no secret)."""
    from ..offline import FAKE_CA

    server = f"https://{name}.privatelink.{region}.azmk8s.io:443"
    kubeconfig = {"apiVersion": "v1", "kind": "Config", "current-context": name,
                  "clusters": [{"name": name, "cluster": {"server": server, "certificate-authority-data": FAKE_CA}}],
                  "contexts": [{"name": name, "context": {"cluster": name, "user": "clusterUser"}}],
                  "users": [{"name": "clusterUser", "user": {"exec": {
                      "apiVersion": "client.authentication.k8s.io/v1beta1", "command": "kubelogin",
                      "args": ["get-token", "--login", "devicecode"]}}}]}
    return base64.b64encode(json.dumps(kubeconfig).encode()).decode()


CLOUD = AzureCloud()
