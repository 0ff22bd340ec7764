"""Azure ML: a pipeline job YAML (`az ml job create --file`), one inline command node per step.

Azure ML orders a pipeline's nodes only through data (it has no "run after"), so every node writes its run
record to an output `record` (a `uri_folder`) and takes each upstream node's record as an input `after_<up>`,
which the step command checks before it starts (stackwise.pipeline.compile.step). Nodes run the stack's
training image (an inline `environment: {image}`) on serverless compute (`INSTANCE_TYPE`: the node only
orchestrates; its jobs run on the GPUs their specs ask for), as the stack's managed identity when the stack
exports its client id. `settings.force_rerun` keeps Azure ML from reusing an earlier run of a node whose
command is unchanged (stackwise keeps its own cache, keyed by the data).

Azure ML node names must be Python identifiers of lowercase letters, digits and '_' (not starting with a
digit): a step `serve-check` becomes the node `serve_check`, `2nd` becomes `s_2nd`; two steps that map to
one node name are refused. `validate` loads the YAML with azure-ai-ml's own schema (`load_job`, which also
resolves every `${{parent.jobs.X.outputs.record}}` binding) and runs the entity's `_validate()`, then checks
that each node's command refers only to inputs and outputs it declares.
"""

from __future__ import annotations

import re
from typing import Any

from ...errors import MissingDependencyError, SpecError
from . import unique_names

SCHEMA = "https://azuremlschemas.azureedge.net/latest/pipelineJob.schema.json"
INSTANCE_TYPE = "Standard_DS3_v2"
TIMEOUT_S = 5 * 24 * 3600
NODE_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")  # azure-ai-ml: "a valid python identifier" in lowercase
BINDING = re.compile(r"\$\{\{\s*(inputs|outputs)\.([A-Za-z0-9_]+)\s*\}\}")
PARENT = re.compile(r"^\$\{\{\s*parent\.jobs\.([A-Za-z0-9_]+)\.outputs\.record\s*\}\}$")


def node_name(name: str) -> str:
    converted = name.replace("-", "_")
    return converted if re.match(r"[a-z_]", converted) else f"s_{converted}"


def document(plan: Any) -> dict[str, Any]:
    import shlex

    out = plan.outputs
    names = unique_names([s.name for s in plan.steps], node_name, "Azure ML node names take '_', not '-'",
                         "Azure ML")
    jobs: dict[str, Any] = {}
    for step in plan.steps:
        command = shlex.join(step.argv) + " --record ${{outputs.record}}"
        command += "".join(f" --after ${{{{inputs.after_{names[u]}}}}}" for u in step.upstream)
        node: dict[str, Any] = {"type": "command", "display_name": step.name,
                                "description": f"stackwise step {step.name} ({step.kind})",
                                "command": command, "environment": {"image": plan.image},
                                "resources": {"instance_type": INSTANCE_TYPE}, "limits": {"timeout": TIMEOUT_S},
                                "environment_variables": {"PYTHONUNBUFFERED": "1"},
                                "outputs": {"record": {"type": "uri_folder"}}}
        if step.upstream:
            node["inputs"] = {f"after_{names[u]}": f"${{{{parent.jobs.{names[u]}.outputs.record}}}}"
                              for u in step.upstream}
        if out.azure_identity_client_id:
            node["identity"] = {"type": "managed", "client_id": out.azure_identity_client_id}
            node["environment_variables"]["AZURE_CLIENT_ID"] = out.azure_identity_client_id
        jobs[names[step.name]] = node
    return {"$schema": SCHEMA, "type": "pipeline", "display_name": plan.pipeline,
            "experiment_name": f"stackwise-{plan.pipeline}", "description": plan.description,
            "settings": {"default_compute": "azureml:serverless", "continue_on_step_failure": False,
                         "force_rerun": True},
            "jobs": jobs}


def build(plan: Any) -> str:
    import yaml

    return yaml.safe_dump(document(plan), sort_keys=False, width=1000)


def _fail(what: str, where: str) -> SpecError:
    return SpecError(f"invalid Azure ML pipeline job: {what}", where=where,
                     fix="this is a bug in stackwise's Azure ML compiler; please report it with the pipeline file")


def load(text: str) -> Any:
    """The YAML as azure-ai-ml's PipelineJob entity, schema-checked by `load_job` and `_validate()`."""
    import logging
    import os
    import tempfile

    try:
        from azure.ai.ml import load_job
        from azure.ai.ml.entities import PipelineJob
    except ImportError:
        raise MissingDependencyError("compiling for Azure ML validates the job with azure-ai-ml, which is not installed",
                                     where="--target azureml", fix="pip install 'stackwise[azure]'") from None
    quiet = logging.getLogger("azure.ai.ml")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its "experimental class" notices are not ours to print
    try:
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "pipeline.yml")
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text)
            try:
                job = load_job(path)
            except Exception as exc:  # marshmallow's ValidationError and the SDK's own (an unresolved binding)
                raise _fail(" ".join(str(exc).split())[:600], "definition") from None
    finally:
        quiet.setLevel(level)
    if not isinstance(job, PipelineJob):
        raise _fail(f"a {type(job).__name__}, not a pipeline job", "definition")
    result = job._validate()
    if not result.passed:
        raise _fail(" ".join(str(result).split())[:600], "definition")
    return job


def validate(text: str, plan: Any = None) -> Any:
    """Load with azure-ai-ml (see `load`), then check names, bindings and the graph."""
    from graphlib import CycleError, TopologicalSorter

    job = load(text)
    graph: dict[str, set[str]] = {}
    for name, node in job.jobs.items():
        where = f"jobs.{name}"
        if not NODE_NAME.fullmatch(name):
            raise _fail(f"node name {name!r} is not a lowercase Python identifier", where)
        if getattr(node, "type", None) != "command":
            raise _fail(f"node type {getattr(node, 'type', None)!r}: stackwise compiles every step to a command node",
                        where)
        declared = {"inputs": set(node.inputs), "outputs": set(node.outputs)}
        for kind, key in BINDING.findall(node.component.command or ""):
            if key not in declared[kind]:
                raise _fail(f"node {name!r}'s command refers to {kind}.{key}, which it does not declare",
                            f"{where}.command")
        graph[name] = set()
        for key, value in node.inputs.items():
            match = PARENT.match(str(getattr(value, "_data", "")))
            if match is None or match.group(1) not in job.jobs:
                raise _fail(f"input {key} of node {name!r} is not the record of another node", f"{where}.inputs.{key}")
            graph[name].add(match.group(1))
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as exc:
        raise _fail(f"the nodes' inputs form a cycle: {' -> '.join(exc.args[1])}", "jobs") from None
    return job
