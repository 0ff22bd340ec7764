"""The training run of one fine-tuning job (one process, or one rank of a distributed job).

`prepare` runs once in the job's main process: it validates the dataset, resolves the base
model and chooses where outputs go. `train` runs in every rank: it builds the model (LoRA,
QLoRA or full), trains with transformers' Trainer, checkpoints every interval and resumes from
the last complete checkpoint on its own; rank 0 then saves the adapter (and merged model),
measures held-out perplexity, writes the model card and logs to MLflow.

Over ~400 lines on purpose: `prepare` and `train` share the run's state (paths, resume point,
ranks, the MLflow run) step by step.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ..contract import JobContext
from ..errors import InputError
from ..reports import FineTuneReport, Perplexity
from ..specs import FineTuneSpec
from .data import Collator, check_max_seq_length, read_dataset, tokenize

CHECKPOINTS = "checkpoints"
COMPLETE = "stackwise-complete"  # written into a checkpoint folder once everything in it is saved
BASELINE = "baseline.json"
ENV_CHECKPOINT_DIR = "STACKWISE_CHECKPOINT_DIR"


class Plan(BaseModel):
    """What every rank needs, decided once by the job's main process."""

    spec: FineTuneSpec
    base_location: str
    base_source: str
    output_dir: str  # local folder the run writes into
    output_uri: str  # where outputs end up (the same folder, or a remote artifact-store URI)
    tracking_uri: str | None = None
    artifact_store: str | None = None
    result_path: str


# -- the main process ----------------------------------------------------------------------------
def prepare(spec: FineTuneSpec, context: JobContext, result_path: str) -> Plan:
    """Validate input (errors exit 2 before any model loads) and decide where outputs go.

    Outputs and checkpoints live under `<artifact store>/finetune/<model name>-<digest>`: every
    attempt of the same identity writes and resumes there."""
    from .models import resolve_base

    read_dataset(spec.data, spec.curation)
    base = resolve_base(spec.base, tracking_uri=context.tracking_uri)
    store = context.artifact_store.rstrip("/")
    output_uri = f"{store}/finetune/{spec.output_name}"
    if "://" in store and not store.startswith("file://"):
        from ..paths import state_dir

        output_dir = str(state_dir() / "finetune-work" / spec.output_name)
    else:
        output_dir = output_uri.removeprefix("file://")
    return Plan(spec=spec, base_location=base.location, base_source=base.source, output_dir=output_dir,
                output_uri=output_uri, tracking_uri=context.tracking_uri, artifact_store=context.artifact_store,
                result_path=result_path)


# -- every rank ----------------------------------------------------------------------------------
def _checkpoint_dir(out: Path) -> Path:
    """Where checkpoints are written: the folder the platform syncs to the identity's checkpoint URI
    and restores before a restarted or later attempt starts (`$STACKWISE_CHECKPOINT_DIR`: SageMaker's
    /opt/ml/checkpoints), else `<output>/checkpoints`, which `_sync_up`/`_sync_down` mirror to the
    artifact store."""
    platform = os.environ.get(ENV_CHECKPOINT_DIR)
    return Path(platform) if platform else out / CHECKPOINTS


def _threads() -> None:
    import torch

    from ..userinput import env_threads

    threads = env_threads()
    if threads:
        torch.set_num_threads(threads)


def _precision(spec: FineTuneSpec, cuda: bool) -> str:
    import torch

    chosen = spec.training.precision
    if chosen != "auto":
        return chosen
    if cuda:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    # bf16 autocast pays on CPUs with native bf16 (AVX512-BF16 / AMX); elsewhere fp32 is faster.
    return "bf16" if "AVX512" in torch.backends.cpu.get_cpu_capability() and _cpu_has_bf16() else "fp32"


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_safe_4bit(model: Any) -> int:
    """Keep bitsandbytes 4-bit layers on the trainable CPU path (see FEASIBILITY.md): the first
    inference forward would otherwise repack weights into an inference-only layout and training
    afterwards gets wrong gradients. Returns how many layers were set."""
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


def load_model(plan: Plan, cuda: bool, precision: str, for_training: bool = True) -> tuple[Any, Any]:
    """(model, tokenizer) of the base, quantized and wrapped with a fresh adapter per the method."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = plan.spec
    location = plan.base_location
    if spec.method != "qlora":
        from ..quantization import keep_bitsandbytes_out

        keep_bitsandbytes_out()  # nothing to quantize: no bitsandbytes import, no hub kernel fetch
    tokenizer = AutoTokenizer.from_pretrained(location)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    weights_dtype = torch.bfloat16 if (cuda and precision == "bf16" and spec.method != "full") else torch.float32
    kwargs: dict[str, Any] = {"dtype": weights_dtype}
    if spec.method == "qlora":
        from transformers import BitsAndBytesConfig

        from ..quantization import import_bitsandbytes
        from ..registry import require

        require("bitsandbytes", "train", "qlora")
        import_bitsandbytes()  # before peft does, without the hub kernel fetch (stackwise.quantization)
        q = spec.quantization
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=q.quant_type, bnb_4bit_use_double_quant=q.double_quant,
            bnb_4bit_compute_dtype=getattr(torch, q.compute_dtype),
        )
        if cuda:
            kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    adapter_base = Path(location) / "adapter_config.json"
    if adapter_base.is_file():
        model = _merged_from_adapter(Path(location), kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
    if spec.method == "qlora":
        if not cuda:
            cpu_safe_4bit(model)
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=spec.training.gradient_checkpointing)
    if spec.method in ("lora", "qlora") and for_training:
        from peft import LoraConfig, get_peft_model

        lora = spec.lora
        model = get_peft_model(model, LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
            task_type="CAUSAL_LM", bias="none",
        ))
    if spec.training.gradient_checkpointing and spec.method != "qlora":
        model.gradient_checkpointing_enable()
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    return model, tokenizer


def _merged_from_adapter(folder: Path, kwargs: dict[str, Any]) -> Any:
    """A registry reference to an adapter: load its base and merge it in, then train on top."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    plain = {k: v for k, v in kwargs.items() if k != "quantization_config"}
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, **plain), folder).merge_and_unload()
    if "quantization_config" not in kwargs:
        return merged
    staging = folder / ".merged"
    merged.save_pretrained(staging)
    return AutoModelForCausalLM.from_pretrained(staging, **kwargs)


def perplexity(model: Any, examples: list[dict[str, list[int]]], pad_id: int, precision: str,
               batch_size: int = 8) -> tuple[float, int]:
    """exp(mean token loss) over the trained tokens of `examples`; (perplexity, tokens)."""
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    collate = Collator(pad_id)
    total, count = 0.0, 0
    autocast = precision in ("bf16", "fp16")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = {k: v.to(device) for k, v in collate(examples[start: start + batch_size]).items()}
            with torch.autocast(device.type, dtype=dtype, enabled=autocast):
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            shift_logits = logits[:, :-1].float()
            shift_labels = batch["labels"][:, 1:]
            loss = torch.nn.functional.cross_entropy(
                shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                ignore_index=-100, reduction="sum",
            )
            total += float(loss)
            count += int((shift_labels != -100).sum())
    if was_training:
        model.train()
    return (math.exp(total / count) if count else float("nan")), count


def last_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint that was saved completely; partial ones (a kill mid-save) are removed."""
    if not folder.is_dir():
        return None
    found = sorted(
        (p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    for path in reversed(found):
        try:
            if (path / COMPLETE).is_file():
                json.loads((path / "trainer_state.json").read_text())
                return path
        except (OSError, ValueError):
            pass
        shutil.rmtree(path, ignore_errors=True)
    return None


def _callbacks(plan: Plan, collator: Collator, is_main: bool, world: int) -> list[Any]:
    from transformers import TrainerCallback

    from ..progress import emit as emit_progress

    class Progress(TrainerCallback):
        """Progress lines (step, loss, tokens/s, ETA) for the job log, and checkpoint markers."""

        def __init__(self) -> None:
            self.last_time = time.perf_counter()
            self.last_tokens = 0
            self.first_step: int | None = None
            self.started = time.perf_counter()
            self.rates: list[float] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.first_step = state.global_step
            self.started = self.last_time = time.perf_counter()
            self.last_tokens = collator.tokens
            if is_main:
                emit_progress("train", state.global_step, state.max_steps, loss=None, tokens_per_s=None)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not is_main or not logs or "loss" not in logs:
                return
            now = time.perf_counter()
            rate = (collator.tokens - self.last_tokens) * world / max(now - self.last_time, 1e-9)
            self.rates.append(rate)
            self.last_time, self.last_tokens = now, collator.tokens
            done = state.global_step - (self.first_step or 0)
            eta = (now - self.started) / max(done, 1) * (state.max_steps - state.global_step)
            emit_progress("train", state.global_step, state.max_steps, loss=round(float(logs["loss"]), 4),
                          tokens_per_s=round(rate, 1), eta_s=round(eta, 1),
                          learning_rate=logs.get("learning_rate"))

        def on_save(self, args, state, control, **kwargs):
            if is_main:
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if folder.is_dir():
                    (folder / COMPLETE).write_text(str(state.global_step))
                    if not os.environ.get(ENV_CHECKPOINT_DIR):  # else the platform uploads the folder
                        _sync_up(plan, folder, f"{CHECKPOINTS}/{folder.name}")
                print(f"checkpoint saved at step {state.global_step}", flush=True)

    return [Progress()]


def train(plan: Plan) -> FineTuneReport | None:
    """Run the plan in this process (a rank of a distributed job, or the whole job).

    Returns the report on rank 0 and None on the other ranks.
    """
    _threads()
    import torch
    from transformers import Trainer, TrainingArguments, set_seed

    started = time.perf_counter()
    spec = plan.spec
    cfg = spec.training
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    is_main = rank == 0
    cuda = torch.cuda.is_available()
    precision = _precision(spec, cuda)
    set_seed(cfg.seed)
    out = Path(plan.output_dir)
    ckpt_dir = _checkpoint_dir(out)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)  # the checkpoints may live elsewhere (the platform's folder)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        _sync_down(plan, ckpt_dir)

    dataset = read_dataset(spec.data, spec.curation)
    train_records, eval_records = dataset.split(cfg.eval_fraction, cfg.seed, cfg.eval_max_examples)
    model, tokenizer = load_model(plan, cuda, precision)
    config = getattr(model, "config", None)
    check_max_seq_length(cfg.max_seq_length, getattr(config, "max_position_embeddings", None),
                         where="training.max_seq_length")
    train_examples = tokenize(train_records, dataset.format, tokenizer, cfg.max_seq_length, cfg.packing,
                              spec.chat_template)
    eval_examples = tokenize(eval_records, dataset.format, tokenizer, cfg.max_seq_length, False, spec.chat_template)
    if not train_examples:
        raise InputError(f"no training example has a token to learn within max_seq_length {cfg.max_seq_length}",
                         where=spec.data, fix="raise training.max_seq_length or check the dataset")
    pad_id = tokenizer.pad_token_id

    baseline_file = out / BASELINE
    before = None
    if is_main:
        if baseline_file.is_file():
            before = json.loads(baseline_file.read_text())["perplexity"]
        else:
            print(f"measuring held-out perplexity of the base on {len(eval_examples)} examples", flush=True)
            before, _ = perplexity(model, eval_examples, pad_id, precision)
            baseline_file.write_text(json.dumps({"perplexity": before}))

    from .launch import strategy_arguments

    layer_classes = sorted({type(m).__name__ for m in model.modules() if type(m).__name__.endswith("DecoderLayer")})
    steps_kwargs: dict[str, Any] = {"max_steps": cfg.max_steps} if cfg.max_steps else {"num_train_epochs": cfg.epochs}
    per_step = cfg.batch_size * cfg.gradient_accumulation * world
    total_steps = cfg.max_steps or math.ceil(len(train_examples) / per_step * (cfg.epochs or 1))
    args = TrainingArguments(
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=int(total_steps * cfg.warmup_ratio),
        weight_decay=cfg.weight_decay,
        logging_steps=cfg.logging_every,
        save_strategy="steps",
        save_steps=cfg.checkpoint_every,
        save_total_limit=2,
        report_to=[],
        seed=cfg.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not cuda,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=True,
        **steps_kwargs,
        **strategy_arguments(spec, cuda, layer_classes),
    )
    collator = Collator(pad_id)
    trainer = Trainer(model=model, args=args, train_dataset=train_examples, data_collator=collator,
                      callbacks=_callbacks(plan, collator, is_main, world))
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our progress lines carry the same numbers
    resume = last_checkpoint(ckpt_dir)
    resumed_from = int(resume.name.split("-")[-1]) if resume else None
    if is_main and resume:
        print(f"resuming from {resume.name} (step {resumed_from})", flush=True)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    train_started = time.perf_counter()
    tokens_at_start = collator.tokens
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    train_seconds = time.perf_counter() - train_started
    # Tokens this rank trained on, times the ranks: skipped batches of a resume are not counted
    # because the collator does not see them.
    tokens_per_s = (collator.tokens - tokens_at_start) * world / max(train_seconds, 1e-9)

    target = out / ("model" if spec.method == "full" else "adapter")
    trainer.save_model(str(target))  # collective under FSDP / DeepSpeed: every rank calls it
    if not is_main:
        return None
    tokenizer.save_pretrained(target)
    peak_mb = _peak_memory_mb(cuda)
    trained = trainer.model
    after, eval_tokens = perplexity(trained, eval_examples, pad_id, precision)
    history = list(trainer.state.log_history)
    del trainer
    reloaded = _reloaded_perplexity(plan, target, cuda, precision, eval_examples, pad_id)
    merged = None
    if spec.merge:
        merged = out / "merged"
        _merge(plan, target, merged)
    losses = [entry["loss"] for entry in history if "loss" in entry]
    report = FineTuneReport(
        base=spec.base, method=spec.method, data=spec.data, dataset_sha256=dataset.sha256, output=plan.output_uri,
        adapter=_uri(plan, target) if spec.method != "full" else None,
        model=_uri(plan, target) if spec.method == "full" else None,
        merged=_uri(plan, merged) if merged else None,
        model_card=_uri(plan, out / "README.md"),
        steps=int(output.global_step), resumed_from_step=resumed_from, train_examples=len(train_examples),
        train_loss=round(float(output.training_loss), 4) if output.training_loss else (losses[-1] if losses else None),
        perplexity=Perplexity(before=round(before, 4), after=round(after, 4),
                              reloaded=round(reloaded, 4) if reloaded is not None else None,
                              eval_examples=len(eval_examples), eval_tokens=eval_tokens),
        tokens_per_s=round(tokens_per_s, 1), peak_memory_mb=round(peak_mb, 1), processes=world,
        strategy=spec.compute.strategy or "none", device="cuda" if cuda else "cpu", precision=precision,
        seconds=0.0,
    )
    if dataset.curation is not None:
        from .data import write_curation

        write_curation(dataset, str(out))  # beside the model: synced up with it
        report.curation = dataset.curation
    write_model_card(out / "README.md", plan, report)
    from .tracking import log_run

    try:
        run_id, name, version = log_run(plan, report, history, target, out / "README.md")
        report.mlflow_run_id, report.registered_model, report.registered_version = run_id, name, version
    except Exception as exc:  # the model is saved; a tracking outage must not lose the run
        report.tracking_error = f"{type(exc).__name__}: {exc}"
        print(f"warning: MLflow logging failed: {report.tracking_error}", flush=True)
    _sync_up(plan, out, "")
    report.seconds = round(time.perf_counter() - started, 1)
    Path(plan.result_path).parent.mkdir(parents=True, exist_ok=True)
    Path(plan.result_path).write_text(report.model_dump_json(indent=2))
    return report


def _peak_memory_mb(cuda: bool) -> float:
    import torch

    if cuda:
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _reloaded_perplexity(plan: Plan, target: Path, cuda: bool, precision: str, eval_examples: list, pad_id: int):
    """Held-out perplexity of the saved output loaded back from disk: proves what was saved."""
    from transformers import AutoModelForCausalLM

    if plan.spec.method == "full":
        model = AutoModelForCausalLM.from_pretrained(target)
    else:
        from peft import PeftModel

        base, _ = load_model(plan, cuda, precision, for_training=False)
        model = PeftModel.from_pretrained(base, target)
    if cuda:
        model.to("cuda")
    value, _ = perplexity(model, eval_examples, pad_id, precision)
    return value


def _merge(plan: Plan, adapter: Path, target: Path) -> None:
    """The base (unquantized, even for qlora) with the adapter merged in, saved whole."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(plan.base_location, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    merged.save_pretrained(target)
    AutoTokenizer.from_pretrained(adapter).save_pretrained(target)


def _uri(plan: Plan, path: Path) -> str:
    rel = path.relative_to(plan.output_dir).as_posix()
    return f"{plan.output_uri}/{rel}"


def write_model_card(path: Path, plan: Plan, report: FineTuneReport) -> None:
    from ..licences import licence_record

    spec = plan.spec
    params = json.dumps(spec.model_dump(mode="json", exclude={"compute"}), indent=2)
    ppl = report.perplexity
    lic = licence_record(spec.base, spec.licence)
    # Hugging Face card metadata: `license` is an SPDX-style id or `other` with a name and link.
    hub_licence = lic["licence"] if lic["licence"] in ("apache-2.0", "mit", "cc-by-4.0", "cc-by-nc-4.0") else "other"
    licence_meta = "" if lic["licence"] == "unknown" else (
        f"license: {hub_licence}\n" + (f"license_name: {lic['licence']}\nlicense_link: {lic['licence_url']}\n"
                                       if hub_licence == "other" else ""))
    licence_row = ("unknown (not in the model catalog and not declared with the spec's `licence`)"
                   if lic["licence"] == "unknown" else
                   f"{lic['licence_name'] or lic['licence']} (`{lic['licence']}`, commercial use: "
                   f"{lic['commercial_use']}, from the {lic['licence_source']}) {lic['licence_url']}"
                   + (f"; attribution: {lic['attribution']}" if lic["attribution"] else ""))
    path.write_text(
        f"""---
base_model: {spec.base}
{licence_meta}library_name: {"transformers" if spec.method == "full" else "peft"}
tags: [stackwise, {spec.method}]
---
# {plan.output_uri.rsplit('/', 1)[-1]}

Fine-tuned by stackwise ({spec.method}) from `{spec.base}`.

| | |
|---|---|
| base model | `{spec.base}` (loaded from {plan.base_source}: `{plan.base_location}`) |
| base licence | {licence_row} |
| dataset | `{spec.data}` |
| dataset sha256 | `{report.dataset_sha256}` |
| training examples | {report.train_examples} |
| steps | {report.steps} |
| final train loss | {report.train_loss} |
| held-out perplexity before | {ppl.before} |
| held-out perplexity after | {ppl.after} (reloaded from disk: {ppl.reloaded}) |
| held-out examples / tokens | {ppl.eval_examples} / {ppl.eval_tokens} |
| tokens/s | {report.tokens_per_s} |
| processes, strategy | {report.processes}, {report.strategy} on {report.device} ({report.precision}) |

## Parameters

```json
{params}
```
""",
        encoding="utf-8",
    )


# -- artifact store sync (remote stores only; a local store is written in place) -----------------
def _remote(plan: Plan) -> bool:
    return plan.output_uri.rstrip("/") != plan.output_dir.rstrip("/")


def _sync_up(plan: Plan, local: Path, rel: str) -> None:
    if not _remote(plan):
        return
    import fsspec

    fs, root = fsspec.core.url_to_fs(plan.output_uri)
    dest = f"{root.rstrip('/')}/{rel}".rstrip("/")
    fs.put(str(local).rstrip("/") + "/", dest + "/", recursive=True)


def _sync_down(plan: Plan, ckpt_dir: Path) -> None:
    """Fetch the newest complete checkpoint from a remote store (a restarted spot job starts empty)."""
    if not _remote(plan) or any(ckpt_dir.glob("checkpoint-*")):
        return
    import fsspec

    fs, root = fsspec.core.url_to_fs(plan.output_uri)
    remote = f"{root.rstrip('/')}/{CHECKPOINTS}"
    if not fs.exists(remote):
        return
    done = [p for p in fs.ls(remote, detail=False) if fs.exists(f"{p}/{COMPLETE}")]
    if done:
        newest = max(done, key=lambda p: int(p.rstrip("/").rsplit("-", 1)[-1]))
        fs.get(newest.rstrip("/") + "/", str(ckpt_dir / newest.rstrip("/").rsplit("/", 1)[-1]) + "/", recursive=True)
