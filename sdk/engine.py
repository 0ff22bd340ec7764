"""Continuous-batching generation on CPU: a transformers model with a KV cache serving concurrent
requests in one batch, LoRA versions unmerged on one shared base.

One scheduler thread owns the model. Each iteration it prefills the waiting requests it admits (up
to `max_batch` rows, left-padded) and merges their KV cache into the running batch's (the shorter
padded on the left, masked out), then runs one decode step for every row. Positions come from each
row's attention mask, so greedy output equals `model.generate(do_sample=False)` on the prompt alone.
Rows leave as soon as they finish or are cancelled; new ones join at any step. Rows of different
LoRA adapters share each forward pass through peft's mixed-batch inference (`adapter_names`).

Over ~400 lines on purpose: one scheduler loop and the batch state it alone owns (KV caches, masks,
adapters); apart, the batch's internals would be shared between modules.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, InputError

log = logging.getLogger(__name__)
BASE = "__base__"  # peft's name for "no adapter" in a mixed batch
FINISH_REASONS = ("stop", "length", "cancelled", "error")


class ContextLengthError(InputError):
    """The prompt's tokens plus max_tokens do not fit the model's context window."""


@dataclass(frozen=True)
class SamplingParams:
    """How one request generates. temperature 0 is greedy (argmax); above 0 samples from the
    softmax of logits/temperature cut to the smallest set of tokens holding top_p of the mass, with
    a generator of the request's own (seeded: the same text whatever else shares the batch)."""

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()  # the text ends before the first of these; finish_reason "stop"

    def __post_init__(self) -> None:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        object.__setattr__(self, "stop", stop)
        for bad, field, rule, example in (
                (not isinstance(self.max_tokens, int) or self.max_tokens < 1, "max_tokens", "a positive integer", 64),
                (not self.temperature >= 0, "temperature", ">= 0 (0 is greedy)", 0.7),
                (not 0 < self.top_p <= 1, "top_p", "in (0, 1]", 0.9),
                (any(not isinstance(s, str) or not s for s in stop), "stop", "non-empty strings", ("\n\n",))):
            if bad:
                raise InputError(f"{field} must be {rule}, not {getattr(self, field)!r}", where=field,
                                 fix=f"e.g. {field}={example!r}")


def visible(text: str, stop: tuple[str, ...], final: bool) -> tuple[str, bool]:
    """(the part of `text` that may be shown now, whether a stop string ended it). The text ends
    before the earliest stop string; until the request is final, a tail that could be the start of
    a stop string, or an incomplete multi-byte character (U+FFFD), is held back."""
    found = [i for i in (text.find(s) for s in stop) if i >= 0]
    if found:
        return text[:min(found)], True
    if final:
        return text, False
    end = len(text.rstrip("\ufffd"))
    hold = max((k for s in stop for k in range(1, len(s)) if text[:end].endswith(s[:k])), default=0)
    return text[:end - hold], False


class GenerationRequest:
    """One request's progress and result; filled by the scheduler thread, read from any thread."""

    def __init__(self, request_id: str, prompt_ids: list[int], params: SamplingParams, adapter: str | None,
                 wake: Any) -> None:
        self.id, self.adapter, self.params = request_id, adapter, params
        self.prompt_ids = list(prompt_ids)
        self.prompt_tokens = len(self.prompt_ids)
        self.token_ids: list[int] = []  # generated, an ending EOS included
        self.text = ""  # shown so far (the final text once done)
        self.finish_reason: str | None = None  # one of FINISH_REASONS once done
        self.error: BaseException | None = None
        self.queued_at: float | None = time.perf_counter()  # these four: time.perf_counter()
        self.started_at: float | None = None
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self.token_times: list[float] = []  # when each generated token came (inter-token latency)
        self._chunks: list[str] = []
        self._cond = threading.Condition()
        self._watchers: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._cancelled = False
        self._wake = wake

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def cancel(self) -> None:
        """Stop generating (a client went away): the row leaves the batch at the next step and the
        request finishes with "cancelled"."""
        self._cancelled = True
        self._wake()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the request finished (whatever its finish_reason); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self.done, timeout)

    def result(self, timeout: float | None = None) -> str:
        """The full text once finished; raises the request's error when it failed, TimeoutError
        when it is still running after `timeout` seconds."""
        if not self.wait(timeout):
            raise TimeoutError(f"request {self.id} still running after {timeout} s")
        if self.error is not None:
            raise self.error
        return self.text

    def __iter__(self) -> Iterator[str]:
        """Text deltas as they are generated (blocking); raises the request's error at the end."""
        seen = 0
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self.done or len(self._chunks) > seen)
                chunks, done = self._chunks[seen:], self.done
            seen += len(chunks)
            yield from chunks
            if done:
                break
        if self.error is not None:
            raise self.error

    async def astream(self) -> AsyncIterator[str]:
        """The same deltas for an asyncio loop, never blocking it: the scheduler thread wakes the
        loop with call_soon_threadsafe."""
        watcher = (asyncio.get_running_loop(), asyncio.Event())
        with self._cond:
            self._watchers.append(watcher)
        seen = 0
        try:
            while True:
                watcher[1].clear()
                with self._cond:
                    chunks, done = self._chunks[seen:], self.done
                seen += len(chunks)
                for chunk in chunks:
                    yield chunk
                if done:
                    break
                await watcher[1].wait()
        finally:
            with self._cond:
                self._watchers.remove(watcher)
        if self.error is not None:
            raise self.error

    # -- called by the scheduler --------------------------------------------------------------
    def _show(self, shown: str) -> None:
        with self._cond:
            if shown.startswith(self.text) and len(shown) > len(self.text):
                self._chunks.append(shown[len(self.text):])
                self.text = shown
                self._notify()

    def _finish(self, reason: str, error: BaseException | None = None) -> None:
        with self._cond:
            if self.done:
                return
            self.error = error
            self.finished_at = time.perf_counter()
            self.finish_reason = reason
            self._notify()

    def _notify(self) -> None:  # holding _cond
        self._cond.notify_all()
        for loop, event in self._watchers:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that loop has closed; its stream is gone
                pass


@dataclass
class _Row:
    """A request in the running batch: its sampling generator and the token it feeds next."""

    req: GenerationRequest
    generator: Any
    last: int = -1


class Engine:
    """Serves one base model (and LoRA adapters on it) to concurrent requests; see the module doc."""

    def __init__(self, model: Any, tokenizer: Any, *, max_batch: int = 16, context_len: int | None = None,
                 name: str = "model") -> None:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        if any(type(layer) is not DynamicLayer for layer in DynamicCache(config=model.config).layers):
            raise ConfigError(f"{name} has sliding-window or linear-attention layers, which this engine cannot batch",
                              where=name, fix="serve a full-attention model (Llama, SmolLM2, Qwen2 without sliding)")
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.max_batch = max(1, max_batch)
        limit = getattr(model.config, "max_position_embeddings", None)
        self.context_len = int(min(x for x in (context_len, limit, 1 << 20) if x))
        self.eos_ids = eos_ids(model, tokenizer)
        self.vocab_size = int(model.get_input_embeddings().num_embeddings)
        self.steps = 0
        self._queue: deque[GenerationRequest] = deque()
        self._cv = threading.Condition()
        self._model_lock = threading.Lock()  # held by each step; add_adapter waits for it
        self._rows: list[_Row] = []
        self._cache: Any = None  # the running batch's DynamicCache and attention mask
        self._mask: Any = None
        self._closed = False
        self._ids = itertools.count(1)
        self._thread = threading.Thread(target=self._loop, name=f"stackwise-engine-{name}", daemon=True)
        self._thread.start()

    @classmethod
    def load(cls, ref: str, *, adapters: Mapping[str, str] | None = None, max_batch: int = 16,
             context_len: int | None = None, base_model: str | None = None, context: Any = None) -> Engine:
        """Load `ref` (a model folder or anything `resolve_base` takes) in float32. A LoRA adapter
        folder loads its base (`base_model` when given, else the one it records) plus that adapter,
        named after the folder, unmerged; `adapters` (name -> folder) are added on the same base. A
        registry reference is read from the registry of `context` (a JobContext), as in `lm.load`."""
        from .evaluation.lm import _in_place, pin, threads
        from .quantization import keep_bitsandbytes_out
        from .registry import require

        keep_bitsandbytes_out()
        require("torch", "train", "serving a model")
        require("transformers", "train", "serving a model")
        threads()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from .training.models import resolve_base

        pinned = pin(ref, context)
        uri = getattr(context, "tracking_uri", None)
        where = Path(resolve_base(_in_place(pinned, context) or pinned, tracking_uri=uri).location)
        base, first = where, {}
        if (where / "adapter_config.json").is_file():
            recorded = json.loads((where / "adapter_config.json").read_text())["base_model_name_or_path"]
            base, first = Path(resolve_base(base_model or recorded, uri).location), {where.name: str(where)}
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(where if (where / "tokenizer_config.json").is_file() else base)
        engine = cls(model, tokenizer, max_batch=max_batch, context_len=context_len, name=ref)
        for name, folder in {**first, **(adapters or {})}.items():
            engine.add_adapter(name, folder)
        return engine

    # -- adapters ------------------------------------------------------------------------------
    @property
    def adapters(self) -> tuple[str, ...]:
        return tuple(getattr(self.model, "peft_config", {})) if self._is_peft() else ()

    def _is_peft(self) -> bool:
        return type(self.model).__module__.startswith("peft.")

    def add_adapter(self, name: str, folder: str) -> None:
        """Load a peft LoRA adapter onto the shared base, unmerged; allowed while serving (it waits
        for the current step to end)."""
        if not name or name == BASE or name in self.adapters:
            raise InputError(f"adapter name {name!r} is empty, reserved or taken", where=str(folder),
                             fix=f"pick a name other than {', '.join((BASE, *self.adapters))}")
        if not (Path(folder) / "adapter_config.json").is_file():
            raise InputError(f"{folder} is not a LoRA adapter folder (no adapter_config.json)", where=str(folder),
                             fix="point at a folder saved by a peft model's save_pretrained")
        from peft import PeftModel

        with self._model_lock:
            try:
                if self._is_peft():
                    self.model.load_adapter(str(folder), adapter_name=name)
                else:
                    self.model = PeftModel.from_pretrained(self.model, str(folder), adapter_name=name)
            except Exception as exc:
                raise InputError(f"cannot load LoRA adapter {name!r}: {exc}", where=str(folder),
                                 fix="check that the adapter was trained on this base model") from exc
            self.model.eval()

    # -- prompts -------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """A plain prompt's token ids, after a BOS when the tokenizer has one."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        bos = getattr(self.tokenizer, "bos_token_id", None)
        return ([bos] if bos is not None else []) + list(ids)

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """A conversation through the tokenizer's chat template with the generation prompt; a
        tokenizer without one gets "role: content" lines and "assistant:"."""
        if not messages or any(not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str)
                               for m in messages):
            raise InputError("messages must be a non-empty list of {role, content} strings", where="messages",
                             fix='e.g. [{"role": "user", "content": "Hello"}]')
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return self.encode("".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:")

    # -- requests ------------------------------------------------------------------------------
    def submit(self, prompt_ids: list[int], params: SamplingParams, adapter: str | None = None,
               request_id: str | None = None) -> GenerationRequest:
        """Queue a request and return at once (thread-safe). Raises InputError for an unknown
        adapter or token id, ContextLengthError when prompt + max_tokens exceed the window."""
        adapter = None if adapter in (None, BASE) else adapter
        if adapter is not None and adapter not in self.adapters:
            raise InputError(f"unknown adapter {adapter!r} on {self.name}", where="adapter",
                             fix=f"one of: {', '.join(self.adapters) or 'none loaded'} (or none for the base)")
        if not prompt_ids or any(not 0 <= int(i) < self.vocab_size for i in prompt_ids):
            raise InputError(f"a prompt must be a non-empty list of token ids in [0, {self.vocab_size})",
                             where="prompt", fix="encode the prompt with this engine's encode or encode_chat")
        total = len(prompt_ids) + params.max_tokens
        if total > self.context_len:
            raise ContextLengthError(
                f"the prompt's {len(prompt_ids)} tokens plus max_tokens {params.max_tokens} make {total}, past "
                f"the context window of {self.context_len} tokens", where=self.name,
                fix="shorten the prompt or lower max_tokens")
        with self._cv:
            if self._closed:
                raise RuntimeError(f"the engine of {self.name} is closed")
            req = GenerationRequest(request_id or f"gen-{next(self._ids)}", [int(i) for i in prompt_ids], params,
                                    adapter, self._wake)
            self._queue.append(req)
            self._cv.notify_all()
        return req

    def generate(self, prompt_ids: list[int], params: SamplingParams, adapter: str | None = None) -> GenerationRequest:
        """Submit and wait until the request finished (whatever its finish_reason)."""
        req = self.submit(prompt_ids, params, adapter)
        req.wait()
        return req

    @property
    def running(self) -> int:
        """Rows in the batch now."""
        return len(self._rows)

    @property
    def waiting(self) -> int:
        """Requests submitted and not admitted yet."""
        return len(self._queue)

    def close(self) -> None:
        """Stop the scheduler; requests not finished yet end with "cancelled"."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    # -- the scheduler thread ------------------------------------------------------------------
    def _loop(self) -> None:
        import torch

        with torch.inference_mode():
            while True:
                with self._cv:
                    self._cv.wait_for(lambda: self._closed or self._queue or self._rows)
                    if self._closed:
                        break
                    admitted = self._admit()
                with self._model_lock:
                    self._step(admitted)
        for req in [*self._queue, *(row.req for row in self._rows)]:
            req._finish("cancelled")
        self._queue.clear()
        self._reset()

    def _admit(self) -> list[GenerationRequest]:  # holding _cv
        for req in [r for r in self._queue if r._cancelled]:
            self._queue.remove(req)
            req._finish("cancelled")
        admitted = []
        while self._queue and len(self._rows) + len(admitted) < self.max_batch:
            admitted.append(self._queue.popleft())
        return admitted

    def _step(self, admitted: list[GenerationRequest]) -> None:
        """Prefill the admitted requests into the batch, then one decode step for every row. An
        error fails the requests it touched (a failed decode step: the whole batch) and the engine
        goes on serving."""
        try:
            if admitted:
                self._prefill(admitted)
        except Exception as exc:
            self._fail(admitted, exc)
        try:
            self._keep([i for i, row in enumerate(self._rows) if not row.req._cancelled], "cancelled")
            if self._rows:
                self._decode()
        except Exception as exc:
            self._fail([row.req for row in self._rows], exc)
            self._reset()

    def _fail(self, reqs: list[GenerationRequest], exc: Exception) -> None:
        log.exception("generation failed on %s", self.name)
        for req in reqs:
            req._finish("error", exc)

    def _forward(self, ids: Any, mask: Any, positions: Any, cache: Any, rows: list[_Row]) -> Any:
        extra = {"adapter_names": [row.req.adapter or BASE for row in rows]} if self._is_peft() else {}
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                         logits_to_keep=1, **extra)
        self.steps += 1
        return out

    def _prefill(self, reqs: list[GenerationRequest]) -> None:
        import torch

        width = max(r.prompt_tokens for r in reqs)
        ids = torch.zeros(len(reqs), width, dtype=torch.long)
        mask = torch.zeros(len(reqs), width, dtype=torch.long)
        rows = []
        for i, req in enumerate(reqs):
            ids[i, width - req.prompt_tokens:] = torch.tensor(req.prompt_ids)
            mask[i, width - req.prompt_tokens:] = 1
            seed = req.params.seed if req.params.seed is not None else random.getrandbits(63)
            rows.append(_Row(req, torch.Generator().manual_seed(seed)))
            req.started_at = time.perf_counter()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self._forward(ids, mask, positions, None, rows)
        kept = self._advance(rows, out.logits[:, -1].float())
        if not kept:
            return
        index = torch.tensor(kept)
        cache, mask = out.cache, mask[index]
        for layer in cache.layers:
            layer.keys, layer.values = layer.keys[index], layer.values[index]
        rows = [rows[i] for i in kept]
        if self._rows:
            cache, mask = merge(self._cache, self._mask, cache, mask)
            rows = self._rows + rows
        self._cache, self._mask, self._rows = cache, mask, rows

    def _decode(self) -> None:
        import torch

        ids = torch.tensor([[row.last] for row in self._rows])
        self._mask = torch.cat([self._mask, torch.ones(len(self._rows), 1, dtype=torch.long)], dim=1)
        positions = self._mask.sum(-1, keepdim=True) - 1
        out = self._forward(ids, self._mask, positions, self._cache, self._rows)
        self._cache = out.cache
        self._keep(self._advance(self._rows, out.logits[:, -1].float()))

    def _advance(self, rows: list[_Row], logits: Any) -> list[int]:
        """Sample one token per row, show the new text, finish the rows that ended (or failed: a
        row's error fails that request only); returns the indices of the rows that go on."""
        greedy = logits.argmax(-1).tolist()
        now = time.perf_counter()
        kept = []
        for i, row in enumerate(rows):
            try:
                params = row.req.params
                token = greedy[i] if params.temperature == 0 else sample(logits[i], params, row.generator)
                if self._emit(row.req, token, now):
                    row.last = token
                    kept.append(i)
            except Exception as exc:
                log.exception("request %s failed on %s", row.req.id, self.name)
                row.req._finish("error", exc)
        return kept

    def _emit(self, req: GenerationRequest, token: int, now: float) -> bool:
        """Record `token`, show what text may be shown; False when the request ended."""
        req.token_ids.append(token)
        req.token_times.append(now)
        req.first_token_at = req.first_token_at or now
        eos = token in self.eos_ids
        text = self.tokenizer.decode(req.token_ids[:-1] if eos else req.token_ids, skip_special_tokens=True,
                                     clean_up_tokenization_spaces=False)
        length = req.completion_tokens >= req.params.max_tokens
        shown, stopped = visible(text, req.params.stop, eos or length)
        req._show(shown)
        if not (stopped or eos or length):
            return True
        with req._cond:
            req.text = shown
        req._finish("stop" if stopped or eos else "length")
        return False

    def _keep(self, kept: list[int], reason: str | None = None) -> None:
        """Keep only the rows at `kept` (finishing the others with `reason`, when given), and trim
        cache columns that no row uses any more."""
        if len(kept) == len(self._rows):
            return
        if reason:
            for i in set(range(len(self._rows))) - set(kept):
                self._rows[i].req._finish(reason)
        if not kept:
            self._reset()
            return
        import torch

        index = torch.tensor(kept)
        mask = self._mask[index]
        start = int((mask.sum(0) > 0).nonzero()[0])
        for layer in self._cache.layers:
            layer.keys, layer.values = layer.keys[index, :, start:], layer.values[index, :, start:]
        self._mask, self._rows = mask[:, start:], [self._rows[i] for i in kept]

    def _reset(self) -> None:
        self._rows, self._cache, self._mask = [], None, None


def merge(cache_a: Any, mask_a: Any, cache_b: Any, mask_b: Any) -> tuple[Any, Any]:
    """Stack two batches' KV caches (and attention masks) along the batch: the shorter one is
    padded on the left with masked-out zeros, so every row's last token stays in the last column."""
    import torch

    width = max(mask_a.shape[1], mask_b.shape[1])

    def pad(t: Any, dim: int) -> Any:
        missing = width - t.shape[dim]
        if not missing:
            return t
        shape = list(t.shape)
        shape[dim] = missing
        return torch.cat([torch.zeros(shape, dtype=t.dtype), t], dim=dim)

    merged = [(torch.cat([pad(a.keys, 2), pad(b.keys, 2)]), torch.cat([pad(a.values, 2), pad(b.values, 2)]))
              for a, b in zip(cache_a.layers, cache_b.layers)]
    for layer, (keys, values) in zip(cache_a.layers, merged):
        layer.keys, layer.values = keys, values
    return cache_a, torch.cat([pad(mask_a, 1), pad(mask_b, 1)])


def sample(logits: Any, params: SamplingParams, generator: Any) -> int:
    """A token drawn (with the request's generator) from softmax(logits / temperature) of one row's
    float32 logits, cut to the top_p nucleus: the most likely tokens until their mass reaches top_p."""
    import torch

    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1:
        ordered, order = probs.sort(descending=True)
        ordered[ordered.cumsum(0) - ordered >= params.top_p] = 0  # the mass before it already reaches top_p
        probs = torch.zeros_like(probs).scatter(0, order, ordered)
    return int(torch.multinomial(probs, 1, generator=generator))


def eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """Every id that ends a generation: the tokenizer's EOS and the model's (generation) config's."""
    found: set[int] = set()
    for value in (getattr(tokenizer, "eos_token_id", None), getattr(model.config, "eos_token_id", None),
                  getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        found.update([value] if isinstance(value, int) else value or [])
    return frozenset(found)
