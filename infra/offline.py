"""Run the Pulumi program offline, under `pulumi.runtime.set_mocks`: no CLI, no credentials.

The mocks record every resource the program registers (type, name, parent, inputs) and fake
the few outputs a provider would compute (names, ARNs, ids, hosts) so the contract can be
built. `stackwise plan`, the policy tests and the contract tests all use `run_offline`.
Runs with `preview=False`: with a preview, unknown outputs would skip every `.apply`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from typing import Any

import pulumi
from pulumi.runtime import mocks as _mocks
from pulumi.runtime import rpc as _rpc
from pulumi.runtime import settings as _settings
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from stackwise.contract import StackOutputs

from .config import InfraConfig
from .program import Secrets, build, export

FAKE_ACCOUNT = "123456789012"
FAKE_SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
FAKE_TENANT = "11111111-1111-1111-1111-111111111111"
# Azure resources whose name the program sets through a type-specific input.
_AZURE_NAME_KEYS = {"BlobContainer": "containerName", "OnlineEndpoint": "endpointName", "OnlineDeployment":
                    "deploymentName", "Compute": "computeName", "Secret": "secretName", "Vault": "vaultName",
                    "StorageAccount": "accountName", "Registry": "registryName",
                    "ManagedCluster": "resourceName"}
PLAN_SECRET = "offline-placeholder-not-a-key"
# A cluster's CA certificate as the clouds answer it (base64 PEM); a placeholder, not a certificate.
FAKE_CA = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCm9mZmxpbmUtcGxhY2Vob2xkZXIKLS0tLS1FTkQgQ0VSVElGSUNBVEUtLS0tLQo="


@dataclass
class RecordedResource:
    """One resource as the engine would receive it (inputs in the engine's camelCase)."""

    type: str
    name: str
    parent: str | None
    inputs: dict[str, Any]
    urn: str
    custom: bool
    state: dict[str, Any] = field(default_factory=dict)
    parent_urn: str | None = None


@dataclass
class OfflineRun:
    stack: str
    config: InfraConfig
    resources: list[RecordedResource]
    outputs: StackOutputs
    exported: dict[str, Any]
    registered_outputs: set[str] = field(default_factory=set)
    """URNs of the resources that called `register_outputs` (every component must)."""


def _name_of(urn: str) -> str | None:
    return urn.rsplit("::", 1)[-1] if urn else None


def _type_of(urn: str) -> str:
    # urn:pulumi:<stack>::<project>::<parent types joined by $>$<type>::<name>
    return urn.split("::")[2].rsplit("$", 1)[-1] if urn.count("::") >= 3 else ""


class _Recorder(pulumi.runtime.Mocks):
    """Mocks that fake provider-computed outputs, the way each cloud would shape them."""

    def __init__(self, config: InfraConfig):
        self.config = config

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        inputs = dict(args.inputs)
        typ, name = args.typ, args.name
        digest = hashlib.sha1(f"{typ}/{name}".encode()).hexdigest()[:8]
        physical = str(inputs.get("name") or f"{name}-{digest}")
        state: dict[str, Any] = {**inputs, "name": physical}
        region, project = self.config.region, self.config.gcp_project or "project"
        if typ.startswith("aws:"):
            service = typ.split(":")[1].split("/")[0]
            state["arn"] = f"arn:aws:{service}:{region}:{FAKE_ACCOUNT}:{physical}"
            if typ == "aws:iam/role:Role":  # IAM is global: no region in its ARNs
                state["arn"] = f"arn:aws:iam::{FAKE_ACCOUNT}:role/{physical}"
            if typ == "aws:s3/bucket:Bucket":  # bucket ARNs name neither region nor account
                state.update(bucket=physical, arn=f"arn:aws:s3:::{physical}")
                return physical, state
            if typ == "aws:ecr/repository:Repository":
                state["repositoryUrl"] = f"{FAKE_ACCOUNT}.dkr.ecr.{region}.amazonaws.com/{physical}"
            if typ == "aws:eks/cluster:Cluster":  # what EKS answers: the API endpoint, its CA, its security group
                state.update(endpoint=f"https://{digest.upper()}.gr7.{region}.eks.amazonaws.com",
                             certificateAuthority={"data": FAKE_CA},
                             vpcConfig={**(inputs.get("vpcConfig") or {}), "clusterSecurityGroupId": f"sg-{digest}"})
            if typ == "aws:ec2/vpcEndpoint:VpcEndpoint" and inputs.get("vpcEndpointType", "Gateway") == "Gateway":
                state["prefixListId"] = f"pl-{digest}"  # what AWS answers for a gateway endpoint
            return f"{physical}-id", state
        if typ.startswith("gcp:"):
            if typ == "gcp:serviceaccount/account:Account":
                state["email"] = f"{inputs['accountId']}@{project}.iam.gserviceaccount.com"
            if typ == "gcp:vertex/aiEndpoint:AiEndpoint":
                state["name"] = digest
            if typ == "gcp:vertex/aiEndpointWithModelGardenDeployment:AiEndpointWithModelGardenDeployment":
                state["endpoint"] = f"projects/{project}/locations/{region}/endpoints/{digest}"
            if typ == "gcp:container/cluster:Cluster":  # the private endpoint's address and the cluster CA
                state.update(endpoint="172.16.0.34", masterAuth={"clusterCaCertificate": FAKE_CA})
            if typ == "gcp:monitoring/notificationChannel:NotificationChannel":
                state["name"] = f"projects/{project}/notificationChannels/{digest}"
            return f"projects/{project}/locations/{region}/{name}", state
        if typ.startswith("azure-native:"):
            rid = f"/subscriptions/{FAKE_SUBSCRIPTION}/resourceGroups/rg/providers/{typ.split(':')[1]}/{physical}"
            key = _AZURE_NAME_KEYS.get(typ.rsplit(":", 1)[-1])
            if key and inputs.get(key):
                state["name"] = inputs[key]
            state.setdefault("name", physical)
            identity = state.get("identity")
            if isinstance(identity, dict) and isinstance(identity.get("userAssignedIdentities"), list):
                # Inputs list identity ids; ARM answers with a map keyed by id.
                state["identity"] = {**identity, "userAssignedIdentities": {
                    i: {"principalId": "principal", "clientId": "client"} for i in identity["userAssignedIdentities"]}}
            if typ == "azure-native:managedidentity:UserAssignedIdentity":
                state.update(principalId=f"{digest}-principal", clientId=f"{digest}-client")
            if typ == "azure-native:keyvault:Vault":
                state["properties"] = {**(inputs.get("properties") or {}),
                                       "vaultUri": f"https://{state['name']}.vault.azure.net/"}
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
            return rid, state
        if typ == "docker-build:index:Image":
            # What a push reports: the manifest digest, and the first tag pinned to it.
            state["digest"] = "sha256:" + hashlib.sha256(f"{typ}/{name}".encode()).hexdigest()
            tags = inputs.get("tags") or []
            state["ref"] = f"{tags[0]}@{state['digest']}" if tags else ""
            return f"{physical}-id", state
        if typ == "pinecone:index/index:Index":
            state["host"] = f"{physical}-{digest}.svc.pinecone.io"
        return f"{physical}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list]:
        token = args.token
        if token.endswith("getProjectServiceAccount"):
            return {"emailAddress": "service-123456789@gs-project-accounts.iam.gserviceaccount.com"}, []
        if token.endswith("getProject"):
            return {"number": "123456789", "projectId": self.config.gcp_project}, []
        if token.endswith("getClientConfig"):  # azure-native's and gcp's (its access token)
            return {"subscriptionId": FAKE_SUBSCRIPTION, "tenantId": FAKE_TENANT, "clientId": "client",
                    "objectId": "object", "accessToken": PLAN_SECRET, "project": self.config.gcp_project,
                    "region": self.config.region}, []
        if token == "azure-native:logic:listWorkflowTriggerCallbackUrl":
            # A Logic App trigger's URL carries its SAS signature: a secret the plan never shows.
            workflow, name = args.args.get("workflowName", "workflow"), args.args.get("triggerName", "manual")
            return {"value": f"https://prod-00.{self.config.region}.logic.azure.com/workflows/{workflow}/triggers/"
                             f"{name}/paths/invoke?api-version=2016-10-01&sp=%2Ftriggers%2F{name}%2Frun&sv=1.0"
                             f"&sig={PLAN_SECRET}", "method": "POST"}, []
        if token == "azure-native:containerservice:listManagedClusterUserCredentials":
            # An Entra ID cluster's user kubeconfig: server and CA, and kubelogin to get a token (no secret).
            name = args.args.get("resourceName", "cluster")
            server = f"https://{name}.privatelink.{self.config.region}.azmk8s.io:443"
            kubeconfig = {"apiVersion": "v1", "kind": "Config", "current-context": name,
                          "clusters": [{"name": name, "cluster": {"server": server,
                                                                  "certificate-authority-data": FAKE_CA}}],
                          "contexts": [{"name": name, "context": {"cluster": name, "user": "clusterUser"}}],
                          "users": [{"name": "clusterUser", "user": {"exec": {
                              "apiVersion": "client.authentication.k8s.io/v1beta1", "command": "kubelogin",
                              "args": ["get-token", "--login", "devicecode"]}}}]}
            value = base64.b64encode(json.dumps(kubeconfig).encode()).decode()
            return {"kubeconfigs": [{"name": "clusterUser", "value": value}]}, []
        if token == "aws:ecr/getAuthorizationToken:getAuthorizationToken":
            return {"userName": "AWS", "password": PLAN_SECRET, "authorizationToken": PLAN_SECRET,
                    "proxyEndpoint": f"https://{FAKE_ACCOUNT}.dkr.ecr.{self.config.region}.amazonaws.com",
                    "expiresAt": "2099-01-01T00:00:00Z", "id": self.config.region}, []
        return {}, []


class _Monitor(_mocks.MockMonitor):
    """The mock monitor, also keeping each registration's parent and kind (custom or component)."""

    def __init__(self, mocks: _Recorder):
        super().__init__(mocks)
        self.recorded: list[RecordedResource] = []
        self.registered_outputs: set[str] = set()

    @staticmethod
    def _close_thread_loop() -> None:
        # The mock monitor answers in the event loop's executor threads and gives each call's
        # thread an event loop of its own, which nothing closes: left open, they are collected
        # half torn down at exit ("Exception ignored in BaseEventLoop.__del__"). Close it here;
        # the thread's next call makes a new one.
        if threading.current_thread() is threading.main_thread():
            return
        policy = asyncio.get_event_loop_policy()
        try:
            loop = policy.get_event_loop()
        except RuntimeError:
            return
        if not loop.is_running():
            loop.close()
            policy.set_event_loop(None)

    def Invoke(self, request):  # noqa: N802 - the gRPC method name
        try:
            return super().Invoke(request)
        finally:
            self._close_thread_loop()

    def ReadResource(self, request):  # noqa: N802 - the gRPC method name
        try:
            return super().ReadResource(request)
        finally:
            self._close_thread_loop()

    def RegisterResourceOutputs(self, request):  # noqa: N802 - the gRPC method name
        self.registered_outputs.add(request.urn)
        return super().RegisterResourceOutputs(request)

    def RegisterResource(self, request):  # noqa: N802 - the gRPC method name
        try:
            response = super().RegisterResource(request)
            if request.type != "pulumi:pulumi:Stack":
                self._record(request, response)
            return response
        finally:
            self._close_thread_loop()

    def _record(self, request, response) -> None:
        registration = self.resources[response.urn]
        parent = None if _type_of(request.parent) in ("", "pulumi:pulumi:Stack") else _name_of(request.parent)
        self.recorded.append(RecordedResource(
            type=request.type, name=request.name, parent=parent,
            inputs=_plain(_rpc.deserialize_properties(request.object)),
            urn=response.urn, custom=bool(request.custom), state=_plain(registration.state),
            parent_urn=None if parent is None else request.parent))


def _tree_order(resources: list[RecordedResource]) -> list[RecordedResource]:
    """Each parent followed by its children, siblings by name: the same order on every run.

    Registrations reach the monitor from a thread pool, so their arrival order varies.
    """
    children: dict[str | None, list[RecordedResource]] = {}
    for r in resources:
        children.setdefault(r.parent_urn, []).append(r)
    ordered: list[RecordedResource] = []

    def walk(parent: str | None) -> None:
        for r in sorted(children.get(parent, []), key=lambda r: (r.name, r.type)):
            ordered.append(r)
            walk(r.urn)

    walk(None)
    seen = {id(r) for r in ordered}
    return ordered + [r for r in resources if id(r) not in seen]  # parents never recorded (none expected)


def _plain(value: Any) -> Any:
    """Numbers the engine sent as floats become ints where whole (the wire has only doubles)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if not str(k).startswith("__")}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def run_offline(config: InfraConfig, stack: str, secrets: Secrets | None = None) -> OfflineRun:
    """Build the program for `config` under mocks; return what it registered and exported.

    Raises whatever the program raises (a ConfigError for bad config, a ValidationError when
    the exported outputs break the contract).
    """
    if secrets is None:
        needs_key = config.vector_store.kind == "pinecone"
        secrets = Secrets(pinecone_api_key=pulumi.Output.secret(PLAN_SECRET) if needs_key else None)
    chosen = secrets

    def program() -> None:
        export(build(config, chosen))

    return _run(config, stack, program)


def run_entrypoint(stack: str, raw_config: dict[str, Any], secret_config: dict[str, str] | None = None) -> OfflineRun:
    """Run `infra/__main__.py` itself, as `pulumi up` would, with the stack file's config.

    `raw_config` holds the stack file's `stackwise:` keys (namespace stripped); structured
    values are handed over JSON-encoded, as the Pulumi engine does.
    """
    import json
    import runpy
    from pathlib import Path

    config = InfraConfig.load(raw_config, f"stacks/Pulumi.{stack}.yaml")
    engine_config = {f"stackwise:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in raw_config.items()}
    engine_config.update(secret_config or {})
    main = Path(__file__).with_name("__main__.py")

    def program() -> None:
        runpy.run_path(str(main), run_name="__main__")

    return _run(config, stack, program, engine_config)


def _run(config: InfraConfig, stack: str, program, engine_config: dict[str, str] | None = None) -> OfflineRun:
    recorder = _Recorder(config)
    monitor = _Monitor(recorder)
    _settings.ROOT.set(None)  # a fresh root Stack resource for every run
    engine_config = engine_config or {}
    pulumi.runtime.set_all_config(engine_config, [k for k in engine_config if not k.startswith("stackwise:")])
    pulumi.runtime.set_mocks(recorder, project="stackwise", stack=stack, preview=False, monitor=monitor)
    _settings.SETTINGS.rpc_manager.clear()
    _settings.SETTINGS.outputs.clear()
    _sync_await(run_pulumi_func(program))
    root = _settings.get_root_resource()
    assert root is not None
    exported = {k: _sync_await(pulumi.Output.from_input(v).future())
                for k, v in root.outputs.items()}  # type: ignore[attr-defined]
    return OfflineRun(stack=stack, config=config, resources=_tree_order(monitor.recorded),
                      outputs=StackOutputs.model_validate(exported), exported=exported,
                      registered_outputs=set(monitor.registered_outputs))
