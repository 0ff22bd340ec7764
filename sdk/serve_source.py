"""A cloud container's one model in `stackwise serve` (model source mode): where it comes from
(`model_source`: `--model`, the platforms' variables, /opt/ml/model), how its folder is found and
fetched (`find_model_folder`, `fetch_model`), and the backend that loads it in the background and
answers from it (`ModelServer`). `stackwise.serving` describes the mode and re-exports these names.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError, SpecError, StackwiseError
from .serve_protocol import (
    DEFAULT_MAX_TOKENS,
    MAX_TOKENS_LIMIT,
    Generation,
    NotReadyError,
    _log,
    error_body,
    generate_on,
    public_text,
)


def local_folder(uri: str) -> Path | None:
    """A file:// URI or a path -> the folder on this machine, else None."""
    if "://" in uri and not uri.startswith("file://"):
        return None
    return Path(uri.removeprefix("file://")).expanduser()


# -- model source: one model, from a cloud container's model folder ------------------------------
SAGEMAKER_MODEL_DIR = Path("/opt/ml/model")
# The variables that name a model folder or URI, in precedence order: stackwise's own (the Azure ML
# deploy adapter sets it), then the platforms'. Each platform sets only its own, so the order
# matters only when someone sets several by hand; a variable beats the SageMaker folder because a
# variable is set on purpose, while /opt/ml/model may just exist in an image.
SOURCE_VARIABLES = (("STACKWISE_MODEL_URI", "stackwise"), ("AIP_STORAGE_URI", "vertex"),
                    ("AZUREML_MODEL_DIR", "azureml"))


@dataclass(frozen=True)
class ModelSource:
    """Where the one served model comes from: a folder or an fsspec URI, and who said so."""

    uri: str
    origin: str  # "--model", "$AIP_STORAGE_URI", ..., or "/opt/ml/model": named in messages
    platform: str  # "explicit", "stackwise", "vertex", "azureml" or "sagemaker"


def model_source(explicit: str | None = None, environ: Mapping[str, str] | None = None,
                 sagemaker_dir: Path = SAGEMAKER_MODEL_DIR) -> ModelSource | None:
    """The model to serve in a cloud container, or None (serve the local stack's deploy state).

    Precedence: `explicit` (`stackwise serve --model`), `$STACKWISE_MODEL_URI`, `$AIP_STORAGE_URI`
    (Vertex AI copies the Model's artifactUri there), `$AZUREML_MODEL_DIR` (Azure ML mounts a
    deployment's registered model there), then `sagemaker_dir` when it is a non-empty folder
    (SageMaker extracts ModelDataUrl's model.tar.gz, or copies the ModelDataSource prefix, to
    /opt/ml/model and sets no variable naming it).
    """
    if explicit:
        return ModelSource(explicit, "--model", "explicit")
    env = os.environ if environ is None else environ
    for variable, platform in SOURCE_VARIABLES:
        value = (env.get(variable) or "").strip()
        if value:
            return ModelSource(value, f"${variable}", platform)
    try:
        if sagemaker_dir.is_dir() and any(sagemaker_dir.iterdir()):
            return ModelSource(str(sagemaker_dir), str(sagemaker_dir), "sagemaker")
    except OSError:  # there but unreadable: serve it, and let loading say why it fails
        return ModelSource(str(sagemaker_dir), str(sagemaker_dir), "sagemaker")
    return None


def _is_model(folder: Path) -> bool:
    """A saved model, a LoRA adapter, or a RAG app version (rag.yaml: served with its generator)."""
    return any((folder / name).is_file() for name in ("config.json", "adapter_config.json", "rag.yaml"))


def find_model_folder(folder: Path, origin: str = "--model") -> Path:
    """`folder` if it holds a saved model or LoRA adapter, else its one subfolder that does (a
    model.tar.gz with a top-level folder; Azure ML mounts a model registered from a folder as
    `$AZUREML_MODEL_DIR/<folder name>`). Raises InputError saying what is there instead."""
    if not folder.is_dir():
        raise InputError(f"the model folder {folder} does not exist", where=origin,
                         fix="mount or copy the model there (a folder written by save_pretrained)")
    if _is_model(folder):
        return folder
    entries = sorted(folder.iterdir())
    inner = [d for d in entries if d.is_dir() and _is_model(d)]
    if len(inner) == 1:
        return inner[0]
    if inner:
        raise InputError(f"{folder} holds {len(inner)} models ({', '.join(d.name for d in inner)}); one is served",
                         where=origin, fix="point it at one of them (stackwise serve --model FOLDER)")
    held = ", ".join(e.name + ("/" if e.is_dir() else "") for e in entries[:8]) + (" ..." if len(entries) > 8 else "")
    raise InputError(f"{folder} is not a model folder: it has no config.json (a saved model) or adapter_config.json "
                     f"(a LoRA adapter) or rag.yaml (a RAG app), nor has one subfolder with one "
                     f"(it holds: {held or 'nothing'})",
                     where=origin, fix="point it at a folder written by save_pretrained (SageMaker: the top level of "
                     "model.tar.gz; Vertex AI: the Model's artifactUri; Azure ML: the registered model's folder)")


def fetch_model(source: ModelSource) -> Path:
    """The model folder on this machine: a local folder as is, a URI (gs://, s3://, az://, ...)
    copied once through fsspec into the model cache (as `stackwise.training.models` fetches bases)."""
    folder = local_folder(source.uri)
    if folder is None:
        from .training.models import resolve_base

        try:
            folder = Path(resolve_base(source.uri).location)
        except InputError as exc:
            raise InputError(f"the model at {source.uri} cannot be read: {exc.what}", where=source.origin,
                             fix="check the URI and that this container's identity may read it") from None
    return find_model_folder(folder, source.origin)


def load_model(folder: Path, base_model: str | None = None) -> Any:
    """Load a model folder with the evaluation loader (`stackwise.evaluation.lm.load`: a LoRA adapter
    is merged onto its base, a full model loads directly). An adapter whose recorded base is a path
    missing on this machine (it was trained elsewhere) goes onto `base_model` instead (a short
    name, folder or URI, resolved like a fine-tuning base): the deploy adapters pass the version's
    lineage base as $STACKWISE_BASE_MODEL."""
    from .evaluation.lm import load

    adapter = folder / "adapter_config.json"
    if base_model and adapter.is_file():
        recorded = str(json.loads(adapter.read_text(encoding="utf-8")).get("base_model_name_or_path") or "")
        if not recorded or (recorded.startswith(("/", ".")) and not Path(recorded).exists()):
            folder = _adapter_on(folder, base_model)
    return load(str(folder), chat_template=False)


def _adapter_on(adapter: Path, base_model: str) -> Path:
    """A throwaway view of `adapter` (links to its files) whose adapter_config.json names
    `base_model` as resolved here; the model folder itself may be read-only."""
    import tempfile

    from .training.models import resolve_base

    location = resolve_base(base_model).location
    view = Path(tempfile.mkdtemp(prefix="stackwise-adapter-"))
    for item in adapter.iterdir():
        if item.name != "adapter_config.json":
            (view / item.name).symlink_to(item.resolve())
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = location
    (view / "adapter_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return view


class ModelServer:
    """One model from `source`, loaded once in a background thread (`start`), so the server listens
    at once and its readiness routes answer 503 ("loading") until the model is in memory, then 200;
    a failed load keeps answering 503 with the error, which is logged once.

    A RAG app version (the folder holds rag.yaml) is served with the generator and the vector store
    its deploy put in `environ` (`stackwise.serve_targets.cloud_rag_target`: $STACKWISE_CONTEXT_B64,
    $STACKWISE_RAG_GENERATOR_URI, $STACKWISE_RAG_GENERATOR_BASE); `environ` defaults to os.environ."""

    def __init__(self, source: ModelSource, name: str | None = None, version: str = "",
                 base_model: str | None = None, max_tokens_limit: int = MAX_TOKENS_LIMIT,
                 environ: Mapping[str, str] | None = None):
        self.source = source
        self.environ = os.environ if environ is None else environ
        self.key = name or Path(source.uri.rstrip("/")).name or "model"
        self.version = version
        self.base_model = base_model
        self.max_tokens_limit = max_tokens_limit
        self.state = "loading"  # -> "ready" or "failed"
        self.error: StackwiseError | None = None
        self.folder: Path | None = None
        self.load_seconds: float | None = None
        self._lm: Any = None  # the prompt-cutting view of the predict routes (LM.prepare)
        self._target: Any = None
        self.engines: Any = None
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._done = threading.Event()

    def start(self) -> None:
        """Begin loading in the background (once; later calls do nothing)."""
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self.load, name="stackwise-model-loader", daemon=True)
                self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the load ended (ready or failed); False on timeout."""
        return self._done.wait(timeout)

    def load(self) -> None:
        started = time.perf_counter()
        try:
            from .serve_targets import Engines, cloud_rag_target, is_rag_folder, model_target

            folder = fetch_model(self.source)
            self.engines = Engines()
            if is_rag_folder(folder):
                target = cloud_rag_target(folder, self.key, self.version, self.engines, self.environ)
            else:
                target = model_target(folder, self.key, self.version, self.engines, self.base_model)
        except Exception as exc:  # noqa: BLE001 - any failure is reported by the routes, never raised into uvicorn
            self.error = exc if isinstance(exc, StackwiseError) else InputError(
                f"cannot load the model from {self.source.uri}: {type(exc).__name__}: {exc}", where=self.source.origin,
                fix="check that the folder holds a complete save_pretrained model (and its base, for an adapter)")
            self.state = "failed"
            _log(f"error: {self.error}")
        else:
            self.folder, self._target, self._lm = folder, target, target.legacy
            self.load_seconds = round(time.perf_counter() - started, 2)
            self.state = "ready"
            _log(f"{self.key} loaded from {folder} ({self.source.origin}) in {self.load_seconds} s")
        finally:
            self._done.set()

    def readiness(self) -> tuple[int, dict[str, Any]]:
        body: dict[str, Any] = {"status": self.state, "model": self.key, "source": public_text(self.source.uri),
                                "origin": public_text(self.source.origin)}
        if self.error is not None:
            body.update(error_body(self.error))
        return (200 if self.state == "ready" else 503), body

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": self.key, "object": "model", "owned_by": "stackwise", "traffic": 100,
                                             "kind": self.kind(),
                                             "base_model": self.base_model and public_text(self.base_model),
                                             "state": self.state}]}

    def kind(self) -> str:
        """What /v1/models says this is: `rag` for a RAG app version (known from its folder), else `model`."""
        from .serve_targets import is_rag_folder

        if self._target is not None:
            return "rag" if self._target.app is not None else "model"
        folder = self.folder or local_folder(self.source.uri)
        try:
            return "rag" if folder is not None and is_rag_folder(folder) else "model"
        except OSError:
            return "model"

    def target(self, model: str | None = None, user: str | None = None) -> Any:
        """The one model's target (`model` and `user` route nothing: there is one model); raises
        while it loads (NotReadyError) or after it failed (InputError)."""
        if self.error is not None:
            raise InputError(f"the model failed to load: {self.error.what}", where=self.error.where, fix=self.error.fix)
        if self.state != "ready":
            raise NotReadyError(f"the model is still loading from {self.source.uri}", where=self.source.origin,
                                fix="retry once GET /ping (or /health) answers 200")
        return self._target

    def embed(self, model: str | None, texts: list[str]) -> tuple[str, list[list[float]], int]:
        """/v1/embeddings: a RAG app's container embeds with its index's embedding model; a model's has none."""
        target = self._target
        if target is None or target.app is None:
            raise SpecError("this server serves one model and holds no index to embed for" if target is not None
                            else "the server is still loading (or failed to load)", where="request field 'model'",
                            fix="call /v1/embeddings on `stackwise serve` of the stack that holds the index, or on "
                                "a RAG app's endpoint once GET /health answers 200")
        from .serve_targets import index_embeddings

        return index_embeddings(target, texts)

    def queue(self) -> list[tuple[dict[str, str], int, int]]:
        from .serve_metrics import QueueLabels

        engines = self.engines.all() if self.engines is not None else []
        return [(QueueLabels(model_name=self.key, version=self.version, app=""), e.running, e.waiting) for e in engines]

    def generate(self, prompts: list[str], max_tokens: int = DEFAULT_MAX_TOKENS, user: str | None = None,
                 model: str | None = None) -> Generation:
        """Generate each prompt with the one model; the answer names the model that answered."""
        target = self.target(model, user)
        return generate_on(target, prompts, max_tokens, self.max_tokens_limit, self.key,
                           extra={"source": self.source.origin})
