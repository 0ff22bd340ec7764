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
               context: Any = None, vectors: Callable[..., dict[str, Any]] | None = None,
               generator: Path | None = None, base_model: str | None = None) -> Target:
    """A RAG app version (`folder/rag.yaml`) on its generator's engine: `generator` (a folder on this
    machine, pinned at deploy time: a cloud container) or else the app's own reference resolved now
    through the registry of `context`. `base_model` is the base of a generator that is a LoRA adapter
    trained elsewhere."""
    from .rag import load_rag_file

    app = load_rag_file(folder / RAG_FILE)
    if search is None:
        raise InputError(f"{key} is a RAG app, and this server has no vector store to retrieve from",
                         where=str(folder / RAG_FILE), fix="serve it with `stackwise serve` on the stack that holds "
                         f"index {app.index!r}")
    gen_folder = generator if generator is not None else generator_folder(app.generator, context)
    from .serve_source import find_model_folder

    gen_folder = find_model_folder(gen_folder, f"{key}'s generator {app.generator}")
    if is_rag_folder(gen_folder):
        raise InputError(f"the generator of {key} is itself a RAG app", where=f"{key}: rag.generator",
                         fix="name a model as the generator")
    engine, adapter = engines.for_folder(gen_folder, f"{app.generator}@{gen_folder.name}", base_model)
    return Target(key=key, version=version, engine=engine, adapter=adapter, app=app, search=search, vectors=vectors,
                  legacy=legacy_view(engine))


def model_target(folder: Path, key: str, version: str, engines: Engines, base_model: str | None = None) -> Target:
    engine, adapter = engines.for_folder(folder, key, base_model)
    return Target(key=key, version=version, engine=engine, adapter=adapter, legacy=legacy_view(engine))


# -- RAG apps on cloud endpoints: what `stackwise deploy` pins, what the serving container reads ------
# The container of a cloud endpoint has no stack, no registry and no deploy state: the deploy adapters
# put the stack's job context and the generator, pinned to one registered version's artifact, in its
# environment, and `cloud_rag_target` builds the app's target from them.
ENV_CONTEXT = "STACKWISE_CONTEXT_B64"  # the JobContext as base64 JSON, as the compute adapters send it to jobs
ENV_GENERATOR = "STACKWISE_RAG_GENERATOR_URI"  # the generator's artifact URI (or a shipped short name)
ENV_GENERATOR_BASE = "STACKWISE_RAG_GENERATOR_BASE"  # that version's lineage base (an adapter's base)


def context_b64(context: Any) -> str:
    """A JobContext as the value of $STACKWISE_CONTEXT_B64 (references to secrets, never a value)."""
    import base64

    return base64.b64encode(context.model_dump_json().encode()).decode()


def rag_environment(context: Any, generator_uri: str, generator_base: str | None = None) -> dict[str, str]:
    """The variables a RAG app version's serving container gets, beside the model's own."""
    return {ENV_CONTEXT: context_b64(context), ENV_GENERATOR: generator_uri, ENV_GENERATOR_BASE: generator_base or ""}


MAX_RAG_BYTES = 256 * 1024  # what `stackwise.rag.load_rag_file` accepts


def read_rag_app(artifact_uri: str, where: str) -> Any:
    """The RAG app a registered version holds: `<artifact_uri>/rag.yaml`, read through fsspec."""
    import fsspec

    from .rag import parse_rag

    url = artifact_uri.rstrip("/") + "/" + RAG_FILE
    try:
        # a fresh filesystem instance: a cached one may hold another endpoint's settings
        with fsspec.open(url, "r", encoding="utf-8", skip_instance_cache=True) as handle:
            text = handle.read(MAX_RAG_BYTES + 1)
    except FileNotFoundError:
        raise InputError(f"{where} is registered as a RAG app, and {url} does not exist", where=where,
                         fix="register the app again (stackwise rag register FILE)") from None
    if len(text) > MAX_RAG_BYTES:
        raise InputError(f"{url} is over {MAX_RAG_BYTES:,} characters: not a RAG app file", where=where,
                         fix="register the app again (stackwise rag register FILE)")
    from .userinput import load_yaml

    return parse_rag(load_yaml(text, url, InputError, "RAG app file"), url)


def pin_generator(ref: str, registry: Any) -> tuple[str, str | None]:
    """(artifact URI, lineage base) of the version a `models:/NAME@ALIAS` or `models:/NAME/V`
    generator names now, so a deployed RAG version keeps its generator when the alias moves; any
    other reference (a shipped short name, a URI) as is, with no base."""
    if not ref.startswith("models:/"):
        return ref, None
    from .deploy import ModelRef
    from .rag import KIND, KIND_TAG

    parsed = ModelRef.parse(ref)
    mv = (registry.version(parsed.name, parsed.version) if parsed.version
          else registry.version_by_alias(parsed.name, parsed.alias))
    tags = dict(mv.tags or {})
    if tags.get(KIND_TAG) == KIND:
        raise InputError(f"the generator {ref} is itself a RAG app", where="rag.generator",
                         fix="name a model as the generator")
    return str(mv.source), tags.get("lineage.base") or tags.get("base") or None


def rag_deploy_environment(stack: Any, target: Any, registry: Any = None) -> dict[str, str] | None:
    """What a deploy adapter adds to a RAG app version's container (`target.kind == "rag"`): the
    stack's job context and the generator pinned through the stack's registry (`pin_generator`),
    read from the app's rag.yaml (fsspec, the adapter's credentials). None for a model version."""
    if getattr(target, "kind", "model") != "rag":
        return None
    from .contract import JobContext

    app = read_rag_app(target.artifact_uri, target.key)
    if registry is None:
        from .model_registry import Registry

        registry = Registry(stack)
    uri, base = pin_generator(app.generator, registry)
    return rag_environment(JobContext.from_outputs(stack.name, stack.outputs), uri, base)


def context_from_env(env: Any) -> Any:
    """The JobContext in $STACKWISE_CONTEXT_B64; InputError when it is not one."""
    import base64
    import binascii

    from pydantic import ValidationError

    from .contract import JobContext

    try:
        return JobContext.model_validate_json(base64.b64decode(env[ENV_CONTEXT], validate=True))
    except (binascii.Error, ValueError, ValidationError) as exc:
        raise InputError(f"${ENV_CONTEXT} is not a base64 JobContext ({type(exc).__name__})", where=f"${ENV_CONTEXT}",
                         fix="deploy the version with `stackwise deploy`, which sets it") from None


def cloud_rag_target(folder: Path, key: str, version: str, engines: Engines, env: Any) -> Target:
    """A RAG app version in a cloud serving container: its index on the vector store of the context
    in $STACKWISE_CONTEXT_B64 (opened with this container's identity; secrets resolved here), its
    generator from $STACKWISE_RAG_GENERATOR_URI (fetched once into the model cache, an adapter onto
    $STACKWISE_RAG_GENERATOR_BASE). InputError naming a missing variable."""
    from .rag import StoreSearch, load_rag_file, stored_vectors
    from .vectors import open_store

    for variable in (ENV_CONTEXT, ENV_GENERATOR):
        if not (env.get(variable) or "").strip():
            raise InputError(f"{key} is a RAG app and ${variable} is not set: the container cannot reach its "
                             "index and generator", where=f"${variable}",
                             fix=f"deploy the version with `stackwise deploy`, which sets ${ENV_CONTEXT} and "
                                 f"${ENV_GENERATOR}")
    context = context_from_env(env)
    app = load_rag_file(folder / RAG_FILE)
    store = open_store(context.vector_store)
    if app.index not in store.list_indexes():
        raise InputError(f"{key} retrieves from index {app.index}, which the stack's vector store does not have",
                         where=f"{key}: rag.index", fix=f"index documents into it: stackwise index SOURCE --index "
                                                        f"{app.index} (on stack {context.stack})")
    generator = _fetch_generator(env[ENV_GENERATOR].strip(), context)
    return rag_target(folder, key, version, engines, StoreSearch(store), context, vectors=stored_vectors(store),
                      generator=generator, base_model=(env.get(ENV_GENERATOR_BASE) or "").strip() or None)


def _fetch_generator(uri: str, context: Any) -> Path:
    """The generator's folder on this machine: a folder as is, a URI or short name through
    `resolve_base` (copied once into the model cache)."""
    from .serve_source import local_folder
    from .training.models import resolve_base

    folder = local_folder(uri)
    if folder is not None and folder.is_dir():
        return folder
    try:
        return Path(resolve_base(uri, context.tracking_uri).location)
    except InputError as exc:
        raise InputError(f"the RAG app's generator at {uri} cannot be read: {exc.what}", where=f"${ENV_GENERATOR}",
                         fix="check the URI and that this container's identity may read it") from None


def index_embeddings(target: Target, texts: list[str]) -> tuple[str, list[list[float]], int]:
    """/v1/embeddings in a RAG app's container: `texts` embedded with its index's embedding model
    (the one its retrieval uses); (model name, vectors, tokens)."""
    search = target.search
    if target.app is None or not hasattr(search, "store"):
        raise InputError("this server holds no index to embed for", where="request field 'model'",
                         fix="call /v1/embeddings on a server that serves a RAG app")
    from .embeddings import load_embedder

    name = search.store.model_of(target.app.index)
    if name not in search._embedders:
        search._embedders[name] = load_embedder(name)
    vectors = search._embedders[name].encode(texts)
    return name, [list(map(float, v)) for v in vectors], sum(len(t.split()) for t in texts)
