"""An Azure ML pipeline job YAML (`stackwise pipeline compile --target azureml`), turned into the
body of the jobs REST API (`PUT .../workspaces/{ws}/jobs/{name}`) that a Logic App can send.

`az ml job create` does more than send the YAML: it registers every inline command as an
(anonymous) component, and every inline image as an environment, and sends a body whose nodes
name them by ARM id. A Logic App cannot do that, so the program registers them once, at
`pulumi up` (ComponentVersion and EnvironmentVersion resources), and the Logic App sends a body
that names those versions. The body is azure-ai-ml's own serialization of the job
(`PipelineJob._to_rest_object`, the SDK's wire form), with the SDK's ARM-id formats filled in
for computes, datastores, environments and components; `fill` puts in the workspace's id.

Supported: command nodes, inline (`command` + `environment`) or registered
(`component: azureml:<name>:<version>`); an environment given as `azureml:<name>:<version>`, an
ARM id, a registry URI, or an inline `image`. Refused, naming the node: other node types, `code`
(ship it in the image), conda or Docker-build environments, and `@latest` labels (a version
must be pinned, or runs would change without a deploy).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stackwise.errors import ConfigError

KEY = "stackwise:pipelineTrigger"
JOBS_API_VERSION = "2024-04-01"
"""The GA api-version of Microsoft.MachineLearningServices jobs the Logic App calls."""


@dataclass(frozen=True)
class InlineComponent:
    """A command node's inline component, registered by the program."""

    node: str
    name: str
    version: str
    spec: dict[str, Any]
    """The component spec as `az ml` registers it; `environment` is filled by `fill_spec`."""
    environment: str | None = None
    """A registered environment (`name:version`), an ARM id or a registry URI; else `image`."""
    image: str | None = None


@dataclass(frozen=True)
class AzurePipelineJob:
    name: str
    body: dict[str, Any]
    """The PUT body, ids relative to the workspace still to fill (see `fill`)."""
    components: tuple[InlineComponent, ...] = ()
    slots: tuple[tuple[tuple[str, ...], str], ...] = field(default=())
    """(path in `body`, ARM id suffix below the workspace id) pairs."""

    def fill(self, workspace_id: str) -> dict[str, Any]:
        """The body with every workspace-relative id made absolute (the SDK's ARM id formats)."""
        body = copy.deepcopy(self.body)
        for path, suffix in self.slots:
            target = body
            for step in path[:-1]:
                target = target[step]
            target[path[-1]] = f"{workspace_id}{suffix}"
        return body


def fill_spec(component: InlineComponent, workspace_id: str, environment_id: str | None) -> dict[str, Any]:
    """The spec to register, its environment named by ARM id (as the SDK resolves it)."""
    spec = copy.deepcopy(component.spec)
    env = component.environment
    if environment_id is not None:
        spec["environment"] = environment_id
    elif env and env.startswith(("/subscriptions/", "azureml://registries/")):
        spec["environment"] = env
    elif env:
        spec["environment"] = f"{workspace_id}{_versioned('environments', env)}"
    return spec


def _bad(key: str, what: str, source: str, fix: str) -> ConfigError:
    return ConfigError(f"bad value for {KEY}.{key}: {what}", where=f"{source}: {KEY}.{key}", fix=fix)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_") or "pipeline"


def _versioned(kind: str, ref: str) -> str:
    """`name:version` (an `azureml:` prefix allowed) -> `/<kind>/<name>/versions/<version>`."""
    name, _, version = ref.removeprefix("azureml:").rpartition(":")
    return f"/{kind}/{name}/versions/{version}"


def _pinned(ref: str) -> bool:
    return bool(re.fullmatch(r"(azureml:)?[A-Za-z0-9_.-]+:[A-Za-z0-9_.-]+", ref))


def _is_id(ref: str) -> bool:
    return ref.removeprefix("azureml:").startswith(("/subscriptions/", "azureml://registries/"))


def read_pipeline_job(path: Path, parameters: dict[str, Any], source: str) -> AzurePipelineJob:
    """Read and check the pipeline job YAML at `path` (raises ConfigError naming the node)."""
    try:
        from azure.ai.ml import load_job
        from azure.ai.ml.entities import Environment, PipelineJob
    except ImportError:
        raise ConfigError("an Azure pipeline trigger reads its definition with azure-ai-ml, which is not installed",
                          where=f"{source}: {KEY}.definition", fix="pip install 'stackwise[azure]'") from None
    fix = "point it at the YAML `stackwise pipeline compile --target azureml` writes"
    try:
        job = load_job(path)
    except Exception as exc:  # the SDK's schema errors are marshmallow's and its own
        first = " ".join(str(exc).split())[:400]
        raise _bad("definition", f"{path} is not an Azure ML job YAML: {first}", source, fix) from None
    if not isinstance(job, PipelineJob):
        raise _bad("definition", f"{path} is a {type(job).__name__}, not a pipeline job (type: pipeline)", source, fix)
    pipeline = _slug(job.display_name or job.name or path.name.split(".")[0])
    components: list[InlineComponent] = []
    slots: list[tuple[tuple[str, ...], str]] = []
    for node_name, node in job.jobs.items():
        key = f"definition (jobs.{node_name})"
        if getattr(node, "type", None) != "command":
            raise _bad(key, f"node type {getattr(node, 'type', None)!r} is not supported by the trigger", source,
                       "use command nodes (inline, or component: azureml:<name>:<version>)")
        jobs_path = ("properties", "jobs", node_name)
        if isinstance(node.compute, str) and node.compute and not _is_id(node.compute) \
                and node.compute != "serverless":  # serverless compute is no resource id: the SDK's own value stays
            slots.append(((*jobs_path, "computeId"), f"/computes/{node.compute.removeprefix('azureml:')}"))
        component = node.component
        if isinstance(component, str):
            if _is_id(component):
                continue
            if not _pinned(component):
                raise _bad(key, f"component {component!r} names no version", source,
                           "pin it: component: azureml:<name>:<version>")
            slots.append(((*jobs_path, "componentId"), _versioned("components", component)))
            node._component = ""  # replaced by the slot
            continue
        if getattr(component, "code", None):
            raise _bad(key, "inline code is not supported (a Logic App cannot upload it)", source,
                       "drop `code:` and run the stackwise workloads from the image (python -m stackwise.workloads...)")
        env = component.environment
        image = ref = None
        if isinstance(env, Environment):
            if env.conda_file or env.build or not env.image:
                raise _bad(key, "an environment built from conda or a Docker context cannot be registered here",
                           source, "use environment: {image: <the stack's training image>} or azureml:<name>:<version>")
            image = env.image
        elif isinstance(env, str) and (_is_id(env) or _pinned(env)):
            ref = env.removeprefix("azureml:") if env.startswith("azureml:/") else env
        else:
            raise _bad(key, f"environment {env!r} names no version", source,
                       "pin it: environment: azureml:<name>:<version>, or give its image")
        spec = component._to_dict()
        spec.pop("environment", None)
        spec["_source"] = component._source  # what `az ml` sends with an anonymous component
        digest = hashlib.sha256(json.dumps([spec, image, ref], sort_keys=True, default=str).encode()).hexdigest()
        name, version = f"stackwise_{pipeline}_{_slug(node_name)}"[:250], digest[:16]
        spec.update(name=name, version=version)
        components.append(InlineComponent(node=node_name, name=name, version=version, spec=spec,
                                          environment=ref, image=image))
        slots.append(((*jobs_path, "componentId"), f"/components/{name}/versions/{version}"))
        node._component = ""
    settings = job.settings
    if settings is not None and settings.default_compute and not _is_id(settings.default_compute) \
            and settings.default_compute != "serverless":
        slots.append((("properties", "settings", "default_compute"),
                      f"/computes/{settings.default_compute.removeprefix('azureml:')}"))
    if settings is not None and settings.default_datastore and not _is_id(settings.default_datastore):
        slots.append((("properties", "settings", "default_datastore"),
                      f"/datastores/{settings.default_datastore.removeprefix('azureml:')}"))
    body = job._to_rest_object().as_dict()
    props = body["properties"]
    props.setdefault("experimentName", job.experiment_name or f"stackwise-{pipeline}")
    declared = {name: getattr(value, "_data", None) is not None for name, value in job.inputs.items()}
    for name, value in parameters.items():
        if name not in declared:
            raise _bad(f"parameters.{name}", f"the pipeline in {path} has no input {name!r}", source,
                       f"remove it; the pipeline's inputs: {', '.join(sorted(declared)) or 'none'}")
        # Literal pipeline inputs travel as strings, as the SDK sends them (str(True) == "True").
        props.setdefault("inputs", {})[name] = {"jobInputType": "literal", "value": str(value)}
    missing = sorted(n for n, has_value in declared.items() if not has_value and n not in parameters)
    if missing:
        raise _bad("parameters", f"the pipeline in {path} needs input {missing[0]} (no value)", source,
                   f"set {KEY}.parameters.{missing[0]}")
    return AzurePipelineJob(name=pipeline, body=body, components=tuple(components), slots=tuple(slots))
