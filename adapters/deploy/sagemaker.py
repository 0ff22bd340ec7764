"""AWS deploy: model versions as production variants of one SageMaker real-time endpoint (boto3).

Per version, one SageMaker Model: the stack's serving image, the version's artifact (a folder in
S3 as an uncompressed `ModelDataSource` S3 prefix, or a `.tar.gz` as `ModelDataUrl`) and an
environment naming the version and its base model (what the `serve` image loads the adapter
onto). Per set of versions, one EndpointConfig with one ProductionVariant per version, each
weighted by its traffic percent, on the catalog's instance type for the endpoint's GPU.

- a new endpoint: CreateEndpoint;
- a version added: a new EndpointConfig, then UpdateEndpoint (SageMaker's blue/green swap);
- weights only: UpdateEndpointWeightsAndCapacities (no new model, config or instances).

Autoscaling (when the endpoint output has `scaling`): each variant `deploy` adds becomes an
Application Auto Scaling target (`endpoint/E/variant/V`, between `min_replicas` and
`scaling.max_replicas`) with the target-tracking policies the Pulumi program gives the endpoint's
own variant (`tracking_policies`, the same data as infra/aws/endpoint.py's, for variant V). A
variant must exist before it is registered, so `deploy` then waits for InService. AWS refuses an
UpdateEndpoint that removes an autoscaled variant or changes its instance type, so those variants'
targets (and with them their policies) are deregistered first; the update keeps the instance
counts autoscaling has reached (RetainAllVariantProperties, weights excepted).

Each Model gets the stack's `VpcConfig` (private subnets and security group, from the stack's
`network` output), as the model the Pulumi program made has: the serving container then reads
its artifact from S3 through the VPC's gateway endpoint and has no internet route.

Names derive from the endpoint, the version and a digest of what it runs, so a retried or
repeated deploy finds what it made and creates nothing twice. Requests are pure functions
(`model_request`, `endpoint_config_request`); they never hold credentials.

(About 430 lines: the autoscaling builders stay beside the backend because infra/aws/endpoint.py
gives the endpoint's own variant its policies from them, so one definition serves both.)
"""

from __future__ import annotations

import time
from typing import Any

from stackwise.adapters.clouds import aws
from stackwise.deploy import DeployBackend, Deployment, DeployTarget, Variant, variant_name
from stackwise.errors import CloudError, ConfigError, SpecError
from stackwise.serve_targets import rag_deploy_environment

from . import base

STATES = {"Creating": "creating", "Updating": "updating", "SystemUpdating": "updating", "RollingBack": "updating",
          "InService": "ready", "Deleting": "updating", "Failed": "failed", "UpdateRollbackFailed": "failed",
          # takes no requests (SageMaker's own words); no deploy brings it back by waiting
          "OutOfService": "failed"}
#: EndpointStatus values in which the endpoint will not become InService by waiting
_STUCK = ("Failed", "UpdateRollbackFailed", "OutOfService")
ENV_MODEL, ENV_VERSION, ENV_BASE = "STACKWISE_MODEL", "STACKWISE_MODEL_VERSION", "STACKWISE_BASE_MODEL"
# Application Auto Scaling on a variant, as AWS documents it; infra/aws/endpoint.py builds its policies here too.
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
COOLDOWNS = (60, 300)  # default (scale-out, scale-in) seconds
INVOCATIONS = "SageMakerVariantInvocationsPerInstance"
# requests in the model container, queued ones included, until the last streamed token; 10 s resolution
CONCURRENCY = "SageMakerVariantConcurrentRequestsPerModelHighResolution"
GPU_NAMESPACE = "/aws/sagemaker/Endpoints"  # instance metrics: GPUUtilization is 0-100 % per GPU, summed


def variant_resource_id(endpoint_name: str, variant: str = "primary") -> str:
    """Application Auto Scaling's id of a SageMaker variant (RegisterScalableTarget's ResourceId)."""
    return f"endpoint/{endpoint_name}/variant/{variant}"


def _dimensions(endpoint_name: Any, variant: str) -> list[dict[str, Any]]:
    return [{"name": "EndpointName", "value": endpoint_name}, {"name": "VariantName", "value": variant}]


def latency_metric(endpoint_name: Any, variant: str = "primary") -> dict[str, Any]:
    """Average ModelLatency of the variant in milliseconds, 0 while idle (ModelLatency is in
    microseconds and has no data without requests: FILL lets a policy scale in at zero traffic)."""
    return {"metrics": [
        {"id": "latency", "return_data": False, "metric_stat": {"stat": "Average", "metric": {
            "namespace": "AWS/SageMaker", "metric_name": "ModelLatency",
            "dimensions": _dimensions(endpoint_name, variant)}}},
        {"id": "latency_ms", "expression": "FILL(latency, 0) / 1000", "label": "model latency (ms)",
         "return_data": True}]}


def tracking_policies(scaling: Any, target_invocations: int, gpu_count: int, endpoint_name: Any,
                      variant: str = "primary") -> dict[str, dict[str, Any]]:
    """The target-tracking configurations of one variant, by policy-name suffix (`scaling-policy`,
    and `latency-scaling-policy`, scale-out only, when `target_latency_ms` guards another metric),
    in the snake_case form infra/aws/endpoint.py gives Pulumi (`api_form` turns it into boto3's).
    `scaling` is the contract's EndpointScaling or infra's ScalingConfig (the same field names)."""
    cooldowns = {"scale_out_cooldown": scaling.scale_out_cooldown_seconds or COOLDOWNS[0],
                 "scale_in_cooldown": scaling.scale_in_cooldown_seconds or COOLDOWNS[1]}
    metric = scaling.metric or "invocations"
    if metric == "invocations":
        primary = {"target_value": target_invocations,
                   "predefined_metric_specification": {"predefined_metric_type": INVOCATIONS}}
    elif metric == "concurrency":
        primary = {"target_value": scaling.target_concurrency,
                   "predefined_metric_specification": {"predefined_metric_type": CONCURRENCY}}
    elif metric == "utilization":  # GPUUtilization sums the instance's GPUs
        primary = {"target_value": scaling.gpu_percent * gpu_count, "customized_metric_specification": {
            "namespace": GPU_NAMESPACE, "metric_name": "GPUUtilization", "statistic": "Average",
            "dimensions": _dimensions(endpoint_name, variant)}}
    else:
        primary = {"target_value": scaling.target_latency_ms,
                   "customized_metric_specification": latency_metric(endpoint_name, variant)}
    policies = {"scaling-policy": {**primary, **cooldowns}}
    if metric != "latency" and scaling.target_latency_ms is not None:
        policies["latency-scaling-policy"] = {
            "target_value": scaling.target_latency_ms,
            "customized_metric_specification": latency_metric(endpoint_name, variant),
            "disable_scale_in": True, **cooldowns}
    return policies


def api_form(value: Any) -> Any:
    """snake_case keys -> the API's PascalCase (`scale_in_cooldown` -> `ScaleInCooldown`), deeply."""
    if isinstance(value, dict):
        return {"".join(part.title() for part in key.split("_")): api_form(v) for key, v in value.items()}
    if isinstance(value, list):
        return [api_form(v) for v in value]
    return value


def scaling_requests(stack: Any, endpoint_output: Any, variant: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """RegisterScalableTarget and PutScalingPolicy requests that autoscale `variant` as the endpoint's
    `scaling` says, between `min_replicas` and `scaling.max_replicas`."""
    scaling = endpoint_output.scaling
    target = {"ServiceNamespace": "sagemaker", "ResourceId": variant_resource_id(endpoint_output.name, variant),
              "ScalableDimension": SCALABLE_DIMENSION}
    register = {**target, "MinCapacity": endpoint_output.min_replicas, "MaxCapacity": scaling.max_replicas,
                "Tags": {"stackwise-stack": stack.name}}
    tracking = tracking_policies(scaling, scaling.target_invocations, endpoint_output.gpu_count,
                                 endpoint_output.name, variant)
    policies = [{**target, "PolicyName": f"{variant}-{suffix}", "PolicyType": "TargetTrackingScaling",
                 "TargetTrackingScalingPolicyConfiguration": api_form(config)} for suffix, config in tracking.items()]
    return register, policies


def variants_to_deregister(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[str]:
    """Variants (ProductionVariants of the old and new configs) whose scalable target AWS would not
    let UpdateEndpoint keep: removed, or with another instance type."""
    kept = {v["VariantName"]: v.get("InstanceType") for v in new}
    return [v["VariantName"] for v in old if kept.get(v["VariantName"], "") != v.get("InstanceType")]


def serving_image(stack: Any, endpoint_output: Any) -> str:
    """The endpoint's serving image, else the stack registry's `serve` tag (the Pulumi default)."""
    return base.serving_image(
        stack, endpoint_output, lambda training: training.rsplit(":", 1)[0] + ":serve" if ".dkr.ecr." in training else None,
        fix="export serving_image for the endpoint (or a training_image in ECR, whose :serve tag is used)")


def instance_type(stack: Any, endpoint_output: Any) -> str:
    return aws.instance_type(base.endpoint_gpu(stack, endpoint_output), endpoint_output.gpu_count)


ENV_VALUE_MAX = 1024  # CreateModel's limit on one environment value (botocore: EnvironmentValue)


NAME_HEAD = 54  # characters of `<endpoint>-<variant>` (models) or `<endpoint>` (configs) before "-<digest>"


def owned_name_pattern(endpoint: str) -> str:
    """The IAM resource-name pattern of every model and endpoint config `deploy` makes for `endpoint`
    (`model_name`, `endpoint_config_request`): infra/aws/step_permissions.py grants on exactly it."""
    return f"{endpoint[:NAME_HEAD]}-*"


def model_name(endpoint: str, target: DeployTarget, image: str, rag_env: dict[str, str] | None = None) -> str:
    """SageMaker model names: at most 63 characters of letters, digits and '-'. A RAG app's pinned
    generator is part of what the model runs (a model version's name is as it always was)."""
    parts: tuple[Any, ...] = (target.artifact_uri, target.base_model, image)
    if rag_env:
        parts += (rag_env,)
    return f"{endpoint}-{variant_name(target.model, target.version)}"[:NAME_HEAD] + "-" + base.digest(*parts)


def model_request(stack: Any, endpoint_output: Any, target: DeployTarget,
                  rag_env: dict[str, str] | None = None) -> dict[str, Any]:
    """The CreateModel request for one version, as data; `rag_env` (`rag_deploy_environment`) is added to a
    RAG app version's environment."""
    role = stack.outputs.job_role
    if not role:
        raise ConfigError(f"stack {stack.name!r} exports no job_role", where="stack outputs: job_role",
                          fix="export the SageMaker execution role ARN (the Pulumi program does)")
    base.check_artifact(stack, target, "s3", "SageMaker")
    image = serving_image(stack, endpoint_output)
    container: dict[str, Any] = {"Image": image, "Environment": {
        ENV_MODEL: target.model, ENV_VERSION: target.version, ENV_BASE: target.base_model or "",
        "SM_NUM_GPUS": str(endpoint_output.gpu_count), **(rag_env or {})}}
    for variable, value in container["Environment"].items():
        if len(value) > ENV_VALUE_MAX:
            raise ConfigError(f"{target.key}'s container variable {variable} is {len(value)} characters, over "
                              f"SageMaker's {ENV_VALUE_MAX}", where=f"stack {stack.name} outputs",
                              fix="shorten the stack outputs it carries (secret names, URIs)")
    if target.artifact_uri.endswith(".tar.gz"):
        container["ModelDataUrl"] = target.artifact_uri
    else:  # a save_pretrained folder: served as is, no tarball
        container["ModelDataSource"] = {"S3DataSource": {"S3Uri": target.artifact_uri.rstrip("/") + "/",
                                                         "S3DataType": "S3Prefix", "CompressionType": "None"}}
    request = {"ModelName": model_name(endpoint_output.name, target, image, rag_env), "ExecutionRoleArn": role,
               "PrimaryContainer": container,
               "Tags": [{"Key": "stackwise-stack", "Value": stack.name}, {"Key": "stackwise-model", "Value": target.key}]}
    vpc = aws.vpc_config(stack)
    if vpc:  # the same private network the Pulumi-made model runs in
        request["VpcConfig"] = vpc
    return request


def endpoint_config_request(stack: Any, endpoint_output: Any, variants: list[dict[str, Any]]) -> dict[str, Any]:
    """The CreateEndpointConfig request: one ProductionVariant per (variant name, model name, weight)."""
    production = [{"VariantName": v["name"], "ModelName": v["model_name"],
                   "InstanceType": v.get("instance_type") or instance_type(stack, endpoint_output),
                   "InitialInstanceCount": int(v.get("count") or endpoint_output.min_replicas),
                   "InitialVariantWeight": float(v["weight"])} for v in variants]
    name = f"{endpoint_output.name}"[:NAME_HEAD] + "-" + base.digest(production)
    return {"EndpointConfigName": name, "ProductionVariants": production,
            "Tags": [{"Key": "stackwise-stack", "Value": stack.name}]}


class SageMakerDeploy(DeployBackend):
    """The stack's SageMaker endpoint; variants are named `<model>-v<version>`."""

    cloud = "aws"

    def __init__(self, stack: Any, session: Any = None, wait_timeout: float = 1800.0):
        super().__init__(stack)
        self._session = session
        self.wait_timeout = wait_timeout
        self._client: Any = None
        self._scaling_client: Any = None
        self._models: dict[str, dict[str, Any]] = {}

    def _boto(self, service: str) -> Any:
        if self._session is None:
            self._session = aws.session(self.stack, "the SageMaker deploy adapter")
        return self._session.client(service)

    @property
    def sagemaker(self) -> Any:
        if self._client is None:
            self._client = self._boto("sagemaker")
        return self._client

    @property
    def autoscaling(self) -> Any:
        """The Application Auto Scaling client (same session as `sagemaker`)."""
        if self._scaling_client is None:
            self._scaling_client = self._boto("application-autoscaling")
        return self._scaling_client

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        return aws.call(lambda: fn(**kwargs), what, stack=self.stack, usage="endpoint")

    # -- reading ----------------------------------------------------------------------------
    def _raw(self, name: str) -> dict[str, Any] | None:
        try:
            return self._call("DescribeEndpoint", self.sagemaker.describe_endpoint, EndpointName=name)
        except CloudError as exc:
            if aws.is_missing(exc):
                return None
            raise

    def _model(self, name: str) -> dict[str, Any]:
        if name not in self._models:
            self._models[name] = self._call("DescribeModel", self.sagemaker.describe_model, ModelName=name)
        return self._models[name]

    def _config_variants(self, config_name: str) -> list[dict[str, Any]]:
        config = self._call("DescribeEndpointConfig", self.sagemaker.describe_endpoint_config,
                            EndpointConfigName=config_name)
        return config["ProductionVariants"]

    def describe(self, endpoint: str | None = None) -> Deployment:
        out = self.endpoint_output(endpoint)
        raw = self._raw(out.name)
        url = out.url or f"https://runtime.sagemaker.{self.stack.region}.amazonaws.com/endpoints/{out.name}/invocations"
        if raw is None:
            return Deployment(endpoint=out.name, cloud=self.cloud, state="absent", url=url)
        state = STATES.get(raw.get("EndpointStatus", ""), "updating")
        weights = {v["VariantName"]: float(v.get("DesiredWeight", v.get("CurrentWeight", 0.0)))
                   for v in raw.get("ProductionVariants", [])}
        total = sum(weights.values()) or 1.0
        variants = []
        for pv in self._config_variants(raw["EndpointConfigName"]):
            env = self._model(pv["ModelName"]).get("PrimaryContainer", {}).get("Environment", {})
            container = self._model(pv["ModelName"]).get("PrimaryContainer", {})
            artifact = container.get("ModelDataUrl") or container.get("ModelDataSource", {}).get(
                "S3DataSource", {}).get("S3Uri")
            weight = weights.get(pv["VariantName"], float(pv.get("InitialVariantWeight", 0.0)))
            variants.append(Variant(model=env.get(ENV_MODEL, pv["ModelName"]), version=env.get(ENV_VERSION, "?"),
                                    traffic=round(100 * weight / total), state=state, name=pv["VariantName"],
                                    artifact_uri=artifact, base_model=env.get(ENV_BASE) or None))
        return Deployment(endpoint=out.name, cloud=self.cloud, state=state, url=url, variants=variants)

    def _wait_in_service(self, name: str) -> None:
        """SageMaker refuses to change an endpoint that is Creating or Updating."""
        deadline, delay = time.monotonic() + self.wait_timeout, 0.1
        while True:
            raw = self._raw(name)
            status = (raw or {}).get("EndpointStatus")
            if status in (None, "InService"):
                return
            if status in _STUCK:
                raise SpecError(f"endpoint {name} is {status}: {raw.get('FailureReason', '')}",
                                where=f"SageMaker endpoint {name}",
                                fix="see its CloudWatch logs; fix the model and deploy again")
            if time.monotonic() > deadline:
                raise SpecError(f"endpoint {name} stayed {status} for {self.wait_timeout:.0f} s",
                                where=f"SageMaker endpoint {name}", fix="rerun the deploy once it is InService")
            time.sleep(delay)
            delay = min(delay * 2, 15.0)

    # -- autoscaling ------------------------------------------------------------------------
    def _scalable(self, endpoint: str, variants: list[str]) -> list[str]:
        """Those of `variants` that are Application Auto Scaling targets now."""
        ids = {variant_resource_id(endpoint, v): v for v in variants}
        found: list[str] = []
        for start in range(0, len(ids), 50):  # DescribeScalableTargets takes at most 50 ids
            answer = self._call("DescribeScalableTargets", self.autoscaling.describe_scalable_targets,
                                ServiceNamespace="sagemaker", ScalableDimension=SCALABLE_DIMENSION,
                                ResourceIds=list(ids)[start:start + 50])
            found += [ids[t["ResourceId"]] for t in answer.get("ScalableTargets", []) if t["ResourceId"] in ids]
        return found

    def _deregister(self, endpoint: str, variants: list[str]) -> list[str]:
        """Deregister the targets of `variants` that have one (AWS deletes their policies with them)."""
        gone = self._scalable(endpoint, variants) if variants else []
        for variant in gone:
            self._call("DeregisterScalableTarget", self.autoscaling.deregister_scalable_target,
                       ServiceNamespace="sagemaker", ResourceId=variant_resource_id(endpoint, variant),
                       ScalableDimension=SCALABLE_DIMENSION)
        return gone

    def _register(self, out: Any, variants: list[str]) -> None:
        """Make `variants` scalable targets with the endpoint's policies, once the endpoint is InService."""
        if out.scaling is None or not variants:
            return
        self._wait_in_service(out.name)
        for variant in variants:
            register, policies = scaling_requests(self.stack, out, variant)
            self._call("RegisterScalableTarget", self.autoscaling.register_scalable_target, **register)
            for policy in policies:
                self._call("PutScalingPolicy", self.autoscaling.put_scaling_policy, **policy)

    def _update(self, out: Any, old: list[dict[str, Any]], config: dict[str, Any]) -> list[str]:
        """UpdateEndpoint to `config`, first deregistering the targets AWS would refuse to keep;
        returns those of them still in the new config (to register again)."""
        self._wait_in_service(out.name)
        gone = self._deregister(out.name, variants_to_deregister(old, config["ProductionVariants"]))
        retain = {"RetainAllVariantProperties": True,  # the instance counts autoscaling reached
                  "ExcludeRetainedVariantProperties": [{"VariantPropertyType": "DesiredWeight"}]} if out.scaling else {}
        self._call("UpdateEndpoint", self.sagemaker.update_endpoint, EndpointName=out.name,
                   EndpointConfigName=config["EndpointConfigName"], **retain)
        names = {v["VariantName"] for v in config["ProductionVariants"]}
        return [v for v in gone if v in names]

    # -- writing ----------------------------------------------------------------------------
    def _ensure_model(self, request: dict[str, Any]) -> None:
        try:
            self._call("DescribeModel", self.sagemaker.describe_model, ModelName=request["ModelName"])
            return
        except CloudError as exc:
            if not aws.is_missing(exc):
                raise
        self._call("CreateModel", self.sagemaker.create_model, **request)

    def _ensure_config(self, request: dict[str, Any]) -> None:
        try:
            self._call("DescribeEndpointConfig", self.sagemaker.describe_endpoint_config,
                       EndpointConfigName=request["EndpointConfigName"])
            return
        except CloudError as exc:
            if not aws.is_missing(exc):
                raise
        self._call("CreateEndpointConfig", self.sagemaker.create_endpoint_config, **request)

    def deploy(self, targets: list[DeployTarget], traffic: dict[str, int], endpoint: str | None = None) -> Deployment:
        out = self.endpoint_output(endpoint)
        current = self.describe(out.name)
        new, split = self.plan(current, targets, traffic)
        requests = [model_request(self.stack, out, t, rag_deploy_environment(self.stack, t))
                    for t in new]  # all checked (a RAG app's generator pinned) before any call
        if current.state != "absent" and not new:
            if split != current.traffic:
                self._wait_in_service(out.name)
                self._call("UpdateEndpointWeightsAndCapacities", self.sagemaker.update_endpoint_weights_and_capacities,
                           EndpointName=out.name, DesiredWeightsAndCapacities=[
                               {"VariantName": v.name, "DesiredWeight": float(split[v.key])} for v in current.variants])
            return self.describe(out.name)
        variants: list[dict[str, Any]] = []
        old: list[dict[str, Any]] = []
        if current.state != "absent":
            raw = self._raw(out.name) or {}
            old = self._config_variants(raw["EndpointConfigName"])
            for pv in old:
                key = next(v.key for v in current.variants if v.name == pv["VariantName"])
                variants.append({"name": pv["VariantName"], "model_name": pv["ModelName"], "weight": split[key],
                                 "instance_type": pv.get("InstanceType"), "count": pv.get("InitialInstanceCount")})
        for target, request in zip(new, requests):
            self._ensure_model(request)
            variants.append({"name": variant_name(target.model, target.version), "model_name": request["ModelName"],
                             "weight": split[target.key]})
        config = endpoint_config_request(self.stack, out, variants)
        self._ensure_config(config)
        again: list[str] = []
        if current.state == "absent":
            self._call("CreateEndpoint", self.sagemaker.create_endpoint, EndpointName=out.name,
                       EndpointConfigName=config["EndpointConfigName"],
                       Tags=[{"Key": "stackwise-stack", "Value": self.stack.name}])
        else:
            again = self._update(out, old, config)
        self._register(out, again + [variant_name(t.model, t.version) for t in new])
        return self.describe(out.name)

    def undeploy(self, key: str, endpoint: str | None = None) -> Deployment:
        out = self.endpoint_output(endpoint)
        current = self.describe(out.name)
        if self.check_removable(current, key) is None:
            return current
        raw = self._raw(out.name) or {}
        old = self._config_variants(raw["EndpointConfigName"])
        kept = [{"name": pv["VariantName"], "model_name": pv["ModelName"], "instance_type": pv.get("InstanceType"),
                 "count": pv.get("InitialInstanceCount"),
                 "weight": next(v.traffic for v in current.variants if v.name == pv["VariantName"])}
                for pv in old if next(v.key for v in current.variants if v.name == pv["VariantName"]) != key]
        config = endpoint_config_request(self.stack, out, kept)
        self._ensure_config(config)
        self._register(out, self._update(out, old, config))
        return self.describe(out.name)
