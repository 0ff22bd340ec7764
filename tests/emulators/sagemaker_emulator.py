"""moto in server mode on 127.0.0.1, patched in-process where moto 5.2 differs from SageMaker.

Real HTTP, real boto3 (S3, SageMaker, CloudWatch Logs, STS). Patches, all in this process:
- a training job starts `InProgress` (secondary status `Starting`) and stays so until the test
  moves it (`move`), instead of moto's instant `Completed`;
- `StopTrainingJob` exists: InProgress -> Stopping, then Stopped a moment later, as SageMaker does;
- `CreateTrainingJob` with a name in use answers `ResourceInUse`, as SageMaker does (moto overwrites);
- faults on demand: the next N CreateTrainingJob calls answer `ThrottlingException`, or create
  the job and then answer `InternalFailure` (the answer lost after the job was made), or
  `ResourceLimitExceeded`, or the ValidationException SageMaker gives for an unknown instance type.
Endpoint patches (deploy):
- endpoint configs accept the GPU instance types SageMaker hosts on (moto's list lacks ml.g5/g6/p4/p5);
- `CreateModel`, `CreateEndpointConfig` and `CreateEndpoint` with a name in use answer
  ValidationException "Cannot create already existing ...", as SageMaker does (moto overwrites);
- `UpdateEndpoint` exists: the endpoint moves to the new config `Updating`, then `InService` a
  moment later; `UpdateEndpointWeightsAndCapacities` on an endpoint not InService is refused;
- a variant created with weight 0 keeps it (moto drops falsy weights);
- `UpdateEndpoint` with `RetainAllVariantProperties` keeps each same-named variant's instance
  count and weight (less those named in `ExcludeRetainedVariantProperties`), as SageMaker does.
Application Auto Scaling (a SageMaker variant as a scalable target), as AWS documents it:
- `RegisterScalableTarget` on `endpoint/E/variant/V` needs endpoint E InService with variant V
  (moto registers any id); `PutScalingPolicy` needs the target registered first
  (ObjectNotFoundException); `DeregisterScalableTarget` deletes the target's policies too;
- `UpdateEndpoint` fails while it would remove a variant that is a scalable target, or change its
  instance type ("Update endpoints that use auto scaling"). The wording of these refusals is this
  emulator's, not a captured AWS answer.
Network (both): a `VpcConfig` on CreateTrainingJob or CreateModel must name subnets and security
groups that exist in the account's EC2 (moto's EC2 backend, made by the test through the same
server), all in one VPC, else ValidationException, as SageMaker checks before it creates the ENIs;
moto keeps the VpcConfig and DescribeTrainingJob / DescribeModel return it.
"""

from __future__ import annotations

import threading
from collections import deque
from datetime import datetime, timezone
from typing import Any

ACCOUNT = "123456789012"


class SageMakerEmulator:
    def __init__(self, region: str = "us-east-1"):
        self.region = region
        self.faults: deque[str] = deque()
        self.create_calls = 0
        self._server: Any = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "SageMakerEmulator":
        from moto.server import ThreadedMotoServer

        self._patch()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()

    def reset(self) -> None:
        self.faults.clear()
        self.create_calls = 0
        self.backend.training_jobs.clear()
        self.backend.endpoints.clear()
        self.backend.endpoint_configs.clear()
        self.backend._models.clear()
        self.scaling.targets.clear()
        self.scaling.policies.clear()
        self.update_delay = 0.2

    @property
    def backend(self) -> Any:
        from moto.sagemaker.models import sagemaker_backends

        return sagemaker_backends[ACCOUNT][self.region]

    @property
    def scaling(self) -> Any:
        """moto's Application Auto Scaling backend of the account and region."""
        from moto.applicationautoscaling.models import applicationautoscaling_backends

        return applicationautoscaling_backends[ACCOUNT][self.region]

    def scalable_variants(self, endpoint: str) -> dict[str, Any]:
        """The variants of `endpoint` registered as scalable targets, by variant name."""
        prefix = f"endpoint/{endpoint}/variant/"
        targets = self.scaling.targets.get("sagemaker:variant:DesiredInstanceCount", {})
        return {rid[len(prefix):]: t for rid, t in targets.items() if rid.startswith(prefix)}

    def scaling_policies(self, endpoint: str, variant: str) -> dict[str, Any]:
        """The scaling policies of one variant, by policy name."""
        rid = f"endpoint/{endpoint}/variant/{variant}"
        return {p.policy_name: p for p in self.scaling.policies.values() if p.resource_id == rid}

    # -- what the tests drive ------------------------------------------------------------------
    def job(self, name: str) -> Any:
        return self.backend.training_jobs[name]

    def move(self, name: str, status: str, secondary: str | None = None, failure: str | None = None) -> None:
        """Set a job's status as SageMaker would report it (InProgress, Completed, Failed, Stopped)."""
        job = self.backend.training_jobs.get(name)
        if job is None:  # reset meanwhile (a Stopping timer outliving its test)
            return
        now = datetime.now(timezone.utc)
        job.training_job_status = status
        job.secondary_status = secondary or {"InProgress": "Training", "Completed": "Completed",
                                             "Failed": "Failed", "Stopped": "Stopped"}.get(status, status)
        job.last_modified_time = now
        if status == "InProgress":
            job.training_start_time = job.training_start_time or now
        if status in ("Completed", "Failed", "Stopped"):
            job.training_end_time = now
        if failure:
            job.failure_reason = failure

    def write_logs(self, name: str, lines: list[str], host: str = "algo-1") -> None:
        """Put lines in the job's CloudWatch stream, as the container's stdout would."""
        import time

        import boto3

        logs = boto3.client("logs", region_name=self.region, endpoint_url=self.endpoint)
        group, stream = "/aws/sagemaker/TrainingJobs", f"{name}/{host}-1700000000"
        try:
            logs.create_log_group(logGroupName=group)
        except logs.exceptions.ResourceAlreadyExistsException:
            pass
        try:
            logs.create_log_stream(logGroupName=group, logStreamName=stream)
        except logs.exceptions.ResourceAlreadyExistsException:
            pass
        now = int(time.time() * 1000)
        logs.put_log_events(logGroupName=group, logStreamName=stream,
                            logEvents=[{"timestamp": now + i, "message": line} for i, line in enumerate(lines)])

    # -- the patches ---------------------------------------------------------------------------
    def _patch(self) -> None:
        from moto.core.exceptions import ServiceException
        from moto.core.responses import ActionResult
        from moto.sagemaker import models, responses
        from moto.sagemaker.exceptions import ResourceInUseException, ValidationError

        emulator = self
        original_init = models.FakeTrainingJob.__init__

        def init(job: Any, *args: Any, **kwargs: Any) -> None:
            original_init(job, *args, **kwargs)
            job.training_job_status = "InProgress"
            job.secondary_status = "Starting"
            job.training_start_time = None
            job.training_end_time = None
            job.failure_reason = None
            job.model_artifacts = None

        class Fault(ServiceException):
            def __init__(self, code: str, message: str):
                self.code = code
                super().__init__(message)

        original_create = responses.SageMakerResponse.create_training_job

        def create(response: Any) -> Any:
            emulator.create_calls += 1
            name = response._get_param("TrainingJobName")
            fault = emulator.faults.popleft() if emulator.faults else None
            if fault == "throttle":
                raise Fault("ThrottlingException", "Rate exceeded")
            if fault == "quota":
                raise Fault("ResourceLimitExceeded", "The account-level service limit 'ml.g5.xlarge for "
                            "training job usage' is 0 Instances")
            if fault == "instance-type":
                raise ValidationError("1 validation error detected: Value 'ml.g5.xlarge' at "
                                      "'resourceConfig.instanceType' failed to satisfy constraint: the instance "
                                      "type is not supported in this region")
            check_vpc(response)
            if name in response.sagemaker_backend.training_jobs:
                raise ResourceInUseException(f"Training job names must be unique within an AWS account and "
                                             f"region, and a training job with this name already exists ({name})")
            result = original_create(response)
            # moto keeps no Environment; the container runner (sagemaker_runner.py) needs it
            response.sagemaker_backend.training_jobs[name].environment = response._get_param("Environment") or {}
            if fault == "lost-answer":
                raise Fault("InternalFailure", "An internal error occurred")
            return result

        def check_vpc(response: Any) -> None:
            vpc = response._get_param("VpcConfig")
            if not vpc:
                return
            from moto.ec2.models import ec2_backends

            ec2 = ec2_backends[ACCOUNT][emulator.region]
            subnets, groups = vpc.get("Subnets") or [], vpc.get("SecurityGroupIds") or []
            if not subnets or not groups:
                raise ValidationError("1 validation error detected: VpcConfig needs at least one subnet and one "
                                      "security group")
            vpcs = set()
            for subnet in subnets:
                found = next((zone[subnet] for zone in ec2.subnets.values() if subnet in zone), None)
                if found is None:
                    raise ValidationError(f"The subnet ID '{subnet}' does not exist")
                vpcs.add(found.vpc_id)
            for group in groups:
                found = ec2.get_security_group_from_id(group)
                if found is None:
                    raise ValidationError(f"The security group '{group}' does not exist")
                vpcs.add(found.vpc_id)
            if len(vpcs) != 1:
                raise ValidationError("Subnets and security groups of VpcConfig must belong to the same VPC")

        def stop(response: Any) -> Any:
            name = response._get_param("TrainingJobName")
            job = response.sagemaker_backend.training_jobs.get(name)
            if job is None:
                raise ValidationError(f"Could not find training job '{name}'.")
            if job.training_job_status != "InProgress":
                raise ValidationError(f"The request was rejected because the training job is in status "
                                      f"{job.training_job_status}.")
            job.training_job_status, job.secondary_status = "Stopping", "Stopping"
            threading.Timer(0.2, lambda: emulator.move(name, "Stopped")).start()
            return ActionResult({})

        self.update_delay = 0.2
        gpu_types = {"ml.g5.xlarge", "ml.g5.2xlarge", "ml.g5.4xlarge", "ml.g5.8xlarge", "ml.g5.12xlarge",
                     "ml.g5.24xlarge", "ml.g5.48xlarge", "ml.g6.xlarge", "ml.g6.2xlarge", "ml.g6.12xlarge",
                     "ml.g6.48xlarge", "ml.p4d.24xlarge", "ml.p4de.24xlarge", "ml.p5.48xlarge"}
        original_validate = models.FakeEndpointConfig.validate_instance_type

        def validate_instance_type(config: Any, instance_type: str) -> None:
            if instance_type not in gpu_types:
                original_validate(config, instance_type)

        original_variants = models.FakeEndpoint._process_production_variants

        def process_variants(endpoint: Any, variants: list[dict[str, Any]]) -> list[dict[str, Any]]:
            out = original_variants(endpoint, variants)
            for done, given in zip(out, variants):
                if "InitialVariantWeight" in given:
                    done["CurrentWeight"] = done["DesiredWeight"] = float(given["InitialVariantWeight"])
            return out

        def refuse_existing(kind: str, table: str, param: str, original: Any) -> Any:
            def create(response: Any) -> Any:
                name = response._get_param(param)
                if name in getattr(response.sagemaker_backend, table):
                    raise ValidationError(f"Cannot create already existing {kind} \"{name}\".")
                if kind == "model":
                    check_vpc(response)
                return original(response)
            return create

        def update_endpoint(response: Any) -> Any:
            backend = response.sagemaker_backend
            name, config_name = response._get_param("EndpointName"), response._get_param("EndpointConfigName")
            endpoint = backend.endpoints.get(name)
            if endpoint is None:
                raise ValidationError(f"Could not find endpoint \"{name}\".")
            if endpoint.endpoint_status != "InService":
                raise ValidationError(f"Cannot update in-progress endpoint \"{name}\".")
            config = backend.describe_endpoint_config(config_name)
            check_scalable_variants(endpoint, config["ProductionVariants"])
            before = {v["VariantName"]: v for v in endpoint.production_variants}
            endpoint.endpoint_config_name = config_name
            endpoint.production_variants = endpoint._process_production_variants(config["ProductionVariants"])
            if response._get_param("RetainAllVariantProperties"):
                excluded = {e.get("VariantPropertyType")
                            for e in response._get_param("ExcludeRetainedVariantProperties") or []}
                for variant in endpoint.production_variants:
                    old = before.get(variant["VariantName"])
                    for kind, keys in (("DesiredInstanceCount", ("CurrentInstanceCount", "DesiredInstanceCount")),
                                       ("DesiredWeight", ("CurrentWeight", "DesiredWeight"))):
                        if old is not None and kind not in excluded:
                            variant.update({k: old[k] for k in keys if k in old})
            endpoint.endpoint_status = "Updating"
            endpoint.last_modified_time = datetime.now(timezone.utc)

            def done() -> None:
                endpoint.endpoint_status = "InService"
            threading.Timer(emulator.update_delay, done).start()
            return ActionResult({"EndpointArn": endpoint.arn})

        def check_scalable_variants(endpoint: Any, variants: list[dict[str, Any]]) -> None:
            old_config = emulator.backend.describe_endpoint_config(endpoint.endpoint_config_name)
            old_types = {v["VariantName"]: v.get("InstanceType") for v in old_config["ProductionVariants"]}
            new_types = {v["VariantName"]: v.get("InstanceType") for v in variants}
            for name in emulator.scalable_variants(endpoint.endpoint_name):
                if name in old_types and (name not in new_types or new_types[name] != old_types[name]):
                    raise ValidationError(
                        f"The variant \"{name}\" of endpoint \"{endpoint.endpoint_name}\" is a scalable target of "
                        "Application Auto Scaling: deregister it before an update that removes it or changes its "
                        "instance type.")

        original_weights = responses.SageMakerResponse.update_endpoint_weights_and_capacities

        def update_weights(response: Any) -> Any:
            endpoint = response.sagemaker_backend.endpoints.get(response._get_param("EndpointName"))
            if endpoint is not None and endpoint.endpoint_status != "InService":
                raise ValidationError(f"Cannot update in-progress endpoint \"{endpoint.endpoint_name}\".")
            return original_weights(response)

        models.FakeEndpointConfig.validate_instance_type = validate_instance_type  # type: ignore[method-assign]
        models.FakeEndpoint._process_production_variants = process_variants  # type: ignore[method-assign]
        R = responses.SageMakerResponse
        R.create_model = refuse_existing("model", "_models", "ModelName", R.create_model)  # type: ignore[method-assign]
        R.create_endpoint_config = refuse_existing("endpoint configuration", "endpoint_configs",  # type: ignore[method-assign]
                                                   "EndpointConfigName", R.create_endpoint_config)
        R.create_endpoint = refuse_existing("endpoint", "endpoints", "EndpointName", R.create_endpoint)  # type: ignore[method-assign]
        R.update_endpoint = update_endpoint  # type: ignore[attr-defined]
        R.update_endpoint_weights_and_capacities = update_weights  # type: ignore[method-assign]
        self._patch_scaling()
        models.FakeTrainingJob.__init__ = init  # type: ignore[method-assign]
        responses.SageMakerResponse.create_training_job = create  # type: ignore[method-assign]
        responses.SageMakerResponse.stop_training_job = stop  # type: ignore[attr-defined]

    def _patch_scaling(self) -> None:
        """Application Auto Scaling on SageMaker variants, where moto 5.2 differs from AWS."""
        from moto.applicationautoscaling import models as scaling
        from moto.core.exceptions import JsonRESTError

        emulator = self
        backend_cls = scaling.ApplicationAutoscalingBackend
        original_register = backend_cls.register_scalable_target
        original_deregister = backend_cls.deregister_scalable_target
        original_put = backend_cls.put_scaling_policy

        def register(backend: Any, namespace: str, r_id: str, dimension: str, *args: Any, **kwargs: Any) -> Any:
            if namespace == "sagemaker" and r_id.startswith("endpoint/"):
                _, endpoint_name, _, variant = (r_id.split("/") + ["", "", "", ""])[:4]
                endpoint = emulator.backend.endpoints.get(endpoint_name)
                names = {v["VariantName"] for v in (endpoint.production_variants if endpoint else [])}
                if endpoint is None or endpoint.endpoint_status != "InService" or variant not in names:
                    raise scaling.AWSValidationException(
                        f"The endpoint variant {r_id} does not exist or its endpoint is not InService.")
            return original_register(backend, namespace, r_id, dimension, *args, **kwargs)

        def deregister(backend: Any, namespace: str, r_id: str, dimension: str) -> None:
            original_deregister(backend, namespace, r_id, dimension)
            for key, policy in list(backend.policies.items()):
                if (policy.service_namespace, policy.resource_id, policy.scalable_dimension) == (namespace, r_id,
                                                                                                 dimension):
                    del backend.policies[key]

        def put(backend: Any, policy_name: str, service_namespace: str, resource_id: str, scalable_dimension: str,
                *args: Any, **kwargs: Any) -> Any:
            if not backend._scalable_target_exists(resource_id, scalable_dimension):
                raise JsonRESTError("ObjectNotFoundException", f"No scalable target registered for service namespace: "
                                    f"{service_namespace}, resource ID: {resource_id}, scalable dimension: "
                                    f"{scalable_dimension}")
            return original_put(backend, policy_name, service_namespace, resource_id, scalable_dimension,
                                *args, **kwargs)

        backend_cls.register_scalable_target = register  # type: ignore[method-assign]
        backend_cls.deregister_scalable_target = deregister  # type: ignore[method-assign]
        backend_cls.put_scaling_policy = put  # type: ignore[method-assign]
