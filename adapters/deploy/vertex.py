"""GCP deploy: model versions as deployed models of the stack's Vertex AI endpoint
(`google.cloud.aiplatform_v1` over REST, clients and error mapping from `stackwise.adapters.clouds.gcp`).

Per version, one Vertex Model uploaded with `models:upload` under a stable `modelId` (the
endpoint, version and a digest of artifact, base and image), holding the version's artifact
(`artifactUri`) and the stack's serving image with an environment naming the version and its
base model. The Pulumi program creates the endpoint (its id is the `endpoints[].name` output);
`deploy` fills it:

- a version added: `endpoints:deployModel` with the catalog's machine for the endpoint's GPU, the
  endpoint's autoscaling (`maxReplicaCount`, `autoscalingMetricSpecs` from `endpoints[].scaling`)
  and a `trafficSplit` in which "0" is the model being deployed;
- weights only: a PATCH of the endpoint with `updateMask=trafficSplit` (no model, no redeploy);
- undeploy: `endpoints:undeployModel` with the remaining split.

Long-running operations are awaited (`operation.result`). The request builders are pure.

Throttling (429 that is not a spent quota) and 5xx answers are retried with backoff, as on the other
clouds. Reads and the traffic PATCH (it sets the whole split) are simply sent again. A write is sent
again only once a read shows that the failed attempt left nothing behind, since its answer may have
been lost after Vertex acted: the model looked up by its id, the endpoint's deployed models by their
model, an undeployed model's id looked for; so no version is deployed twice.
"""

from __future__ import annotations

import json
from typing import Any

from stackwise.adapters.clouds import gcp
from stackwise.adapters.clouds.common import Retry, require_store, unless_landed, with_retries
from stackwise.deploy import DeployBackend, Deployment, DeployTarget, Variant, variant_name
from stackwise.errors import ConfigError
from stackwise.serve_targets import rag_deploy_environment

from . import base

CPU_MACHINE = "n1-standard-4"
LABEL_MODEL, LABEL_VERSION = "stackwise-model", "stackwise-version"
OPERATION_TIMEOUT_S = 3600


def serving_image(stack: Any, endpoint_output: Any) -> str:
    """The endpoint's serving image, else the registry's `serve` tag beside the training image."""
    return base.serving_image(
        stack, endpoint_output,
        lambda training: training.rsplit("/", 1)[0] + "/serve:latest" if "-docker.pkg.dev/" in training else None,
        fix="export serving_image for the endpoint (the Pulumi program does)")


def machine_spec(stack: Any, endpoint_output: Any) -> dict[str, Any]:
    return gcp.machine_spec(base.endpoint_gpu(stack, endpoint_output), endpoint_output.gpu_count, CPU_MACHINE)


def model_id(endpoint: str, target: DeployTarget, image: str, rag_env: dict[str, str] | None = None) -> str:
    """Vertex model ids: a letter first, then at most 62 of [a-z0-9-]. A RAG app's pinned generator
    is part of what the model runs (a model version's id is as it always was)."""
    head = gcp.label(f"m-{endpoint}-{variant_name(target.model, target.version)}").replace("_", "-")[:53]
    parts: tuple[Any, ...] = (target.artifact_uri, target.base_model, image)
    if rag_env:
        parts += (rag_env,)
    return f"{head}-{base.digest(*parts)}"


def upload_request(stack: Any, endpoint_output: Any, target: DeployTarget,
                   rag_env: dict[str, str] | None = None) -> dict[str, Any]:
    """The models:upload body (v1 REST JSON) for one version; `rag_env` (`rag_deploy_environment`) is added
    to a RAG app version's container environment."""
    base.check_artifact(stack, target, "gs", "Vertex AI")
    image = serving_image(stack, endpoint_output)
    env = {"STACKWISE_MODEL": target.model, "STACKWISE_MODEL_VERSION": target.version,
           "STACKWISE_BASE_MODEL": target.base_model or "", **(rag_env or {})}
    return {
        "modelId": model_id(endpoint_output.name, target, image, rag_env),
        "model": {
            "displayName": variant_name(target.model, target.version),
            "artifactUri": target.artifact_uri,
            "containerSpec": {"imageUri": image, "env": [{"name": k, "value": v} for k, v in sorted(env.items())],
                              "ports": [{"containerPort": 8080}], "predictRoute": "/v1/completions",
                              "healthRoute": "/health"},
            "labels": {LABEL_MODEL: gcp.label(target.model), LABEL_VERSION: gcp.label(target.version),
                       "stackwise-stack": gcp.label(stack.name)},
        },
    }


def dedicated_resources(stack: Any, endpoint_output: Any) -> dict[str, Any]:
    """`dedicatedResources` of every version deployed on the endpoint: the catalog's machine, and
    the endpoint's autoscaling (`scaling`: up to `max_replicas`, on its `vertex_metric_specs`, as
    the Pulumi program deploys its own model). An endpoint output without `scaling` (synced before
    it existed) keeps a fixed `min_replicas`. Vertex fixes both at deploy time (Immutable)."""
    scaling = endpoint_output.scaling
    resources: dict[str, Any] = {"machineSpec": machine_spec(stack, endpoint_output),
                                 "minReplicaCount": endpoint_output.min_replicas,
                                 "maxReplicaCount": scaling.max_replicas if scaling else endpoint_output.min_replicas}
    if scaling and scaling.vertex_metric_specs:
        resources["autoscalingMetricSpecs"] = [{"metricName": s.metric_name, "target": s.target}
                                               for s in scaling.vertex_metric_specs]
    return resources


def deployed_model(stack: Any, endpoint_output: Any, target: DeployTarget, model: str) -> dict[str, Any]:
    """The DeployedModel for one version (v1 REST JSON): its model and `dedicated_resources`."""
    return {"model": model, "displayName": variant_name(target.model, target.version),
            "dedicatedResources": dedicated_resources(stack, endpoint_output)}


class VertexDeploy(DeployBackend):
    """The stack's Vertex AI endpoint; each version is one deployed model."""

    cloud = "gcp"

    def __init__(self, stack: Any, credentials: Any = None, api_endpoint: str | None = None):
        super().__init__(stack)
        if not stack.outputs.gcp_project:
            raise ConfigError(f"stack {stack.name!r} exports no gcp_project", where="stack outputs: gcp_project",
                              fix="export gcp_project (the Pulumi program does)")
        self.parent = gcp.where(stack)
        self._credentials = credentials
        self._api_endpoint = api_endpoint
        self._clients: tuple[Any, Any] | None = None
        self._labels: dict[str, dict[str, str]] = {}
        self.retry = Retry()

    @property
    def clients(self) -> tuple[Any, Any]:
        """(EndpointServiceClient, ModelServiceClient), with the stack's credentials (a clear
        CredentialsError without them)."""
        if self._clients is None:
            require_store(self.stack, "gs", "GCP")
            self._types = gcp.aiplatform("the Vertex AI deploy adapter")
            self._clients = tuple(gcp.client(kind, self.stack, self._credentials, self._api_endpoint,
                                             "the Vertex AI deploy adapter")
                                  for kind in ("EndpointServiceClient", "ModelServiceClient"))
        return self._clients

    def _once(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """One API call; a missing resource means the stack is not up (see `gcp.call` for the rest)."""
        return gcp.call(lambda: fn(*args, **kwargs), what, stack=self.stack, not_found=self._not_found)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """An idempotent call (a read, the traffic PATCH), retried on throttling and 5xx."""
        return with_retries(lambda: self._once(what, fn, *args, **kwargs), self.retry, f"gcp: {what}")

    def _write(self, what: str, send: Any, landed: Any) -> Any:
        """A write and its long-running operation, awaited (`send()` returns what the caller needs),
        retried on throttling and 5xx; after a failed attempt, `landed()` (a read) returns that value
        when Vertex acted all the same, else None, and only then is the write sent again."""
        return with_retries(unless_landed(lambda: self._once(what, send), lambda: self._once(f"check {what}", landed)),
                            self.retry, f"gcp: {what}")

    def _not_found(self, what: str) -> ConfigError:
        return ConfigError(f"Vertex AI has no resource for {what}", where=self.parent,
                           fix="`pulumi up` the stack (it creates the endpoint), then `stackwise sync`")

    def resource(self, endpoint: str | None = None) -> str:
        name = self.endpoint_name(endpoint)
        return name if name.startswith("projects/") else f"{self.parent}/endpoints/{name}"

    def _json(self, message: Any) -> dict[str, Any]:
        return json.loads(type(message).to_json(message, use_integers_for_enums=False))

    # -- reading ----------------------------------------------------------------------------
    def _endpoint(self, resource: str) -> dict[str, Any]:
        endpoints, _ = self.clients
        return self._json(self._call(f"get endpoint {resource}", endpoints.get_endpoint, name=resource))

    def _model_labels(self, model: str) -> dict[str, str]:
        if model not in self._labels:
            _, models = self.clients
            self._labels[model] = dict(self._json(self._call(f"get model {model}", models.get_model, name=model))
                                       .get("labels") or {})
        return self._labels[model]

    def describe(self, endpoint: str | None = None) -> Deployment:
        out = self.endpoint_output(endpoint)
        resource = self.resource(endpoint)
        raw = self._endpoint(resource)
        split = {k: int(v) for k, v in (raw.get("trafficSplit") or {}).items()}
        variants = []
        for dm in raw.get("deployedModels") or []:
            labels = self._model_labels(dm["model"])
            variants.append(Variant(model=labels.get(LABEL_MODEL, dm["model"]), version=labels.get(LABEL_VERSION, "?"),
                                    traffic=split.get(dm["id"], 0), state="ready", name=dm["id"]))
        # A Private Service Connect endpoint answers only at a PSC forwarding rule in a consumer
        # network, never on the public REST host: no URL to give for it.
        private = bool((raw.get("privateServiceConnectConfig") or {}).get("enablePrivateServiceConnect"))
        url = out.url or (None if private else f"https://{self.stack.region}-aiplatform.googleapis.com/v1/{resource}")
        return Deployment(endpoint=out.name, cloud=self.cloud, state="ready" if variants else "absent", url=url,
                          variants=variants)

    # -- writing ----------------------------------------------------------------------------
    def _ensure_model(self, request: dict[str, Any]) -> str:
        _, models = self.clients
        name = f"{self.parent}/models/{request['modelId']}"

        from google.api_core.exceptions import NotFound

        def existing() -> str | None:
            try:
                models.get_model(name=name)
                return name
            except NotFound:
                return None

        if self._call(f"get model {name}", existing) is not None:
            return name
        body = self._types.UploadModelRequest(parent=self.parent, model_id=request["modelId"],
                                              model=self._types.Model.from_json(json.dumps(request["model"])))
        return self._write(f"upload model {request['modelId']}",
                           lambda: models.upload_model(request=body).result(timeout=OPERATION_TIMEOUT_S).model,
                           existing)

    def _deployed_models(self, resource: str) -> list[dict[str, Any]]:
        """The endpoint's deployed models, read once (the check after a failed write)."""
        endpoints, _ = self.clients
        return self._json(endpoints.get_endpoint(name=resource)).get("deployedModels") or []

    def _set_split(self, resource: str, split: dict[str, int]) -> None:
        from google.protobuf import field_mask_pb2

        endpoints, _ = self.clients
        body = self._types.Endpoint(name=resource, traffic_split=split)
        self._call(f"update traffic of {resource}", endpoints.update_endpoint, endpoint=body,
                   update_mask=field_mask_pb2.FieldMask(paths=["traffic_split"]))

    def deploy(self, targets: list[DeployTarget], traffic: dict[str, int], endpoint: str | None = None) -> Deployment:
        out = self.endpoint_output(endpoint)
        resource = self.resource(endpoint)
        current = self.describe(endpoint)
        new, split = self.plan(current, targets, traffic)
        uploads = [upload_request(self.stack, out, t, rag_deploy_environment(self.stack, t))
                   for t in new]  # all checked (a RAG app's generator pinned) before any call
        endpoints, _ = self.clients
        ids = {v.key: v.name for v in current.variants}
        now = {v.name: v.traffic for v in current.variants}  # the split on the endpoint, by deployed model id
        for i, (target, request) in enumerate(zip(new, uploads)):
            model = self._ensure_model(request)
            if i == len(new) - 1:  # the last one brings the final split
                step = {"0": split[target.key], **{ids[k]: split[k] for k in ids}}
            else:  # earlier ones join at 0% (or 100% on an empty endpoint, as Vertex requires)
                step = {"0": 0, **now} if now else {"0": 100}
            deployed = self._types.DeployedModel.from_json(json.dumps(deployed_model(self.stack, out, target, model)))
            ids[target.key] = self._write(
                f"deploy {target.key} to {resource}",
                lambda: endpoints.deploy_model(endpoint=resource, deployed_model=deployed, traffic_split=step)
                .result(timeout=OPERATION_TIMEOUT_S).deployed_model.id,
                lambda: next((dm["id"] for dm in self._deployed_models(resource) if dm.get("model") == model), None))
            now = {(ids[target.key] if k == "0" else k): v for k, v in step.items()}
        wanted = {ids[key]: pct for key, pct in split.items()}
        if now != wanted:  # weights only (or versions already there): one PATCH, nothing redeployed
            self._set_split(resource, wanted)
        return self.describe(endpoint)

    def undeploy(self, key: str, endpoint: str | None = None) -> Deployment:
        resource = self.resource(endpoint)
        current = self.describe(endpoint)
        variant = self.check_removable(current, key)
        if variant is None:
            return current
        endpoints, _ = self.clients
        rest = {v.name: v.traffic for v in current.variants if v.key != key}

        def send() -> bool:
            endpoints.undeploy_model(endpoint=resource, deployed_model_id=variant.name, traffic_split=rest
                                     ).result(timeout=OPERATION_TIMEOUT_S)
            return True

        self._write(f"undeploy {key} from {resource}", send,
                    lambda: None if any(dm["id"] == variant.name for dm in self._deployed_models(resource)) else True)
        return self.describe(endpoint)
