"""Azure deploy: model versions as deployments of the stack's Azure ML managed online endpoint
(`azure-ai-ml` `MLClient.online_endpoints` / `online_deployments`; the client, credentials, error
mapping and custom-cloud endpoint for tests are `stackwise.adapters.clouds.azure`'s, as the compute
adapter's are).

The Pulumi program creates the endpoint (`endpoints[].name` is its name); `deploy` fills it:
- a version added: one `ManagedOnlineDeployment` named `deployment_name(model, version)` with the
  stack's serving image (as an environment with its routes), the catalog's VM size for the
  endpoint's GPU, `min_replicas` instances, tags naming the model and version, and environment
  variables naming the version's artifact (`az://...`, read by the serving image through fsspec
  with the endpoint's identity) and its base model. No model asset is registered: the artifact
  stays where the registry put it;
- the split: the endpoint's `traffic` map (deployment name -> percent), one endpoint update; a
  change of weights alone is only that update (no deployment is created or touched);
- undeploy: `online_deployments.begin_delete` once the version carries 0%.

Deployments that stackwise did not make (no `stackwise-model` tag, e.g. the program's own
`primary`) are not variants: a split from stackwise gives them 0%, and they are never deleted.
Long-running operations are awaited (`.result()`).

Autoscaling (when the endpoint output has `scaling`): each deployment `deploy` adds gets an Azure
Monitor autoscale setting (`Microsoft.Insights/autoscalesettings`, ARM REST with the adapter's
credential) between `min_replicas` and `scaling.max_replicas`, with the rules the Pulumi program
gives `primary` (`scale_rules`, the same data as infra/azure/endpoint.py's, filtered to this
deployment); undeploy deletes it before the deployment (ARM keeps a setting whose target is gone).
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any

from stackwise.adapters.clouds import azure
from stackwise.adapters.clouds.common import Retry, require_store, with_retries
from stackwise.deploy import DeployBackend, Deployment, DeployTarget, Variant, variant_name
from stackwise.errors import ConfigError
from stackwise.serve_targets import rag_deploy_environment

from . import base

CPU_SIZE = "Standard_DS3_v2"
TAG_MODEL, TAG_VERSION = "stackwise-model", "stackwise-version"
PORT = 8080
# The serving image's routes, for every Azure ML environment that runs it (this adapter's and the
# Pulumi program's, infra/azure/endpoint.py). Liveness must answer while the model loads (`GET /`),
# or Azure restarts a slow-loading container in a loop; readiness (`/health`) turns 200 once the
# model is loaded.
INFERENCE_ROUTES = {"liveness_route": "/", "readiness_route": "/health", "scoring_route": "/v1/completions"}
# Azure ML's rule for endpoint and deployment names (azure-ai-ml's
# `validate_endpoint_or_deployment_name`): 3-32 characters, a letter first, letters, digits and
# hyphens, a letter or digit last.
NAME_MAX = 32
_VALID_NAME = re.compile(r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$")
# Azure Monitor autoscale (the values infra/azure/endpoint.py uses for the endpoint's own deployment).
AUTOSCALE_API = "2022-10-01"
SCALE_IN_GPU_PERCENT = 25  # remove a replica below this GPU busy % (or half of gpu_percent, if lower)
COOLDOWNS = (300, 600)  # default (scale-out, scale-in) seconds: a managed replica takes minutes to start
DEPLOYMENT_METRICS = "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/deployments"
ENDPOINT_METRICS = "Microsoft.MachineLearningServices/workspaces/onlineEndpoints"


def inference_config() -> dict[str, dict[str, Any]]:
    """The environment's `inference_config`: port and path of each route."""
    return {route: {"port": PORT, "path": path} for route, path in INFERENCE_ROUTES.items()}


def deployment_name(model: str, version: str) -> str:
    """The Azure deployment name of one model version: `variant_name` (`chat-v3`) when that is
    already a valid Azure name and says the model exactly; otherwise a letter-first, hyphenated
    head cut to fit 32 characters, then `-v<version>` and 6 hex digits hashed from the model name and
    version, so two versions (or two models cut to the same head) never share a name. The same
    inputs give the same name on every run."""
    plain = variant_name(model, version)
    if len(plain) <= NAME_MAX and _VALID_NAME.match(plain) and plain == plain.lower() \
            and re.fullmatch(r"[a-z][a-z0-9-]*", model) and re.fullmatch(r"[0-9]+", version):
        return plain
    digest = hashlib.sha256(f"{model}\0{version}".encode()).hexdigest()[:6]
    head = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")
    if not head[:1].isalpha():
        head = f"m-{head}".rstrip("-")
    tail = "-v" + re.sub(r"[^a-z0-9]+", "-", version.lower()).strip("-")
    tail = f"{tail}-{digest}" if len(tail) <= 10 else f"-{digest}"
    return head[:NAME_MAX - len(tail)].rstrip("-") + tail


def serving_image(stack: Any, endpoint_output: Any) -> str:
    """The endpoint's serving image, else the `serve` image beside the training image in the registry."""
    return base.serving_image(
        stack, endpoint_output,
        lambda training: training.rsplit("/", 1)[0] + "/serve:latest" if ".azurecr.io/" in training else None,
        fix="export serving_image for the endpoint (the Pulumi program does)")


def instance_type(stack: Any, endpoint_output: Any) -> str:
    return azure.vm_size(base.endpoint_gpu(stack, endpoint_output), endpoint_output.gpu_count, CPU_SIZE)


def deployment_request(stack: Any, endpoint_output: Any, target: DeployTarget,
                       rag_env: dict[str, str] | None = None) -> dict[str, Any]:
    """What one version's deployment holds, as data (checked before any call); `rag_env`
    (`rag_deploy_environment`) is added to a RAG app version's environment variables."""
    base.check_artifact(stack, target, "az", "the Azure endpoint")
    return {
        "name": deployment_name(target.model, target.version),
        "endpoint": endpoint_output.name,
        "image": serving_image(stack, endpoint_output),
        "instance_type": instance_type(stack, endpoint_output),
        "instance_count": endpoint_output.min_replicas,
        "environment_variables": {"STACKWISE_MODEL": target.model, "STACKWISE_MODEL_VERSION": target.version,
                                  "STACKWISE_MODEL_URI": target.artifact_uri,
                                  "STACKWISE_BASE_MODEL": target.base_model or "", **(rag_env or {})},
        "tags": {TAG_MODEL: target.model, TAG_VERSION: target.version, "stackwise-stack": stack.name},
    }


def _duration(seconds: int) -> str:
    """ISO 8601, as Azure autoscale cooldowns are written."""
    return f"PT{seconds // 60}M" if seconds % 60 == 0 else f"PT{seconds}S"


def scale_rules(scaling: Any, target_invocations: int, deployment: str = "primary",
                where: str = "stack outputs: endpoints[].scaling.metric") -> list[dict[str, Any]]:
    """The autoscale rules of one deployment as data (metric, source `deployment` or `endpoint`,
    operator, threshold, direction, cooldown; for endpoint metrics the `deployment` dimension filter
    and whether the value is divided by the instance count): what infra/azure/endpoint.py gives
    `primary`. `scaling` is the contract's EndpointScaling or infra's ScalingConfig. Raises
    ConfigError for what Azure cannot scale on (concurrency)."""
    if scaling.metric == "concurrency":
        raise ConfigError(
            "endpoint.scaling.metric concurrency is not available on Azure: managed online endpoints publish no "
            "per-replica queue or in-flight request metric", where=where,
            fix="use latency (with targetLatencyMs), invocations (endpoint.targetInvocations) or utilization")
    out_s, in_s = scaling.scale_out_cooldown_seconds or COOLDOWNS[0], scaling.scale_in_cooldown_seconds or COOLDOWNS[1]
    scale_out = {"operator": "GreaterThan", "direction": "Increase", "cooldown": _duration(out_s)}
    only_this = [{"dimension_name": "deployment", "operator": "Equals", "values": [deployment]}]
    metric = scaling.metric or "utilization"
    rules = []
    if metric == "utilization":
        rules.append({"metric": "GpuUtilizationPercentage", "source": "deployment", "threshold": scaling.gpu_percent,
                      **scale_out})
    elif metric == "invocations":
        rules.append({"metric": "RequestsPerMinute", "source": "endpoint", "dimensions": only_this,
                      "divide_per_instance": True, "threshold": target_invocations, **scale_out})
    if scaling.target_latency_ms is not None:  # milliseconds
        rules.append({"metric": "RequestLatency", "source": "endpoint", "dimensions": only_this,
                      "divide_per_instance": False, **scale_out, "threshold": scaling.target_latency_ms})
    rules.append({"metric": "GpuUtilizationPercentage", "source": "deployment", "operator": "LessThan",
                  "threshold": max(1, min(SCALE_IN_GPU_PERCENT, scaling.gpu_percent // 2)), "direction": "Decrease",
                  "cooldown": _duration(in_s)})
    return rules


def _arm_rule(rule: dict[str, Any], endpoint_id: str, deployment_id: str) -> dict[str, Any]:
    """One `scale_rules` entry as ARM's ScaleRule (autoscale API 2022-10-01)."""
    own = rule["source"] == "deployment"
    trigger: dict[str, Any] = {
        "metricName": rule["metric"], "metricNamespace": DEPLOYMENT_METRICS if own else ENDPOINT_METRICS,
        "metricResourceUri": deployment_id if own else endpoint_id, "timeGrain": "PT1M", "statistic": "Average",
        "timeWindow": "PT10M", "timeAggregation": "Average", "operator": rule["operator"],
        "threshold": rule["threshold"]}
    if rule.get("dimensions"):  # ARM spells these three keys capitalized
        trigger["dimensions"] = [
            {"DimensionName": d["dimension_name"], "Operator": d["operator"], "Values": d["values"]}
            for d in rule["dimensions"]]
    if rule.get("divide_per_instance") is not None:
        trigger["dividePerInstance"] = rule["divide_per_instance"]
    action = {"direction": rule["direction"], "type": "ChangeCount", "value": "1", "cooldown": rule["cooldown"]}
    return {"metricTrigger": trigger, "scaleAction": action}


def autoscale_setting_path(stack: Any, endpoint: str, deployment: str) -> str:
    """The ARM path of one deployment's autoscale setting (in the stack's resource group)."""
    outputs = stack.outputs
    return (f"/subscriptions/{outputs.azure_subscription_id}/resourceGroups/{outputs.azure_resource_group}"
            f"/providers/Microsoft.Insights/autoscalesettings/{endpoint}-{deployment}-autoscale")


def autoscale_setting(stack: Any, endpoint_output: Any, deployment: str, workspace_id: str) -> dict[str, Any]:
    """The autoscale setting (ARM PUT body) of one deployment: `min_replicas` to `scaling.max_replicas`."""
    scaling = endpoint_output.scaling
    endpoint_id = f"{workspace_id}/onlineEndpoints/{endpoint_output.name}"
    deployment_id = f"{endpoint_id}/deployments/{deployment}"
    low, high = str(endpoint_output.min_replicas), str(scaling.max_replicas)
    rules = [_arm_rule(r, endpoint_id, deployment_id)
             for r in scale_rules(scaling, scaling.target_invocations, deployment)]
    profile = {"name": "default", "capacity": {"minimum": low, "maximum": high, "default": low}, "rules": rules}
    return {"location": stack.region, "tags": {"stackwise-stack": stack.name, "stackwise-deployment": deployment},
            "properties": {"name": autoscale_setting_path(stack, endpoint_output.name, deployment).rsplit("/", 1)[1],
                           "enabled": True, "targetResourceUri": deployment_id, "targetResourceLocation": stack.region,
                           "profiles": [profile]}}


class AzureMLDeploy(DeployBackend):
    """The stack's Azure ML managed online endpoint; each version is one deployment."""

    cloud = "azure"

    def __init__(self, stack: Any, credential: Any = None, arm_endpoint: str | None = None):
        super().__init__(stack)
        self._credential = credential
        self._arm_endpoint = arm_endpoint or os.environ.get(azure.ENV_ARM_ENDPOINT)
        self._client: Any = None
        self._arm: azure.ArmClient | None = None
        self.retry = Retry()

    @property
    def workspace_id(self) -> str:
        """The ARM id of the stack's workspace (ConfigError when an output is missing)."""
        return azure.workspace_id(self.stack)

    @property
    def credential(self) -> Any:
        """One credential for MLClient and the autoscale settings (DefaultAzureCredential unless given)."""
        if self._credential is None:
            self._credential = azure.credential()
        return self._credential

    @property
    def client(self) -> Any:
        """The workspace's MLClient (built on first use: the constructor makes no call)."""
        if self._client is None:
            self.workspace_id  # noqa: B018 - the outputs it needs, checked first
            require_store(self.stack, "az", "Azure")
            self._client = azure.ml_client(self.stack, self.credential, self._arm_endpoint,
                                           "the Azure ML deploy adapter")
        return self._client

    def _arm_call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One ARM REST request (autoscale settings), its errors raised as azure-core's, as MLClient's are."""
        if self._arm is None:
            self._arm = azure.ArmClient(self.credential, self._arm_endpoint)
        return self._arm.send(method, path, AUTOSCALE_API, body)

    def _set_autoscale(self, body: dict[str, Any] | None, path: str) -> None:
        """PUT one deployment's autoscale setting (`body`), or DELETE it (None; a missing one is fine)."""
        name = path.rsplit("/", 1)[1]
        if body is None:
            self._call(f"delete autoscale setting {name}", self._arm_call, "DELETE", path)
        else:
            self._call(f"create autoscale setting {name}", self._arm_call, "PUT", path, body)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """One MLClient call, retried on throttling and 5xx; a missing resource means the stack is not up."""
        return with_retries(lambda: azure.call(lambda: fn(*args, **kwargs), what, stack=self.stack,
                                               not_found=self._not_found),
                            self.retry, f"azure: {what}")

    def _not_found(self, what: str) -> ConfigError:
        return ConfigError(f"Azure ML has no resource for {what}", where=self.workspace_id,
                           fix="`pulumi up` the stack (it creates the endpoint), then `stackwise sync`")

    # -- reading ----------------------------------------------------------------------------
    def describe(self, endpoint: str | None = None) -> Deployment:
        out = self.endpoint_output(endpoint)
        ep = self._call(f"get online endpoint {out.name}", self.client.online_endpoints.get, out.name)
        traffic = {k: int(v) for k, v in (ep.traffic or {}).items()}
        variants = []
        for dep in self._call(f"list deployments of {out.name}", lambda: list(
                self.client.online_deployments.list(endpoint_name=out.name))):
            tags = dict(dep.tags or {})
            if TAG_MODEL not in tags:
                continue  # not made by stackwise
            env = dict(dep.environment_variables or {})
            state = _state(dep)
            variants.append(Variant(model=tags[TAG_MODEL], version=tags.get(TAG_VERSION, "?"),
                                    traffic=traffic.get(dep.name, 0),
                                    state="ready" if state == "succeeded" else ("failed" if state == "failed" else "updating"),
                                    name=dep.name, artifact_uri=env.get("STACKWISE_MODEL_URI"),
                                    base_model=env.get("STACKWISE_BASE_MODEL") or None))
        variants.sort(key=lambda v: (v.model, int(v.version) if v.version.isdigit() else 0, v.version))
        ep_state = _state(ep)
        if not variants:
            state = "absent"
        elif ep_state == "failed" or any(v.state == "failed" for v in variants):
            state = "failed"
        elif ep_state not in ("succeeded", "") or any(v.state != "ready" for v in variants):
            state = "updating"
        else:
            state = "ready"
        return Deployment(endpoint=out.name, cloud=self.cloud, state=state, url=out.url or ep.scoring_uri,
                          variants=variants)

    # -- writing ----------------------------------------------------------------------------
    def _create(self, request: dict[str, Any]) -> None:
        from azure.ai.ml.entities import Environment, ManagedOnlineDeployment

        environment = Environment(image=request["image"], inference_config=inference_config())
        deployment = ManagedOnlineDeployment(
            name=request["name"], endpoint_name=request["endpoint"], environment=environment,
            instance_type=request["instance_type"], instance_count=request["instance_count"],
            environment_variables=request["environment_variables"], tags=request["tags"])
        poller = self._call(f"create deployment {request['name']}", self.client.online_deployments.begin_create_or_update,
                            deployment)
        self._call(f"create deployment {request['name']}", poller.result)

    def _set_traffic(self, name: str, traffic: dict[str, int]) -> None:
        ep = self._call(f"get online endpoint {name}", self.client.online_endpoints.get, name)
        ep.traffic = dict(traffic)
        poller = self._call(f"update traffic of {name}", self.client.online_endpoints.begin_create_or_update, ep)
        self._call(f"update traffic of {name}", poller.result)

    def deploy(self, targets: list[DeployTarget], traffic: dict[str, int], endpoint: str | None = None) -> Deployment:
        out = self.endpoint_output(endpoint)
        current = self.describe(endpoint)
        new, split = self.plan(current, targets, traffic)
        requests = [deployment_request(self.stack, out, t, rag_deploy_environment(self.stack, t))
                    for t in new]  # all checked (a RAG app's generator pinned) before any call
        scaled = [autoscale_setting(self.stack, out, r["name"], self.workspace_id) if out.scaling else None
                  for r in requests]
        names = {v.key: v.name for v in current.variants}
        for target, request, setting in zip(new, requests, scaled):
            self._create(request)  # a new deployment gets no traffic until the split below
            if setting is not None:
                self._set_autoscale(setting, autoscale_setting_path(self.stack, out.name, request["name"]))
            names[target.key] = request["name"]
        wanted = {names[key]: pct for key, pct in split.items()}
        ep = self._call(f"get online endpoint {out.name}", self.client.online_endpoints.get, out.name)
        now = {k: int(v) for k, v in (ep.traffic or {}).items() if int(v)}
        if now != {k: v for k, v in wanted.items() if v}:
            # Deployments stackwise did not make get 0%: the endpoint serves exactly this split.
            self._set_traffic(out.name, {**{k: 0 for k in now}, **wanted})
        return self.describe(endpoint)

    def undeploy(self, key: str, endpoint: str | None = None) -> Deployment:
        out = self.endpoint_output(endpoint)
        current = self.describe(endpoint)
        variant = self.check_removable(current, key)
        if variant is None:
            return current
        if out.scaling is not None:  # first, so that autoscale never acts on a deployment being deleted
            self._set_autoscale(None, autoscale_setting_path(self.stack, out.name, variant.name))
        poller = self._call(f"delete deployment {variant.name}", self.client.online_deployments.begin_delete,
                            name=variant.name, endpoint_name=out.name)
        self._call(f"delete deployment {variant.name}", poller.result)
        return self.describe(endpoint)


def _state(resource: Any) -> str:
    """`provisioning_state` in lower case (the SDK gives an enum or a str; absent reads as succeeded)."""
    value = getattr(resource, "provisioning_state", None) or "Succeeded"
    return str(getattr(value, "value", value)).lower()
