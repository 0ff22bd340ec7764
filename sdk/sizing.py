"""Memory sizing: GPU memory needed to serve or fine-tune a decoder-only transformer, and which GPUs fit.

Every estimate is a sum of named terms (bytes), kept in `MemoryEstimate.terms` so a reader can see
where the memory goes. Notation: P parameters, L layers, h hidden size, f MLP (intermediate) size,
a*d query width (heads x head dim), kvd = kv_heads x head_dim, V vocabulary, r LoRA rank, T = batch x
seq_len tokens, b_w / b_a bytes of a weight / activation element (bf16: 2, fp32: 4).

Inference (HF "Model memory anatomy" and the usual KV-cache accounting, e.g. vLLM's paper):
    weights      P * b_w                  (nf4: see QLoRA below; int8: 1 byte)
    kv_cache     2 * L * kvd * T * b_a    (keys and values of every layer)
    activations  T * max(3f + 2h, V + 3h) * b_a
                 the transient peak of a prefill: one MLP block (gate, up, act) or the logits of every
                 position (conservative: HF generate keeps only the last position's logits)
Training (weights + gradients + optimizer states + activations, HF "Model memory anatomy";
activations counted per token as in Korthikanti et al. 2022, "Reducing Activation Recomputation in
Large Transformer Models", Sec. 4, but for a Llama block with SDPA/flash attention, whose s x s
scores are never stored):
    full         weights P*4 (fp32) or P*6 (mixed: fp32 master + bf16 copy), gradients P*4,
                 AdamW 2 states P*8
    lora         frozen base P*b_w, adapter P_a*4 + grads P_a*4 + AdamW P_a*8, where
                 P_a = L * sum over targeted linears of r*(in+out) (x experts for MoE MLPs)
    qlora        as lora, with the base's linear weights in 4-bit NF4: 0.5 byte/param + the
                 quantization constants (QLoRA paper, Dettmers et al. 2023, Sec. 3: blocks of 64 with an
                 fp32 absmax = 4/64 byte/param; double quantization: 8/64 + 32/(64*256) bit/param =
                 0.127 bit, ~0.0159 byte/param); embeddings, lm_head and norms stay bf16 (bitsandbytes
                 quantizes nn.Linear layers only); plus one bf16 dequantized weight as workspace
    activations  saved for backward per token and layer (elements):
                 full: 9h + 2kvd + 4f*k      (norm inputs and outputs, q/k/v after RoPE, attention output,
                                              residuals; gate, up, act and product of the MLP; k active
                                              experts for MoE)
                 lora: 6h + 2kvd + 4f*k + n_targets*r   (a frozen linear saves no input for its weight
                                              gradient; each LoRA A saves x@A)
                 plus the final norm (h) and the loss: 3V fp32 per token (log-softmax output, its gradient
                 and the logits' gradient coexist at the start of backward) + V*b_a for the bf16 logits
                 no checkpointing: L * layer + h + loss
                 gradient checkpointing: L*h (each layer's input) + h + max(loss, one layer recomputed)
The per-token coefficients were derived from the tensors autograd saves in transformers' Llama
(torch.autograd.graph.saved_tensors_hooks) and are checked against measured peak memory in
tests/unit/test_sizing.py (tiny Llama and SmolLM2-135M on CPU, within 20 %; see docs/models.md).
On a GPU, `device="cuda"` adds a runtime term: the CUDA context and kernels (about 1 GB, HF's anatomy
doc says 1-2 GB) per GPU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .errors import InputError

Method = Literal["inference", "lora", "qlora", "full"]
METHODS: tuple[str, ...] = ("inference", "lora", "qlora", "full")
DTYPE_BYTES: dict[str, float] = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "int8": 1.0}
NF4_BYTES = 0.5  # 4 bits per weight
NF4_CONSTANTS_BYTES = 4 / 64  # one fp32 absmax per block of 64 (no double quantization)
NF4_DOUBLE_QUANT_BYTES = (8 / 64 + 32 / (64 * 256)) / 8  # QLoRA paper: 0.127 bit per parameter
CUDA_RUNTIME_BYTES = 1.0e9
GB = 1e9


class Architecture(BaseModel):
    """The numbers sizing needs, as in a model's config.json."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    layers: int = Field(gt=0)
    hidden: int = Field(gt=0)
    intermediate: int = Field(gt=0)
    heads: int = Field(gt=0)
    kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    vocab: int = Field(gt=0)
    tied_embeddings: bool = False
    qkv_bias: bool = False
    norms_per_layer: int = 2
    experts: int = 1
    experts_active: int = 1

    @property
    def kvd(self) -> int:
        return self.kv_heads * self.head_dim

    def linears(self) -> list[tuple[str, int, int, int]]:
        """(name, in, out, copies per layer) of each linear layer of a block (MoE MLPs once per expert)."""
        q = self.heads * self.head_dim
        h, f, e = self.hidden, self.intermediate, self.experts
        return [("q_proj", h, q, 1), ("k_proj", h, self.kvd, 1), ("v_proj", h, self.kvd, 1), ("o_proj", q, h, 1),
                ("gate_proj", h, f, e), ("up_proj", h, f, e), ("down_proj", f, h, e)]

    def linear_params(self) -> int:
        """Parameters in the blocks' linear weights (what bitsandbytes quantizes)."""
        return self.layers * sum(i * o * n for _, i, o, n in self.linears())

    def params(self) -> int:
        """Total parameters computed from the architecture (embeddings counted once when tied)."""
        per_layer = self.norms_per_layer * self.hidden
        if self.qkv_bias:
            per_layer += self.heads * self.head_dim + 2 * self.kvd
        if self.experts > 1:
            per_layer += self.hidden * self.experts  # router
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.linear_params() + self.layers * per_layer + embeddings + self.hidden

    def active_params(self) -> int:
        """Parameters used per token (MoE: only `experts_active` experts' MLPs)."""
        if self.experts == 1:
            return self.params()
        mlp_one = 3 * self.hidden * self.intermediate
        return self.params() - self.layers * mlp_one * (self.experts - self.experts_active)

    def lora_params(self, rank: int) -> int:
        """LoRA adapter parameters with every linear of every block targeted (PEFT's "all-linear")."""
        return self.layers * sum(rank * (i + o) * n for _, i, o, n in self.linears())


class MemoryEstimate(BaseModel):
    """Memory for one method at one sequence length and batch: terms in bytes, and their sum."""

    model: str
    method: Method
    seq_len: int
    batch: int
    dtype: str
    device: str
    params: int
    trainable_params: int
    gradient_checkpointing: bool
    terms: dict[str, float]  # bytes per term, e.g. weights, kv_cache, activations, gradients, optimizer

    @property
    def total_bytes(self) -> float:
        return float(sum(self.terms.values()))

    @property
    def total_gb(self) -> float:
        return self.total_bytes / GB

    def breakdown_gb(self) -> dict[str, float]:
        return {k: round(v / GB, 3) for k, v in self.terms.items()}


def _check(method: str, seq_len: int, batch: int, dtype: str) -> None:
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}", where="--method", fix=f"use one of: {', '.join(METHODS)}")
    if seq_len < 1 or batch < 1:
        raise InputError(f"seq_len and batch must be at least 1 (got {seq_len}, {batch})", where="--seq-len/--batch",
                         fix="e.g. --seq-len 2048 --batch 1")
    if dtype not in DTYPE_BYTES:
        raise InputError(f"unknown dtype {dtype!r}", where="dtype", fix=f"use one of: {', '.join(DTYPE_BYTES)}")


def _layer_activations(arch: Architecture, lora_rank: int | None) -> float:
    """Elements saved for backward per token by one block (see the module docstring)."""
    mlp = 4 * arch.intermediate * arch.experts_active
    if lora_rank is None:
        return 9 * arch.hidden + 2 * arch.kvd + mlp
    return 6 * arch.hidden + 2 * arch.kvd + mlp + len(arch.linears()) * lora_rank


def _train_activations(arch: Architecture, tokens: int, act_bytes: float, lora_rank: int | None,
                       checkpointing: bool) -> dict[str, float]:
    layer = _layer_activations(arch, lora_rank) * act_bytes * tokens
    loss = tokens * arch.vocab * (3 * 4.0 + (act_bytes if act_bytes < 4 else 0.0))
    if checkpointing:
        return {"activations": (arch.layers + 1) * arch.hidden * act_bytes * tokens, "loss_or_recompute": max(loss, layer)}
    return {"activations": arch.layers * layer + arch.hidden * act_bytes * tokens, "loss": loss}


def estimate(arch: Architecture, method: str = "inference", *, seq_len: int = 2048, batch: int = 1,
             dtype: str = "bf16", device: Literal["cuda", "cpu"] = "cuda", lora_rank: int = 16,
             gradient_checkpointing: bool = False, mixed_precision: bool | None = None,
             params: int | None = None, model: str = "") -> MemoryEstimate:
    """Memory to run `method` on a model of architecture `arch` (see the module docstring for each term).

    `dtype`: weights and activations (bf16 on GPUs; fp32 on CPU). `params`: the published parameter count
    (default: computed from `arch`). `mixed_precision` (full fine-tuning): fp32 master weights beside the
    `dtype` copy; default True when dtype is bf16/fp16. `device="cpu"` drops the CUDA runtime term."""
    _check(method, seq_len, batch, dtype)
    p = int(params or arch.params())
    tokens = seq_len * batch
    b = DTYPE_BYTES[dtype]
    terms: dict[str, float] = {}
    trainable = 0
    if method == "inference":
        terms["weights"] = p * b
        terms["kv_cache"] = 2 * arch.layers * arch.kvd * tokens * b
        terms["activations"] = tokens * max(3 * arch.intermediate * arch.experts_active + 2 * arch.hidden,
                                            arch.vocab + 3 * arch.hidden) * b
    elif method == "full":
        mixed = (b < 4) if mixed_precision is None else mixed_precision
        trainable = p
        terms["weights"] = p * (4.0 + b if mixed else 4.0)
        terms["gradients"] = p * 4.0
        terms["optimizer"] = p * 8.0
        terms.update(_train_activations(arch, tokens, b, None, gradient_checkpointing))
    else:
        trainable = arch.lora_params(lora_rank)
        if method == "qlora":
            linear = arch.linear_params()
            terms["weights"] = linear * (NF4_BYTES + NF4_DOUBLE_QUANT_BYTES) + (p - linear) * 2.0
            biggest = max(i * o for _, i, o, _ in arch.linears())
            terms["dequant_workspace"] = biggest * 2.0
        else:
            terms["weights"] = p * b
        terms["adapter"] = trainable * 4.0
        terms["gradients"] = trainable * 4.0
        terms["optimizer"] = trainable * 8.0
        terms.update(_train_activations(arch, tokens, b, lora_rank, gradient_checkpointing))
    if device == "cuda":
        terms["cuda_runtime"] = CUDA_RUNTIME_BYTES
    return MemoryEstimate(model=model, method=method, seq_len=seq_len, batch=batch, dtype=dtype, device=device,
                          params=p, trainable_params=trainable, gradient_checkpointing=gradient_checkpointing,
                          terms=terms)


class GpuFit(BaseModel):
    """`count` x `gpu` hold the estimate with `headroom` of their memory."""

    gpu: str
    count: int
    memory_gb: float  # per GPU
    needed_per_gpu_gb: float
    utilisation: float  # needed / memory


def per_gpu_bytes(est: MemoryEstimate, count: int) -> float:
    """Bytes each of `count` GPUs holds: everything but the runtime split evenly (FSDP / ZeRO-3 sharding for
    training, tensor parallelism for inference), the CUDA runtime on every GPU."""
    runtime = est.terms.get("cuda_runtime", 0.0)
    return (est.total_bytes - runtime) / count + runtime


def fits(est: MemoryEstimate, gpus: Mapping[str, float] | None = None, *, headroom: float = 0.9,
         counts: Sequence[int] = (1, 2, 4, 8)) -> list[GpuFit]:
    """For each GPU (default: the GPU catalog's names and memory_gb), the smallest count in `counts` whose
    per-GPU share fits in `headroom` x its memory; GPUs that no count fits are left out. Sorted by memory."""
    if not 0 < headroom <= 1:
        raise InputError(f"headroom must be in (0, 1], got {headroom}", where="headroom", fix="e.g. 0.9")
    if gpus is None:
        from .catalog import catalog

        gpus = catalog().gpus
    found: list[GpuFit] = []
    for name, memory in gpus.items():
        for count in sorted(counts):
            need = per_gpu_bytes(est, count) / GB
            if need <= headroom * float(memory):
                found.append(GpuFit(gpu=name, count=count, memory_gb=float(memory), needed_per_gpu_gb=round(need, 2),
                                    utilisation=round(need / float(memory), 3)))
                break
    return sorted(found, key=lambda g: (g.memory_gb * g.count, g.gpu))


def fits_on(est: MemoryEstimate, gpu: str, count: int = 1, headroom: float = 0.9) -> bool:
    """Whether `count` x `gpu` (a GPU catalog name or alias) hold the estimate."""
    from .catalog import canonical_gpu, catalog

    memory = catalog().gpus[canonical_gpu(gpu)]
    return per_gpu_bytes(est, count) / GB <= headroom * memory
