#!/usr/bin/env python
"""Serving under load: `stackwise serve` (continuous batching) against one-request-at-a-time serving
and against plain transformers `generate`, same model, same prompts, same run.

- load: `--clients` concurrent streaming clients (the official `openai` client, AsyncOpenAI) in this
  process for `--duration` seconds against a server in a second process on loopback; each client
  sends chat requests back to back (prompts: Lee corpus sentences, `--max-tokens` each, greedy).
  Reported: requests/s, generated tokens/s (usage), p50/p99 time to first token and end to end.
- servers: the same `stackwise serve --model` twice, continuous batching (`max_batch` 16, the
  default) then one request at a time ($STACKWISE_SERVE_MAX_BATCH=1), each under the same load.
- limit: plain transformers `generate` in this process, the same prompts left-padded in batches of
  `--clients` (static batching, no server), greedy, `--max-tokens` new tokens: the tokens/s this
  model reaches on this machine without any serving work, i.e. the engine's ceiling.

    python bench/serve.py [--model smollm2-135m-instruct] [--clients 32] [--duration 60]
                          [--max-tokens 32] [--threads 2] [--out bench/out/serve.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def prompts(n: int = 200) -> list[str]:
    from gensim.test.utils import datapath

    lines = Path(datapath("lee.cor")).read_text(encoding="latin-1").splitlines()
    sentences = [s.strip() + "." for line in lines for s in line.split(". ") if 40 < len(s) < 200]
    return [f"Summarize in one sentence: {s}" for s in sentences[:n]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)


def model_folder(ref: str) -> str:
    from stackwise.training.models import resolve_base

    return resolve_base(ref).location


def start_server(folder: str, port: int, threads: int, max_batch: int | None) -> subprocess.Popen:
    env = {**os.environ, "STACKWISE_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
           "STACKWISE_SERVE_FEEDBACK": "0", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if max_batch:
        env["STACKWISE_SERVE_MAX_BATCH"] = str(max_batch)
    proc = subprocess.Popen([sys.executable, "-m", "stackwise.cli", "serve", "--model", folder, "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    import httpx

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.stderr.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not become ready in 600 s")


async def _load(url: str, texts: list[str], clients: int, duration: float, max_tokens: int) -> dict:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
    results: list[dict] = []
    errors = 0
    stop_at = time.perf_counter() + duration

    async def one(worker: int) -> None:
        nonlocal errors
        i = worker
        while time.perf_counter() < stop_at:
            text = texts[i % len(texts)]
            i += clients
            sent = time.perf_counter()
            first = None
            tokens = 0
            try:
                stream = await client.chat.completions.create(
                    model="any", messages=[{"role": "user", "content": text}], max_tokens=max_tokens,
                    temperature=0, stream=True, stream_options={"include_usage": True})
                async for chunk in stream:
                    if first is None and chunk.choices and chunk.choices[0].delta.content:
                        first = time.perf_counter()
                    if chunk.usage is not None:
                        tokens = chunk.usage.completion_tokens
            except Exception:  # noqa: BLE001 - counted, reported
                errors += 1
                continue
            done = time.perf_counter()
            if done <= stop_at + 120:
                results.append({"ttft": (first or done) - sent, "e2e": done - sent, "tokens": tokens, "done": done})

    started = time.perf_counter()
    await asyncio.gather(*(one(w) for w in range(clients)))
    wall = time.perf_counter() - started
    await client.close()
    tokens = sum(r["tokens"] for r in results)
    return {"requests": len(results), "errors": errors, "wall_s": round(wall, 2),
            "requests_per_s": round(len(results) / wall, 3), "tokens_per_s": round(tokens / wall, 2),
            "ttft_p50_s": pct([r["ttft"] for r in results], 0.5), "ttft_p99_s": pct([r["ttft"] for r in results], 0.99),
            "e2e_p50_s": pct([r["e2e"] for r in results], 0.5), "e2e_p99_s": pct([r["e2e"] for r in results], 0.99),
            "mean_tokens": round(tokens / max(1, len(results)), 2), "load_avg": load_avg()}


def serve_run(folder: str, texts: list[str], args: argparse.Namespace, max_batch: int | None) -> dict:
    port = free_port()
    proc = start_server(folder, port, args.threads, max_batch)
    try:
        return asyncio.run(_load(f"http://127.0.0.1:{port}", texts, args.clients, args.duration, args.max_tokens))
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def hf_limit(folder: str, texts: list[str], args: argparse.Namespace) -> dict:
    """Plain transformers generate, static batches of `clients` prompts (chat template, left padding)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    chats = [tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
             for t in texts]
    generated = 0
    batches = 0
    started = time.perf_counter()
    i = 0
    while time.perf_counter() - started < args.duration:
        batch = [chats[(i + j) % len(chats)] for j in range(args.clients)]
        i += args.clients
        enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=args.max_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        eos = set(tok.all_special_ids)
        for row in new.tolist():
            generated += next((n for n, t in enumerate(row) if t in eos), len(row))
        batches += 1
    wall = time.perf_counter() - started
    return {"batches": batches, "batch_size": args.clients, "wall_s": round(wall, 2),
            "tokens_per_s": round(generated / wall, 2), "requests_per_s": round(batches * args.clients / wall, 3),
            "load_avg": load_avg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(HERE / "out" / "serve.json"))
    args = parser.parse_args()
    folder = model_folder(args.model)
    texts = prompts()
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "model": args.model,
              "clients": args.clients, "duration_s": args.duration, "max_tokens": args.max_tokens,
              "threads": args.threads, "cpus": os.cpu_count()}
    print(f"model {args.model} at {folder}; {args.clients} clients x {args.duration:.0f} s; {args.max_tokens} tokens",
          flush=True)
    report["batched"] = serve_run(folder, texts, args, None)
    print("continuous batching:", json.dumps(report["batched"]), flush=True)
    report["one_at_a_time"] = serve_run(folder, texts, args, 1)
    print("one at a time:      ", json.dumps(report["one_at_a_time"]), flush=True)
    report["transformers_generate"] = hf_limit(folder, texts, args)
    print("transformers batch: ", json.dumps(report["transformers_generate"]), flush=True)
    b, one, hf = report["batched"], report["one_at_a_time"], report["transformers_generate"]
    report["ratios"] = {
        "batched_over_one_at_a_time_tokens_per_s": round(b["tokens_per_s"] / max(one["tokens_per_s"], 1e-9), 2),
        "batched_over_transformers_tokens_per_s": round(b["tokens_per_s"] / max(hf["tokens_per_s"], 1e-9), 2),
        "ttft_p50_one_at_a_time_over_batched": round((one["ttft_p50_s"] or 0) / max(b["ttft_p50_s"] or 1e-9, 1e-9), 2)}
    print("ratios:", json.dumps(report["ratios"]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"written to {args.out}", flush=True)


if __name__ == "__main__":
    main()
