"""Governance before submit (stackwise.governance): the licence policy, the GPU picked for a catalog
base on a cloud stack, the cost estimate and the stack's maxJobCostUsd, through Platform and the CLI.

Expected values are computed here from the shipped YAML catalogs (read directly, not through the code
under test) and the documented formulas: hours = k x params x tokens / (peak TFLOPS x GPUs x MFU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
AWS_OUTPUTS = {"cloud": "aws", "region": "us-east-1", "artifact_store": "s3://demo-artifacts",
               "job_role": "arn:aws:iam::123456789012:role/demo", "default_gpu": "A10G",
               "vector_store": {"kind": "embedded", "uri": "s3://demo-artifacts/vectors"}}


def _project(tmp_path: Path, write_project, monkeypatch, **config: object) -> None:
    lines = ["config:", "  stackwise:cloud: aws", "  stackwise:region: us-east-1",
             *[f"  stackwise:{k}: {json.dumps(v)}" for k, v in config.items()]]
    local = ["config:", "  stackwise:cloud: local", *[f"  stackwise:{k}: {json.dumps(v)}" for k, v in config.items()
                                                       if k in ("allowedLicenses", "allowGated", "maxJobCostUsd")]]
    write_project(tmp_path, {"dev-aws": "\n".join(lines) + "\n", "local": "\n".join(local) + "\n"})
    out = tmp_path / "aws.json"  # the cloud stack's outputs (STACKWISE_OUTPUTS names them for dev-aws only)
    out.write_text(json.dumps(AWS_OUTPUTS))
    if config.get("allowedGpus"):
        monkeypatch.setenv("STACKWISE_OUTPUTS", str(out))


def _data(tmp_path: Path, n: int = 200) -> tuple[Path, list[dict]]:
    records = [{"prompt": f"Question {i}: what happened in the news today?", "completion": "A long answer " * 40}
               for i in range(n)]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path, records


def _gpu_yaml() -> dict:
    return yaml.safe_load((REPO / "sdk" / "data" / "gpu_catalog.yaml").read_text())


def _model_yaml(model_id: str) -> dict:
    data = yaml.safe_load((REPO / "sdk" / "data" / "model_catalog.yaml").read_text())
    return next(m for m in data["models"] if m["id"] == model_id)


def test_a_catalog_base_on_a_cloud_stack_gets_the_cheapest_allowed_gpu_that_holds_it(tmp_path, write_project,
                                                                                      monkeypatch):
    from stackwise import connect
    from stackwise.specs import FineTuneSpec

    allowed = ["T4", "A10G", "L4", "A100-40GB"]
    _project(tmp_path, write_project, monkeypatch, allowedGpus=allowed)
    data, records = _data(tmp_path)
    spec = FineTuneSpec(base="llama-3.1-8b-instruct", data=str(data), method="qlora",
                        training={"max_seq_length": 512, "batch_size": 2})
    planned, placement = connect("dev-aws").plan_finetune(spec)

    needed = placement.memory_gb_needed
    assert 4 < needed < 40  # 8B in 4 bits plus LoRA state and activations at 2 x 512 tokens
    catalog = _gpu_yaml()
    memory = {name: g["memory_gb"] for name, g in catalog["gpus"].items()}
    fitting = [o for o in catalog["offers"] if o["cloud"] == "aws" and o["gpu"] in allowed
               and memory[o["gpu"]] >= needed]
    cheapest = min(fitting, key=lambda o: (o["on_demand"], o["count"]))
    assert (planned.compute.gpu, planned.compute.count) == (cheapest["gpu"], cheapest["count"])
    assert placement.chosen and placement.instance == cheapest["instance"]

    # The estimate, by hand: tokens = each record's JSON at 4 characters a token, capped at max_seq_length.
    tokens = sum(min(len(json.dumps(r, ensure_ascii=False)) / 4, 512) for r in records)
    model = _model_yaml("llama-3.1-8b-instruct")
    peak = catalog["gpus"][cheapest["gpu"]]["bf16_tflops"]
    hours = 4 * model["params_b"] * 1e9 * int(tokens) / (peak * 1e12 * cheapest["count"] * 0.35) / 3600
    assert placement.tokens == int(tokens)
    assert placement.hours == pytest.approx(hours, rel=1e-3)
    assert placement.usd == pytest.approx(hours * cheapest["on_demand"], abs=0.01)
    assert placement.upper_bound_usd == pytest.approx(24 * cheapest["on_demand"], abs=0.01)


def test_spot_prices_the_estimate_at_the_spot_figure(tmp_path, write_project, monkeypatch):
    from stackwise import connect
    from stackwise.specs import FineTuneSpec

    _project(tmp_path, write_project, monkeypatch, allowedGpus=["A10G"])
    data, _ = _data(tmp_path)
    base = dict(base="qwen2.5-0.5b-instruct", data=str(data), method="lora",
                training={"max_steps": 2000, "batch_size": 4, "max_seq_length": 512})
    _, on_demand = connect("dev-aws").plan_finetune(FineTuneSpec(**base))
    _, spot = connect("dev-aws").plan_finetune(FineTuneSpec(**base, compute={"spot": True}))
    offer = next(o for o in _gpu_yaml()["offers"] if o["instance"] == "ml.g5.xlarge")
    assert spot.usd / on_demand.usd == pytest.approx(offer["spot"] / offer["on_demand"], rel=0.02)


def test_above_max_job_cost_the_cli_exits_3_before_anything_is_submitted(tmp_path, write_project, monkeypatch,
                                                                          run_cli):
    _project(tmp_path, write_project, monkeypatch, allowedGpus=["A10G", "L4"], maxJobCostUsd=0.01)
    data, _ = _data(tmp_path)
    result = run_cli("finetune", "--base", "llama-3.1-8b-instruct", "--data", str(data), "--method", "qlora",
                     "--max-steps", "2000", "--stack", "dev-aws", env={"STACKWISE_OUTPUTS": str(tmp_path / "aws.json")})
    assert result.returncode == 3, result.stderr
    assert "above the limit $0.01" in result.stderr and "maxJobCostUsd" in result.stderr
    assert "Traceback" not in result.stderr


def test_nothing_allowed_holds_the_job_exit_2_naming_the_memory_and_the_way_out(tmp_path, write_project,
                                                                                 monkeypatch, run_cli):
    _project(tmp_path, write_project, monkeypatch, allowedGpus=["T4"])
    data, _ = _data(tmp_path)
    result = run_cli("finetune", "--base", "llama-3.1-70b-instruct", "--data", str(data), "--method", "lora",
                     "--stack", "dev-aws", env={"STACKWISE_OUTPUTS": str(tmp_path / "aws.json")})
    assert result.returncode == 2, result.stderr
    assert "GB per GPU" in result.stderr and "T4 (16 GB)" in result.stderr and "allowedGpus" in result.stderr


def test_the_licence_policy_refuses_a_base_before_a_job_starts_on_the_local_stack(tmp_path, write_project,
                                                                                   monkeypatch, run_cli):
    _project(tmp_path, write_project, monkeypatch, allowedLicenses=["apache-2.0", "mit"])
    data, _ = _data(tmp_path)
    result = run_cli("finetune", "--base", "meta-llama/Llama-3.1-8B-Instruct", "--data", str(data))
    assert result.returncode == 2, result.stderr
    assert "llama3.1" in result.stderr and "stackwise:allowedLicenses" in result.stderr
    assert not (tmp_path / ".stackwise" / "jobs").exists() or not any((tmp_path / ".stackwise" / "jobs").iterdir())


def test_a_base_with_a_typo_of_a_catalog_id_exits_2_suggesting_it_before_any_job(tmp_path, write_project,
                                                                                   monkeypatch, run_cli):
    _project(tmp_path, write_project, monkeypatch)
    data, _ = _data(tmp_path)
    result = run_cli("finetune", "--base", "qwen2.5-0.5b-instuct", "--data", str(data))
    assert result.returncode == 2, result.stderr
    assert "did you mean qwen2.5-0.5b-instruct" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / ".stackwise" / "jobs").exists() or not any((tmp_path / ".stackwise" / "jobs").iterdir())
    from stackwise.training.models import check_base

    assert check_base("gpt2") == "hub"  # a bare hub id far from every known name still passes


def test_a_base_outside_the_catalog_needs_a_declared_licence_when_the_stack_restricts(tmp_path, write_project,
                                                                                       monkeypatch):
    from stackwise import connect
    from stackwise.errors import InputError
    from stackwise.specs import FineTuneSpec

    _project(tmp_path, write_project, monkeypatch, allowedLicenses=["apache-2.0"])
    data, _ = _data(tmp_path)
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(InputError) as caught:
        connect("local").plan_finetune(FineTuneSpec(base=str(folder), data=str(data)))
    assert "unknown" in caught.value.what and "licence:" in caught.value.fix
    spec, placement = connect("local").plan_finetune(FineTuneSpec(base=str(folder), data=str(data),
                                                                   licence="apache-2.0"))
    assert placement.licence == "apache-2.0" and spec.licence == "apache-2.0"
    with pytest.raises(InputError):
        connect("local").plan_finetune(FineTuneSpec(base=str(folder), data=str(data), licence="llama3.1"))


def test_a_spec_without_a_licence_keeps_its_digest():
    from stackwise.specs import FineTuneSpec

    plain = FineTuneSpec(base="smollm2-135m-instruct", data="/d.jsonl")
    assert "licence" not in plain.model_dump_json()
    assert FineTuneSpec(base="smollm2-135m-instruct", data="/d.jsonl", licence="apache-2.0").digest() != plain.digest()


def test_promote_and_deploy_refuse_a_version_whose_base_licence_the_stack_does_not_allow(tmp_path, write_project,
                                                                                          monkeypatch):
    pytest.importorskip("mlflow")
    from stackwise import connect
    from stackwise.errors import InputError

    _project(tmp_path, write_project, monkeypatch, allowedLicenses=["apache-2.0"])
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    platform = connect("local")
    registry = platform.models
    version = registry.register(str(folder), "chat", alias="candidate")
    registry.client.set_model_version_tag("chat", version, "base", "meta-llama/Llama-3.1-8B-Instruct")
    gate = tmp_path / "gate.yaml"
    gate.write_text("metrics:\n  perplexity: {min_delta: 0}\n")
    with pytest.raises(InputError) as caught:
        registry.promote("chat", str(gate))
    assert "llama3.1" in caught.value.what and caught.value.where.endswith("stackwise:allowedLicenses")
    assert registry.alias_version("chat", "champion") is None
    with pytest.raises(InputError):
        platform.deploy(f"chat:{version}")

    ok = registry.register(str(folder), "chat")
    registry.client.set_model_version_tag("chat", ok, "base", "Qwen/Qwen2.5-0.5B-Instruct")  # apache-2.0
    assert registry.promote("chat", str(gate), version=ok).promoted
