"""`stackwise:pipelineTrigger`, checked against the stack's cloud, and the compiled pipeline it names.

`InfraConfig.load` calls `checked`: the schedule must be in the cloud's own syntax, and the
definition file must exist, parse as that cloud's pipeline and declare every parameter the
trigger passes, so a bad value fails with exit 2 naming the key before anything is deployed.
The components read the same file with `read_definition`. Pure Python (json, yaml, zoneinfo);
Azure's pipeline job YAML is read with azure-ai-ml (infra/azure/pipeline_job.py). Which reader
and which schedule syntax apply is the stack's cloud's say (`InfraCloud.read_pipeline`,
`check_schedule`, `pipeline_target`); the readers and checks each cloud uses are here.
"""

from __future__ import annotations

import json
import re
import zoneinfo
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stackwise.errors import ConfigError

from .cloud import infra_cloud

if TYPE_CHECKING:
    from .config import InfraConfig, PipelineTriggerConfig

KEY = "stackwise:pipelineTrigger"
# Service limits the definition must fit (checked here, not discovered by a failed `pulumi up`).
SAGEMAKER_DEFINITION_MAX = 1_048_576  # CreatePipeline: PipelineDefinition length
SCHEDULER_BODY_MAX = 1_000_000        # Cloud Scheduler: 1 MB a job, ~1 KB of it request overhead
WORKFLOW_SOURCE_MAX = 128 * 1024      # Workflows: source size
# What the SageMaker pipeline's role (the stack's job role) does for each step type of a
# definition: the API actions, on resources of this kind (arn:aws:sagemaker:<region>:<account>:<kind>/*).
SAGEMAKER_STEP_ACTIONS: dict[str, dict[str, list[str]]] = {
    "Training": {"training-job": ["CreateTrainingJob", "DescribeTrainingJob", "StopTrainingJob"]},
    "Processing": {"processing-job": ["CreateProcessingJob", "DescribeProcessingJob", "StopProcessingJob"]},
    "Transform": {"transform-job": ["CreateTransformJob", "DescribeTransformJob", "StopTransformJob"]},
    "Tuning": {"hyper-parameter-tuning-job": ["CreateHyperParameterTuningJob", "DescribeHyperParameterTuningJob",
                                              "StopHyperParameterTuningJob",
                                              "ListTrainingJobsForHyperParameterTuningJob"]},
    "Model": {"model": ["CreateModel", "DescribeModel"]},
    "RegisterModel": {"model-package": ["CreateModelPackage", "DescribeModelPackage"],
                      "model-package-group": ["CreateModelPackageGroup", "DescribeModelPackageGroup"]},
    "Condition": {},
    "Fail": {},
}


@dataclass(frozen=True)
class SageMakerDefinition:
    """A SageMaker Pipelines definition (the JSON `pipeline.definition()` writes)."""

    text: str
    step_types: tuple[str, ...]
    parameters: dict[str, str]
    """The trigger's parameter values, as StartPipelineExecution takes them (strings)."""


@dataclass(frozen=True)
class VertexDefinition:
    """A KFP PipelineSpec (compiled JSON or YAML), with what a pipelineJobs.create body needs."""

    pipeline_spec: dict[str, Any]
    name: str
    parameter_values: dict[str, Any]
    spec_bytes: int


def project_root(source: str) -> Path:
    """The project folder that relative definition paths start from: the folder holding the
    stack file's `stacks/`; under `pulumi up` (which runs in infra/), the folder of Pulumi.yaml."""
    path = Path(source)
    if path.is_absolute() and path.parent.name == "stacks":
        return path.parent.parent
    for folder in (Path.cwd(), *Path.cwd().parents):
        if (folder / "Pulumi.yaml").is_file():
            return folder
    return Path.cwd()


def checked(config: "InfraConfig", source: str) -> "InfraConfig":
    """`config` with its trigger checked for the cloud and its definition named by absolute path."""
    trigger = config.pipeline_trigger
    assert trigger is not None
    cloud = infra_cloud(config.cloud)
    cloud.check_schedule(trigger, source)
    path = Path(trigger.definition).expanduser()
    if not path.is_absolute():
        path = project_root(source) / path
    if not path.is_file():
        raise ConfigError(f"{KEY}.definition names no file: {path}", where=f"{source}: {KEY}.definition",
                          fix=f"run `stackwise pipeline compile --target {cloud.pipeline_target}` to write it, "
                              "or correct the path (relative to the project folder, where stacks/ is)")
    resolved = trigger.model_copy(update={"definition": str(path)})
    definition = read_definition(resolved, config.cloud, source)
    if isinstance(definition, VertexDefinition) and trigger.data_prefix:
        # The workflow that starts runs on data changes carries the spec (base64, 4/3 of its size).
        if definition.spec_bytes * 4 // 3 + 8192 > WORKFLOW_SOURCE_MAX:
            raise _bad("definition", f"the pipeline spec ({definition.spec_bytes} bytes) is too large for the "
                       f"Workflows source that runs it on data changes ({WORKFLOW_SOURCE_MAX} bytes)", source,
                       "split the pipeline, or trigger it on a schedule only (drop dataPrefix)")
    return config.model_copy(update={"pipeline_trigger": resolved})


def read_definition(trigger: "PipelineTriggerConfig", cloud: str, source: str) -> Any:
    """The compiled pipeline for `cloud`, with the trigger's parameters checked against it."""
    path = Path(trigger.definition)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _bad("definition", f"cannot read {path}: {exc}", source, "point it at the compiled file") from None
    return infra_cloud(cloud).read_pipeline(path, text, trigger.parameters, source)


def _bad(key: str, what: str, source: str, fix: str) -> ConfigError:
    return ConfigError(f"bad value for {KEY}.{key}: {what}", where=f"{source}: {KEY}.{key}", fix=fix)


def sagemaker_definition(text: str, path: Path, parameters: dict[str, Any], source: str) -> SageMakerDefinition:
    fix = "point it at the JSON `stackwise pipeline compile --target sagemaker` writes"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _bad("definition", f"{path} is not JSON ({exc})", source, fix) from None
    steps = data.get("Steps") if isinstance(data, dict) else None
    if not (isinstance(steps, list) and steps and all(isinstance(s, dict) for s in steps) and "Version" in data):
        raise _bad("definition", f"{path} is not a SageMaker pipeline definition (no Version and Steps)", source, fix)
    types = tuple(dict.fromkeys(str(s.get("Type")) for s in steps))
    unknown = [t for t in types if t not in SAGEMAKER_STEP_ACTIONS]
    if unknown:
        raise _bad("definition", f"step type {unknown[0]} is not one the trigger grants its role", source,
                   f"use step types {', '.join(SAGEMAKER_STEP_ACTIONS)}, or extend SAGEMAKER_STEP_ACTIONS "
                   "in infra/pipeline_trigger.py with the actions the step needs")
    declared = {p.get("Name"): p for p in data.get("Parameters") or [] if isinstance(p, dict)}
    _check_parameters(parameters, {n: "DefaultValue" in p for n, p in declared.items()}, path, source)
    compact = json.dumps(data, separators=(",", ":"))
    if len(compact) > SAGEMAKER_DEFINITION_MAX:
        raise _bad("definition", f"{path} is {len(compact)} bytes; CreatePipeline takes at most "
                   f"{SAGEMAKER_DEFINITION_MAX}", source, "split the pipeline")
    return SageMakerDefinition(text=compact, step_types=types,
                               parameters={k: _text(v) for k, v in parameters.items()})


def vertex_definition(text: str, path: Path, parameters: dict[str, Any], source: str) -> VertexDefinition:
    import yaml

    fix = "point it at the PipelineSpec `stackwise pipeline compile --target vertex` writes (JSON or YAML)"
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]  # JSON is YAML too
    except yaml.YAMLError as exc:
        raise _bad("definition", f"{path} is neither JSON nor YAML ({exc})", source, fix) from None
    spec = docs[0] if docs and isinstance(docs[0], dict) else {}
    values: dict[str, Any] = {}
    if "pipelineSpec" in spec:  # a PipelineJob file (KFP's older JSON form): its spec and parameter values
        values = dict((spec.get("runtimeConfig") or {}).get("parameterValues") or {})
        spec = spec["pipelineSpec"] or {}
    name = (spec.get("pipelineInfo") or {}).get("name") if isinstance(spec, dict) else None
    if not (name and isinstance(spec.get("root"), dict)):
        raise _bad("definition", f"{path} is not a KFP PipelineSpec (no pipelineInfo.name and root)", source, fix)
    declared = ((spec["root"].get("inputDefinitions") or {}).get("parameters") or {})
    required = {n: bool(d.get("isOptional") or "defaultValue" in d or n in values) for n, d in declared.items()}
    _check_parameters(parameters, required, path, source)
    values.update(parameters)
    size = len(json.dumps(spec, separators=(",", ":")))
    if size + 4096 > SCHEDULER_BODY_MAX:
        raise _bad("definition", f"the pipeline spec ({size} bytes) does not fit a Cloud Scheduler job (1 MB)",
                   source, "split the pipeline")
    return VertexDefinition(pipeline_spec=spec, name=str(name), parameter_values=values, spec_bytes=size)


def _check_parameters(given: dict[str, Any], declared: dict[str, bool], path: Path, source: str) -> None:
    """`declared`: each parameter of the pipeline -> whether it has a default."""
    for name in given:
        if name not in declared:
            raise _bad(f"parameters.{name}", f"the pipeline in {path} declares no parameter {name!r}", source,
                       f"remove it; the pipeline declares: {', '.join(sorted(declared)) or 'none'}")
    missing = sorted(n for n, has_default in declared.items() if not has_default and n not in given)
    if missing:
        raise _bad("parameters", f"the pipeline in {path} needs {', '.join(missing)} (no default)", source,
                   f"set {KEY}.parameters.{missing[0]}")


def _text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool) else str(value)


# -- schedules, in each cloud's own syntax --------------------------------------------------------
_NAMES = {"month": "JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split(), "dow": "SUN MON TUE WED THU FRI SAT".split()}


def check_recurrence(trigger: "PipelineTriggerConfig", source: str) -> None:
    """A Logic Apps schedule (Azure): a recurrence, and a Windows time zone name."""
    if trigger.schedule:
        raise _bad("schedule", "Azure Logic Apps take a recurrence, not a cron line", source,
                   "write recurrence: {frequency: Day, interval: 1, hours: [3], minutes: [0]} instead")
    if trigger.time_zone and ("/" in trigger.time_zone
                              or not re.fullmatch(r"[A-Za-z][A-Za-z0-9 .+()'-]{0,63}", trigger.time_zone)):
        raise _bad("timeZone", f"{trigger.time_zone!r} is not a Windows time zone name", source,
                   "Logic Apps take Windows names, e.g. UTC, W. Europe Standard Time, Pacific Standard Time")


def _no_recurrence(cloud: str, example: str, trigger: "PipelineTriggerConfig", source: str) -> None:
    if trigger.recurrence is not None:
        raise _bad("recurrence", f"recurrence is Azure's syntax; {cloud} stacks take schedule", source,
                   f"write schedule: {example}")


def check_eventbridge_schedule(cloud: str, trigger: "PipelineTriggerConfig", source: str) -> None:
    """An EventBridge schedule (AWS): cron(...) or rate(...), in UTC."""
    _no_recurrence(cloud, "cron(0 3 * * ? *)", trigger, source)
    if trigger.time_zone not in (None, "UTC", "Etc/UTC"):
        raise _bad("timeZone", "EventBridge rules run in UTC", source, "drop timeZone and write the cron in UTC")
    if trigger.schedule and (problem := eventbridge_schedule_problem(trigger.schedule)):
        raise _bad("schedule", f"{trigger.schedule!r}: {problem}", source,
                   "write an EventBridge expression: cron(0 3 * * ? *) (minutes hours day-of-month month "
                   "day-of-week year, UTC) or rate(1 day)")


def check_unix_cron_schedule(cloud: str, trigger: "PipelineTriggerConfig", source: str) -> None:
    """A unix-cron schedule with an IANA time zone (GCP's Cloud Scheduler)."""
    _no_recurrence(cloud, "'0 3 * * *'", trigger, source)
    if trigger.time_zone and trigger.time_zone not in _zones():
        raise _bad("timeZone", f"{trigger.time_zone!r} is not an IANA time zone", source,
                   "write a tz database name such as Etc/UTC or Europe/Paris")
    if trigger.schedule and (problem := unix_cron_problem(trigger.schedule)):
        raise _bad("schedule", f"{trigger.schedule!r}: {problem}", source,
                   "write a unix-cron line: minute hour day-of-month month day-of-week, e.g. '0 3 * * *'")


def _zones() -> set[str]:
    return zoneinfo.available_timezones() | {"UTC", "Etc/UTC"}


def eventbridge_schedule_problem(expr: str) -> str | None:
    """Why `expr` is not an EventBridge rule schedule (`cron(...)` with six fields, or `rate(...)`)."""
    if m := re.fullmatch(r"rate\((\d+) (minute|minutes|hour|hours|day|days)\)", expr):
        value, unit = int(m.group(1)), m.group(2)
        if value < 1:
            return "a rate must be at least 1"
        if (value == 1) != (not unit.endswith("s")):
            return f"rate({value} ...) takes the unit in the {'singular' if value == 1 else 'plural'}"
        return None
    m = re.fullmatch(r"cron\(([^()]*)\)", expr)
    if not m:
        return "not cron(...) or rate(...)"
    fields = m.group(1).split()
    if len(fields) != 6:
        return f"cron takes 6 fields (minutes hours day-of-month month day-of-week year), not {len(fields)}"
    minute, hour, dom, month, dow, year = fields
    if (dom == "?") == (dow == "?"):
        return "exactly one of day-of-month and day-of-week must be '?'"
    checks = [(minute, 0, 59, None, ""), (hour, 0, 23, None, ""), (dom, 1, 31, None, "?LW"),
              (month, 1, 12, _NAMES["month"], ""), (dow, 1, 7, _NAMES["dow"], "?L#"), (year, 1970, 2199, None, "")]
    for label, (value, low, high, names, special) in zip(
            ("minutes", "hours", "day-of-month", "month", "day-of-week", "year"), checks):
        if value == "?" and "?" in special:
            continue
        if not _cron_field_ok(value, low, high, names, special):
            return f"bad {label} field {value!r}"
    return None


def unix_cron_problem(expr: str) -> str | None:
    """Why `expr` is not a unix-cron line (minute hour day-of-month month day-of-week)."""
    fields = expr.split()
    if len(fields) != 5:
        return f"unix-cron takes 5 fields (minute hour day-of-month month day-of-week), not {len(fields)}"
    checks = [(0, 59, None), (0, 23, None), (1, 31, None), (1, 12, _NAMES["month"]), (0, 7, _NAMES["dow"])]
    for label, value, (low, high, names) in zip(("minute", "hour", "day-of-month", "month", "day-of-week"),
                                                fields, checks):
        if not _cron_field_ok(value, low, high, names, ""):
            return f"bad {label} field {value!r}"
    return None


def _cron_field_ok(field: str, low: int, high: int, names: list[str] | None, special: str) -> bool:
    """A comma list of `*`, N, N-M, each optionally /STEP; names (JAN, MON) where the field has them;
    EventBridge's L, W and # where `special` allows them."""
    def number(token: str) -> int | None:
        if names and token.upper() in names:
            return names.index(token.upper()) + (low if low == 1 else 0)
        return int(token) if token.isdigit() and low <= int(token) <= high else None

    for item in field.split(","):
        if "L" in special and item in ("L", "LW") or "W" in special and re.fullmatch(r"\d{1,2}W", item):
            continue
        if "L" in special and re.fullmatch(r"[1-7]L", item) or "#" in special and re.fullmatch(r"[1-7]#[1-5]", item):
            continue
        base, _, step = item.partition("/")
        if step and not (step.isdigit() and int(step) >= 1):
            return False
        if base == "*":
            continue
        first, _, last = base.partition("-")
        if number(first) is None or (last and (number(last) is None)):
            return False
    return True
