"""Model names and aliases are checked (MLflow's rules plus the grammar of model references)
before anything is written: a refused `models register` leaves no MLflow run and no copied
artifact, and `champion` / `previous-champion` (in any case) move only through `promote`."""

from __future__ import annotations

from pathlib import Path

import pytest

from stackwise.errors import SpecError
from stackwise.model_registry import check_alias, check_model_name, check_version

BAD_NAMES = ["../../x", "a/b", "", " ", "a:b", "x'y", "a b", "..", ".x", "名前", "x" * 129, "\x00", "demo\n"]
BAD_ALIASES = [" champion", "../x", "v1", "V2", "latest", "LATEST", "", "1abc", "a b", "a" * 64, "candidate\n",
               "champion", "CHAMPION", "Champion", "previous-champion", "Previous-Champion", "Candidate"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_model_names_are_refused(name):
    with pytest.raises(SpecError) as info:
        check_model_name(name)
    assert info.value.fix and len(str(info.value)) < 600


@pytest.mark.parametrize("name", ["demo", "chat-support", "Llama-3.1_ft", "finetune-smollm2-135m-instruct"])
def test_good_model_names_pass(name):
    assert check_model_name(name) == name


@pytest.mark.parametrize("alias", BAD_ALIASES)
def test_bad_and_reserved_aliases_are_refused(alias):
    with pytest.raises(SpecError):
        check_alias(alias)


def test_reserved_aliases_name_the_gate_and_case_variants_name_the_spelling():
    with pytest.raises(SpecError, match="only through the promotion gate"):
        check_alias("CHAMPION")
    with pytest.raises(SpecError, match="only in case"):
        check_alias("Candidate")
    assert check_alias("champion", allow_reserved=True) == "champion"
    assert [check_alias(a) for a in ("candidate", "staging", "blue_green")] == ["candidate", "staging", "blue_green"]


@pytest.mark.parametrize("version", ["0", "-1", "abc", "1.0", "", "v1", "99999999999"])
def test_bad_versions_are_refused(version):
    with pytest.raises(SpecError):
        check_version(version)


# -- through the registry and the CLI: nothing is written on refusal ------------------------------
@pytest.fixture
def saved_model(tmp_path) -> Path:
    folder = tmp_path / "saved"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "weights.bin").write_bytes(b"\0" * 1024)
    return folder


def copies(state: Path) -> list[Path]:
    return [p for p in state.rglob("weights.bin")] if state.exists() else []


def test_registry_refuses_before_logging_anything(tmp_path, monkeypatch, saved_model):
    pytest.importorskip("mlflow")
    from stackwise.model_registry import Registry

    state = tmp_path / "state"
    monkeypatch.setenv("STACKWISE_HOME", str(state))
    registry = Registry()
    for name, alias in (("../../x", None), ("a/b", None), (" ", None), ("demo", "champion"), ("demo", "v1")):
        with pytest.raises(SpecError):
            registry.register(str(saved_model), name, alias=alias)
    assert copies(state) == []
    assert registry.client.search_experiments() == [] or all(
        not registry.client.search_runs([e.experiment_id]) for e in registry.client.search_experiments())
    assert registry.list_models() == []

    version = registry.register(str(saved_model), "demo", alias="candidate")
    assert registry.alias_version("demo", "candidate") == version == "1"
    with pytest.raises(SpecError, match="promotion gate"):
        registry.set_alias("demo", "Champion", version)
    assert registry.alias_version("demo", "champion") is None


@pytest.mark.parametrize("args, message", [
    (["--name", "../../x"], "invalid model name '../../x'"),
    (["--name", ""], "invalid model name ''"),
    (["--name", "demo", "--alias", "champion"], "the champion alias moves only through the promotion gate"),
    (["--name", "demo", "--alias", "CHAMPION"], "the champion alias moves only through the promotion gate"),
])
def test_cli_register_refuses_without_a_run_or_a_copy(run_cli, tmp_path, saved_model, args, message):
    proc = run_cli("models", "register", str(saved_model), *args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr
    state = tmp_path / ".stackwise"
    assert copies(state) == [] and not (state / "mlflow.db").exists()


@pytest.mark.parametrize("version, alias, message", [
    ("1", " champion", "invalid alias"),
    ("1", "../x", "invalid alias"),
    ("1", "v1", "MLflow says"),
    ("1", "CHAMPION", "only through the promotion gate"),
    ("1", "previous-champion", "only through the promotion gate"),
    ("x", "candidate", "invalid model version"),
])
def test_cli_alias_refusals(run_cli, version, alias, message):
    proc = run_cli("models", "alias", "demo", version, alias)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr
