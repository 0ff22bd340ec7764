"""Azure deploy: model versions as deployments of the stack's Azure ML managed online endpoint
(`azure-ai-ml` `MLClient.online_endpoints` / `online_deployments`, built like the compute
adapter's client: same credentials, same error mapping, same custom-cloud endpoint for tests).

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
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any

from stackwise import catalog
from stackwise.deploy import DeployBackend, Deployment, DeployTarget, Variant, variant_name
from stackwise.errors import ConfigError, JobNotFoundError, SpecError

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
    if endpoint_output.serving_image:
        return endpoint_output.serving_image
    training = stack.outputs.training_image
    if training and ".azurecr.io/" in training:
        return training.rsplit("/", 1)[0] + "/serve:latest"
    raise ConfigError(f"stack {stack.name!r} exports no serving image for endpoint {endpoint_output.name!r}",
                      where="stack outputs: endpoints[].serving_image",
                      fix="export serving_image for the endpoint (the Pulumi program does)")


def instance_type(stack: Any, endpoint_output: Any) -> str:
    gpu = endpoint_output.gpu or stack.outputs.default_gpu
    if not gpu:
        return CPU_SIZE
    return catalog.offer(gpu, "azure", endpoint_output.gpu_count).instance


def deployment_request(stack: Any, endpoint_output: Any, target: DeployTarget) -> dict[str, Any]:
    """What one version's deployment holds, as data (checked before any call)."""
    if not target.artifact_uri.startswith("az://"):
        raise SpecError(f"{target.key} lives at {target.artifact_uri}, which the Azure endpoint cannot read",
                        where=f"model registry, {target.key} source",
                        fix=f"register the version in the stack's artifact store ({stack.outputs.artifact_store})")
    return {
        "name": deployment_name(target.model, target.version),
        "endpoint": endpoint_output.name,
        "image": serving_image(stack, endpoint_output),
        "instance_type": instance_type(stack, endpoint_output),
        "instance_count": endpoint_output.min_replicas,
        "environment_variables": {"STACKWISE_MODEL": target.model, "STACKWISE_MODEL_VERSION": target.version,
                                  "STACKWISE_MODEL_URI": target.artifact_uri,
                                  "STACKWISE_BASE_MODEL": target.base_model or ""},
        "tags": {TAG_MODEL: target.model, TAG_VERSION: target.version, "stackwise-stack": stack.name},
    }


class AzureMLDeploy(DeployBackend):
    """The stack's Azure ML managed online endpoint; each version is one deployment."""

    cloud = "azure"

    def __init__(self, stack: Any, credential: Any = None, arm_endpoint: str | None = None):
        super().__init__(stack)
        self._credential = credential
        self._arm_endpoint = arm_endpoint
        self._compute: Any = None

    @property
    def compute(self) -> Any:
        """The compute adapter: it builds the MLClient (credentials, endpoint) and maps errors."""
        if self._compute is None:
            from stackwise.adapters.compute.azureml import AzureMLCompute

            self._compute = AzureMLCompute(self.stack, credential=self._credential,
                                           arm_endpoint=self._arm_endpoint or os.environ.get("STACKWISE_AZURE_ARM_ENDPOINT"))
        return self._compute

    @property
    def client(self) -> Any:
        return self.compute.client

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """One MLClient call, retried on throttling and 5xx; a missing resource means the stack is not up."""
        from stackwise.adapters.compute._cloud import with_retries

        def once() -> Any:
            try:
                return self.compute._call(what, fn, *args, **kwargs)
            except JobNotFoundError:
                raise ConfigError(f"Azure ML has no resource for {what}", where=self.compute.workspace_id,
                                  fix="`pulumi up` the stack (it creates the endpoint), then `stackwise sync`") from None

        return with_retries(once, self.compute.retry, f"azure: {what}")

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
        requests = [deployment_request(self.stack, out, t) for t in new]  # all checked before any call
        names = {v.key: v.name for v in current.variants}
        for target, request in zip(new, requests):
            self._create(request)  # a new deployment gets no traffic until the split below
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
        poller = self._call(f"delete deployment {variant.name}", self.client.online_deployments.begin_delete,
                            name=variant.name, endpoint_name=out.name)
        self._call(f"delete deployment {variant.name}", poller.result)
        return self.describe(endpoint)


def _state(resource: Any) -> str:
    """`provisioning_state` in lower case (the SDK gives an enum or a str; absent reads as succeeded)."""
    value = getattr(resource, "provisioning_state", None) or "Succeeded"
    return str(getattr(value, "value", value)).lower()
