#!/usr/bin/env python
"""Fine-tuning throughput and memory: the stackwise finetune workload against a plain
transformers Trainer + PEFT script, on the same model, data and settings, side by side in one run.

Each side runs in its own fresh process (so peak RSS is its own), with the same thread cap.
Tokens/s counts real (non-pad) tokens seen by the training loop, over the wall time of
`Trainer.train()` only; peak memory is the process's max RSS when training ends (CPU) or the
peak CUDA allocation (GPU). The stackwise side also pays for checkpoints every `--checkpoint-every`
steps, which the plain script does not take.

    python bench/finetune.py [--base tiny|smollm2-135m-instruct|PATH] [--steps 30] [--method lora]
                             [--batch-size 4] [--seq 128] [--threads 2] [--out bench/out/finetune.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def lee_passages(words: int = 90) -> list[str]:
    import gensim

    path = Path(gensim.__file__).parent / "test" / "test_data" / "lee_background.cor"
    out = []
    for article in path.read_text(encoding="latin-1").splitlines():
        tokens = article.split()
        out += [" ".join(tokens[i: i + words]) for i in range(0, len(tokens), words) if len(tokens[i: i + words]) >= 20]
    return out


# -- the two sides -------------------------------------------------------------------------------
def side_stackwise(cfg: dict) -> dict:
    from stackwise.specs import FineTuneSpec
    from stackwise.workloads.finetune import run_finetune

    spec = FineTuneSpec(
        base=cfg["base"], data=cfg["data"], method=cfg["method"],
        lora={"r": cfg["r"], "alpha": cfg["alpha"], "dropout": 0.0, "target_modules": cfg["targets"]},
        training={"max_steps": cfg["steps"], "learning_rate": cfg["lr"], "batch_size": cfg["batch_size"],
                  "max_seq_length": cfg["seq"], "checkpoint_every": cfg["checkpoint_every"], "logging_every": 5,
                  "eval_fraction": 0.05, "eval_max_examples": 8, "precision": "fp32", "lr_scheduler": "constant",
                  "warmup_ratio": 0.0},
    )
    report = run_finetune(spec)
    return {"tokens_per_s": report.tokens_per_s, "peak_memory_mb": report.peak_memory_mb, "steps": report.steps,
            "train_loss": report.train_loss}


def side_plain(cfg: dict) -> dict:
    """What a user would write with transformers + peft directly."""
    import resource

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer,
                              TrainingArguments)

    tokenizer = AutoTokenizer.from_pretrained(cfg["base_location"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts = [json.loads(line)["text"] for line in Path(cfg["data"]).read_text().splitlines() if line.strip()]
    examples = [tokenizer(t + tokenizer.eos_token, truncation=True, max_length=cfg["seq"]) for t in texts]
    model = AutoModelForCausalLM.from_pretrained(cfg["base_location"], dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=cfg["r"], lora_alpha=cfg["alpha"], lora_dropout=0.0,
                                             target_modules=cfg["targets"], task_type="CAUSAL_LM"))
    base_collate = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    seen = {"tokens": 0}

    def collate(batch):
        out = base_collate(batch)
        seen["tokens"] += int(out["attention_mask"].sum())
        return out

    args = TrainingArguments(output_dir=cfg["work"] + "/plain", per_device_train_batch_size=cfg["batch_size"],
                             max_steps=cfg["steps"], learning_rate=cfg["lr"], lr_scheduler_type="constant",
                             logging_steps=5, save_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(),
                             disable_tqdm=True, remove_unused_columns=False, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=collate)
    start = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"tokens_per_s": round(seen["tokens"] / seconds, 1), "peak_memory_mb": round(peak, 1),
            "steps": output.global_step, "train_loss": round(output.training_loss, 4)}


# -- the driver ----------------------------------------------------------------------------------
def run_side(name: str, cfg: dict, env: dict) -> dict:
    cfg_file = Path(cfg["work"]) / f"{name}.json"
    cfg_file.write_text(json.dumps(cfg))
    proc = subprocess.run([sys.executable, __file__, "--worker", name, "--config", str(cfg_file)],
                          capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("@@bench ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{name} side failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("@@bench "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--base", default="tiny", help="tiny (a random-init 2-layer Llama), a short name or a path")
    parser.add_argument("--method", default="lora", choices=["lora"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint-every", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=2, help="runs per side, alternating; the best counts")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.worker:
        cfg = json.loads(Path(args.config).read_text())
        result = (side_stackwise if args.worker == "stackwise" else side_plain)(cfg)
        print("@@bench " + json.dumps(result), flush=True)
        return

    work = Path(tempfile.mkdtemp(prefix="stackwise-bench-ft-"))
    env = dict(os.environ, STACKWISE_HOME=str(work / "home"), STACKWISE_THREADS=str(args.threads),
               OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    os.environ.update(env)
    passages = lee_passages()
    data = work / "lee.jsonl"
    data.write_text("".join(json.dumps({"text": p}) + "\n" for p in passages))
    if args.base == "tiny":
        from stackwise.training.tiny import build_tiny_model

        base = str(build_tiny_model(work / "tiny", passages, vocab_size=2000, hidden=256, layers=4, heads=8))
        location = base
    else:
        from stackwise.training.models import resolve_base

        base, location = args.base, resolve_base(args.base).location
    cfg = {"base": base, "base_location": location, "data": str(data), "method": args.method, "r": 16, "alpha": 32,
           "targets": ["q_proj", "k_proj", "v_proj", "o_proj"], "steps": args.steps, "lr": 2e-4,
           "batch_size": args.batch_size, "seq": args.seq, "checkpoint_every": args.checkpoint_every, "work": str(work)}
    # Sides alternate, `--repeat` times each, and the best run of each side counts: on a shared
    # machine the load changes between runs, and the best run is the least disturbed one.
    runs: dict[str, list[dict]] = {"plain": [], "stackwise": []}
    for attempt in range(args.repeat):
        for name in ("plain", "stackwise"):
            # A fresh state folder per run: the same spec in the same folder would resume, not train.
            runs[name].append(run_side(name, cfg, dict(env, STACKWISE_HOME=str(work / f"home-{name}-{attempt}"))))
            print(f"{name:>10}: {runs[name][-1]['tokens_per_s']:>9.1f} tokens/s  peak "
                  f"{runs[name][-1]['peak_memory_mb']:>8.1f} MB  loss {runs[name][-1]['train_loss']}", flush=True)
    results = {name: max(found, key=lambda r: r["tokens_per_s"]) for name, found in runs.items()}
    ratio = {"tokens_per_s": round(results["stackwise"]["tokens_per_s"] / results["plain"]["tokens_per_s"], 3),
             "peak_memory": round(results["stackwise"]["peak_memory_mb"] / results["plain"]["peak_memory_mb"], 3)}
    print(f"stackwise / plain: tokens/s x{ratio['tokens_per_s']}, peak memory x{ratio['peak_memory']}")
    payload = {"config": {k: v for k, v in cfg.items() if k != "work"}, "threads": args.threads,
               "results": results, "runs": runs, "ratio": ratio}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
