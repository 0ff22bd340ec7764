"""Embeddings on ONNX Runtime: a sentence-transformers model folder exported once, then run without torch.

Why not sentence-transformers' own `backend="onnx"`: it is built on optimum-onnx, and every
optimum-onnx release (0.0.1-0.1.0) requires transformers < 4.58, while stackwise runs transformers 5.
So the export is done here with the same recipe optimum uses: `torch.onnx.export` of the model's
transformer, onnxruntime's transformer optimizer (fused attention, layer norm, GELU) for fp32, and
`onnxruntime.quantization.quantize_dynamic` (per-channel int8 weights) for int8. Tokenization
(`tokenizers`), pooling and L2 normalization run here, in numpy.

Guarantees:
- An export is cached only after it reproduced the PyTorch model's embeddings on probe sentences
  (fp32: cosine >= 0.9999 on every probe; int8: >= 0.95), so a model whose layout this module does not
  reproduce (prompts, extra modules, another tokenizer behaviour) is refused, never silently wrong.
- The cache holds one folder per (model files, library versions, export recipe, variant) under
  `$STACKWISE_CACHE/onnx` (default `~/.cache/stackwise/onnx`). A folder appears by one atomic rename
  of a complete temporary folder, and its manifest records the SHA-256 of every file: a process
  killed mid-export leaves only a temporary folder (swept later), and a damaged cached file is found
  at load and exported again. Concurrent exports of one model take a lock, so one process exports
  and the others load its result.

Nothing heavy is imported at module level: onnxruntime, tokenizers and numpy load in `OnnxEncoder`;
torch, sentence-transformers and onnx only when an export is needed.

Over ~400 lines on purpose: the export, its check against PyTorch and the runtime share one cache
layout and one set of probes; apart, the guarantee below would span modules.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InputError, StackwiseError

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

# Part of the cache key: bump it whenever the export recipe below changes what is written.
EXPORT_FORMAT = 1
VARIANTS = ("fp32", "int8")
# Minimum cosine between this module's embedding and sentence-transformers' on every probe.
AGREEMENT = {"fp32": 0.9999, "int8": 0.95}
# Libraries whose version changes the exported file or how it runs.
KEY_LIBRARIES = ("torch", "transformers", "sentence-transformers", "onnx", "onnxruntime", "tokenizers")
# ORT's transformer optimizer knows these architectures as "bert" (optimum maps them the same way).
FUSABLE = {"bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra", "mpnet"}
POOLING = ("mean", "cls", "max", "mean_sqrt_len_tokens", "lasttoken")
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
MANIFEST = "manifest.json"

# Mixed lengths and case, one past the longest max_seq_length in use (truncation), one word (padding).
PROBES = (
    "The quick brown fox jumps over the lazy dog.",
    "Kubernetes",
    "Sydney's bushfires forced thousands of residents to flee on Christmas Day.",
    "What is the capital of Australia?",
    "THE RESERVE BANK LEFT INTEREST RATES UNCHANGED, citing weak growth in the December quarter.",
    "A" + " long sentence about indexing documents into a vector store" * 60,
    "ok",
    "Les modèles d'embedding transforment le texte en vecteurs; 数字 1234.",
)


def cache_root() -> Path:
    """Where exports are cached: `$STACKWISE_CACHE/onnx` (default `~/.cache/stackwise/onnx`)."""
    from .userinput import cache_dir

    return cache_dir() / "onnx"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_key(folder: Path, variant: str) -> str:
    """The cache key of `variant` of the model in `folder` (hex).

    It hashes the export recipe version, the library versions, and every file of the folder: small
    files (configs, tokenizer) by content, large ones (weights) by size and modification time, so the
    key costs milliseconds, not a read of the weights."""
    digest = hashlib.sha256(f"format={EXPORT_FORMAT};variant={variant}".encode())
    for dist in KEY_LIBRARIES:
        digest.update(f";{dist}={_version(dist)}".encode())
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f";{path.relative_to(folder).as_posix()}:{stat.st_size}".encode())
        if stat.st_size <= 4 << 20:
            digest.update(path.read_bytes())
        else:
            digest.update(str(stat.st_mtime_ns).encode())
    return digest.hexdigest()


def export_dir(folder: Path, name: str, variant: str) -> Path:
    """The cache folder that holds (or will hold) `variant` of the model in `folder`."""
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)[-60:].strip("-.") or "model"
    return cache_root() / f"{safe}-{variant}-{model_key(folder, variant)[:20]}"


# --------------------------------------------------------------------------- running


class OnnxEncoder:
    """An exported model on ONNX Runtime: tokenize, run, pool, L2-normalize.

    `encode` sorts the texts by token count and pads each batch only to its own longest text, so a
    batch of short chunks does not pay for the longest chunk of the corpus."""

    def __init__(self, folder: Path, threads: int | None = None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.folder = folder
        self.exported_here = False  # set by `load` when this process ran the export
        self.manifest = json.loads((folder / MANIFEST).read_text())
        self.variant: str = self.manifest["variant"]
        self.dim: int = int(self.manifest["dim"])
        self.pooling: str = self.manifest["pooling"]
        self.lower_case: bool = bool(self.manifest["do_lower_case"])
        self.input_names: list[str] = list(self.manifest["inputs"])
        self.pad_id: int = int(self.manifest["pad_id"])
        self.tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=int(self.manifest["max_seq_length"]))
        options = ort.SessionOptions()
        # STACKWISE_THREADS caps the intra-op pool like torch.set_num_threads; 0 lets ORT use every core.
        options.intra_op_num_threads = threads or 0
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(folder / MODEL_FILE), options, providers=["CPUExecutionProvider"])

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> "np.ndarray":
        import numpy as np

        texts = [t.lower() for t in texts] if self.lower_case else list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encodings = self.tokenizer.encode_batch(texts)
        order = sorted(range(len(texts)), key=lambda i: -len(encodings[i].ids))
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            out[rows] = self._run([encodings[i] for i in rows])
        return out

    def _run(self, encodings: list[Any]) -> "np.ndarray":
        import numpy as np

        width = max(len(e.ids) for e in encodings)
        feeds = {
            "input_ids": np.full((len(encodings), width), self.pad_id, dtype=np.int64),
            "attention_mask": np.zeros((len(encodings), width), dtype=np.int64),
            "token_type_ids": np.zeros((len(encodings), width), dtype=np.int64),
        }
        for row, enc in enumerate(encodings):
            n = len(enc.ids)
            feeds["input_ids"][row, :n] = enc.ids
            feeds["attention_mask"][row, :n] = 1
            feeds["token_type_ids"][row, :n] = enc.type_ids
        hidden = self.session.run(None, {k: feeds[k] for k in self.input_names})[0].astype(np.float32)
        return l2_normalize(pool(hidden, feeds["attention_mask"], self.pooling))


def pool(hidden: "np.ndarray", mask: "np.ndarray", mode: str) -> "np.ndarray":
    """sentence-transformers' Pooling for one mode, on token embeddings [batch, seq, dim] (right padded)."""
    import numpy as np

    weights = mask[..., None].astype(hidden.dtype)
    lengths = mask.sum(axis=1).astype(hidden.dtype)[:, None]
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return np.where(weights > 0, hidden, np.float32(-1e9)).max(axis=1)
    if mode == "lasttoken":
        return hidden[np.arange(len(hidden)), mask.sum(axis=1) - 1]
    summed = (hidden * weights).sum(axis=1)
    if mode == "mean_sqrt_len_tokens":
        return summed / np.sqrt(np.clip(lengths, 1e-9, None))
    return summed / np.clip(lengths, 1e-9, None)


def l2_normalize(vectors: "np.ndarray") -> "np.ndarray":
    import numpy as np

    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.clip(norms, 1e-12, None)).astype(np.float32)


# --------------------------------------------------------------------------- the cache


def load(folder: Path, name: str, variant: str, threads: int | None = None) -> OnnxEncoder:
    """The model in `folder` as an `OnnxEncoder`, exported into the cache first if needed.

    Raises InputError (what, where, fix) when the model cannot be exported faithfully."""
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} is not one of {VARIANTS}")
    target = export_dir(folder, name, variant)
    encoder = _open_valid(target, threads)
    if encoder is not None:
        return encoder
    target.parent.mkdir(parents=True, exist_ok=True)
    with _lock(target.with_name(target.name + ".lock")):
        # Another process may have exported it while this one waited for the lock.
        encoder = _open_valid(target, threads)
        if encoder is not None:
            return encoder
        _discard(target)
        _sweep_stale(target.parent)
        staging = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
        try:
            try:
                export(folder, variant, staging)
            except StackwiseError:
                raise
            except Exception as exc:  # torch's exporter, the optimizer or the quantizer on an unusual model
                raise InputError(
                    f"exporting {name} to ONNX ({variant}) failed: {type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:200] if str(exc) else ''}",
                    where=str(folder),
                    fix="use the embedding backend 'torch' for this model (spec.embedding.backend or "
                        "STACKWISE_EMBED_BACKEND)",
                ) from exc
            try:
                os.rename(staging, target)
            except OSError:  # a process without the lock (no fcntl) got there first: keep its folder
                pass
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    encoder = _open_valid(target, threads)
    if encoder is None:
        raise InputError(
            f"the ONNX export of {name} in {target} failed its own check right after it was written",
            where=str(target),
            fix="check the disk (space, a filesystem that changes files), or use backend 'torch'",
        )
    encoder.exported_here = True
    return encoder


def _open_valid(target: Path, threads: int | None) -> OnnxEncoder | None:
    """The encoder in `target` if the folder is complete and every file matches its manifest."""
    manifest_path = target / MANIFEST
    if not manifest_path.is_file():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
        for file, digest in manifest["sha256"].items():
            if _sha256(target / file) != digest:
                raise ValueError(f"{file} does not match its SHA-256 in the manifest")
        return OnnxEncoder(target, threads)
    except Exception as exc:  # JSON, a missing file, a digest, onnxruntime refusing the file
        log.warning("cached ONNX model %s is damaged (%s): exporting it again", target, str(exc)[:200])
        return None


def _discard(target: Path) -> None:
    """Remove a damaged export: renamed aside first, so no reader sees a half-deleted folder."""
    if target.exists():
        aside = target.with_name(f".trash-{target.name}-{uuid.uuid4().hex[:8]}")
        with contextlib.suppress(OSError):
            os.rename(target, aside)
            shutil.rmtree(aside, ignore_errors=True)


def _sweep_stale(root: Path, older_than_s: float = 3600) -> None:
    """Temporary folders left by killed exports (older than an hour: a live export is minutes)."""
    now = time.time()
    for leftover in [*root.glob(".tmp-*"), *root.glob(".trash-*")]:
        with contextlib.suppress(OSError):
            if now - leftover.stat().st_mtime > older_than_s:
                shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive lock across processes (flock); where there is none, exports may run twice,
    which the atomic rename keeps harmless."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- the export


def export(folder: Path, variant: str, dest: Path) -> None:
    """Export `variant` of the sentence-transformers model in `folder` into the empty folder `dest`.

    Writes model.onnx, tokenizer.json and manifest.json (last); raises InputError when the model's
    layout is not one this module reproduces or the result disagrees with PyTorch on the probes."""
    import warnings

    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from .embeddings import set_torch_threads
    from .quantization import keep_bitsandbytes_out
    from .registry import require

    require("onnx", "local", "exporting an embedding model to ONNX")
    keep_bitsandbytes_out()  # sentence-transformers imports peft, which imports bitsandbytes: see there
    set_torch_threads()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    started = time.perf_counter()
    where = f"ONNX export of {folder}"
    fix = "use the embedding backend 'torch' for this model (spec.embedding.backend or STACKWISE_EMBED_BACKEND)"
    # Eager attention exports as plain MatMul/Softmax, the pattern onnxruntime fuses into one Attention op.
    st = SentenceTransformer(str(folder), device="cpu", model_kwargs={"attn_implementation": "eager"})
    layout = _layout(st, where, fix)
    transformer = st[0]
    model = transformer.auto_model.float().eval()
    st.float()
    tokenizer = st.tokenizer
    tokenizer.backend_tokenizer.save(str(dest / TOKENIZER_FILE))

    accepted = set(_forward_parameters(model))
    inputs = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in accepted]

    class LastHiddenState(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, *args: torch.Tensor) -> torch.Tensor:
            return self.inner(**dict(zip(inputs, args))).last_hidden_state

    sample = tokenizer(["a short sample", "and a somewhat longer second sample"], padding=True, return_tensors="pt")
    args = tuple(sample[n] if n in sample else torch.zeros_like(sample["input_ids"]) for n in inputs)
    raw = dest / "raw.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        _torch_export(LastHiddenState(model), args, inputs, raw)

    reference = st.encode(list(PROBES), batch_size=4, normalize_embeddings=True, convert_to_numpy=True,
                          show_progress_bar=False)
    manifest: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "variant": variant,
        "source": str(folder),
        "dim": int(reference.shape[1]),
        "inputs": inputs,
        "pad_id": int(tokenizer.pad_token_id or 0),
        **layout,
        "libraries": {dist: _version(dist) for dist in KEY_LIBRARIES},
    }
    (dest / MANIFEST).write_text(json.dumps(manifest))  # read by the probe check; rewritten below

    candidates = _candidates(raw, variant, model.config, dest)
    chosen, agreement, failures = None, 0.0, []
    for candidate in candidates:
        os.replace(candidate, dest / MODEL_FILE)
        try:
            vectors = OnnxEncoder(dest).encode(list(PROBES), batch_size=3)
            agreement = float(np.min(np.sum(vectors * reference, axis=1)))
        except Exception as exc:  # an optimizer or quantizer output ORT cannot run
            failures.append(f"{candidate.name}: {str(exc).splitlines()[0][:160]}")
            continue
        if agreement >= AGREEMENT[variant]:
            chosen = candidate.name
            break
        failures.append(f"{candidate.name}: cosine {agreement:.6f} < {AGREEMENT[variant]}")
    if chosen is None:
        raise InputError(
            f"the ONNX {variant} export does not reproduce the PyTorch embeddings ({'; '.join(failures)})",
            where=where,
            fix=fix,
        )
    for leftover in dest.glob("*.onnx"):
        if leftover.name != MODEL_FILE:
            leftover.unlink()
    manifest.update(
        graph=chosen,
        probe_min_cosine=agreement,
        export_s=round(time.perf_counter() - started, 2),
        sha256={name: _sha256(dest / name) for name in (MODEL_FILE, TOKENIZER_FILE)},
    )
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=1))


def _layout(st: Any, where: str, fix: str) -> dict[str, Any]:
    """What the ONNX path must reproduce: Transformer -> Pooling (one mode) [-> Normalize], no prompt."""
    kinds = [type(module).__name__ for module in st]
    if kinds[:2] != ["Transformer", "Pooling"] or any(k != "Normalize" for k in kinds[2:]):
        raise InputError(f"the model's modules {kinds} are not Transformer, Pooling[, Normalize]", where=where, fix=fix)
    if getattr(st, "default_prompt_name", None):
        raise InputError(f"the model prepends the prompt {st.default_prompt_name!r} by default", where=where, fix=fix)
    transformer, pooling = st[0], st[1]
    mode = getattr(pooling, "pooling_mode", None)
    if mode not in POOLING:
        raise InputError(f"pooling mode {mode!r} is not one of {POOLING}", where=where, fix=fix)
    if not getattr(st.tokenizer, "is_fast", False):
        raise InputError("the model has no fast (Rust) tokenizer to export", where=where, fix=fix)
    if not hasattr(transformer, "auto_model"):
        raise InputError("the model's Transformer module has no Hugging Face model to export", where=where, fix=fix)
    return {
        "pooling": mode,
        "max_seq_length": int(st.max_seq_length or st.tokenizer.model_max_length),
        "do_lower_case": bool(getattr(transformer, "do_lower_case", False)),
    }


def _forward_parameters(model: Any) -> list[str]:
    import inspect

    return list(inspect.signature(model.forward).parameters)


def _torch_export(module: Any, args: tuple, inputs: list[str], path: Path) -> None:
    """torch.onnx.export: the TorchScript exporter first (its graph is what onnxruntime's fusions
    match, as optimum's is), torch's dynamo exporter where that one is gone or fails."""
    import torch

    axes = {name: {0: "batch", 1: "sequence"} for name in [*inputs, "last_hidden_state"]}
    try:
        torch.onnx.export(module, args, str(path), dynamo=False, input_names=inputs,
                          output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17)
        return
    except Exception as exc:  # TypeError where dynamo=False was removed; tracing errors on other models
        log.info("TorchScript ONNX export failed (%s); trying the dynamo exporter", str(exc)[:200])
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    shapes = {name: {0: batch, 1: sequence} for name in inputs}
    torch.onnx.export(module, args, str(path), dynamo=True, input_names=inputs, output_names=["last_hidden_state"],
                      dynamic_shapes=shapes, external_data=False)


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def _candidates(raw: Path, variant: str, config: Any, dest: Path) -> list[Path]:
    """Graphs to try, best first; the probe check takes the first that agrees with PyTorch."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if variant == "int8":
        # Per-channel weights: per-tensor int8 drops MiniLM's probe cosine to ~0.90, per-channel keeps ~0.99.
        quantized = dest / "int8.onnx"
        with _quiet_root_logger():  # the quantizer logs a line per tensor, and advice, on the root logger
            quantize_dynamic(str(raw), str(quantized), weight_type=QuantType.QUInt8, per_channel=True,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        return [quantized]
    candidates = []
    if getattr(config, "model_type", None) in FUSABLE:
        try:
            from onnxruntime.transformers import optimizer

            with _quiet_root_logger():
                fused = optimizer.optimize_model(
                    str(raw), model_type="bert", num_heads=int(config.num_attention_heads),
                    hidden_size=int(config.hidden_size), opt_level=1, use_gpu=False,
                )
            fused.save_model_to_file(str(dest / "fused.onnx"))
            candidates.append(dest / "fused.onnx")
        except Exception as exc:  # the optimizer is best effort: the plain graph is still correct
            log.info("onnxruntime's transformer optimizer failed (%s); using the plain graph", str(exc)[:200])
    return [*candidates, raw]
