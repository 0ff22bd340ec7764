"""The serving engine (stackwise.engine): continuous batching on CPU against Hugging Face's own
`generate` on each prompt alone, seeded sampling, stop strings and streaming, LoRA versions on one
shared base, cancellation, the context window, asyncio streaming and failures.

A tiny random Llama (tokenizer trained on Lee news articles) is built once per module; one test
runs SmolLM2-135M (converted once into pytest's cache folder)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from stackwise.engine import ContextLengthError, Engine, GenerationRequest, SamplingParams  # noqa: E402
from stackwise.errors import InputError  # noqa: E402

torch.set_num_threads(1)
GREEDY = SamplingParams(max_tokens=24)


def lee_articles() -> list[str]:
    gensim = pytest.importorskip("gensim")
    path = Path(gensim.__file__).parent / "test" / "test_data" / "lee_background.cor"
    return [line.strip() for line in path.read_text(encoding="latin-1").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return lee_articles()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, texts: list[str]) -> Path:
    from stackwise.training.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("engine") / "tiny-llama", texts[:150], vocab_size=400)


def load(folder: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tokenizer(tiny: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny)


@pytest.fixture(scope="module")
def reference(tiny: Path) -> Any:
    """A separate copy of the base model, for Hugging Face's generate."""
    return load(tiny)


@pytest.fixture(scope="module")
def engine(tiny: Path, tokenizer: Any) -> Any:
    eng = Engine(load(tiny), tokenizer, max_batch=8, name="tiny")
    yield eng
    eng.close()


def hf_greedy(model: Any, ids: list[int], max_tokens: int, pad: int) -> list[int]:
    """What `transformers` generates greedily for this prompt alone (an ending EOS included)."""
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=max_tokens, do_sample=False, pad_token_id=pad)
    generated = out[0, len(ids):].tolist()
    eos = model.generation_config.eos_token_id
    eos = {eos} if isinstance(eos, int) else set(eos or [])
    ends = [i for i, t in enumerate(generated) if t in eos]
    return generated[:ends[0] + 1] if ends else generated


def wait_for_tokens(req: GenerationRequest, n: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while req.completion_tokens < n and not req.done:
        assert time.monotonic() < deadline, f"{req.id} made no progress"
        time.sleep(0.0005)
    assert not req.done, f"{req.id} finished before it had {n} tokens"


def prompts(engine: Any, texts: list[str], n: int, offset: int = 0) -> list[list[int]]:
    """`n` prompts of clearly different lengths (a few tokens to about a hundred)."""
    return [engine.encode(texts[offset + i][: 12 + 70 * i]) for i in range(n)]


def test_greedy_equals_hf_generate_alone_with_requests_joining_mid_generation(engine, reference, texts, tokenizer):
    first, later = prompts(engine, texts, 3), prompts(engine, texts, 3, offset=10)
    steps = engine.steps
    long = engine.submit(engine.encode(texts[20][:40]), SamplingParams(max_tokens=400))
    wave = [engine.submit(ids, GREEDY) for ids in first]
    wait_for_tokens(long, 5)
    joined = [engine.submit(ids, GREEDY) for ids in later]
    reqs = [long, *wave, *joined]
    for req in reqs:
        req.result(timeout=60)
    for req in reqs:
        expected = hf_greedy(reference, req.prompt_ids, req.params.max_tokens, tokenizer.pad_token_id)
        assert req.token_ids == expected, req.prompt_tokens
        eos = req.token_ids[-1] == tokenizer.eos_token_id
        assert req.finish_reason == ("stop" if eos else "length")
        assert eos or req.completion_tokens == req.params.max_tokens
        assert req.text == tokenizer.decode(req.token_ids, skip_special_tokens=True)
        assert req.queued_at <= req.started_at <= req.first_token_at <= req.token_times[-1] <= req.finished_at
    # One forward pass served several rows: fewer steps than tokens, and the late requests ran
    # while the long one was mid-generation (joined its batch, not waited for it to end).
    assert engine.steps - steps < sum(r.completion_tokens for r in reqs)
    assert all(long.first_token_at < r.started_at < long.finished_at for r in joined)
    assert len({r.prompt_tokens for r in reqs}) >= 5
    assert engine.running == 0 and engine.waiting == 0


def test_seeded_sampling_is_the_same_alone_and_in_a_batch(engine, texts):
    ids = engine.encode(texts[30][:60])
    seeded = SamplingParams(max_tokens=20, temperature=1.0, seed=7)
    alone = engine.generate(ids, seeded)
    others = [engine.submit(p, SamplingParams(max_tokens=30, temperature=1.0)) for p in prompts(engine, texts, 3, 40)]
    batched = engine.submit(ids, seeded)
    more = [engine.submit(p, SamplingParams(max_tokens=10, temperature=0.8, seed=1)) for p in prompts(engine, texts, 2)]
    for req in (*others, batched, *more):
        req.result(timeout=60)
    assert batched.token_ids == alone.token_ids and batched.text == alone.text
    assert batched.started_at < max(r.finished_at for r in others)  # it really shared the batch
    other_seed = engine.generate(ids, SamplingParams(max_tokens=20, temperature=1.0, seed=8))
    assert other_seed.token_ids != alone.token_ids
    greedy = engine.generate(ids, SamplingParams(max_tokens=20))
    nucleus = engine.generate(ids, SamplingParams(max_tokens=20, temperature=1.0, top_p=1e-6, seed=3))
    assert nucleus.token_ids == greedy.token_ids != alone.token_ids


def test_stop_string_ends_the_text_and_never_reaches_the_stream(engine, texts, tokenizer):
    ids = engine.encode(texts[50][:80])
    plain = engine.generate(ids, SamplingParams(max_tokens=40))
    # A stop string that spans two tokens (the 10th and 11th), so the first half arrives a step before it completes.
    start = len(tokenizer.decode(plain.token_ids[:10]))
    stop = tokenizer.decode(plain.token_ids[:12])[start:]
    assert len(stop) >= 2 and len(tokenizer.decode(plain.token_ids[:11])) - start < len(stop)
    expected = plain.text[:plain.text.find(stop)]
    req = engine.submit(ids, SamplingParams(max_tokens=40, stop=("never appears", stop)))
    deltas = list(req)
    assert req.text == expected == "".join(deltas) and req.finish_reason == "stop"
    assert len(deltas) > 1 and not any(stop in d for d in deltas)
    assert req.completion_tokens < 40


def test_eos_finishes_with_stop(tiny, tokenizer, reference, texts):
    ids = tokenizer(texts[60][:50])["input_ids"]
    greedy = hf_greedy(reference, ids, 8, tokenizer.pad_token_id)
    model = load(tiny)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, greedy[4]]  # this model's 5th token ends it
    with Engine(model, tokenizer) as eng:
        req = eng.generate(ids, SamplingParams(max_tokens=8))
    assert req.finish_reason == "stop" and req.token_ids == hf_greedy(model, ids, 8, tokenizer.pad_token_id)
    assert req.token_ids[-1] == greedy[4] and req.completion_tokens <= 5
    assert req.text == tokenizer.decode(req.token_ids[:-1])


def test_cancel_frees_the_row(engine, texts):
    req = engine.submit(engine.encode(texts[70][:30]), SamplingParams(max_tokens=400))
    wait_for_tokens(req, 3)
    req.cancel()
    assert req.result(timeout=30) == req.text
    assert req.finish_reason == "cancelled" and req.completion_tokens < 400
    assert engine.running == 0
    after = engine.generate(engine.encode("The council"), SamplingParams(max_tokens=4))
    assert after.finish_reason == "length"


def test_context_window(engine, texts):
    assert engine.context_len == 512
    ids = engine.encode(" ".join(texts))[:500]
    with pytest.raises(ContextLengthError) as caught:
        engine.submit(ids, SamplingParams(max_tokens=20))
    assert isinstance(caught.value, InputError)
    assert all(str(n) in str(caught.value) for n in (500, 20, 512))
    assert engine.generate(ids, SamplingParams(max_tokens=12)).finish_reason == "length"  # exactly fills it


def test_astream_does_not_block_the_loop(engine, texts):
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    async def main() -> tuple[list[str], list[int], GenerationRequest]:
        task = asyncio.create_task(ticker())
        req = engine.submit(engine.encode(texts[80][:40]), SamplingParams(max_tokens=300))
        deltas, seen = [], []  # the ticker's count at each delta
        async for delta in req.astream():
            deltas.append(delta)
            seen.append(ticks)
        task.cancel()
        return deltas, seen, req

    deltas, seen, req = asyncio.run(main())
    assert "".join(deltas) == req.text and len(deltas) > 1 and req.finish_reason == "length"
    assert seen[-1] > seen[0]  # the loop ran other tasks while the stream waited for tokens


def test_bad_requests_and_a_failing_request_leave_the_engine_serving(engine, reference, texts, tokenizer, monkeypatch):
    ids = engine.encode(texts[90][:50])
    with pytest.raises(InputError, match="unknown adapter"):
        engine.submit(ids, GREEDY, adapter="nope")
    with pytest.raises(InputError, match="token ids"):
        engine.submit([10_000], GREEDY)
    with pytest.raises(InputError, match="max_tokens"):
        SamplingParams(max_tokens=0)
    # A failure inside the scheduler (here the tokenizer, once) fails that request only.
    real = engine.tokenizer.decode
    calls = {"n": 0}

    def flaky(*args: Any, **kwargs: Any) -> str:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("decoder broke")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine.tokenizer, "decode", flaky)
    reqs = [engine.submit(ids, GREEDY), engine.submit(engine.encode(texts[91][:90]), GREEDY)]
    for req in reqs:
        assert req.wait(60)
    failed = [r for r in reqs if r.finish_reason == "error"]
    assert len(failed) == 1 and "decoder broke" in str(failed[0].error)
    with pytest.raises(RuntimeError, match="decoder broke"):
        failed[0].result()
    for req in [r for r in reqs if r is not failed[0]] + [engine.generate(ids, GREEDY)]:
        assert req.token_ids == hf_greedy(reference, req.prompt_ids, 24, tokenizer.pad_token_id)


def make_adapter(base: Path, folder: Path, seed: int) -> Path:
    """A LoRA adapter with random non-zero weights (so it changes the output), saved to `folder`."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    get_peft_model(load(base), config).save_pretrained(folder)
    return folder


def test_lora_versions_share_one_base_in_one_batch(tiny, tokenizer, reference, texts, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file

    folders = {name: make_adapter(tiny, tmp_path / name, seed) for name, seed in (("va", 1), ("vb", 2))}
    base = load(tiny)
    weight = base.model.layers[0].self_attn.q_proj.weight
    pad = tokenizer.pad_token_id
    with Engine(base, tokenizer, max_batch=8) as eng:
        long = eng.submit(eng.encode(texts[100][:40]), SamplingParams(max_tokens=150))
        wait_for_tokens(long, 3)
        for name, folder in folders.items():  # added while a request is being served
            eng.add_adapter(name, str(folder))
        assert eng.adapters == ("va", "vb")
        steps = eng.steps
        ids = prompts(eng, texts, 2, offset=110)
        reqs = [eng.submit(p, GREEDY, adapter) for p in ids for adapter in (None, "va", "vb")]
        for req in [long, *reqs]:
            req.result(timeout=60)
        assert max(r.started_at for r in reqs) < min(r.finished_at for r in reqs)  # one batch
        assert eng.steps - steps < sum(r.completion_tokens for r in [long, *reqs])
        assert eng.model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight is weight
        lora = sum(t.numel() for f in folders.values() for t in load_file(f / "adapter_model.safetensors").values())
        assert sum(p.numel() for p in eng.model.parameters()) == sum(p.numel() for p in reference.parameters()) + lora
    assert long.token_ids == hf_greedy(reference, long.prompt_ids, 150, pad)
    merged = {name: PeftModel.from_pretrained(load(tiny), str(folder)).merge_and_unload().eval()
              for name, folder in folders.items()}
    for req in reqs:
        model = merged[req.adapter] if req.adapter else reference
        assert req.token_ids == hf_greedy(model, req.prompt_ids, 24, pad), (req.adapter, req.prompt_tokens)
    by_version = {req.adapter: req.token_ids for req in reqs[:3]}
    assert len({tuple(v) for v in by_version.values()}) == 3  # each version answers differently


def test_load_an_adapter_folder_serves_it_on_its_base(tiny, tokenizer, texts, tmp_path):
    adapter = make_adapter(tiny, tmp_path / "chat-v3", 5)
    tokenizer.save_pretrained(adapter)
    with Engine.load(str(adapter), adapters={"other": str(make_adapter(tiny, tmp_path / "o", 6))}) as eng:
        assert eng.adapters == ("chat-v3", "other") and eng.context_len == 512
        ids = eng.encode_chat([{"role": "user", "content": texts[120][:80]}])
        assert ids == tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": texts[120][:80]}],
                                                              tokenize=False, add_generation_prompt=True),
                                add_special_tokens=False)["input_ids"]
        on_base = eng.generate(ids, GREEDY)
        on_adapter = eng.generate(ids, GREEDY, "chat-v3")
    assert on_base.token_ids != on_adapter.token_ids


@pytest.mark.slow
def test_smollm2_serves_concurrent_chats(request, monkeypatch, tmp_path_factory):
    from stackwise.errors import MissingDependencyError
    from stackwise.training.models import check_base

    pytest.importorskip("gguf")
    try:
        check_base("smollm2-135m-instruct")
    except MissingDependencyError as exc:
        pytest.skip(str(exc))
    cache = getattr(request.config, "cache", None)  # pytest's cache folder: converted once across runs
    folder = cache.mkdir("stackwise-models") if cache else tmp_path_factory.mktemp("models")
    monkeypatch.setenv("STACKWISE_MODEL_CACHE", str(folder))
    with Engine.load("smollm2-135m-instruct", max_batch=4) as eng:
        questions = ["What is the capital of France?", "Name three colours.", "Write one word: hello"]
        reqs = [eng.submit(eng.encode_chat([{"role": "user", "content": q}]), SamplingParams(max_tokens=10))
                for q in questions]
        for req in reqs:
            req.result(timeout=120)
        pad = eng.tokenizer.pad_token_id or eng.tokenizer.eos_token_id
        for req in reqs:
            assert req.token_ids == hf_greedy(eng.model, req.prompt_ids, 10, pad)
        assert "Paris" in reqs[0].text
