"""`stackwise pipeline compile --target sagemaker|vertex|azureml`: the pipeline file as the cloud's own
managed pipeline, so it runs unattended in the cloud (on a schedule, or started by a trigger).

Every step of the file becomes one container step of the managed pipeline, with the same dependencies
(`Pipeline.upstream`), running the stack's training image (`--image` overrides it) with

    python -m stackwise.pipeline.compile.step --file <bundle>/stackwise.yaml --stack <S> --only <STEP>

which fetches the stack's files from the bundle and runs `stackwise pipeline run --file <URI> --stack <S>
--only <STEP> --json` (stackwise.pipeline.compile.step). Each step finds its upstream steps' outputs in the
pipeline's cache in the stack's artifact store, as any machine running `--only` does; the managed pipeline
only orders the steps and runs them on the cloud's machines.

The bundle (stackwise.pipeline.compile.bundle) is what those steps read, content-addressed under
`<artifact store>/pipelines/<name>/files/<sha256>/`: the pipeline file as `stackwise.yaml`, every
relative local data or file input it names (at the same relative path), and the stack's file and outputs.
`--upload` copies it there; without it nothing is written to the cloud and the CLI prints the command that
uploads it.

| target | emits | validated with |
|---|---|---|
| sagemaker | Pipeline definition JSON (Version 2020-12-01), one Processing step per step, `DependsOn` | SageMaker's API model in botocore (each step's Arguments as a CreateProcessingJob request, the CreatePipeline request), names and graph checked |
| vertex | KFP v2 PipelineSpec YAML (as kfp's Compiler writes it), one container component per step, `dependentTasks` | loaded by google-cloud-aiplatform's `PipelineJob(template_path=...)` offline; names and graph checked |
| azureml | Azure ML pipeline job YAML, one inline command node per step, each after its upstream through a `record` output | azure-ai-ml's own schema (`load_job`) and the entity's `_validate()`; node names checked |
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...errors import ConfigError, InputError, SpecError

if TYPE_CHECKING:
    from ..spec import Pipeline
    from .bundle import Bundle

TARGETS: dict[str, str] = {"sagemaker": "aws", "vertex": "gcp", "azureml": "azure"}
SUFFIX = {"sagemaker": "sagemaker.json", "vertex": "vertex.yaml", "azureml": "azureml.yml"}
STEP_MODULE = "stackwise.pipeline.compile.step"


@dataclass(frozen=True)
class StepNode:
    """One step of the managed pipeline: the stackwise step it runs and the steps it waits for."""

    name: str
    kind: str
    upstream: tuple[str, ...]  # sorted
    argv: tuple[str, ...]  # the container's command

    @property
    def command_line(self) -> str:
        return shlex.join(self.argv)


@dataclass(frozen=True)
class Plan:
    """What every target builds its definition from (no cloud SDK involved)."""

    pipeline: str
    stack: str
    image: str
    file_uri: str
    outputs: Any  # stackwise.contract.StackOutputs
    steps: tuple[StepNode, ...]  # in dependency order
    description: str


@dataclass(frozen=True)
class Compiled:
    target: str
    text: str
    filename: str
    bundle: "Bundle"
    uploaded: bool
    plan: Plan


def step_argv(file_uri: str, stack: str, step: str) -> tuple[str, ...]:
    return ("python", "-m", STEP_MODULE, "--file", file_uri, "--stack", stack, "--only", step)


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise InputError(f"unknown compile target {target!r}", where="--target",
                         fix=f"choose one of: {', '.join(TARGETS)}")
    return target


def check_stack(target: str, stack: Any) -> None:
    cloud = TARGETS[target]
    if stack.cloud != cloud:
        raise ConfigError(f"stack {stack.name!r} is a {stack.cloud} stack; --target {target} needs a {cloud} stack",
                          where=f"--stack {stack.name} ({stack.source})",
                          fix=f"pass --stack with a {cloud} stack, or the target of this stack's cloud"
                          + (f" (--target {next(t for t, c in TARGETS.items() if c == stack.cloud)})"
                             if stack.cloud in TARGETS.values() else " (a local stack has no managed pipelines)"))


def training_image(stack: Any, image: str | None) -> str:
    if image:
        return image
    found = stack.outputs.training_image
    if not found:
        raise ConfigError(f"stack {stack.name!r} outputs have no training_image for the pipeline's steps to run",
                          where="stack outputs: training_image",
                          fix="pass --image IMAGE, or export the image (`pulumi up` builds and pushes it; "
                              "`stackwise image build --push`)")
    return str(found)


def check_runnable(pipeline: "Pipeline") -> None:
    """Refuse what cannot run as separate cloud containers: a run step's `outs` are files on the machine
    that ran it, which no later step (in another container) can read."""
    for name in pipeline.order:
        step = pipeline.step(name)
        if step.kind == "run" and step.outs:
            raise SpecError(f"step {name!r} (run) declares outs, local files that do not outlive its container "
                            "in a cloud pipeline", where=f"{pipeline.path}: steps.{name}.outs",
                            fix="have the command write its outputs to the artifact store and refer to those URIs, "
                                "or run this pipeline with `stackwise pipeline run`")


def make_plan(pipeline: "Pipeline", stack: Any, image: str, file_uri: str) -> Plan:
    steps = tuple(StepNode(name=n, kind=pipeline.step(n).kind, upstream=tuple(sorted(pipeline.upstream[n])),
                           argv=step_argv(file_uri, stack.name, n)) for n in pipeline.order)
    return Plan(pipeline=pipeline.name, stack=stack.name, image=image, file_uri=file_uri, outputs=stack.outputs,
                steps=steps, description=f"stackwise pipeline {pipeline.name} on stack {stack.name} "
                                         f"(compiled from {pipeline.path.name})")


def unique_names(names: list[str], convert: Any, rule: str, target: str) -> dict[str, str]:
    """stackwise step name -> the target's name for it; two steps that map to one name are refused."""
    out: dict[str, str] = {}
    for name in names:
        converted = convert(name)
        clash = next((n for n, c in out.items() if c == converted), None)
        if clash is not None:
            raise SpecError(f"steps {clash!r} and {name!r} have the same name on {target} ({converted!r}: {rule})",
                            where=f"steps.{name}", fix="rename one of them")
        out[name] = converted
    return out


def kfp_name(name: str) -> str:
    """KFP's sanitizer (kfp.compiler's `sanitize_k8s_name`): lowercase, other characters to '-'."""
    return re.sub("-+", "-", re.sub("[^-0-9a-z]+", "-", name.lower())).strip("-")


def compile_definition(pipeline: "Pipeline", target: str, stack: Any, image: str | None = None,
                       upload: bool = False) -> Compiled:
    """Build, validate and return the target's definition of `pipeline` on `stack` (a stack of the target's
    cloud), with its bundle; `upload` copies the bundle to the artifact store first."""
    from .bundle import make_bundle

    check_target(target)
    check_stack(target, stack)
    check_runnable(pipeline)
    chosen = training_image(stack, image)
    bundle = make_bundle(pipeline, stack)
    plan = make_plan(pipeline, stack, chosen, bundle.file_uri)
    module = _module(target)
    text = module.build(plan)
    module.validate(text, plan)
    if upload:
        bundle.upload()
    return Compiled(target=target, text=text, filename=f"{pipeline.name}.{SUFFIX[target]}", bundle=bundle,
                    uploaded=upload, plan=plan)


def compile_pipeline(pipeline: "Pipeline", target: str, stack: Any, image: str | None = None,
                     upload: bool = False) -> tuple[str, str]:
    """(the definition's text, a suggested file name); see `compile_definition`."""
    compiled = compile_definition(pipeline, target, stack, image=image, upload=upload)
    return compiled.text, compiled.filename


def _module(target: str) -> Any:
    if target == "sagemaker":
        from . import sagemaker as module
    elif target == "vertex":
        from . import vertex as module
    else:
        from . import azureml as module
    return module


def run_hint(compiled: Compiled) -> str:
    """How to create and start the compiled pipeline in the cloud (printed by the CLI)."""
    plan, out = compiled.plan, compiled.plan.outputs
    name = "stackwise-" + kfp_name(plan.pipeline)
    if compiled.target == "sagemaker":
        return (f"aws sagemaker create-pipeline --pipeline-name {name} --role-arn {out.job_role} "
                f"--pipeline-definition file://{compiled.filename} --region {out.region}\n"
                f"aws sagemaker start-pipeline-execution --pipeline-name {name} --region {out.region}")
    if compiled.target == "vertex":
        root = f"{str(out.artifact_store).rstrip('/')}/pipelines/{plan.pipeline}/vertex-root"
        network = ""
        if out.network is not None and out.network.network:  # the peered VPC the stack's jobs run in
            network = f", network='{out.network.network}', reserved_ip_ranges={list(out.network.reserved_ip_ranges)}"
        return ("python -c \"from google.cloud import aiplatform as a; a.PipelineJob(display_name='" + name
                + f"', template_path='{compiled.filename}', pipeline_root='{root}', project='{out.gcp_project}', "
                f"location='{out.region}').submit(service_account='{out.job_role}'{network})\"")
    return (f"az ml job create --file {compiled.filename} --resource-group {out.azure_resource_group} "
            f"--workspace-name {out.azure_workspace} --subscription {out.azure_subscription_id}")
