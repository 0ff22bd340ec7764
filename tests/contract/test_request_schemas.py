"""Every request the cloud adapters build, judged by the cloud SDK's own schema, for a range of
specs: every GPU each cloud offers, spot and on-demand, one to three nodes, fine-tune and
(sharded) index jobs, long model and version names, and the deploy requests.

- SageMaker: botocore's `ParamValidator` on the service model's input shape (what boto3 runs
  before sending), plus the shape's own `max` and `pattern` constraints, which botocore leaves
  to the server (a 64-character TrainingJobName passes the client and fails at AWS).
- Vertex AI: `json_format.ParseDict` into the aiplatform_v1 protos (CustomJob, Model,
  DeployedModel), unknown fields refused, plus Vertex's documented label rules.
- Azure ML: the ARM body deserialized into azure-ai-ml's REST models (arm_ml_service `JobBase`
  and its `CommandJob` subtype, `OnlineDeployment`), every key checked against the models'
  models' fields (the SDK keeps an unknown key as is, and ARM refuses or drops it), required
  fields, discriminators and enum values. tests/contract/test_compute_azureml.py checks that
  the ARM PUT the SDK sends carries these same fields.

The requests are taken from the adapters' pure builders (`build_request`, `model_request`,
`upload_request`, ...), as the adapters send them; no emulator is involved.
"""

from __future__ import annotations

import functools
import re
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "emulators"))

from cloud_fixtures import OUTPUTS, finetune_spec, index_spec  # noqa: E402

# The longest names the SDK accepts: registry model names (128 of [A-Za-z0-9._-]), version
# numbers, job names (63).
LONG_MODEL = ("Support.Assistant_for-the-Enterprise-Knowledge-Base." + "x" * 128)[:128]
LONG_VERSION = "123456789"
LONG_JOB = ("support-assistant-for-the-enterprise-knowledge-base-" + "x" * 63)[:63]


def _stack(name: str, **extra: Any):
    from stackwise.contract import StackOutputs
    from stackwise.stack import Stack

    outputs = {**OUTPUTS[name], **extra}
    return Stack(name=name, cloud=outputs["cloud"], region=outputs["region"], config={}, source="test",
                 _outputs=StackOutputs.model_validate(outputs))


def _specs(cloud: str) -> list[tuple[str, Any]]:
    """(label, spec) for every GPU the catalog offers on `cloud`, at its counts, spot and not,
    one and several nodes, and index jobs (one worker and sharded)."""
    from stackwise import catalog
    from stackwise.specs import FineTuneSpec, IndexSpec

    specs: list[tuple[str, Any]] = []
    for offer in catalog.offers(cloud):
        for spot in (True, False):
            for nodes in (1, 3):
                label = f"finetune-{offer.gpu}x{offer.count}-{'spot' if spot else 'ondemand'}-{nodes}n"
                specs.append((label, finetune_spec(gpu=offer.gpu, count=offer.count, nodes=nodes, spot=spot,
                                                   strategy="fsdp" if offer.count * nodes > 1 else None,
                                                   max_runtime_s=3600)))
    specs.append(("index", index_spec(0)))
    specs.append(("index-sharded", IndexSpec(source="corpus://docs-1/", index="kb1", workers=3)))
    specs.append(("finetune-long-name", FineTuneSpec(
        base="HuggingFaceTB/SmolLM2-135M-Instruct", data="hf://datasets/acme/support/train.jsonl", name=LONG_JOB,
        compute={"spot": True, "max_runtime_s": 3600})))
    return specs


def _targets(prefix: str):
    from stackwise.deploy import DeployTarget

    return [DeployTarget(model="support-bot", version="3", artifact_uri=f"{prefix}/models/support-bot/3/",
                         base_model="HuggingFaceTB/SmolLM2-135M-Instruct"),
            DeployTarget(model=LONG_MODEL, version=LONG_VERSION, artifact_uri=f"{prefix}/models/long/model.tar.gz"),
            DeployTarget(model="7b-digits-first", version="1", artifact_uri=f"{prefix}/models/7b/1/")]


# -- SageMaker -------------------------------------------------------------------------------------

def sagemaker_findings(operation: str, request: dict[str, Any]) -> list[str]:
    """botocore's validator, then the input shape's max lengths and patterns, recursively."""
    import botocore.session
    from botocore.validate import ParamValidator

    model = botocore.session.get_session().get_service_model("sagemaker").operation_model(operation)
    report = ParamValidator().validate(request, model.input_shape)
    found = [report.generate_report()] if report.has_errors() else []

    def walk(value: Any, shape: Any, path: str) -> None:
        meta = shape.metadata
        if shape.type_name == "structure" and isinstance(value, dict):
            for key, inner in value.items():
                if key in shape.members:
                    walk(inner, shape.members[key], f"{path}.{key}")
        elif shape.type_name == "list" and isinstance(value, list):
            if "max" in meta and len(value) > meta["max"]:
                found.append(f"{path}: {len(value)} items, at most {meta['max']}")
            for i, inner in enumerate(value):
                walk(inner, shape.member, f"{path}[{i}]")
        elif shape.type_name == "map" and isinstance(value, dict):
            if "max" in meta and len(value) > meta["max"]:
                found.append(f"{path}: {len(value)} entries, at most {meta['max']}")
            for key, inner in value.items():
                walk(key, shape.key, f"{path} key {key!r}")
                walk(inner, shape.value, f"{path}.{key}")
        elif shape.type_name == "string" and isinstance(value, str):
            if "max" in meta and len(value) > meta["max"]:
                found.append(f"{path}: {len(value)} characters, at most {meta['max']} ({value[:40]!r}...)")
            if "pattern" in meta and not _pattern(meta["pattern"]).fullmatch(value):
                found.append(f"{path}: {value[:80]!r} does not match {meta['pattern']!r}")
        elif shape.type_name in ("integer", "long", "float", "double") and isinstance(value, (int, float)):
            if "max" in meta and value > meta["max"]:
                found.append(f"{path}: {value} above the maximum {meta['max']}")

    walk(request, model.input_shape, operation)
    return found


def _pattern(pattern: str) -> Any:
    """The service model's patterns are Java regular expressions (`\\p{Alnum}`...): `regex` reads them."""
    import regex

    return regex.compile(pattern, flags=regex.DOTALL)


@pytest.fixture(scope="module")
def botocore_ok():
    pytest.importorskip("botocore", reason="install stackwise[aws]")


def test_every_sagemaker_training_request_passes_the_service_model(botocore_ok):
    from stackwise.adapters.compute.sagemaker import build_request

    stack = _stack("dev-aws", network={"subnets": ["subnet-0a1b2c3d", "subnet-4e5f6a7b"],
                                       "security_groups": ["sg-0123456789abcdef0"]})
    found = {}
    for label, spec in _specs("aws"):
        problems = sagemaker_findings("CreateTrainingJob", build_request(spec, stack))
        if problems:
            found[label] = problems
    assert not found, f"CreateTrainingJob requests SageMaker would refuse: {found}"


def test_every_sagemaker_deploy_request_passes_the_service_model(botocore_ok):
    from stackwise.adapters.deploy.sagemaker import endpoint_config_request, model_request
    from stackwise.contract import EndpointOutput

    stack = _stack("dev-aws")
    found = {}
    for gpu, count in (("A10G", 1), ("A10G", 4), ("A100", 8)):
        endpoint = EndpointOutput(name="sw-dev-chat", gpu=gpu, gpu_count=count, min_replicas=2,
                                  serving_image="123456789012.dkr.ecr.us-east-1.amazonaws.com/sw-dev-images:serve")
        for target in _targets("s3://sw-dev-artifacts"):
            request = model_request(stack, endpoint, target)
            found[f"CreateModel {gpu}x{count} {target.model[:20]}"] = sagemaker_findings("CreateModel", request)
            variants = [{"name": "v-" + target.version[:50], "model_name": request["ModelName"], "weight": 90},
                        {"name": "previous", "model_name": request["ModelName"], "weight": 10}]
            config = endpoint_config_request(stack, endpoint, variants)
            found[f"CreateEndpointConfig {gpu}x{count}"] = sagemaker_findings("CreateEndpointConfig", config)
    found = {k: v for k, v in found.items() if v}
    assert not found, f"SageMaker deploy requests the service would refuse: {found}"


def test_the_sagemaker_check_catches_what_botocore_leaves_to_the_server(botocore_ok):
    from stackwise.adapters.compute.sagemaker import build_request

    request = build_request(finetune_spec(), _stack("dev-aws"))
    assert sagemaker_findings("CreateTrainingJob", request) == []
    bad = {**request, "TrainingJobName": "x" * 64, "StoppingCondition": {"MaxRuntimeInSeconds": "1h"}}
    found = "\n".join(sagemaker_findings("CreateTrainingJob", bad))
    assert "MaxRuntimeInSeconds" in found  # botocore's own validator: a string for an integer
    assert "CreateTrainingJob.TrainingJobName: 64 characters, at most 63" in found
    assert "Unknown parameter" in "\n".join(sagemaker_findings("CreateTrainingJob", {**request, "Spot": True}))


# -- Vertex AI -------------------------------------------------------------------------------------

_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")


def vertex_findings(message_cls: Any, body: dict[str, Any]) -> list[str]:
    """ParseDict into the aiplatform_v1 proto (unknown fields refused), then the label rules
    Vertex documents (keys: a lowercase letter, then at most 62 of [a-z0-9_-]; values: at most 63
    of the same; at most 64 labels) and the 128-character display name."""
    from google.protobuf import json_format

    try:
        json_format.ParseDict(body, message_cls.pb(message_cls()), ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        return [f"{message_cls.__name__}: {exc}"]
    found = []
    labels = body.get("labels") or {}
    if len(labels) > 64:
        found.append(f"{len(labels)} labels, at most 64")
    for key, value in labels.items():
        if not _LABEL_KEY.fullmatch(key):
            found.append(f"label key {key!r} breaks Vertex's label rules")
        if not _LABEL_VALUE.fullmatch(str(value)):
            found.append(f"label {key}={value!r} breaks Vertex's label rules")
    if len(body.get("displayName", "")) > 128:
        found.append(f"displayName of {len(body['displayName'])} characters, at most 128")
    return found


@pytest.fixture(scope="module")
def aiplatform():
    return pytest.importorskip("google.cloud.aiplatform_v1", reason="install stackwise[gcp]")


def test_every_vertex_custom_job_parses_into_the_v1_proto(aiplatform):
    from stackwise.adapters.compute.vertex import build_request

    stack = _stack("dev-gcp", network={"network": "projects/123456789/global/networks/sw-dev-vpc",
                                       "reserved_ip_ranges": ["sw-dev-vertex-range"]})
    found = {}
    for label, spec in _specs("gcp"):
        problems = vertex_findings(aiplatform.CustomJob, build_request(spec, stack))
        if problems:
            found[label] = problems
    assert not found, f"CustomJob bodies Vertex AI would refuse: {found}"


def test_every_vertex_deploy_request_parses_into_the_v1_protos(aiplatform):
    from stackwise.adapters.deploy.vertex import deployed_model, upload_request
    from stackwise.contract import EndpointOutput

    stack = _stack("dev-gcp")
    found = {}
    for gpu, count in (("L4", 1), ("A100", 8), (None, 1)):
        endpoint = EndpointOutput(name="sw-dev-chat", gpu=gpu, gpu_count=count, min_replicas=1,
                                  serving_image="us-central1-docker.pkg.dev/my-project/sw-dev-images/serve:latest")
        for target in _targets("gs://sw-dev-artifacts"):
            upload = upload_request(stack, endpoint, target)
            model_id = upload["modelId"]
            problems = vertex_findings(aiplatform.Model, upload["model"])
            if not re.fullmatch(r"[a-z][a-z0-9-]{0,62}", model_id):
                problems.append(f"modelId {model_id!r}: a letter, then at most 62 of [a-z0-9-]")
            deployed = deployed_model(stack, endpoint, target, f"projects/my-project/locations/us-central1/models/{model_id}")
            problems += vertex_findings(aiplatform.DeployedModel, deployed)
            if problems:
                found[f"{gpu}x{count} {target.model[:20]}"] = problems
    assert not found, f"Vertex deploy requests the service would refuse: {found}"


def test_the_vertex_check_refuses_unknown_fields_and_bad_labels(aiplatform):
    from stackwise.adapters.compute.vertex import build_request

    request = build_request(finetune_spec(), _stack("dev-gcp"))
    assert vertex_findings(aiplatform.CustomJob, request) == []
    unknown = {**request, "jobSpec": {**request["jobSpec"], "spot": True}}
    assert "no field named \"spot\"" in vertex_findings(aiplatform.CustomJob, unknown)[0]
    labelled = {**request, "labels": {**request["labels"], "Stack": "Dev_AWS"}}
    assert any("label key 'Stack'" in f for f in vertex_findings(aiplatform.CustomJob, labelled))


# -- Azure ML --------------------------------------------------------------------------------------

def _azure_models():
    pytest.importorskip("azure.ai.ml", reason="install stackwise[azure]")
    # The REST models recent azure-ai-ml releases send (older ones kept one generated msrest
    # client per API version instead).
    return pytest.importorskip("azure.ai.ml._restclient.arm_ml_service.models",
                               reason="azure-ai-ml without the arm_ml_service REST models")


@functools.cache
def _rest_fields(cls: Any) -> dict[str, tuple[str, Any, bool]]:
    """wire name -> (attribute, annotation, required) of an arm_ml_service (TypeSpec) model."""
    import typing

    models = _azure_models()
    cls()  # a model class computes its field table when first instantiated
    hints = typing.get_type_hints(cls, localns={"_models": models})
    fields = {}
    for attr, rf in cls._attr_to_rest_field.items():
        hint = hints.get(attr)
        optional = type(None) in typing.get_args(hint)
        writable = rf._visibility is None or "create" in rf._visibility
        fields[rf._rest_name] = (attr, hint, writable and not optional and not rf._is_discriminator)
    return fields


def azure_findings(model_cls: Any, body: dict[str, Any], path: str = "") -> list[str]:
    """Unknown keys (the SDK's models keep them as-is, and ARM refuses or drops them), missing
    required fields and values outside the enums, against azure-ai-ml's REST model of the body
    (azure.ai.ml._restclient.arm_ml_service, the models the SDK itself sends), following the
    models' discriminators (`jobType`, `distributionType`, ...)."""
    import enum
    import typing

    _azure_models()  # skips without azure-ai-ml
    found: list[str] = []

    def resolve(cls: Any, value: dict[str, Any], where: str) -> Any:
        mapping = getattr(cls, "__mapping__", None)
        if not mapping:
            return cls
        _rest_fields(cls)  # computes the field table
        for rf in cls._attr_to_rest_field.values():
            wire = rf._rest_name
            if rf._is_discriminator and wire in value:
                kind = value[wire]
                if kind not in mapping:
                    found.append(f"{where}.{wire}: {kind!r} is not one of {sorted(mapping)}")
                    return cls
                sub = mapping[kind]
                return resolve(sub, value, where) if sub is not cls else cls
        return cls

    def check(value: Any, hint: Any, where: str) -> None:
        args = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) is typing.Union \
            else [hint]
        enums = [a for a in args if isinstance(a, type) and issubclass(a, enum.Enum)]
        if enums and isinstance(value, str):
            allowed = {str(m.value).lower() for e in enums for m in e}
            if value.lower() not in allowed:
                found.append(f"{where}: {value!r} is not a value of {enums[0].__name__} ({sorted(allowed)})")
            return
        for typ in args:
            origin = typing.get_origin(typ)
            inner = typing.get_args(typ)
            if origin is list and inner and isinstance(value, list):
                for i, item in enumerate(value):
                    check(item, inner[0], f"{where}[{i}]")
                return
            if origin is dict and len(inner) == 2 and isinstance(value, dict):
                for k, item in value.items():
                    check(item, inner[1], f"{where}.{k}")
                return
            if isinstance(typ, type) and typ.__module__.startswith("azure.ai.ml._restclient") \
                    and not issubclass(typ, enum.Enum):
                walk(typ, value, where)
                return

    def walk(cls: Any, value: Any, where: str) -> None:
        if not isinstance(value, dict):
            found.append(f"{where}: {type(value).__name__} where {cls.__name__} (an object) is expected")
            return
        cls = resolve(cls, value, where)
        fields = _rest_fields(cls)
        for key, inner in value.items():
            if key not in fields:
                found.append(f"{where}.{key}: {cls.__name__} has no property {key!r}")
            else:
                check(inner, fields[key][1], f"{where}.{key}")
        for key, (_, _, required) in fields.items():
            if required and value.get(key) is None:
                found.append(f"{where}.{key}: required by {cls.__name__}, missing")

    walk(model_cls, body, path or model_cls.__name__)
    return found


def _azure_job(request: dict[str, Any]) -> list[str]:
    models = _azure_models()
    return azure_findings(models.JobBase, {"properties": request}, "JobBase")


def test_every_azure_ml_command_job_passes_the_rest_models():
    from stackwise.adapters.compute.azureml import build_request

    stack = _stack("dev-azure")
    found = {}
    for label, spec in _specs("azure"):
        for cluster in (None, {"vmSize": "Standard_NC4as_T4_v3", "vmPriority": "LowPriority"}):
            problems = _azure_job(build_request(spec, stack, cluster=cluster))
            if problems:
                found[f"{label} {'cluster' if cluster else 'serverless'}"] = problems
    assert not found, f"Azure ML command jobs ARM would refuse: {found}"


def test_every_azure_ml_deployment_passes_the_rest_models():
    pytest.importorskip("azure.ai.ml", reason="install stackwise[azure]")
    from azure.ai.ml.entities import Environment, ManagedOnlineDeployment

    from stackwise.adapters.deploy.azureml import deployment_request, inference_config
    from stackwise.contract import EndpointOutput

    models = _azure_models()
    stack = _stack("dev-azure")
    endpoint = EndpointOutput(name="sw-dev-chat", gpu="T4", gpu_count=1, min_replicas=1,
                              serving_image="swdevimages.azurecr.io/serve:latest")
    found = {}
    for target in _targets("az://artifacts"):
        request = deployment_request(stack, endpoint, target)
        deployment = ManagedOnlineDeployment(  # as AzureMLDeploy._create builds it
            name=request["name"], endpoint_name=request["endpoint"],
            environment=Environment(image=request["image"], inference_config=inference_config()),
            instance_type=request["instance_type"], instance_count=request["instance_count"],
            environment_variables=request["environment_variables"], tags=request["tags"])
        rest = deployment._to_rest_object(location="eastus").as_dict()
        problems = azure_findings(models.OnlineDeployment, rest, "OnlineDeployment")
        if not re.fullmatch(r"[a-zA-Z][a-zA-Z0-9-]{0,30}[a-zA-Z0-9]", request["name"]):
            problems.append(f"deployment name {request['name']!r}: 3-32 of [a-zA-Z0-9-], a letter first")
        if problems:
            found[target.model[:20]] = problems
    assert not found, f"Azure ML deployments ARM would refuse: {found}"


def test_the_azure_check_refuses_unknown_keys_and_bad_discriminators():
    from stackwise.adapters.compute.azureml import build_request

    request = build_request(finetune_spec(gpu="T4", count=1, nodes=1, strategy=None), _stack("dev-azure"))
    assert _azure_job(request) == []
    assert any("has no property 'spot'" in f for f in _azure_job({**request, "spot": True}))
    assert any("has no property 'instance_count'" in f
               for f in _azure_job({**request, "resources": {"instance_count": 1}}))
    assert any("'Commandd' is not one of" in f for f in _azure_job({**request, "jobType": "Commandd"}))
