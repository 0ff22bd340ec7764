"""Fine-tuning jobs on the local stack, run for real on a tiny random-init Llama built offline:
LoRA and QLoRA lower held-out perplexity and the saved adapter reloads to the same value, a
SIGKILLed job resumes from its last checkpoint, a 2-process gloo DDP run trains, bad data exits 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("peft")

from stackwise.jobs import JobState  # noqa: E402
from stackwise.specs import FineTuneSpec  # noqa: E402

from .conftest import JOB_TIMEOUT_S, job_row, kill_hard, lee_articles, wait_for  # noqa: E402

FAST = {"max_steps": 16, "learning_rate": 5e-3, "batch_size": 8, "max_seq_length": 64, "checkpoint_every": 8,
        "logging_every": 4, "eval_max_examples": 12, "precision": "fp32"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[str, str]:
    """(model folder, text JSONL of 150 Lee articles)."""
    from stackwise.training.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("finetune")
    articles = lee_articles()[:150]
    model = build_tiny_model(root / "tiny-llama", articles, vocab_size=400)
    data = root / "lee.jsonl"
    data.write_text("".join(json.dumps({"text": a}) + "\n" for a in articles), encoding="utf-8")
    return str(model), str(data)


def finetune_spec(tiny, **training) -> FineTuneSpec:
    model, data = tiny
    return FineTuneSpec(base=model, data=data, lora={"r": 8, "alpha": 16, "target_modules": "all-linear"},
                        training={**FAST, **training})


def log_text(info) -> str:
    return Path(info.log_path).read_text(encoding="utf-8", errors="replace")


def test_lora_job_lowers_perplexity_saves_a_reloadable_adapter_and_registers_it(sdk_env, tiny):
    import stackwise

    handle = stackwise.connect().finetune(finetune_spec(tiny).model_copy(update={"merge": True}))
    info = handle.wait(timeout=JOB_TIMEOUT_S)
    assert info.state is JobState.SUCCEEDED, log_text(info)[-3000:]
    report = info.outputs
    ppl = report["perplexity"]
    assert ppl["after"] < 0.95 * ppl["before"], ppl
    assert ppl["reloaded"] == pytest.approx(ppl["after"], rel=1e-4)
    assert report["steps"] == 16 and report["resumed_from_step"] is None and report["tokens_per_s"] > 0
    adapter = Path(report["adapter"])
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    card = Path(report["model_card"]).read_text()
    assert report["dataset_sha256"] in card and f"{ppl['before']}" in card
    # Progress lines for the CLI: step, loss and tokens/s.
    events = [json.loads(line.split(" ", 1)[1]) for line in log_text(info).splitlines() if line.startswith("@@progress ")]
    assert events[-1]["done"] == 16 and events[-1]["loss"] > 0 and events[-1]["tokens_per_s"] > 0

    # An independent reload in this process gives the job's figure: the held-out records picked
    # as the spec documents (a seeded shuffle of the file's lines), tokenized by the tokenizer
    # directly (the text, then EOS, cut at max_seq_length) and scored by transformers' own loss,
    # one record at a time; no stackwise reader, tokenizer or perplexity code.
    import math
    import random

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = finetune_spec(tiny)
    records = [json.loads(line) for line in Path(spec.data).read_text(encoding="utf-8").splitlines() if line.strip()]
    order = list(range(len(records)))
    random.Random(spec.training.seed).shuffle(order)
    n_held = min(spec.training.eval_max_examples, max(1, round(len(records) * spec.training.eval_fraction)),
                 len(records) - 1)
    held = [records[i]["text"] for i in sorted(order[:n_held])]
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    encoded = [(tokenizer(t)["input_ids"] + [tokenizer.eos_token_id])[:spec.training.max_seq_length] for t in held]

    def reference_perplexity(model) -> float:
        model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for ids in encoded:
                ids_t = torch.tensor([ids])
                total += float(model(input_ids=ids_t, labels=ids_t).loss) * (len(ids) - 1)  # mean over n-1 targets
                count += len(ids) - 1
        return math.exp(total / count)

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(spec.base, dtype=torch.float32), adapter)
    assert reference_perplexity(model) == pytest.approx(ppl["after"], rel=1e-4)
    merged = AutoModelForCausalLM.from_pretrained(report["merged"], dtype=torch.float32)
    assert reference_perplexity(merged) == pytest.approx(ppl["after"], rel=1e-3)
    base = AutoModelForCausalLM.from_pretrained(spec.base, dtype=torch.float32)
    assert reference_perplexity(base) == pytest.approx(ppl["before"], rel=1e-4)

    # MLflow: the run's metrics, and a registered model version whose files are the adapter.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{sdk_env / 'mlflow.db'}")
    version = client.get_model_version(report["registered_model"], report["registered_version"])
    run = client.get_run(report["mlflow_run_id"])
    assert run.data.metrics["perplexity.after"] == pytest.approx(ppl["after"])
    assert version.run_id == run.info.run_id and version.tags["method"] == "lora"
    assert str(sdk_env / "artifacts" / "mlflow") in version.source
    # Lineage is complete as soon as the version exists (before any evaluation).
    lineage = {k.removeprefix("lineage."): v for k, v in version.tags.items() if k.startswith("lineage.")}
    assert lineage["base"] == spec.base and lineage["data"] == spec.data and lineage["method"] == "lora"
    assert lineage["dataset_sha256"] == report["dataset_sha256"] and lineage["adapter"] == version.source
    assert lineage["training_run"] == run.info.run_id and lineage["code_version"].startswith("stackwise ")


def test_qlora_job_trains_a_4bit_base_on_cpu(sdk_env, tiny):
    pytest.importorskip("bitsandbytes")
    import stackwise

    handle = stackwise.connect().finetune(finetune_spec(tiny, max_steps=8).model_copy(update={"method": "qlora"}))
    info = handle.wait(timeout=JOB_TIMEOUT_S)
    assert info.state is JobState.SUCCEEDED, log_text(info)[-3000:]
    ppl = info.outputs["perplexity"]
    assert ppl["after"] < 0.95 * ppl["before"], ppl
    assert ppl["reloaded"] == pytest.approx(ppl["after"], rel=1e-3)


def test_full_fine_tune_saves_the_whole_model(sdk_env, tiny):
    import stackwise

    spec = finetune_spec(tiny, max_steps=8, learning_rate=2e-3).model_copy(update={"method": "full"})
    info = stackwise.connect().finetune(spec).wait(timeout=JOB_TIMEOUT_S)
    assert info.state is JobState.SUCCEEDED, log_text(info)[-3000:]
    report = info.outputs
    assert report["adapter"] is None and (Path(report["model"]) / "config.json").is_file()
    ppl = report["perplexity"]
    assert ppl["after"] < ppl["before"] and ppl["reloaded"] == pytest.approx(ppl["after"], rel=1e-4)


def test_sigkill_mid_run_then_rerun_resumes_from_the_last_checkpoint(sdk_env, tiny):
    import stackwise

    platform = stackwise.connect()
    spec = finetune_spec(tiny, max_steps=24, checkpoint_every=6, learning_rate=1e-3)
    first = platform.finetune(spec)
    wait_for(lambda: "checkpoint saved at step 12" in log_text(first.info()), what="the second checkpoint")
    kill_hard(job_row(sdk_env, first.id)["workload_pid"])
    info = first.wait(timeout=60)
    assert info.state is JobState.FAILED and "SIGKILL" in (info.error or "")

    second = platform.finetune(spec)
    info = second.wait(timeout=JOB_TIMEOUT_S)
    assert info.state is JobState.SUCCEEDED, log_text(info)[-3000:]
    resumed = info.outputs["resumed_from_step"]
    assert resumed is not None and 12 <= resumed < 24
    assert info.outputs["steps"] == 24
    assert f"resuming from checkpoint-{resumed}" in log_text(info)
    steps = [json.loads(line.split(" ", 1)[1])["done"] for line in log_text(info).splitlines()
             if line.startswith("@@progress ")]
    assert steps[0] == resumed and steps[-1] == 24  # the step counter continues


def test_two_process_ddp_over_gloo(sdk_env, tiny, monkeypatch):
    import stackwise

    monkeypatch.setenv("STACKWISE_THREADS", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    spec = finetune_spec(tiny, max_steps=6, batch_size=4).model_copy(
        update={"compute": FineTuneSpec.model_fields["compute"].annotation(count=2)})
    assert spec.compute.strategy == "ddp"
    info = stackwise.connect().finetune(spec).wait(timeout=JOB_TIMEOUT_S)
    log = log_text(info)
    assert info.state is JobState.SUCCEEDED, log[-3000:]
    assert info.outputs["processes"] == 2 and info.outputs["strategy"] == "ddp"
    assert "torch.distributed.run --nproc_per_node=2 --standalone" in log
    ppl = info.outputs["perplexity"]
    assert ppl["after"] < ppl["before"] and ppl["reloaded"] == pytest.approx(ppl["after"], rel=1e-4)


def test_bad_dataset_inside_the_job_exits_2_naming_the_line(sdk_env, tiny, tmp_path):
    import stackwise

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"prompt": "no completion"}\n', encoding="utf-8")
    spec = finetune_spec(tiny).model_copy(update={"data": str(bad)})
    info = stackwise.connect().finetune(spec, preflight=False).wait(timeout=JOB_TIMEOUT_S)
    assert info.state is JobState.FAILED and info.exit_code == 2
    assert f"{bad} line 2" in info.error and "'prompt' but no 'completion'" in info.error
    assert "Traceback" not in log_text(info)
