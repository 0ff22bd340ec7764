"""`stackwise serve`: the local stack's endpoint, and the server inside the serving image.

Two modes, one server (FastAPI + uvicorn, the `serve` extra):

- **Deploy state** (the local stack). `stackwise deploy` records the endpoint's versions in
  `<state dir>/endpoints/<endpoint>.json` (written atomically): each with its artifact folder, base
  model and traffic percent. The server rereads that file whenever it changes, so a new deploy or
  a traffic change takes effect on the next request with no restart. Each request is routed to
  one version by the traffic weights: with a `user`, by a hash of it (a user always meets the same
  version while the split stands); without, by smooth weighted round robin, which is deterministic
  and exact (a 90/10 split answers exactly 9 of every 10 requests from the first version). `model`
  pins a version (`chat:2`). Versions load on first use (a LoRA adapter onto its base model,
  merged) and stay loaded.
- **Model source** (a cloud container). One model, from the folder or URI the platform hands the
  container (`model_source`: `--model`, `$STACKWISE_MODEL_URI`, `$AIP_STORAGE_URI`,
  `$AZUREML_MODEL_DIR`, `/opt/ml/model`, in that order), loaded once in the background at
  startup; readiness answers 503 until it is loaded, then 200. No deploy state is read.

Routes, in both modes: `GET /health` and `GET /ping` (readiness: 200 when a request can be
answered), `GET /` (liveness: 200 while the process serves), `GET /v1/models`, and one predict
handler at `POST /v1/completions`, `/invocations` (SageMaker), `/score` (the Azure ML inference
server's route) and `$AIP_PREDICT_ROUTE` (Vertex AI; `$AIP_HEALTH_ROUTE` is a readiness route).
The predict handler answers in the shape it was asked in (`parse_predict`):
`{"prompt": ..., "max_tokens": ...}` -> an OpenAI completion; `{"inputs": ..., "parameters": ...}`
-> `[{"generated_text": ...}]` (Hugging Face DLCs); `{"instances": [...], "parameters": ...}` ->
`{"predictions": [...]}` (Vertex AI). Decoding is greedy (deterministic; sampling parameters such
as `temperature` are accepted and ignored). The answer names the version in the
`X-Stackwise-Version` header (and in `model` for the OpenAI shape). Errors are JSON
`{"error": {"message", "type"}}`: 400 for a body that is not JSON or pins an unknown version, 422
for JSON of the wrong shape, 503 while nothing can answer (no traffic, model loading or failed).
A foreground server, rather than a process that `deploy` starts in the background, leaves no
orphan process to find and stop, and is what a container or a process supervisor runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from .contract import EndpointOutput
from .deploy import DeployBackend, Deployment, DeployTarget, Variant, variant_name, version_key
from .errors import InputError, SpecError, StackwiseError
from .paths import state_dir

DEFAULT_ENDPOINT = "local"
DEFAULT_PORT = 8080


def state_path(endpoint: str) -> Path:
    return state_dir() / "endpoints" / f"{endpoint}.json"


def local_folder(uri: str) -> Path | None:
    """A file:// URI or a path -> the folder on this machine, else None."""
    if "://" in uri and not uri.startswith("file://"):
        return None
    return Path(uri.removeprefix("file://")).expanduser()


def read_state(endpoint: str) -> Deployment:
    path = state_path(endpoint)
    if not path.is_file():
        return Deployment(endpoint=endpoint, cloud="local", state="absent", url=None)
    data = json.loads(path.read_text(encoding="utf-8"))
    return Deployment(endpoint=data["endpoint"], cloud="local", state=data["state"], url=data.get("url"),
                      variants=[Variant(**v) for v in data["variants"]])


def write_state(dep: Deployment) -> None:
    path = state_path(dep.endpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    data = {"endpoint": dep.endpoint, "state": dep.state, "url": dep.url, "updated": time.time(),
            "variants": [asdict(v) for v in dep.variants]}
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(tmp, path)  # a server reading it sees the old or the new state, never half


class LocalDeploy(DeployBackend):
    """The local endpoint: deploy state under the state folder, served by `stackwise serve`."""

    cloud = "local"

    def endpoint_output(self, endpoint: str | None = None) -> Any:
        if self.stack.outputs.endpoints:
            return super().endpoint_output(endpoint)
        # The local stack always has one endpoint; its URL is where `stackwise serve` listens by default.
        if endpoint not in (None, DEFAULT_ENDPOINT):
            from .errors import ConfigError

            raise ConfigError(f"stack {self.stack.name!r} has no endpoint named {endpoint!r}",
                              where=f"stack {self.stack.name}", fix=f"the local stack's endpoint is {DEFAULT_ENDPOINT!r}")
        return EndpointOutput(name=DEFAULT_ENDPOINT, url=f"http://127.0.0.1:{DEFAULT_PORT}/v1")

    def describe(self, endpoint: str | None = None) -> Deployment:
        out = self.endpoint_output(endpoint)
        dep = read_state(out.name)
        dep.url = dep.url or out.url
        return dep

    @staticmethod
    def _check_artifact(target: DeployTarget) -> None:
        folder = local_folder(target.artifact_uri)
        if folder is None or not folder.is_dir():
            raise SpecError(f"{target.key} lives at {target.artifact_uri}, which is not a folder on this machine",
                            where=f"model registry, {target.key} source",
                            fix="deploy versions of the local stack's registry (`stackwise models show NAME`)")
        if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
            raise SpecError(f"{target.key} at {folder} is not a saved model or adapter (no config.json)",
                            where=str(folder), fix="register a folder written by save_pretrained")

    def deploy(self, targets: list[DeployTarget], traffic: dict[str, int], endpoint: str | None = None) -> Deployment:
        current = self.describe(endpoint)
        new, split = self.plan(current, targets, traffic)
        for target in new:
            self._check_artifact(target)
        variants = [Variant(model=v.model, version=v.version, traffic=split[v.key], state="ready", name=v.name,
                            artifact_uri=v.artifact_uri, base_model=v.base_model) for v in current.variants]
        variants += [Variant(model=t.model, version=t.version, traffic=split[t.key], state="ready",
                             name=variant_name(t.model, t.version), artifact_uri=t.artifact_uri,
                             base_model=t.base_model) for t in new]
        dep = Deployment(endpoint=current.endpoint, cloud="local", state="ready", url=current.url, variants=variants)
        if new or dep.traffic != current.traffic or current.state == "absent":
            write_state(dep)
        return dep

    def undeploy(self, key: str, endpoint: str | None = None) -> Deployment:
        current = self.describe(endpoint)
        if self.check_removable(current, key) is None:
            return current
        current.variants = [v for v in current.variants if v.key != key]
        write_state(current)
        return current


# -- routing -------------------------------------------------------------------------------------
class Router:
    """Picks a version per request by traffic weight; deterministic (see the module docstring)."""

    def __init__(self, traffic: dict[str, int]):
        self.weights = {k: w for k, w in traffic.items() if w > 0}
        self._current = {k: 0 for k in self.weights}
        self._lock = threading.Lock()

    def pick(self, user: str | None = None) -> str:
        if not self.weights:
            raise SpecError("no version on the endpoint carries traffic", where="the local endpoint",
                            fix="stackwise deploy NAME:VERSION")
        if user is not None:
            point = int.from_bytes(hashlib.sha256(user.encode()).digest()[:8], "big") % sum(self.weights.values())
            for key, weight in self.weights.items():
                if point < weight:
                    return key
                point -= weight
        with self._lock:  # smooth weighted round robin (as nginx): exact shares, evenly interleaved
            total = sum(self.weights.values())
            for key, weight in self.weights.items():
                self._current[key] += weight
            best = max(self._current, key=lambda k: self._current[k])
            self._current[best] -= total
            return best


# -- requests and answers: one predict handler, three body shapes -------------------------------
DEFAULT_MAX_TOKENS = 16
MAX_TOKENS_LIMIT = 256
ACCEPTED = ('{"prompt": "...", "max_tokens": 16} (OpenAI), {"inputs": "...", "parameters": {"max_new_tokens": 16}} '
            '(Hugging Face, SageMaker) or {"instances": ["..."], "parameters": {"max_tokens": 16}} (Vertex AI)')


class RequestError(InputError):
    """A request the server cannot answer as sent: 400 when the body is not JSON, 422 when it is
    JSON of the wrong shape."""

    def __init__(self, what: str, *, status: int = 422, where: str | None = "the request body", fix: str | None = None):
        self.status = status
        super().__init__(what, where=where, fix=fix or f"send one of {ACCEPTED}")


class NotReadyError(StackwiseError, RuntimeError):
    """The model is still loading: answered 503 with Retry-After."""


class CompletionRequest(BaseModel):
    """POST /v1/completions (the OpenAI fields stackwise uses, plus `user` and `model`)."""

    prompt: str | list[str]
    max_tokens: int = Field(DEFAULT_MAX_TOKENS, ge=1)
    user: str | None = None  # sticky routing: one user meets one version while the split stands
    model: str | None = None  # pin a version on the endpoint: NAME:VERSION


@dataclass
class PredictRequest:
    """A request body, whatever its shape; the answer takes the same shape."""

    shape: str  # "openai" (prompt), "hf" (inputs) or "vertex" (instances)
    prompts: list[str]
    max_tokens: int = DEFAULT_MAX_TOKENS
    user: str | None = None
    model: str | None = None


@dataclass
class Generation:
    """What one request generated: the version that answered and one text per prompt."""

    key: str
    version: str
    texts: list[str]
    latency_ms: float
    endpoint: str
    extra: dict[str, Any] = field(default_factory=dict)


def _count(value: Any, name: str) -> int:
    if value is None:
        return DEFAULT_MAX_TOKENS
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RequestError(f"{name} must be a whole number of at least 1, not {value!r}",
                           where=f"request field {name!r}",
                           fix=f"e.g. \"{name}\": 16 (at most {MAX_TOKENS_LIMIT} are generated)")
    return value


def _prompts(value: Any, name: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise RequestError(f"{name} must be a string or a non-empty list of strings, not {type(value).__name__}",
                       where=f"request field {name!r}")


def parse_predict(raw: bytes | str) -> PredictRequest:
    """A request body (bytes of JSON) -> PredictRequest. Raises RequestError (400 or 422).

    - `{"prompt": str | [str], "max_tokens": n, "user": ..., "model": ...}`: OpenAI completions;
    - `{"inputs": str | [str], "parameters": {"max_new_tokens": n}}`: Hugging Face DLCs (SageMaker);
    - `{"instances": [str | {"prompt" or "inputs": str}], "parameters": {"max_tokens" or
      "max_new_tokens": n}}`: Vertex AI.
    Other parameters (temperature, top_p, ...) are accepted and ignored: decoding is greedy.
    """
    try:
        body = json.loads(raw or b"")
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"the request body is not JSON ({exc})", status=400) from None
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object, not {type(body).__name__}")
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise RequestError("parameters must be a JSON object", where="request field 'parameters'")
    limit_name = "max_new_tokens" if "max_new_tokens" in params else "max_tokens"
    limit = params.get(limit_name)
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise RequestError("instances must be a non-empty list", where="request field 'instances'")
        prompts = []
        for i, item in enumerate(instances):
            text = item.get("prompt", item.get("inputs")) if isinstance(item, dict) else item
            if not isinstance(text, str):
                raise RequestError(f"instance {i} must be a string or an object with a string 'prompt'",
                                   where=f"request field 'instances[{i}]'")
            prompts.append(text)
        return PredictRequest("vertex", prompts, _count(limit, f"parameters.{limit_name}"))
    if "inputs" in body:
        return PredictRequest("hf", _prompts(body["inputs"], "inputs"), _count(limit, f"parameters.{limit_name}"))
    if "prompt" in body:
        from pydantic import ValidationError

        try:
            req = CompletionRequest.model_validate(body)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            raise RequestError(f"invalid completion request: {problems}") from None
        return PredictRequest("openai", _prompts(req.prompt, "prompt"), req.max_tokens, user=req.user, model=req.model)
    raise RequestError(f"the request body has none of the fields prompt, inputs or instances (it has: "
                       f"{', '.join(sorted(body)) or 'none'})")


def render(request: PredictRequest, gen: Generation) -> Any:
    """The answer, in the request's shape."""
    if request.shape == "vertex":
        return {"predictions": gen.texts}
    if request.shape == "hf":  # as Hugging Face's text-generation containers answer (generated text only)
        return [{"generated_text": text} for text in gen.texts]
    seed = f"{time.time_ns()}{request.prompts[0]}"
    return {"id": f"cmpl-{hashlib.sha256(seed.encode()).hexdigest()[:24]}", "object": "text_completion",
            "created": int(time.time()), "model": gen.key,
            "choices": [{"index": i, "text": text, "finish_reason": "length"} for i, text in enumerate(gen.texts)],
            "stackwise": {"endpoint": gen.endpoint, "version": gen.version, "latency_ms": gen.latency_ms, **gen.extra}}


def error_body(exc: BaseException) -> dict[str, Any]:
    return {"error": {"message": str(exc), "type": type(exc).__name__}}


def _log(message: str) -> None:
    # One line per event on stderr: what a container platform collects (CloudWatch, Cloud Logging, ...).
    print(f"stackwise serve: {message}", file=sys.stderr, flush=True)


# -- deploy state: the local stack's endpoint ----------------------------------------------------
class Server:
    """What `stackwise serve` runs on the local stack: the endpoint's state, reloaded when it
    changes, and its versions' models."""

    def __init__(self, endpoint: str, max_tokens_limit: int = MAX_TOKENS_LIMIT):
        self.endpoint = endpoint
        self.max_tokens_limit = max_tokens_limit
        self._mtime: float | None = None
        self.deployment = Deployment(endpoint=endpoint, cloud="local", state="absent")
        self.router = Router({})
        self._models: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._generate_lock = threading.Lock()

    def refresh(self) -> Deployment:
        path = state_path(self.endpoint)
        mtime = path.stat().st_mtime_ns if path.is_file() else None
        with self._lock:
            if mtime != self._mtime:
                self.deployment = read_state(self.endpoint)
                self.router = Router(self.deployment.traffic)
                self._mtime = mtime
            return self.deployment

    def model(self, variant: Variant) -> Any:
        cache_key = f"{variant.key}|{variant.artifact_uri}"
        with self._generate_lock:
            if cache_key not in self._models:
                from .evaluation.lm import load

                folder = local_folder(variant.artifact_uri or "")
                if folder is None or not folder.is_dir():
                    raise InputError(f"{variant.key}'s artifact {variant.artifact_uri} is gone", where=str(folder),
                                     fix=f"deploy another version: stackwise deploy {variant.model}:VERSION")
                self._models[cache_key] = load(str(folder), chat_template=False)
            return self._models[cache_key]

    def readiness(self) -> tuple[int, dict[str, Any]]:
        """200 once a version carries traffic, else 503."""
        dep = self.refresh()
        ready = any(v.traffic for v in dep.variants)
        return (200 if ready else 503), {"status": "ok" if ready else "empty", "endpoint": self.endpoint,
                                         "traffic": dep.traffic}

    def models(self) -> dict[str, Any]:
        dep = self.refresh()
        return {"object": "list", "data": [{"id": v.key, "object": "model", "owned_by": "stackwise",
                                             "traffic": v.traffic, "base_model": v.base_model} for v in dep.variants]}

    def generate(self, prompts: list[str], max_tokens: int = DEFAULT_MAX_TOKENS, user: str | None = None,
                 model: str | None = None) -> Generation:
        """Route (or pin, with `model`) to one version and generate each prompt with it."""
        dep = self.refresh()
        if model:
            from .deploy import ModelRef

            ref = ModelRef.parse(model)
            key = str(ref) if ref.version else None
            if key is None or dep.variant(key) is None:
                raise SpecError(f"{model} is not on endpoint {self.endpoint}", where="request field 'model'",
                                fix="pin a version listed by GET /v1/models, e.g. " +
                                    (", ".join(dep.traffic) or "none deployed"))
        else:
            key = self.router.pick(user)
        variant = dep.variant(key)
        assert variant is not None
        lm = self.model(variant)
        n = max(1, min(int(max_tokens), self.max_tokens_limit))
        started = time.perf_counter()
        with self._generate_lock:
            texts = [lm.generate(prompt, n) for prompt in prompts]
        return Generation(key=key, version=variant.version, texts=texts, endpoint=self.endpoint,
                          latency_ms=round(1000 * (time.perf_counter() - started), 1))

    def complete(self, prompt: str, max_tokens: int = DEFAULT_MAX_TOKENS, user: str | None = None,
                 model: str | None = None) -> dict[str, Any]:
        """One OpenAI-style completion, as POST /v1/completions answers it."""
        return render(PredictRequest("openai", [prompt], max_tokens, user, model),
                      self.generate([prompt], max_tokens, user, model))


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
    return (folder / "config.json").is_file() or (folder / "adapter_config.json").is_file()


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
                     f"(a LoRA adapter), nor has one subfolder with either (it holds: {held or 'nothing'})",
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
    a failed load keeps answering 503 with the error, which is logged once."""

    def __init__(self, source: ModelSource, name: str | None = None, version: str = "",
                 base_model: str | None = None, max_tokens_limit: int = MAX_TOKENS_LIMIT):
        self.source = source
        self.key = name or Path(source.uri.rstrip("/")).name or "model"
        self.version = version
        self.base_model = base_model
        self.max_tokens_limit = max_tokens_limit
        self.state = "loading"  # -> "ready" or "failed"
        self.error: StackwiseError | None = None
        self.folder: Path | None = None
        self.load_seconds: float | None = None
        self._lm: Any = None
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._generate_lock = threading.Lock()
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
            folder = fetch_model(self.source)
            lm = load_model(folder, self.base_model)
        except Exception as exc:  # noqa: BLE001 - any failure is reported by the routes, never raised into uvicorn
            self.error = exc if isinstance(exc, StackwiseError) else InputError(
                f"cannot load the model from {self.source.uri}: {type(exc).__name__}: {exc}", where=self.source.origin,
                fix="check that the folder holds a complete save_pretrained model (and its base, for an adapter)")
            self.state = "failed"
            _log(f"error: {self.error}")
        else:
            self.folder, self._lm = folder, lm
            self.load_seconds = round(time.perf_counter() - started, 2)
            self.state = "ready"
            _log(f"{self.key} loaded from {folder} ({self.source.origin}) in {self.load_seconds} s")
        finally:
            self._done.set()

    def readiness(self) -> tuple[int, dict[str, Any]]:
        body: dict[str, Any] = {"status": self.state, "model": self.key, "source": self.source.uri,
                                "origin": self.source.origin}
        if self.error is not None:
            body.update(error_body(self.error))
        return (200 if self.state == "ready" else 503), body

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": self.key, "object": "model", "owned_by": "stackwise", "traffic": 100,
                                             "base_model": self.base_model, "state": self.state}]}

    def generate(self, prompts: list[str], max_tokens: int = DEFAULT_MAX_TOKENS, user: str | None = None,
                 model: str | None = None) -> Generation:
        """Generate each prompt with the one model. `user` and `model` route nothing here (there is
        one model); the answer names the model that answered."""
        if self.error is not None:
            raise InputError(f"the model failed to load: {self.error.what}", where=self.error.where, fix=self.error.fix)
        if self.state != "ready":
            raise NotReadyError(f"the model is still loading from {self.source.uri}", where=self.source.origin,
                                fix="retry once GET /ping (or /health) answers 200")
        n = max(1, min(int(max_tokens), self.max_tokens_limit))
        started = time.perf_counter()
        with self._generate_lock:
            texts = [self._lm.generate(prompt, n) for prompt in prompts]
        return Generation(key=self.key, version=self.version, texts=texts, endpoint=self.key,
                          latency_ms=round(1000 * (time.perf_counter() - started), 1),
                          extra={"source": self.source.origin})


# -- the app -------------------------------------------------------------------------------------
HEALTH_ROUTES = ("/health", "/ping")  # stackwise's; SageMaker's
PREDICT_ROUTES = ("/v1/completions", "/invocations", "/score")  # OpenAI's; SageMaker's; the Azure ML inference server's


def create_app(endpoint: str = DEFAULT_ENDPOINT, *, source: ModelSource | None = None,
               environ: Mapping[str, str] | None = None) -> Any:
    """The FastAPI app: `endpoint`'s deployed versions, or (with `source`) the one model there.

    `environ` (default `os.environ`) gives Vertex AI's `AIP_HEALTH_ROUTE` and `AIP_PREDICT_ROUTE`
    (added to the routes) and, with a source, `STACKWISE_MODEL`, `STACKWISE_MODEL_VERSION` (the
    name the answers carry) and `STACKWISE_BASE_MODEL` (an adapter's base). With a source, the
    model starts loading when the app starts (its lifespan).
    """
    from contextlib import asynccontextmanager

    from .registry import require

    require("fastapi", "serve", "stackwise serve")
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    env = os.environ if environ is None else environ
    backend: Server | ModelServer
    if source is None:
        backend = Server(endpoint)
        title = f"stackwise endpoint {endpoint}"
    else:
        name, version = env.get("STACKWISE_MODEL") or "", env.get("STACKWISE_MODEL_VERSION") or ""
        backend = ModelServer(source, name=version_key(name, version) if name and version else (name or None),
                              version=version, base_model=env.get("STACKWISE_BASE_MODEL") or None)
        title = f"stackwise model {backend.key}"

    @asynccontextmanager
    async def lifespan(app: Any):
        if isinstance(backend, ModelServer):
            backend.start()
        yield

    app = FastAPI(title=title, lifespan=lifespan)
    app.state.server = backend

    def error(exc: BaseException, status: int, headers: dict[str, str] | None = None) -> Any:
        return JSONResponse(error_body(exc), status_code=status, headers=headers)

    # Health routes are async: they run on the event loop, so a queue of generations (in the thread
    # pool) never delays them past a platform's probe timeout (SageMaker: 2 s).
    async def ready() -> Any:
        status, body = backend.readiness()
        return JSONResponse(body, status_code=status)

    async def alive() -> Any:
        return {"status": "alive"}

    async def models() -> Any:
        return backend.models()

    async def predict(request: Request) -> Any:
        try:
            parsed = parse_predict(await request.body())
        except RequestError as exc:
            return error(exc, exc.status)
        try:
            gen = await run_in_threadpool(backend.generate, parsed.prompts, parsed.max_tokens, parsed.user,
                                          parsed.model)
        except NotReadyError as exc:
            return error(exc, 503, {"Retry-After": "5"})
        except SpecError as exc:  # a pinned version that is not there: the caller's mistake; no traffic: ours
            return error(exc, 400 if parsed.model else 503)
        except InputError as exc:
            return error(exc, 503)
        return JSONResponse(render(parsed, gen), headers={"X-Stackwise-Version": gen.key})

    # Under `from __future__ import annotations` the annotation is a string FastAPI would look up in
    # this module's globals, where fastapi (an optional extra) is not imported.
    predict.__annotations__["request"] = Request

    async def internal(request: Request, exc: Exception) -> Any:
        return JSONResponse({"error": {"message": f"internal error: {type(exc).__name__}: {exc}",
                                       "type": "InternalError"}}, status_code=500)

    app.add_exception_handler(Exception, internal)
    health = list(HEALTH_ROUTES) + [r for r in [(env.get("AIP_HEALTH_ROUTE") or "").strip()] if r]
    predicts = list(PREDICT_ROUTES) + [r for r in [(env.get("AIP_PREDICT_ROUTE") or "").strip()] if r]
    for path in dict.fromkeys(health):
        app.add_api_route(path, ready, methods=["GET"], name=f"readiness {path}")
    app.add_api_route("/", alive, methods=["GET"], name="liveness")
    app.add_api_route("/v1/models", models, methods=["GET"], name="models")
    for path in dict.fromkeys(predicts):
        app.add_api_route(path, predict, methods=["POST"], name=f"predict {path}")
    return app


def listen_port(port: int | None = None, environ: Mapping[str, str] | None = None) -> int:
    """`port`, else $AIP_HTTP_PORT (Vertex AI), else $SAGEMAKER_BIND_TO_PORT, else 8080."""
    if port:
        return port
    env = os.environ if environ is None else environ
    for variable in ("AIP_HTTP_PORT", "SAGEMAKER_BIND_TO_PORT"):
        value = (env.get(variable) or "").strip()
        if value:
            if not value.isdigit():
                raise InputError(f"${variable} is {value!r}, not a port number", where=f"${variable}",
                                 fix="set it to a TCP port, e.g. 8080")
            return int(value)
    return DEFAULT_PORT


def serve(stack: Any, host: str = "127.0.0.1", port: int | None = DEFAULT_PORT, endpoint: str | None = None) -> None:
    """Run the local endpoint in the foreground until interrupted."""
    from .errors import ConfigError
    from .registry import require

    if stack.cloud != "local":
        raise ConfigError(f"`stackwise serve` serves the local stack; {stack.name!r} is on {stack.cloud}",
                          where=f"stack {stack.name}", fix="use `stackwise endpoints --stack NAME` to see a cloud endpoint")
    name = LocalDeploy(stack).endpoint_name(endpoint)
    require("uvicorn", "serve", "stackwise serve")
    import uvicorn

    uvicorn.run(create_app(name), host=host, port=listen_port(port), log_level="warning")


def serve_model(source: ModelSource, host: str = "127.0.0.1", port: int | None = None) -> None:
    """Serve the one model at `source` in the foreground until interrupted (model source mode).

    A local folder is checked before the server starts (a missing folder, or one with no model,
    raises InputError: the container exits with the message, which the platform reports at
    once); a URI is fetched after it starts, in the background, because platforms probe the port
    long before a large model has been copied (Vertex AI restarts a container whose port is closed
    after about 40 s).
    """
    from .registry import require

    require("uvicorn", "serve", "stackwise serve")
    folder = local_folder(source.uri)
    if folder is not None:
        find_model_folder(folder, source.origin)
    import uvicorn

    port = listen_port(port)
    _log(f"serving the model at {source.uri} ({source.origin}) on http://{host}:{port}")
    uvicorn.run(create_app(source=source), host=host, port=port, log_level="warning")
