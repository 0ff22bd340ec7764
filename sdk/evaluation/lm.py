"""A causal LM loaded for evaluation: token log-likelihoods and greedy generation.

`load(ref)` takes what fine-tuning takes as a base (a shipped short name, a path or URI, a Hugging
Face id, models:/NAME/VERSION) plus models:/NAME@ALIAS, which is pinned to its version first so
a moved alias never reuses a stale download. A saved LoRA adapter loads on its base model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError

# Characters of a prompt kept per token of context: a token of a byte-level BPE vocabulary spans a
# few characters (rarely more than 16), so the cut text still fills the context; a long run of
# whitespace that one token would cover is the rare case where it falls a little short.
CHARS_PER_TOKEN_BOUND = 16


@dataclass
class LM:
    ref: str  # as given
    pinned: str  # after resolving an alias
    location: str
    model: Any
    tokenizer: Any
    max_len: int
    chat_template: bool = True

    # -- likelihoods ---------------------------------------------------------------------------
    def _logprobs(self, ids: list[int]) -> Any:
        import torch

        with torch.no_grad():
            logits = self.model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
        return torch.log_softmax(logits, dim=-1)

    def nll(self, text: str) -> tuple[float, int]:
        """(summed negative log-likelihood, tokens scored) of `text` (after a BOS when the
        tokenizer has one), truncated to max_len tokens."""
        ids = self._encode(text, bos=True)[: self.max_len]
        if len(ids) < 2:
            return 0.0, 0
        import torch

        logp = self._logprobs(ids)
        targets = torch.tensor(ids[1:])
        return -float(logp.gather(1, targets[:, None]).sum()), len(targets)

    def loglik(self, context: str, continuation: str) -> float:
        """log P(continuation | context), summed over the continuation's tokens."""
        ctx = self._encode(context, bos=True)
        cont = self._encode(continuation, bos=False)
        ids = (ctx + cont)[-self.max_len:]
        n = len(cont)
        import torch

        logp = self._logprobs(ids)[len(ids) - n - 1:]
        return float(logp.gather(1, torch.tensor(ids[-n:])[:, None]).sum())

    def choice_logliks(self, context: str, continuations: list[str]) -> list[float]:
        """log P(c | context) for each continuation; one forward pass when every continuation is a
        single token (MMLU's " A", " B", ...), else one per continuation."""
        encoded = [self._encode(c, bos=False) for c in continuations]
        if all(len(e) == 1 for e in encoded):
            ctx = self._encode(context, bos=True)[-self.max_len:]
            import torch

            with torch.no_grad():
                last = self.model(input_ids=torch.tensor([ctx])).logits[0, -1].float()
            logp = torch.log_softmax(last, dim=-1)
            return [float(logp[e[0]]) for e in encoded]
        return [self.loglik(context, c) for c in continuations]

    # -- generation ----------------------------------------------------------------------------
    def generate(self, prompt: str, max_new_tokens: int) -> str:
        """The greedy continuation of `prompt` (its last tokens that fit the context)."""
        return self.generate_ids(self.prepare(prompt, max_new_tokens), max_new_tokens)

    def prepare(self, prompt: str, max_new_tokens: int) -> list[int]:
        """The token ids `generate` feeds the model: the end of `prompt` that fits the context with
        `max_new_tokens` after it. The text is cut before it is tokenized (to CHARS_PER_TOKEN_BOUND
        characters per kept token), so a huge prompt costs no more than one that fills the context."""
        tok = self.tokenizer
        keep = max(1, self.max_len - max_new_tokens)
        prompt = prompt[-keep * CHARS_PER_TOKEN_BOUND:]
        if self.chat_template and getattr(tok, "chat_template", None):
            text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                           add_generation_prompt=True)
            ids = tok(text, add_special_tokens=False)["input_ids"]
        else:
            ids = self._encode(prompt, bos=True)
        return list(ids[-keep:])

    def encode_messages(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of chat messages with the assistant's turn opened: the tokenizer's chat template
        when it has one (and `chat_template`), else the contents as plain text ending in "Assistant:"."""
        tok = self.tokenizer
        if self.chat_template and getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return list(tok(text, add_special_tokens=False)["input_ids"])
        names = {"system": "", "user": "User: ", "assistant": "Assistant: "}
        text = "\n\n".join(names.get(m["role"], "") + m["content"] for m in messages) + "\n\nAssistant:"
        return self._encode(text, bos=True)

    def generate_ids(self, ids: list[int], max_new_tokens: int, temperature: float = 0.0,
                     seed: int | None = None) -> str:
        """The continuation of prepared token ids (`prepare`), decoded: greedy at temperature 0,
        else sampled at that temperature (seeded when `seed` is given)."""
        import torch

        tok = self.tokenizer
        sample = {"do_sample": True, "temperature": float(temperature), "top_k": 0} if temperature > 0 else \
            {"do_sample": False}
        if temperature > 0 and seed is not None:
            torch.manual_seed(seed)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        with torch.no_grad():
            out = self.model.generate(input_ids=torch.tensor([ids]), max_new_tokens=max_new_tokens, pad_token_id=pad,
                                      attention_mask=torch.ones(1, len(ids), dtype=torch.long), **sample)
        return tok.decode(out[0, len(ids):], skip_special_tokens=True).strip()

    def _encode(self, text: str, bos: bool) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        bos_id = getattr(self.tokenizer, "bos_token_id", None)
        return ([bos_id] if bos and bos_id is not None else []) + list(ids)


def perplexity(nlls: list[tuple[float, int]]) -> float:
    total = sum(n for n, _ in nlls)
    count = sum(c for _, c in nlls)
    return math.exp(total / count) if count else float("nan")


def threads() -> None:
    import torch

    from ..userinput import env_threads

    value = env_threads()
    if value:
        torch.set_num_threads(value)


def load(ref: str, max_len: int = 512, chat_template: bool = True, context: Any = None) -> LM:
    """Load a model to evaluate or serve. A registry reference is read from the registry of
    `context` (the job's JobContext)."""
    from ..quantization import keep_bitsandbytes_out
    from ..registry import require

    keep_bitsandbytes_out()  # nothing here is quantized: no bitsandbytes, no hub kernel fetch at import
    require("torch", "train", "evaluating a model")
    require("transformers", "train", "evaluating a model")
    threads()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..training.models import resolve_base

    pinned = pin(ref, context)
    if is_rag_ref(pinned, context):
        from ..rag import load_rag

        return load_rag(pinned, context, max_len, chat_template)  # type: ignore[return-value]
    resolved = resolve_base(_in_place(pinned, context) or pinned,
                            tracking_uri=getattr(context, "tracking_uri", None))
    where = resolved.location
    if resolved.is_local and (Path(where) / "adapter_config.json").is_file():
        adapter = Path(where) / "adapter_config.json"
        from peft import PeftModel

        base = json.loads(adapter.read_text())["base_model_name_or_path"]
        if not Path(base).exists() and base.startswith(("/", ".")):
            raise InputError(f"the adapter's base model {base} does not exist on this machine", where=str(where),
                             fix="evaluate on the machine that holds the base, or register a merged model")
        # Merged once: the same function as the adapter on top, without its per-layer overhead.
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                                          where).merge_and_unload()
        tokenizer = AutoTokenizer.from_pretrained(where if (Path(where) / "tokenizer_config.json").is_file() else base)
    else:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(where)
    model.eval()
    limit = getattr(model.config, "max_position_embeddings", None) or max_len
    return LM(ref=ref, pinned=pinned, location=str(where), model=model, tokenizer=tokenizer,
              max_len=min(max_len, int(limit)), chat_template=chat_template)


def pin(ref: str, context: Any = None) -> str:
    """models:/NAME@ALIAS -> models:/NAME/VERSION (the version the alias points at now). A RAG app
    reference (rag:NAME, rag:NAME@ALIAS, rag:NAME/VERSION) pins to the registry version that holds
    it, models:/NAME/VERSION, so its evaluations are recorded on that version like a model's."""
    if ref.startswith("rag:"):
        from ..model_registry import Registry
        from ..rag import rag_version

        name, mv = rag_version(ref, Registry(context))
        return f"models:/{name}/{mv.version}"
    if ref.startswith("models:/") and "@" in ref:
        from ..model_registry import Registry

        name, alias = ref.removeprefix("models:/").split("@", 1)
        return f"models:/{name}/{Registry(context).version_by_alias(name, alias).version}"
    return ref


def _registered(ref: str, context: Any = None) -> Any:
    """The MLflow model version a pinned models:/NAME/VERSION names; None for any other reference."""
    if not ref.startswith("models:/"):
        return None
    name, _, version = ref.removeprefix("models:/").partition("/")
    if not version.isdigit():
        return None
    from ..model_registry import Registry

    return Registry(context).version(name, version)


def is_rag_ref(ref: str, context: Any = None) -> bool:
    """Whether a reference names a RAG app: rag:..., or a pinned registry version tagged as one."""
    if ref.startswith("rag:"):
        return True
    from ..rag import KIND, KIND_TAG

    mv = _registered(ref, context)
    return mv is not None and (mv.tags or {}).get(KIND_TAG) == KIND


def _in_place(ref: str, context: Any = None) -> str | None:
    """A registered version whose source is a folder on this machine (a local artifact store, or
    a version registered without a copy) loads from there, not from a copy in the model cache."""
    mv = _registered(ref, context)
    if mv is None:
        return None
    source = mv.source
    path = Path(source.removeprefix("file://")) if "://" not in source or source.startswith("file://") else None
    return str(path) if path is not None and path.is_dir() else None
