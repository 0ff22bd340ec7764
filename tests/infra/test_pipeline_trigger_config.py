"""`stackwise:pipelineTrigger`: each bad value is a ConfigError (exit 2) naming the key and the
stack file with a fix; schedules are checked in each cloud's own syntax; the definition file must
exist, parse as the cloud's pipeline and declare the parameters the trigger passes."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from stackwise.errors import ConfigError
from stackwise.infra.config import InfraConfig
from stackwise.infra.pipeline_trigger import eventbridge_schedule_problem, unix_cron_problem

from .conftest import CLOUD_STACKS, REPO, STACKS, cli_env, stack_config

# azure-ai-ml's own use of marshmallow warns on every schema; not ours to fix.
pytestmark = [pytest.mark.filterwarnings("ignore:The `context` parameter is deprecated"),
              pytest.mark.filterwarnings("ignore:`Number` field should not be instantiated")]
DATA = "tests/infra/data/pipelines"
TRIGGERS = {
    "dev-aws": {"definition": f"{DATA}/train.sagemaker.json", "schedule": "cron(0 3 * * ? *)",
                "dataPrefix": "data/raw/", "parameters": {"Model": "Qwen/Qwen2.5-0.5B-Instruct"}},
    "dev-gcp": {"definition": f"{DATA}/train.vertex.yaml", "schedule": "0 3 * * 1-5", "timeZone": "Europe/Paris",
                "dataPrefix": "data/raw/", "parameters": {"model": "Qwen/Qwen2.5-0.5B-Instruct"}},
    "dev-azure": {"definition": f"{DATA}/train.azureml.yml", "timeZone": "W. Europe Standard Time",
                  "recurrence": {"frequency": "Week", "weekDays": ["Monday"], "hours": [3], "minutes": [0]},
                  "dataPrefix": "data/raw/"},
}


def load(name: str, trigger: dict | None = None, **changes) -> InfraConfig:
    if name == "dev-azure":
        pytest.importorskip("azure.ai.ml", reason="pip install 'stackwise[azure]' (reads the Azure ML job YAML)")
    raw, source = stack_config(name)
    raw = copy.deepcopy(raw)
    raw["pipelineTrigger"] = {**copy.deepcopy(trigger or TRIGGERS[name]), **changes}
    raw["pipelineTrigger"] = {k: v for k, v in raw["pipelineTrigger"].items() if v is not None}
    return InfraConfig.load(raw, source)


def refused(name: str, trigger: dict | None = None, **changes) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        load(name, trigger, **changes)
    assert err.value.exit_code == 2
    assert str(err.value.where).startswith(str(STACKS / f"Pulumi.{name}.yaml"))
    assert err.value.fix
    return err.value


@pytest.mark.parametrize("name", CLOUD_STACKS)
def test_stacks_without_the_key_have_no_trigger(name):
    raw, source = stack_config(name)
    assert "pipelineTrigger" not in raw
    assert InfraConfig.load(raw, source).pipeline_trigger is None


@pytest.mark.parametrize("name", sorted(TRIGGERS))
def test_a_good_trigger_loads_with_its_definition_resolved(name):
    trigger = load(name).pipeline_trigger
    assert trigger is not None and Path(trigger.definition).is_absolute()
    assert Path(trigger.definition) == REPO / TRIGGERS[name]["definition"]  # relative to the project folder


@pytest.mark.parametrize("name,changes,key,fragment", [
    ("dev-aws", {"schedule": "cron(0 3 * * * *)"}, "schedule", "exactly one of day-of-month and day-of-week"),
    ("dev-aws", {"schedule": "0 3 * * *"}, "schedule", "not cron(...) or rate(...)"),
    ("dev-aws", {"schedule": "rate(2 hour)"}, "schedule", "plural"),
    ("dev-aws", {"schedule": "cron(0 24 * * ? *)"}, "schedule", "bad hours field '24'"),
    ("dev-aws", {"schedule": "cron(0 3 * * ?)"}, "schedule", "6 fields"),
    ("dev-aws", {"timeZone": "Europe/Paris"}, "timeZone", "UTC"),
    ("dev-aws", {"recurrence": {"frequency": "Day"}}, "recurrence", "Azure's syntax"),
    ("dev-gcp", {"schedule": "0 25 * * *"}, "schedule", "bad hour field '25'"),
    ("dev-gcp", {"schedule": "cron(0 3 * * ? *)"}, "schedule", "5 fields"),
    ("dev-gcp", {"schedule": "0 3 * * ?"}, "schedule", "day-of-week"),
    ("dev-gcp", {"timeZone": "Paris"}, "timeZone", "not an IANA time zone"),
    ("dev-azure", {"schedule": "0 3 * * *"}, "schedule", "recurrence"),
    ("dev-azure", {"timeZone": "Europe/Paris"}, "timeZone", "Windows"),
    ("dev-aws", {"parameters": {"Model": "m", "Epochs": 3}}, "parameters.Epochs", "declares no parameter 'Epochs'"),
    ("dev-aws", {"parameters": None}, "parameters", "needs Model (no default)"),
    ("dev-gcp", {"parameters": {"model": "m", "epochs": 3}}, "parameters.epochs", "declares no parameter"),
    ("dev-gcp", {"parameters": None}, "parameters", "needs model"),
    ("dev-azure", {"parameters": {"epochs": 3}}, "parameters.epochs", "has no input 'epochs'"),
    ("dev-aws", {"definition": f"{DATA}/train.vertex.yaml"}, "definition", "is not JSON"),
    ("dev-gcp", {"definition": f"{DATA}/train.sagemaker.json"}, "definition", "not a KFP PipelineSpec"),
    ("dev-azure", {"definition": f"{DATA}/train.sagemaker.json"}, "definition", "not an Azure ML job YAML"),
])
def test_bad_values_name_the_key(name, changes, key, fragment):
    err = refused(name, **changes)
    assert f"stackwise:pipelineTrigger.{key}" in err.what, err
    assert fragment in err.what, err
    assert err.where.endswith(f"stackwise:pipelineTrigger.{key}")


def test_a_missing_definition_file_names_the_key_and_the_compile_command():
    err = refused("dev-aws", definition="pipelines/train.sagemaker.json")
    assert err.what == f"stackwise:pipelineTrigger.definition names no file: {REPO / 'pipelines/train.sagemaker.json'}"
    assert err.where.endswith("stackwise:pipelineTrigger.definition")
    assert "stackwise pipeline compile --target sagemaker" in err.fix


@pytest.mark.parametrize("name,changes,path,fragment", [
    ("dev-aws", {"schedul": "rate(1 day)"}, "pipelineTrigger.schedul", "pipelineTrigger reads: dataPrefix, dataSuffix"),
    ("dev-azure", {"recurrence": {"frequency": "Day", "weekdays": ["Monday"]}}, "pipelineTrigger.recurrence.weekdays",
     "recurrence reads: frequency, hours, interval, minutes, monthDays, weekDays"),
])
def test_unknown_keys_are_refused_with_the_keys_read_there(name, changes, path, fragment):
    err = refused(name, **changes)
    assert err.what == f"unknown key stackwise:{path}"
    assert fragment in err.fix


@pytest.mark.parametrize("name,changes,fragment", [
    ("dev-aws", {"schedule": None, "dataPrefix": None}, "set a schedule (recurrence on Azure), a dataPrefix, or both"),
    ("dev-aws", {"dataPrefix": None, "dataSuffix": "_SUCCESS"}, "dataSuffix needs dataPrefix"),
    ("dev-aws", {"dataPrefix": "/data/raw/"}, "may not start with '/'"),
    ("dev-gcp", {"dataPrefix": "data/*/raw/"}, "no wildcards"),
    ("dev-azure", {"recurrence": {"frequency": "Hour", "hours": [3]}}, "need frequency Day, Week or Month"),
    ("dev-azure", {"recurrence": {"frequency": "Day", "weekDays": ["Monday"]}}, "weekDays needs frequency Week"),
    ("dev-azure", {"recurrence": {"frequency": "Day", "hours": [24]}}, "less than or equal to 23"),
])
def test_shape_errors_name_the_key(name, changes, fragment):
    err = refused(name, **changes)
    assert err.what.startswith("bad value for stackwise:pipelineTrigger") and fragment in err.what, err


def test_the_recurrence_literals_are_the_providers_own():
    """What the config accepts is what azure-native's Logic Apps enums name (the provider's schema)."""
    from typing import get_args

    pytest.importorskip("pulumi_azure_native", reason="pip install 'stackwise[infra]'")
    from pulumi_azure_native.logic import DayOfWeek, RecurrenceFrequency

    from stackwise.infra.config import RecurrenceConfig, WeekDay

    frequencies = get_args(RecurrenceConfig.model_fields["frequency"].annotation)
    assert set(frequencies) <= {f.value for f in RecurrenceFrequency}
    assert set(get_args(WeekDay)) == {d.value for d in DayOfWeek}


@pytest.mark.parametrize("expr", ["cron(0 3 * * ? *)", "cron(0/15 9-17 ? * MON-FRI *)", "cron(0 12 L * ? 2030)",
                                  "cron(15 10 ? * 6L 2026-2030)", "cron(0 8 1,15 JAN,JUL ? *)", "cron(0 0 ? * 2#1 *)",
                                  "rate(1 minute)", "rate(5 minutes)", "rate(1 day)", "rate(12 hours)"])
def test_eventbridge_schedules_accepted(expr):
    assert eventbridge_schedule_problem(expr) is None


@pytest.mark.parametrize("expr", ["cron(0 3 * * * *)", "cron(0 3 ? * ? *)", "cron(60 3 * * ? *)", "cron(0 3 32 * ? *)",
                                  "cron(0 3 ? * 8 *)", "cron(0 3 ? * MON-FRY *)", "cron(0 3 * * ? 1969)",
                                  "rate(0 minutes)", "rate(1 minutes)", "rate(2 day)", "rate(1 week)", "cron 0 3 * * ? *",
                                  "0 3 * * *"])
def test_eventbridge_schedules_refused(expr):
    assert eventbridge_schedule_problem(expr)


@pytest.mark.parametrize("expr", ["0 3 * * *", "*/15 9-17 * * 1-5", "0 0 1,15 * *", "30 6 * JAN-MAR MON", "0 0 * * 7",
                                  "0-59/5 * * * *"])
def test_unix_cron_accepted(expr):
    assert unix_cron_problem(expr) is None


@pytest.mark.parametrize("expr", ["0 3 * *", "0 3 * * * *", "60 3 * * *", "0 3 0 * *", "0 3 * 13 *", "0 3 * * 8",
                                  "0 3 * * ?", "*/0 * * * *", "every 5 minutes"])
def test_unix_cron_refused(expr):
    assert unix_cron_problem(expr)


def test_plan_exits_2_naming_the_key_without_a_traceback(tmp_path):
    """The CLI's own path: `stackwise plan` on a stack file with a bad schedule."""
    pytest.importorskip("pulumi", reason="pip install 'stackwise[infra]'")
    stacks = tmp_path / "project" / "stacks"
    stacks.mkdir(parents=True)
    text = (STACKS / "Pulumi.dev-aws.yaml").read_text(encoding="utf-8")
    definition = json.dumps(str(REPO / DATA / "train.sagemaker.json"))
    text += ("  stackwise:pipelineTrigger:\n"
             f"    definition: {definition}\n    schedule: cron(0 3 * * * *)\n    parameters: {{Model: m}}\n")
    (stacks / "Pulumi.dev-aws.yaml").write_text(text, encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "stackwise.cli", "plan", "--stack", "dev-aws"], cwd=tmp_path,
                          env=cli_env(tmp_path, stacks), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "bad value for stackwise:pipelineTrigger.schedule" in proc.stderr
    assert "cron(0 3 * * ? *)" in proc.stderr  # the fix
    assert "Traceback" not in proc.stderr
