"""SageMaker Pipelines: the definition JSON (`Version` 2020-12-01, the published Pipeline Definition JSON
schema) with one Processing step per stackwise step.

A Processing step runs a container with a command and nothing else (no input channel, no model artefact),
which is what a step needs: the stack's training image with `ContainerEntrypoint` = the step's command, on
one small CPU instance (`INSTANCE_TYPE`): the step itself only orchestrates, and the jobs it submits
(fine-tuning, indexing, evaluation) run on the GPUs their specs ask for. The steps run as the stack's job
role, in its private network when it exports one, and `DependsOn` mirrors the pipeline's dependencies.

The SageMaker Python SDK is not used to build it: `sagemaker` 2.x and 3.x downgrade packages this project
pins (rich, packaging, attrs, importlib-metadata) and bring ~15 others, for a JSON document this module
writes directly. `validate` checks it against what SageMaker itself will check, from the service model that
botocore ships: each step's `Arguments` as a CreateProcessingJob request (required members, types, unknown
keys, lengths, ranges, enums and patterns), the CreatePipeline request carrying the definition, step names
against the schema's `^[A-Za-z0-9\\-_]{1,64}$`, and `DependsOn` naming steps of the pipeline, acyclic.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ...errors import SpecError

VERSION = "2020-12-01"
INSTANCE_TYPE = "ml.m5.large"
VOLUME_GB = 30
MAX_RUNTIME_S = 5 * 24 * 3600  # a step waits for its fine-tuning job; CreateProcessingJob allows 777,600
STEP_NAME = re.compile(r"^[A-Za-z0-9\-_]{1,64}$")  # the schema's StepName
TOP_KEYS = {"Version", "Metadata", "Parameters", "PipelineExperimentConfig", "Steps"}
STEP_KEYS = {"Name", "Type", "DependsOn", "DisplayName", "Description", "Arguments", "CacheConfig", "RetryPolicies"}
PLACEHOLDER_JOB_NAME = "stackwise-step"  # SageMaker names each execution's job; validation needs one


def pipeline_name(name: str) -> str:
    """A SageMaker PipelineName (`[a-zA-Z0-9](-*[a-zA-Z0-9]){0,255}`) for a stackwise pipeline name."""
    return "stackwise-" + re.sub("[^a-zA-Z0-9]+", "-", name).strip("-")


def _arguments(plan: Any, argv: tuple[str, ...]) -> dict[str, Any]:
    out = plan.outputs
    args: dict[str, Any] = {
        "ProcessingResources": {"ClusterConfig": {"InstanceCount": 1, "InstanceType": INSTANCE_TYPE,
                                                  "VolumeSizeInGB": VOLUME_GB}},
        "AppSpecification": {"ImageUri": plan.image, "ContainerEntrypoint": list(argv)},
        "Environment": {"PYTHONUNBUFFERED": "1", "AWS_DEFAULT_REGION": out.region},
        "RoleArn": out.job_role,
        "StoppingCondition": {"MaxRuntimeInSeconds": MAX_RUNTIME_S},
    }
    network = out.network
    if network is not None and network.subnets and network.security_groups:
        args["NetworkConfig"] = {"VpcConfig": {"SecurityGroupIds": list(network.security_groups),
                                               "Subnets": list(network.subnets)}}
    return args


def build(plan: Any) -> str:
    from ...errors import ConfigError

    if not plan.outputs.job_role:
        raise ConfigError(f"stack {plan.stack!r} outputs have no job_role, which SageMaker processing steps run as",
                          where="stack outputs: job_role", fix="export the SageMaker job role ARN (the Pulumi program does)")
    steps = []
    for node in plan.steps:
        step: dict[str, Any] = {"Name": node.name, "Type": "Processing",
                                "Description": f"stackwise step {node.name} ({node.kind})"}
        if node.upstream:
            step["DependsOn"] = list(node.upstream)
        step["Arguments"] = _arguments(plan, node.argv)
        steps.append(step)
    definition = {"Version": VERSION, "Metadata": {}, "Parameters": [], "Steps": steps}
    return json.dumps(definition, indent=2) + "\n"


# -- validation ---------------------------------------------------------------------------------
def _fail(what: str, where: str) -> SpecError:
    return SpecError(f"invalid SageMaker pipeline definition: {what}", where=where,
                     fix="this is a bug in stackwise's SageMaker compiler; please report it with the pipeline file")


def _constraints(value: Any, shape: Any, where: str, problems: list[str]) -> None:
    """What botocore's client-side validator leaves to the service: enums, patterns, maximum lengths and
    ranges, walked through the request as the service model describes it."""
    meta = shape.metadata
    kind = shape.type_name
    if kind == "string" and isinstance(value, str):
        if "enum" in meta and value not in meta["enum"]:
            problems.append(f"{where}: {value!r} is not one of {shape.name}'s values")
        if "pattern" in meta and not re.fullmatch(meta["pattern"], value, flags=re.DOTALL):
            problems.append(f"{where}: {value!r} does not match {meta['pattern']}")
        if "max" in meta and len(value) > meta["max"]:
            problems.append(f"{where}: longer than {meta['max']} characters")
    elif kind in ("integer", "long") and isinstance(value, int):
        if "max" in meta and value > meta["max"]:
            problems.append(f"{where}: {value} is above {meta['max']}")
    elif kind == "list" and isinstance(value, list):
        if "max" in meta and len(value) > meta["max"]:
            problems.append(f"{where}: more than {meta['max']} items")
        for i, item in enumerate(value):
            _constraints(item, shape.member, f"{where}[{i}]", problems)
    elif kind == "map" and isinstance(value, dict):
        if "max" in meta and len(value) > meta["max"]:
            problems.append(f"{where}: more than {meta['max']} entries")
        for key, item in value.items():
            _constraints(key, shape.key, f"{where} key {key!r}", problems)
            _constraints(item, shape.value, f"{where}.{key}", problems)
    elif kind == "structure" and isinstance(value, dict):
        for key, item in value.items():
            if key in shape.members:
                _constraints(item, shape.members[key], f"{where}.{key}", problems)


def check_request(operation: str, params: dict[str, Any], where: str) -> None:
    """Validate `params` as a request of the SageMaker `operation`, with the service model in botocore."""
    try:
        import botocore.session
        from botocore.validate import ParamValidator
    except ImportError:
        from ...errors import MissingDependencyError

        raise MissingDependencyError("compiling for SageMaker validates the definition with botocore's SageMaker "
                                     "API model, and botocore is not installed", where="--target sagemaker",
                                     fix="pip install 'stackwise[aws]'") from None

    model = botocore.session.get_session().get_service_model("sagemaker").operation_model(operation)
    report = ParamValidator().validate(params, model.input_shape)
    problems: list[str] = []
    if report.has_errors():
        problems.append(report.generate_report())
    _constraints(params, model.input_shape, operation, problems)
    if problems:
        raise _fail(f"{operation}: " + "; ".join(problems), where)


def validate(text: str, plan: Any = None) -> dict[str, Any]:
    """Check a definition as SageMaker will (see the module docstring); returns it parsed."""
    from graphlib import CycleError, TopologicalSorter

    try:
        definition = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(f"not JSON ({exc})", "definition") from None
    if not isinstance(definition, dict) or set(definition) - TOP_KEYS or definition.get("Version") != VERSION:
        raise _fail(f"the top level must hold Version {VERSION} and Steps (and only {', '.join(sorted(TOP_KEYS))})",
                    "definition")
    steps = definition.get("Steps")
    if not isinstance(steps, list) or not steps:
        raise _fail("Steps must be a non-empty list", "Steps")
    names = [s.get("Name") if isinstance(s, dict) else None for s in steps]
    graph: dict[str, set[str]] = {}
    for i, step in enumerate(steps):
        where = f"Steps[{i}]"
        if not isinstance(step, dict) or set(step) - STEP_KEYS:
            raise _fail(f"unknown keys {sorted(set(step) - STEP_KEYS) if isinstance(step, dict) else step}", where)
        name = step.get("Name")
        if not isinstance(name, str) or not STEP_NAME.fullmatch(name):
            raise _fail(f"step name {name!r} does not match {STEP_NAME.pattern}", f"{where}.Name")
        if names.count(name) > 1:
            raise _fail(f"two steps are named {name!r}", f"{where}.Name")
        if step.get("Type") != "Processing":
            raise _fail(f"step type {step.get('Type')!r}: stackwise compiles every step to Processing", f"{where}.Type")
        depends = step.get("DependsOn", [])
        unknown = [d for d in depends if d not in names] if isinstance(depends, list) else [depends]
        if unknown:
            raise _fail(f"step {name!r} depends on {unknown[0]!r}, which is not a step of the pipeline", f"{where}.DependsOn")
        graph[name] = set(depends)
        arguments = step.get("Arguments")
        if not isinstance(arguments, dict) or "ProcessingJobName" in arguments:
            raise _fail("Arguments must be a CreateProcessingJob request without ProcessingJobName", f"{where}.Arguments")
        check_request("CreateProcessingJob", {**arguments, "ProcessingJobName": PLACEHOLDER_JOB_NAME},
                      f"{where}.Arguments")
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as exc:
        raise _fail(f"the steps' DependsOn form a cycle: {' -> '.join(exc.args[1])}", "Steps") from None
    if plan is not None:
        check_request("CreatePipeline", {"PipelineName": pipeline_name(plan.pipeline), "PipelineDefinition": text,
                                         "RoleArn": plan.outputs.job_role, "ClientRequestToken": "0" * 32},
                      "CreatePipeline")
    return definition
