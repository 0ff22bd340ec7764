"""What answers a request in `stackwise serve`: engines shared by versions, and RAG apps on them.

A *target* is one version on an endpoint, ready to generate: its engine (`stackwise.engine`, one
continuous-batching scheduler per base model), the adapter name on that engine (a LoRA version is
served on its base without merging: every version of one base shares the base's weights and its
batches), and, for a RAG app version (a registered folder holding `rag.yaml`), the app and the
search it retrieves with. Engines are built on first use and kept.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import InputError

RAG_FILE = "rag.yaml"
DEFAULT_CONTEXT = 4096  # tokens a chat request may fill (prompt + answer), under the model's own window
DEFAULT_MAX_BATCH = 16


def serve_context(model_window: int, environ: Any = None) -> int:
    """The context a served model accepts: its window, capped by $STACKWISE_SERVE_MAX_CONTEXT (4096):
    each batched row's KV cache grows to it on a CPU."""
    env = os.environ if environ is None else environ
    raw = (env.get("STACKWISE_SERVE_MAX_CONTEXT") or "").strip()
    cap = DEFAULT_CONTEXT
    if raw:
        if not raw.isdigit() or int(raw) < 16:
            raise InputError(f"$STACKWISE_SERVE_MAX_CONTEXT is {raw!r}, not a whole number of at least 16",
                             where="$STACKWISE_SERVE_MAX_CONTEXT", fix="set it to a number of tokens, e.g. 4096")
        cap = int(raw)
    return min(int(model_window), cap)


@dataclass
class Target:
    """One version, ready to answer."""

    key: str  # NAME:VERSION, what answers name (`model`) and the X-Stackwise-Version header
    version: str
    engine: Any  # stackwise.engine.Engine
    adapter: str | None = None
    app: Any = None  # stackwise.rag.RagApp for a RAG app version
    search: Callable[..., list[Any]] | None = None  # (index, query, k, filter) -> hits, for a RAG app
    vectors: Callable[..., dict[str, Any]] | None = None  # (index, ids) -> stored vectors: a RAG app's mmr rerank
    legacy: Any = None  # an evaluation LM view (tokenizer, context) for the prompt-cutting predict routes

    @property
    def model_name(self) -> str:
        return self.key.rsplit(":", 1)[0]

    @property
    def app_name(self) -> str:
        return self.app.name if self.app is not None else ""


def is_rag_folder(folder: Path) -> bool:
    return (folder / RAG_FILE).is_file()


def _window(model: Any) -> int:
    return int(getattr(model.config, "max_position_embeddings", None) or 2048)


def legacy_view(engine: Any, max_len: int = 512) -> Any:
    """An evaluation `LM` over the engine's tokenizer: its `prepare` cuts a prompt to the context,
    as the predict routes (/invocations, /score, /v1/completions) always have."""
    from .evaluation.lm import LM

    return LM(ref="", pinned="", location="", model=engine.model, tokenizer=engine.tokenizer,
              max_len=min(max_len, _window(engine.model)), chat_template=False)


def max_batch(environ: Any = None) -> int:
    """Rows one engine batches: $STACKWISE_SERVE_MAX_BATCH, else 16 (1: one request at a time)."""
    env = os.environ if environ is None else environ
    raw = (env.get("STACKWISE_SERVE_MAX_BATCH") or "").strip()
    if not raw:
        return DEFAULT_MAX_BATCH
    if not raw.isdigit() or not 1 <= int(raw) <= 256:
        raise InputError(f"$STACKWISE_SERVE_MAX_BATCH is {raw!r}, not a whole number from 1 to 256",
                         where="$STACKWISE_SERVE_MAX_BATCH", fix=f"set it to e.g. {DEFAULT_MAX_BATCH}, or unset it")
    return int(raw)


class Engines:
    """The engines of one server, one per base model folder; adapters are added to their base's."""

    def __init__(self, max_batch_rows: int | None = None):
        self.max_batch = max_batch_rows or max_batch()
        self._by_base: dict[str, Any] = {}
        self._lock = threading.Lock()

    def all(self) -> list[Any]:
        with self._lock:
            return list(self._by_base.values())

    def _engine(self, location: str) -> Any:
        from .engine import Engine

        engine = self._by_base.get(location)
        if engine is None:
            engine = Engine.load(location, max_batch=self.max_batch)
            engine.context_len = serve_context(engine.context_len)
            engine.name = Path(location).name  # what the metrics name it: never a path of this machine
            self._by_base[location] = engine
        return engine

    def for_folder(self, folder: Path, key: str, base_model: str | None = None) -> tuple[Any, str | None]:
        """(engine, adapter name) serving the model saved in `folder` under the name `key`."""
        adapter_config = folder / "adapter_config.json"
        with self._lock:
            if not adapter_config.is_file():
                return self._engine(str(folder)), None
            from .training.models import resolve_base

            recorded = str(json.loads(adapter_config.read_text(encoding="utf-8")).get("base_model_name_or_path") or "")
            if not recorded or (recorded.startswith(("/", ".")) and not Path(recorded).exists()):
                if not base_model:
                    raise InputError(f"the adapter at {folder} names base model {recorded or 'none'}, which is not on "
                                     "this machine", where=str(adapter_config),
                                     fix="set $STACKWISE_BASE_MODEL to the base (a short name, folder or URI)")
                recorded = base_model
            engine = self._engine(resolve_base(recorded).location)
            if key not in engine.adapters:
                engine.add_adapter(key, str(folder))
            return engine, key

    def close(self) -> None:
        for engine in self.all():
            engine.close()


def generator_folder(ref: str, context: Any = None) -> Path:
    """The folder of a RAG app's generator (`models:/NAME@ALIAS`, `models:/NAME/V`, a shipped short
    name, a folder or URI), on this machine."""
    from .evaluation.lm import _in_place, pin
    from .training.models import resolve_base

    pinned = pin(ref, context)
    return Path(_in_place(pinned, context) or resolve_base(pinned).location)


def rag_target(folder: Path, key: str, version: str, engines: Engines, search: Callable[..., list[Any]] | None,
               context: Any = None, vectors: Callable[..., dict[str, Any]] | None = None) -> Target:
    """A RAG app version (`folder/rag.yaml`) on its generator's engine."""
    from .rag import load_rag_file

    app = load_rag_file(folder / RAG_FILE)
    if search is None:
        raise InputError(f"{key} is a RAG app, and this server has no vector store to retrieve from",
                         where=str(folder / RAG_FILE), fix="serve it with `stackwise serve` on the stack that holds "
                         f"index {app.index!r}")
    gen_folder = generator_folder(app.generator, context)
    from .serving import find_model_folder

    gen_folder = find_model_folder(gen_folder, f"{key}'s generator {app.generator}")
    engine, adapter = engines.for_folder(gen_folder, f"{app.generator}@{gen_folder.name}")
    return Target(key=key, version=version, engine=engine, adapter=adapter, app=app, search=search, vectors=vectors,
                  legacy=legacy_view(engine))


def model_target(folder: Path, key: str, version: str, engines: Engines, base_model: str | None = None) -> Target:
    engine, adapter = engines.for_folder(folder, key, base_model)
    return Target(key=key, version=version, engine=engine, adapter=adapter, legacy=legacy_view(engine))
