"""Sizing formulas against hand values and against peak memory MEASURED on CPU.

Measurement: a TorchDispatchMode sees every tensor every aten op returns (forward, backward on the autograd
thread, optimizer); it counts each new storage's bytes once and drops them when the storage is freed
(weakref.finalize), starting from the model's parameters and buffers. Its peak is the peak of live tensor
bytes, what a CUDA caching allocator's max_memory_allocated reports on a GPU, without the allocator
slack and RSS noise of a process-level measurement. QLoRA cannot run on CPU (bitsandbytes' 4-bit
kernels need CUDA): its weight term is checked against bitsandbytes' documented bytes per parameter.
Run with -s to print the measured-vs-formula table of docs/models.md.
"""

from __future__ import annotations

import weakref

import pytest

from stackwise import sizing
from stackwise.errors import InputError

LLAMA_8B = sizing.Architecture(layers=32, hidden=4096, intermediate=14336, heads=32, kv_heads=8, head_dim=128,
                               vocab=128256)
TABLE: list[str] = []


def test_llama_8b_by_hand():
    # 8,030,261,248 parameters (the model card's 8.03B): embeddings 2 x 128256 x 4096, per layer
    # q,o 4096^2 each, k,v 4096 x 1024 each, MLP 3 x 4096 x 14336, two norms; a final norm.
    by_hand = 2 * 128256 * 4096 + 32 * (2 * 4096**2 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096) + 4096
    assert by_hand == 8_030_261_248 == LLAMA_8B.params()
    est = sizing.estimate(LLAMA_8B, "inference", seq_len=8192, batch=1)
    assert est.terms["weights"] / 1e9 == pytest.approx(16.06, abs=0.005)  # bf16: 2 bytes x 8.03e9
    # KV cache: 2 (K, V) x 32 layers x 8 heads x 128 x 8192 tokens x 2 bytes = 1.07 GB
    assert est.terms["kv_cache"] == 2 * 32 * 8 * 128 * 8192 * 2
    full = sizing.estimate(LLAMA_8B, "full", seq_len=1, batch=1)
    # mixed precision AdamW: 6 (fp32 + bf16 weights) + 4 (grads) + 8 (2 states) = 18 bytes per parameter
    assert (full.terms["weights"] + full.terms["gradients"] + full.terms["optimizer"]) == 18 * 8_030_261_248


def test_qlora_weight_term_matches_bitsandbytes_bytes_per_param():
    # bitsandbytes NF4: 4 bits per weight, blocksize 64 with an fp32 absmax; double quantization stores
    # absmax in 8 bits with one fp32 per 256 blocks: 0.5 + (8/64 + 32/(64*256))/8 = 0.51587 byte/param
    # (QLoRA paper, Sec. 3: 0.127 bit per parameter for the constants).
    assert sizing.NF4_BYTES + sizing.NF4_DOUBLE_QUANT_BYTES == pytest.approx(0.5 + 0.127 / 8, rel=1e-3)
    est = sizing.estimate(LLAMA_8B, "qlora", seq_len=1, batch=1)
    linear = LLAMA_8B.linear_params()
    other = LLAMA_8B.params() - linear  # embeddings, lm_head, norms stay bf16
    assert est.terms["weights"] == pytest.approx(linear * 0.51587 + other * 2, rel=1e-4)
    # by hand: 6,979,321,856 linear weights x 0.51587 + 1,050,939,392 (embeddings, lm_head, norms) x 2 = 5.70 GB
    assert linear == 32 * (2 * 4096**2 + 2 * 4096 * 1024 + 3 * 4096 * 14336) == 6_979_321_856
    assert est.terms["weights"] / 1e9 == pytest.approx(5.70, abs=0.01)


def test_lora_adapter_params_match_peft():
    peft = pytest.importorskip("peft")
    import torch

    torch.set_num_threads(1)
    from transformers import LlamaConfig, LlamaForCausalLM

    arch = sizing.Architecture(layers=2, hidden=64, intermediate=96, heads=4, kv_heads=2, head_dim=16, vocab=300)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False))
    assert sum(p.numel() for p in model.parameters()) == arch.params()
    lora = peft.get_peft_model(model, peft.LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    assert sum(p.numel() for p in lora.parameters() if p.requires_grad) == arch.lora_params(8)


def test_bad_input_and_fits():
    with pytest.raises(InputError) as err:
        sizing.estimate(LLAMA_8B, "prefix")
    assert err.value.exit_code == 2 and "inference" in err.value.fix
    est = sizing.estimate(LLAMA_8B, "inference", seq_len=2048)  # ~17.9 GB with the CUDA runtime
    found = {f.gpu: f.count for f in sizing.fits(est, {"T4": 16, "A10G": 24, "H100": 80})}
    assert found == {"T4": 2, "A10G": 1, "H100": 1}  # 17.9 > 0.9 x 16; (16.9/2 + 1) fits a T4
    assert not sizing.fits(est, {"tiny": 4}, counts=(1, 2))
    with pytest.raises(InputError):
        sizing.fits(est, headroom=1.5)


# ---- measured peak memory on CPU --------------------------------------------------------------------


def _tracker(seed):
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class PeakTracker(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.live: dict[int, int] = {}
            self.current = self.peak = 0
            for t in seed:
                self.track(t)

        def track(self, t):
            if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
                return
            st = t.untyped_storage()
            key = st.data_ptr()
            if key == 0 or key in self.live:
                return
            self.live[key] = st.nbytes()
            self.current += st.nbytes()
            self.peak = max(self.peak, self.current)
            weakref.finalize(st, self.free, key)

        def free(self, key):
            self.current -= self.live.pop(key, 0)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                self.track(t)
            return out

    return PeakTracker()


def measure(model, method: str, batch: int, seq: int, gc: bool = False) -> int:
    """Peak live tensor bytes of a forward (inference) or two forward+backward+AdamW steps (training)."""
    import torch

    torch.manual_seed(0)
    ids = torch.randint(5, model.config.vocab_size, (batch, seq))
    if method == "inference":
        model.eval()
        with torch.no_grad(), _tracker(list(model.parameters()) + list(model.buffers())) as tr:
            model(input_ids=ids, use_cache=True)
        return tr.peak
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
    if gc:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    with _tracker(list(model.parameters()) + list(model.buffers())) as tr:
        for _ in range(2):
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad()
    return tr.peak


def _arch(config) -> sizing.Architecture:
    return sizing.Architecture(layers=config.num_hidden_layers, hidden=config.hidden_size,
                               intermediate=config.intermediate_size, heads=config.num_attention_heads,
                               kv_heads=config.num_key_value_heads, vocab=config.vocab_size,
                               head_dim=getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
                               tied_embeddings=bool(config.tie_word_embeddings))


def _compare(name, model, method, batch, seq, gc=False, rank=8):
    measured = measure(model, method, batch, seq, gc)
    est = sizing.estimate(_arch(model.config), method, seq_len=seq, batch=batch, dtype="fp32", device="cpu",
                          lora_rank=rank, gradient_checkpointing=gc)
    ratio = est.total_bytes / measured
    TABLE.append(f"| {name} | {method}{' + GC' if gc else ''} | {batch} x {seq} | {measured / 1e6:.2f} | "
                 f"{est.total_bytes / 1e6:.2f} | {100 * (ratio - 1):+.1f} % |")
    print(TABLE[-1])
    # the issue asks for 20 %; all rows agree within 7 %, so a 10 % band also catches a wrong coefficient
    assert 0.9 <= ratio <= 1.1, f"{name} {method}: formula {est.total_bytes} vs measured {measured}"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from pydoc_data.topics import topics
    from transformers import AutoModelForCausalLM

    from stackwise.training.tiny import build_tiny_model

    folder = build_tiny_model(tmp_path_factory.mktemp("tiny"), list(topics.values())[:200], vocab_size=400)
    return lambda: AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


@pytest.mark.parametrize("method,batch,seq,gc", [("inference", 4, 512, False), ("full", 4, 128, False),
                                                 ("full", 8, 256, False), ("full", 8, 256, True),
                                                 ("lora", 8, 256, False), ("lora", 8, 256, True)])
def test_tiny_llama_measured(tiny, method, batch, seq, gc):
    _compare("tiny Llama (2 x 64)", tiny(), method, batch, seq, gc)


@pytest.fixture(scope="module")
def smollm2():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from transformers import AutoModelForCausalLM

    from stackwise.training.models import resolve_base

    try:
        location = resolve_base("smollm2-135m-instruct").location
    except Exception as exc:  # the shipped model's package is not installed
        pytest.skip(f"SmolLM2-135M not available: {exc}")
    return lambda: AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32)


@pytest.mark.parametrize("method,gc", [("inference", False), ("lora", False), ("lora", True)])
def test_smollm2_measured(smollm2, method, gc):
    _compare("SmolLM2-135M", smollm2(), method, 2, 128, gc)
