"""Vertex AI Pipelines: a KFP v2 PipelineSpec (schemaVersion 2.1.0), in the YAML form kfp's Compiler writes
for a pipeline of `dsl.container_component`s joined by `.after()`: one component, executor and task per step,
`dependentTasks` = the step's upstream steps, caching off (stackwise keeps its own cache, keyed by the
data; Vertex's would skip a step whose command is unchanged even when its data changed).

The document is written here, not through `kfp`: every kfp release needs protobuf < 5 (<= 2.13) or >= 6.31
(>= 2.14), and the infra extra's pulumi-policy pins protobuf 5.29, so kfp cannot be installed beside
stackwise[all]. tests/golden/vertex_pipeline.yaml is kfp 2.17.3's own compilation of the same pipeline
(scripts/kfp_reference.py wrote it), and a test holds this module's output equal to it.

`validate` checks the graph (every task's component and executor exist, `dependentTasks` name tasks, no
cycle, names in kfp's and Vertex's form) and loads the document with google-cloud-aiplatform's
`PipelineJob(template_path=...)`, offline (anonymous credentials), as `PipelineJob.submit` would.
"""

from __future__ import annotations

import re
from typing import Any

from ...errors import MissingDependencyError, SpecError
from . import kfp_name, unique_names

SCHEMA_VERSION = "2.1.0"
SDK_VERSION = "kfp-2.17.3"  # the kfp release whose output this reproduces (tests/golden/vertex_pipeline.yaml)
TASK_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
PIPELINE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,112}$")  # kfp's form; the run id adds "-<14 digits>"


def pipeline_name(name: str) -> str:
    """kfp's name for the pipeline; Vertex makes each run's id `<name>-<timestamp>`, which must start with a
    letter, so a name starting with a digit gets a `stackwise-` prefix."""
    converted = kfp_name(name)
    return converted if converted[:1].isalpha() else f"stackwise-{converted}"


def spec(plan: Any) -> dict[str, Any]:
    """The PipelineSpec as a dict (what kfp's Compiler builds for the same container components)."""
    names = unique_names([s.name for s in plan.steps], kfp_name, "kfp lowercases names and turns other "
                         "characters into '-'", "Vertex AI")
    components: dict[str, Any] = {}
    executors: dict[str, Any] = {}
    tasks: dict[str, Any] = {}
    for node in plan.steps:
        task = names[node.name]
        components[f"comp-{task}"] = {"executorLabel": f"exec-{task}"}
        executors[f"exec-{task}"] = {"container": {"image": plan.image, "command": list(node.argv[:3]),
                                                   "args": list(node.argv[3:])}}
        body: dict[str, Any] = {"cachingOptions": {}, "componentRef": {"name": f"comp-{task}"},
                                "taskInfo": {"name": node.name}}
        if node.upstream:
            body["dependentTasks"] = sorted(names[u] for u in node.upstream)
        tasks[task] = body
    return {"components": components, "deploymentSpec": {"executors": executors},
            "pipelineInfo": {"description": plan.description, "name": pipeline_name(plan.pipeline)},
            "root": {"dag": {"tasks": tasks}}, "schemaVersion": SCHEMA_VERSION, "sdkVersion": SDK_VERSION}


def build(plan: Any) -> str:
    import yaml

    document = spec(plan)
    header = (f"# PIPELINE DEFINITION\n# Name: {document['pipelineInfo']['name']}\n"
              f"# Description: {plan.description}\n")
    return header + yaml.safe_dump(document, sort_keys=True)


def _fail(what: str, where: str) -> SpecError:
    return SpecError(f"invalid Vertex AI PipelineSpec: {what}", where=where,
                     fix="this is a bug in stackwise's Vertex compiler; please report it with the pipeline file")


def check_graph(document: dict[str, Any]) -> None:
    from graphlib import CycleError, TopologicalSorter

    if document.get("schemaVersion") != SCHEMA_VERSION:
        raise _fail(f"schemaVersion must be {SCHEMA_VERSION}", "schemaVersion")
    name = (document.get("pipelineInfo") or {}).get("name")
    if not isinstance(name, str) or not PIPELINE_NAME.fullmatch(name):
        raise _fail(f"pipeline name {name!r} does not match {PIPELINE_NAME.pattern}", "pipelineInfo.name")
    components = document.get("components") or {}
    executors = (document.get("deploymentSpec") or {}).get("executors") or {}
    tasks = ((document.get("root") or {}).get("dag") or {}).get("tasks") or {}
    if not tasks:
        raise _fail("the pipeline has no tasks", "root.dag.tasks")
    graph: dict[str, set[str]] = {}
    for task, body in tasks.items():
        where = f"root.dag.tasks.{task}"
        if not TASK_NAME.fullmatch(task):
            raise _fail(f"task name {task!r} is not in kfp's form ({TASK_NAME.pattern})", where)
        component = (body.get("componentRef") or {}).get("name")
        if component not in components:
            raise _fail(f"task {task!r} refers to component {component!r}, which is not defined", f"{where}.componentRef")
        executor = components[component].get("executorLabel")
        container = (executors.get(executor) or {}).get("container") or {}
        if not container.get("image") or not container.get("command"):
            raise _fail(f"component {component!r} has no executor {executor!r} with an image and a command",
                        f"components.{component}.executorLabel")
        depends = body.get("dependentTasks") or []
        unknown = [d for d in depends if d not in tasks]
        if unknown:
            raise _fail(f"task {task!r} depends on {unknown[0]!r}, which is not a task", f"{where}.dependentTasks")
        graph[task] = set(depends)
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as exc:
        raise _fail(f"the tasks' dependentTasks form a cycle: {' -> '.join(exc.args[1])}", "root.dag.tasks") from None


def validate(text: str, plan: Any = None) -> dict[str, Any]:
    """Check the graph, then load the document as google-cloud-aiplatform's PipelineJob (offline)."""
    import os
    import tempfile

    import yaml

    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _fail(f"not YAML ({exc})", "definition") from None
    if not isinstance(document, dict):
        raise _fail("not a mapping", "definition")
    check_graph(document)
    import warnings

    try:
        with warnings.catch_warnings():  # google-api-core's notices about future Python versions
            warnings.simplefilter("ignore", FutureWarning)
            from google.auth.credentials import AnonymousCredentials
            from google.cloud import aiplatform
    except ImportError:
        raise MissingDependencyError("compiling for Vertex AI loads the result with google-cloud-aiplatform, which "
                                     "is not installed", where="--target vertex",
                                     fix="pip install 'stackwise[gcp]'") from None
    project = getattr(getattr(plan, "outputs", None), "gcp_project", None) or "stackwise-validate"
    region = getattr(getattr(plan, "outputs", None), "region", None) or "us-central1"
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "pipeline.yaml")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        try:
            aiplatform.PipelineJob(display_name=document["pipelineInfo"]["name"], template_path=path, project=project,
                                   location=region, credentials=AnonymousCredentials(),
                                   pipeline_root="gs://stackwise-validate/root")
        except (ValueError, KeyError, TypeError) as exc:
            raise _fail(f"google-cloud-aiplatform refuses it: {exc}", "definition") from None
    return document
