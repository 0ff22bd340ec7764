"""`stackwise serve`: the local stack's endpoint, and the server inside the serving image.

Two modes, one server (FastAPI + uvicorn, the `serve` extra):

- **Deploy state** (the local stack). `stackwise deploy` (adapters/deploy/local.py) records the
  endpoint's versions in `<state dir>/endpoints/<endpoint>.json` (written atomically): each with its
  artifact folder, base model and traffic percent. The server rereads that file whenever it changes, so a new deploy or
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
`{"error": {"message", "type"}}`: 400 for a body that is not JSON, pins an unknown version or has a
prompt over the length cap, 401 for a missing or wrong API key, 413 for a body over the size cap,
422 for JSON of the wrong shape, 503 while nothing can answer (no traffic, model loading or
failed). Answers never carry a path of this machine (`public_text`); the server's log does.
A foreground server, rather than a process that `deploy` starts in the background, leaves no
orphan process to find and stop, and is what a container or a process supervisor runs.

**Limits.** A body over `$STACKWISE_SERVE_MAX_BODY_BYTES` (1 MiB) is refused with 413 as soon as
its Content-Length (or, chunked, its bytes so far) says so, without reading the rest; a prompt over
`$STACKWISE_SERVE_MAX_PROMPT_CHARS` (32,768 characters), or more than `MAX_PROMPTS` prompts, gets
400. A prompt within the cap is cut to the model's context before it is tokenized
(`LM.prepare`). Tokenizing runs without any lock; only the forward passes of one model are taken
one at a time, so a long request never holds up another's preprocessing, nor a health probe.

**API keys** (`stackwise.keys`). When the state folder holds keys (`stackwise keys create NAME`),
the predict routes and `/v1/models` need `Authorization: Bearer KEY` (401 otherwise); the
readiness and liveness routes (`/health`, `/ping`, `/`, `$AIP_HEALTH_ROUTE`) never do, because
platforms probe them without credentials. `serve` refuses to listen beyond loopback with no key
unless `insecure` (a cloud endpoint or gateway in front authenticates; the serving image's
entrypoint passes it). `/docs` and `/openapi.json` are off unless `docs`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from .deploy import Deployment, Variant, version_key
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
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        dep = Deployment(endpoint=data["endpoint"], cloud="local", state=data["state"], url=data.get("url"),
                         variants=[Variant(**v) for v in data["variants"]])
        if not all(isinstance(v.traffic, int) and isinstance(v.model, str) and isinstance(v.version, str)
                   for v in dep.variants):
            raise TypeError("a variant's model, version or traffic has the wrong type")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        from .errors import ConfigError

        # Left as it is: it is the only record of what the endpoint serves.
        raise ConfigError(f"the endpoint's deploy state is unreadable or corrupt ({type(exc).__name__}: {exc})",
                          where=str(path),
                          fix=f"move it aside (`mv {path} {path}.corrupt`) and deploy the versions again "
                              "(`stackwise deploy NAME:VERSION`), or restore it from a backup") from None
    return dep


def write_state(dep: Deployment) -> None:
    path = state_path(dep.endpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    data = {"endpoint": dep.endpoint, "state": dep.state, "url": dep.url, "updated": time.time(),
            "variants": [asdict(v) for v in dep.variants]}
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(tmp, path)  # a server reading it sees the old or the new state, never half


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
CHAT_MAX_TOKENS = 1024  # the cap on one chat answer's tokens ($STACKWISE_SERVE_MAX_TOKENS): over it, a 400
MAX_BODY_BYTES = 1 << 20  # a few thousand tokens of JSON is far below; 30 MB bodies are what this stops
MAX_PROMPT_CHARS = 32_768  # beyond a small model's context many times over: the tail is all it would read
MAX_PROMPTS = 64  # prompts in one request; each is a generation


@dataclass(frozen=True)
class Limits:
    """Caps on one request: the body's bytes (413 over it), each prompt's characters and the
    number of prompts (400 over them)."""

    body_bytes: int = MAX_BODY_BYTES
    prompt_chars: int = MAX_PROMPT_CHARS
    prompts: int = MAX_PROMPTS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Limits:
        """$STACKWISE_SERVE_MAX_BODY_BYTES and $STACKWISE_SERVE_MAX_PROMPT_CHARS, else the defaults."""
        env = os.environ if environ is None else environ
        values = {}
        for field_name, variable in (("body_bytes", "STACKWISE_SERVE_MAX_BODY_BYTES"),
                                     ("prompt_chars", "STACKWISE_SERVE_MAX_PROMPT_CHARS")):
            raw = (env.get(variable) or "").strip()
            if raw:
                if not raw.isdigit() or int(raw) < 1:
                    raise InputError(f"${variable} is {raw!r}, not a positive whole number", where=f"${variable}",
                                     fix=f"set it to a number, e.g. {getattr(cls, field_name)}, or unset it")
                values[field_name] = int(raw)
        return cls(**values)
ACCEPTED = ('{"prompt": "...", "max_tokens": 16} (OpenAI), {"inputs": "...", "parameters": {"max_new_tokens": 16}} '
            '(Hugging Face, SageMaker) or {"instances": ["..."], "parameters": {"max_tokens": 16}} (Vertex AI)')


class RequestError(InputError):
    """A request the server cannot answer as sent: 400 when the body is not JSON or a prompt is too
    long, 413 when the body is too large, 422 when it is JSON of the wrong shape."""

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
    usage: dict[str, int] = field(default_factory=dict)
    finish_reasons: list[str] = field(default_factory=list)


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


def parse_predict(raw: bytes | str, limits: Limits | None = None) -> PredictRequest:
    """A request body (bytes of JSON) -> PredictRequest. Raises RequestError (400 or 422).

    Prompts are checked against `limits` (default `Limits()`): more prompts than `limits.prompts`,
    or one longer than `limits.prompt_chars` characters, is a 400.

    - `{"prompt": str | [str], "max_tokens": n, "user": ..., "model": ...}`: OpenAI completions;
    - `{"inputs": str | [str], "parameters": {"max_new_tokens": n}}`: Hugging Face DLCs (SageMaker);
    - `{"instances": [str | {"prompt" or "inputs": str}], "parameters": {"max_tokens" or
      "max_new_tokens": n}}`: Vertex AI.
    Other parameters (temperature, top_p, ...) are accepted and ignored: decoding is greedy.
    """
    request = _parse(raw)
    limits = limits or Limits()
    if len(request.prompts) > limits.prompts:
        raise RequestError(f"the request has {len(request.prompts)} prompts; at most {limits.prompts} are answered "
                           "in one request", status=400, fix="split it into several requests")
    for i, prompt in enumerate(request.prompts):
        if len(prompt) > limits.prompt_chars:
            raise RequestError(f"prompt {i} is {len(prompt):,} characters long; at most {limits.prompt_chars:,} are "
                               "accepted", status=400, where=f"prompt {i} of the request",
                               fix="send the end of the text only: the model reads no more than its context "
                                   "(the server's $STACKWISE_SERVE_MAX_PROMPT_CHARS sets the cap)")
    return request


def _parse(raw: bytes | str) -> PredictRequest:
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

        if body.get("stream") is True:
            raise RequestError("stream is answered on /v1/chat/completions only; this route answers whole",
                               status=400, where="request field 'stream'",
                               fix="send \"stream\": false here, or stream a chat request")
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
            "choices": [{"index": i, "text": text, "finish_reason": (gen.finish_reasons[i] if i < len(gen.finish_reasons)
                                                                     else "length")} for i, text in enumerate(gen.texts)],
            "usage": {**gen.usage, "total_tokens": sum(gen.usage.values())} if gen.usage else None,
            "stackwise": {"endpoint": gen.endpoint, "version": gen.version, "latency_ms": gen.latency_ms, **gen.extra}}


# An absolute path (or file:// URI) not inside another URI; it is this machine's when its first
# folder exists here. Routes (/v1/completions) and remote URIs (gs://b/x) are left as they are.
_PATH = re.compile(r"(?<![\w.~:/-])(?:file://)?(/[^\s'\"`,;()<>\[\]{}]+)")


def _redact(match: re.Match[str]) -> str:
    path = match.group(1)
    trail = path[len(path.rstrip(".")):]
    top = path.split("/")[1]
    try:
        local = bool(top) and Path("/", top).is_dir()
    except OSError:
        local = False
    return "<local path>" + trail if local else match.group(0)


def public_text(text: str) -> str:
    """`text` without paths of this machine (each becomes `<local path>`): what HTTP answers say.
    Folders and files are the server's business; its log names them."""
    return _PATH.sub(_redact, text)


def error_body(exc: BaseException, status: int | None = None) -> dict[str, Any]:
    """OpenAI's error shape: `type` is OpenAI's for the status (invalid_request_error, authentication_error,
    rate_limit_error, server_error), else the error's class name."""
    from .openai_api import ERROR_TYPES

    kind = ERROR_TYPES.get(status, type(exc).__name__) if status else type(exc).__name__
    return {"error": {"message": public_text(str(exc)), "type": kind, "param": getattr(exc, "param", None),
                      "code": getattr(exc, "code", None)}}


def _log(message: str) -> None:
    # One line per event on stderr: what a container platform collects (CloudWatch, Cloud Logging, ...).
    print(f"stackwise serve: {message}", file=sys.stderr, flush=True)


# -- deploy state: the local stack's endpoint ----------------------------------------------------
class Server:
    """What `stackwise serve` runs on the local stack: the endpoint's state, reloaded when it
    changes, and its versions on shared engines (`stackwise.serve_targets`)."""

    def __init__(self, endpoint: str, max_tokens_limit: int = MAX_TOKENS_LIMIT, stack: Any = None):
        from .serve_targets import Engines

        self.endpoint = endpoint
        self.stack = stack
        self.max_tokens_limit = max_tokens_limit
        self._mtime: float | None = None
        self.deployment = Deployment(endpoint=endpoint, cloud="local", state="absent")
        self.router = Router({})
        self.engines = Engines()
        self._targets: dict[str, Any] = {}
        self._routers: dict[str, Router] = {}  # per model name, for requests naming a model without a version
        self._platform: Any = None
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()  # loads only: a loaded target is read without it

    def refresh(self) -> Deployment:
        path = state_path(self.endpoint)
        mtime = path.stat().st_mtime_ns if path.is_file() else None
        with self._lock:
            if mtime != self._mtime:
                self.deployment = read_state(self.endpoint)
                self.router = Router(self.deployment.traffic)
                self._mtime = mtime
            return self.deployment

    def platform(self) -> Any:
        """The stack's platform (vector store, embedders): what RAG apps retrieve with."""
        if self._platform is None:
            from .platform import Platform
            from .stack import load_stack

            self._platform = Platform(self.stack if self.stack is not None else load_stack("local"))
        return self._platform

    def _search(self, index: str, query: str, k: int = 10, filter: Any = None) -> list[Any]:
        return self.platform().search(index, query, k=k, filter=filter)

    def variant_target(self, variant: Variant) -> Any:
        """The version's target (engine, adapter, RAG app), built on first use."""
        from .serve_targets import is_rag_folder, model_target, rag_target

        cache_key = f"{variant.key}|{variant.artifact_uri}"
        target = self._targets.get(cache_key)
        if target is not None:
            return target
        with self._load_lock:
            if cache_key not in self._targets:
                folder = local_folder(variant.artifact_uri or "")
                if folder is None or not folder.is_dir():
                    raise InputError(f"{variant.key}'s artifact {variant.artifact_uri} is gone", where=str(folder),
                                     fix=f"deploy another version: stackwise deploy {variant.model}:VERSION")
                if is_rag_folder(folder):
                    from .rag import stored_vectors

                    target = rag_target(folder, variant.key, variant.version, self.engines, self._search,
                                        self.stack, vectors=stored_vectors(self.platform().vector_store))
                else:
                    target = model_target(folder, variant.key, variant.version, self.engines)
                self._targets[cache_key] = target
            return self._targets[cache_key]

    def target(self, model: str | None = None, user: str | None = None) -> Any:
        """Route by the traffic split to one version; `model` NAME:VERSION pins a version, NAME routes
        among that model's (or RAG app's) versions by their weights. SpecError when it names nothing here."""
        dep = self.refresh()
        key = None
        if model:
            from .deploy import ModelRef

            try:
                ref = ModelRef.parse(model)
            except (InputError, SpecError):
                ref = None
            name = model.strip() if ref is None else None  # a bare NAME is no version reference
            if ref is not None and ref.version and dep.variant(str(ref)) is not None:
                key = str(ref)
            elif name:
                weights = {k: w for k, w in dep.traffic.items() if k.rsplit(":", 1)[0] == name and w > 0}
                if weights:
                    with self._lock:
                        router = self._routers.get(name)
                        if router is None or router.weights != weights:
                            router = self._routers[name] = Router(weights)
                    key = router.pick(user)
            if key is None:
                raise SpecError(f"{model} is not on endpoint {self.endpoint}", where="request field 'model'",
                                fix="name a model or pin a version listed by GET /v1/models, e.g. " +
                                    (", ".join(dep.traffic) or "none deployed"))
        else:
            key = self.router.pick(user)
        variant = dep.variant(key)
        assert variant is not None
        return self.variant_target(variant)

    def readiness(self) -> tuple[int, dict[str, Any]]:
        """200 once a version carries traffic, else 503."""
        dep = self.refresh()
        ready = any(v.traffic for v in dep.variants)
        return (200 if ready else 503), {"status": "ok" if ready else "empty", "endpoint": self.endpoint,
                                         "traffic": dep.traffic}

    def models(self) -> dict[str, Any]:
        from .serve_targets import is_rag_folder

        dep = self.refresh()
        data = []
        for v in dep.variants:
            folder = local_folder(v.artifact_uri or "")
            kind = "rag" if folder is not None and is_rag_folder(folder) else "model"
            data.append({"id": v.key, "object": "model", "owned_by": "stackwise", "traffic": v.traffic, "kind": kind,
                         "base_model": v.base_model and public_text(v.base_model)})
        return {"object": "list", "data": data}

    def embed(self, model: str | None, texts: list[str]) -> tuple[str, list[list[float]], int]:
        """/v1/embeddings: `model` names an index (its embedding model embeds) or a RAG app version on the
        endpoint (its index's); (model name, vectors, tokens)."""
        index = model
        if model and ":" in model:
            target = self.target(model)
            index = target.app.index if target.app is not None else None
        if not index:
            raise SpecError("name the index whose embedding model should embed (or a RAG app on the endpoint)",
                            where="request field 'model'", fix="e.g. \"model\": \"kb\" (see `stackwise indexes`)")
        platform = self.platform()
        try:
            name = platform.vector_store.model_of(index)
        except (InputError, SpecError, LookupError):
            raise SpecError(f"no index named {index!r} on this stack", where="request field 'model'",
                            fix="name an index listed by `stackwise indexes`") from None
        vectors = platform.embedder(name).encode(texts)
        return name, [list(map(float, v)) for v in vectors], sum(len(t.split()) for t in texts)

    def queue(self) -> list[tuple[dict[str, str], int, int]]:
        """(labels, running, waiting) per engine, read at scrape time by the metrics."""
        from .serve_metrics import QueueLabels

        return [(QueueLabels(model_name=e.name, version="", app=""), e.running, e.waiting) for e in self.engines.all()]

    def generate(self, prompts: list[str], max_tokens: int = DEFAULT_MAX_TOKENS, user: str | None = None,
                 model: str | None = None) -> Generation:
        """Route (or pin, with `model`) to one version and generate each prompt with it (the predict routes)."""
        target = self.target(model, user)
        return generate_on(target, prompts, max_tokens, self.max_tokens_limit, self.endpoint)

    def complete(self, prompt: str, max_tokens: int = DEFAULT_MAX_TOKENS, user: str | None = None,
                 model: str | None = None) -> dict[str, Any]:
        """One OpenAI-style completion, as POST /v1/completions answers it."""
        return render(PredictRequest("openai", [prompt], max_tokens, user, model),
                      self.generate([prompt], max_tokens, user, model))


def generate_on(target: Any, prompts: list[str], max_tokens: int, cap: int, endpoint: str,
                extra: dict[str, Any] | None = None) -> Generation:
    """Each prompt's greedy generation on `target`'s engine, all in its batch at once: each prompt is
    cut to the context (`LM.prepare`) and tokenized in the caller's thread, so requests are
    preprocessed side by side and no long prompt holds up another's."""
    from .engine import SamplingParams

    n = max(1, min(int(max_tokens), cap))
    started = time.perf_counter()
    prepared = [target.legacy.prepare(prompt, n) for prompt in prompts]
    requests = [target.engine.submit(ids, SamplingParams(max_tokens=n), target.adapter) for ids in prepared]
    texts = [r.result().strip() for r in requests]
    for r in requests:
        if r.finish_reason == "error":
            raise RuntimeError(f"generation failed: {type(r.error).__name__}: {r.error}")
    usage = {"prompt_tokens": sum(r.prompt_tokens for r in requests),
             "completion_tokens": sum(r.completion_tokens for r in requests)}
    return Generation(key=target.key, version=target.version, texts=texts, endpoint=endpoint,
                      latency_ms=round(1000 * (time.perf_counter() - started), 1), extra=dict(extra or {}),
                      usage=usage, finish_reasons=[r.finish_reason or "length" for r in requests])


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


# -- the app -------------------------------------------------------------------------------------
HEALTH_ROUTES = ("/health", "/ping")  # stackwise's; SageMaker's
PREDICT_ROUTES = ("/v1/completions", "/invocations", "/score")  # OpenAI's; SageMaker's; the Azure ML inference server's


class AuthError(StackwiseError, PermissionError):
    """A predict request without a valid API key: answered 401."""


class RateLimited(StackwiseError, RuntimeError):
    """A key over its requests per minute: answered 429 with Retry-After."""


class RateLimiter:
    """Requests per minute per key, as a token bucket (a burst of up to the limit, then the rate)."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # key name -> (tokens, last refill time)
        self._lock = threading.Lock()

    def take(self, name: str, rpm: int | None) -> int:
        """0 when a request may go now (and counts it), else the whole seconds to wait."""
        if not rpm:
            return 0
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(name, (float(rpm), now))
            tokens = min(float(rpm), tokens + (now - last) * rpm / 60.0)
            if tokens >= 1.0:
                self._buckets[name] = (tokens - 1.0, now)
                return 0
            self._buckets[name] = (tokens, now)
            return max(1, int((1.0 - tokens) * 60.0 / rpm + 0.999))


@dataclass
class ServingState:
    """What the routes share: limits, metrics, the feedback store and its recorder, rate buckets.
    The feedback store opens MLflow: it is built on first use (or warmed up in the background when
    the server starts), never when the app is created."""

    endpoint: str
    limits: Limits
    metrics: Any
    max_tokens: int
    feedback_factory: Any = None  # () -> FeedbackStore, or None: no feedback kept
    rates: RateLimiter = field(default_factory=RateLimiter)
    gate: Any = None
    chat_body: Any = None  # (raw body, request id) -> the chat answer (set by serve_routes.add_routes)
    _store: Any = None
    _recorder: Any = None
    _pending: list[Any] = field(default_factory=list)  # answers made before the recorder was ready
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def feedback(self) -> Any:
        """The FeedbackStore (None when this server keeps no feedback)."""
        if self.feedback_factory is None:
            return None
        with self._lock:
            if self._store is None:
                self._store = self.feedback_factory()
            return self._store

    @property
    def recorder(self) -> Any:
        """The AsyncRecorder writing answers to the store (None when no feedback is kept)."""
        store = self.feedback
        if store is None:
            return None
        with self._lock:
            if self._recorder is None:
                from .feedback import AsyncRecorder

                self._recorder = AsyncRecorder(store)
            return self._recorder

    def warm_up(self) -> None:
        """Open the feedback store now and write the answers made meanwhile (a failure is logged,
        and /v1/feedback answers 503)."""
        try:
            recorder = self.recorder
        except Exception as exc:  # noqa: BLE001 - a server without feedback still serves
            _log(f"feedback store unavailable: {type(exc).__name__}: {exc}")
            self.feedback_factory = None
            self._pending.clear()
            return
        with self._lock:
            pending, self._pending = self._pending, []
        for rec in pending:
            recorder.submit(rec)

    def submit(self, rec: Any) -> None:
        """Queue an answer for the store without ever waiting (event loop safe): kept in memory
        (up to 1,000) until the store is open."""
        if self.feedback_factory is None:
            return
        with self._lock:
            if self._recorder is None:
                if len(self._pending) < 1000:
                    self._pending.append(rec)
                return
        self._recorder.submit(rec)

    def close(self) -> None:
        if self._recorder is not None:
            self._recorder.close()


def serving_state(backend: Any, env: Mapping[str, str], limits: Limits, stack: Any = None,
                  endpoint: str = DEFAULT_ENDPOINT) -> ServingState:
    """The routes' state. Feedback is kept on the stack's tracking store (local stack), else on
    $MLFLOW_TRACKING_URI when set (a cloud container), else not at all; $STACKWISE_SERVE_FEEDBACK=0
    turns it off."""
    from .serve_metrics import ServeMetrics

    raw = (env.get("STACKWISE_SERVE_MAX_TOKENS") or "").strip()
    if raw and (not raw.isdigit() or int(raw) < 1):
        raise InputError(f"$STACKWISE_SERVE_MAX_TOKENS is {raw!r}, not a positive whole number",
                         where="$STACKWISE_SERVE_MAX_TOKENS", fix=f"set it to e.g. {CHAT_MAX_TOKENS}, or unset it")
    metrics = ServeMetrics()
    metrics.add_queue_source(backend.queue)
    factory = None
    if (env.get("STACKWISE_SERVE_FEEDBACK") or "1").strip() != "0":
        tracking = (env.get("MLFLOW_TRACKING_URI") or "").strip()
        if stack is not None or isinstance(backend, Server):
            def factory() -> Any:
                from .feedback import FeedbackStore
                from .stack import load_stack

                return FeedbackStore.for_stack(stack if stack is not None else load_stack("local"))
        elif tracking:
            def factory() -> Any:
                from .feedback import FeedbackStore

                return FeedbackStore(tracking)
    return ServingState(endpoint=endpoint, limits=limits, metrics=metrics, feedback_factory=factory,
                        max_tokens=int(raw) if raw else CHAT_MAX_TOKENS)


def bearer(header: str | None) -> str | None:
    """The key of an `Authorization: Bearer KEY` header, else None."""
    scheme, _, value = (header or "").strip().partition(" ")
    return (value.strip() or None) if scheme.lower() == "bearer" else None


async def read_body(request: Any, limit: int) -> bytes:
    """The request's body, refused (RequestError 413) once it is over `limit` bytes: at once by its
    Content-Length, else (chunked) as soon as the bytes received pass it; the rest is never read."""
    too_large = RequestError(f"the request body is over the server's limit of {limit:,} bytes", status=413,
                             fix="send a shorter prompt (the model reads only the end of a long one; the "
                                 "server's $STACKWISE_SERVE_MAX_BODY_BYTES sets the limit)")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise RequestError(f"Content-Length {declared!r} is not a number", status=400,
                               where="the Content-Length header", fix="send a valid Content-Length")
        if int(declared) > limit:
            raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def create_app(endpoint: str = DEFAULT_ENDPOINT, *, source: ModelSource | None = None,
               environ: Mapping[str, str] | None = None, keys: Any = None, require_keys: bool = False,
               docs: bool = False, stack: Any = None) -> Any:
    """The FastAPI app: `endpoint`'s deployed versions, or (with `source`) the one model there.

    `environ` (default `os.environ`) gives Vertex AI's `AIP_HEALTH_ROUTE` and `AIP_PREDICT_ROUTE`
    (added to the routes), the request limits (`Limits.from_env`) and, with a source,
    `STACKWISE_MODEL`, `STACKWISE_MODEL_VERSION` (the name the answers carry) and
    `STACKWISE_BASE_MODEL` (an adapter's base). With a source, the model starts loading when the
    app starts (its lifespan).

    `keys` (a `stackwise.keys.KeyRing`; default: the state folder's) are checked on the predict
    routes and `/v1/models` whenever one exists, or always with `require_keys` (then no key means
    no access: a server listening beyond loopback must not open up when its last key is revoked).
    The readiness and liveness routes answer without a key. `docs` serves /docs and /openapi.json.
    """
    from contextlib import asynccontextmanager

    from .registry import require

    require("fastapi", "serve", "stackwise serve")
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    from .keys import KeyRing

    env = os.environ if environ is None else environ
    limits = Limits.from_env(env)
    ring: KeyRing = keys if keys is not None else KeyRing()
    backend: Server | ModelServer
    if source is None:
        backend = Server(endpoint, stack=stack)
        title = f"stackwise endpoint {endpoint}"
    else:
        name, version = env.get("STACKWISE_MODEL") or "", env.get("STACKWISE_MODEL_VERSION") or ""
        backend = ModelServer(source, name=version_key(name, version) if name and version else (name or None),
                              version=version, base_model=env.get("STACKWISE_BASE_MODEL") or None, environ=env)
        title = f"stackwise model {backend.key}"
    state = serving_state(backend, env, limits, stack=stack if source is None else None,
                          endpoint=endpoint if source is None else backend.key)

    @asynccontextmanager
    async def lifespan(app: Any):
        if isinstance(backend, ModelServer):
            backend.start()
        if state.feedback_factory is not None:
            threading.Thread(target=state.warm_up, name="stackwise-feedback-warm-up", daemon=True).start()
        yield
        state.close()
        if backend.engines is not None:
            backend.engines.close()

    app = FastAPI(title=title, lifespan=lifespan, docs_url="/docs" if docs else None, redoc_url=None,
                  openapi_url="/openapi.json" if docs else None)
    app.state.server = backend
    app.state.limits = limits
    app.state.serving = state

    def error(exc: BaseException, status: int, headers: dict[str, str] | None = None) -> Any:
        return JSONResponse(error_body(exc, status), status_code=status, headers=headers)

    async def gate(request: Any) -> tuple[Any | None, str | None]:
        """(None, key name) when the request may go on, else (the 401 or 429 answer, None)."""
        if not (require_keys or ring.enabled()):
            return None, None
        key = bearer(request.headers.get("authorization"))
        # A key seen before is known without hashing; a new one is hashed off the event loop.
        name = key and (ring.cached(key) or await run_in_threadpool(ring.check, key))
        if not name:
            what = "a valid API key is needed" if key else "an API key is needed"
            exc = AuthError(f"{what}: send the header 'Authorization: Bearer KEY'", where="the request headers",
                            fix="ask the endpoint's operator for a key (stackwise keys create NAME)")
            exc.code = "invalid_api_key"  # type: ignore[attr-defined]
            return error(exc, 401, {"WWW-Authenticate": "Bearer"}), None
        wait = state.rates.take(name, ring.rpm(name))
        if wait:
            exc = RateLimited(f"key {name!r} is over its rate limit of {ring.rpm(name)} requests per minute",
                              where="the request's API key", fix=f"retry after {wait} s, or ask for a higher limit "
                              "(stackwise keys create NAME --rpm N)")
            exc.code = "rate_limit_exceeded"  # type: ignore[attr-defined]
            return error(exc, 429, {"Retry-After": str(wait)}), None
        return None, name

    async def refused(request: Any) -> Any | None:
        return (await gate(request))[0]

    state.gate = gate

    # Health routes are async: they run on the event loop, so a queue of generations (in the thread
    # pool) never delays them past a platform's probe timeout (SageMaker: 2 s).
    async def ready() -> Any:
        status, body = backend.readiness()
        return JSONResponse(body, status_code=status)

    async def alive() -> Any:
        return {"status": "alive"}

    async def models(request: Request) -> Any:
        denied = await refused(request)
        return denied if denied is not None else backend.models()

    async def predict(request: Request) -> Any:
        denied = await refused(request)
        if denied is not None:
            return denied
        try:
            raw = await read_body(request, limits.body_bytes)
            if state.chat_body is not None and _is_chat(raw):  # a chat body on a cloud's one predict route
                from .openai_api import new_request_id

                return await state.chat_body(raw, new_request_id())
            parsed = parse_predict(raw, limits)
        except RequestError as exc:
            # Close the connection on a 413: the client may still be sending the body nobody reads.
            return error(exc, exc.status, {"Connection": "close"} if exc.status == 413 else None)
        try:
            gen = await run_in_threadpool(backend.generate, parsed.prompts, parsed.max_tokens, parsed.user,
                                          parsed.model)
        except NotReadyError as exc:
            return error(exc, 503, {"Retry-After": "5"})
        except SpecError as exc:  # a pinned version that is not there: the caller's mistake; no traffic: ours
            return error(exc, 400 if parsed.model else 503)
        except InputError as exc:
            _log(f"error: {exc}")
            return error(exc, 503)
        return JSONResponse(render(parsed, gen), headers={"X-Stackwise-Version": gen.key})

    # Under `from __future__ import annotations` the annotation is a string FastAPI would look up in
    # this module's globals, where fastapi (an optional extra) is not imported.
    predict.__annotations__["request"] = Request
    models.__annotations__["request"] = Request

    async def internal(request: Request, exc: Exception) -> Any:
        _log(f"internal error: {type(exc).__name__}: {exc}")
        return JSONResponse({"error": {"message": public_text(f"internal error: {type(exc).__name__}: {exc}"),
                                       "type": "server_error", "param": None, "code": None}}, status_code=500)

    app.add_exception_handler(Exception, internal)
    from .serve_routes import add_routes

    add_routes(app, backend, state)
    health = list(HEALTH_ROUTES) + [r for r in [(env.get("AIP_HEALTH_ROUTE") or "").strip()] if r]
    predicts = list(PREDICT_ROUTES) + [r for r in [(env.get("AIP_PREDICT_ROUTE") or "").strip()] if r]
    for path in dict.fromkeys(health):
        app.add_api_route(path, ready, methods=["GET"], name=f"readiness {path}")
    app.add_api_route("/", alive, methods=["GET"], name="liveness")
    app.add_api_route("/v1/models", models, methods=["GET"], name="models")
    for path in dict.fromkeys(predicts):
        app.add_api_route(path, predict, methods=["POST"], name=f"predict {path}")
    return app


def _is_chat(raw: bytes) -> bool:
    """True when a predict body is an OpenAI chat request (a JSON object with `messages`): the cloud
    platforms forward every request to one route (SageMaker /invocations, Azure ML /score, Vertex
    AI's predict route), and a RAG app is asked through chat."""
    if b'"messages"' not in raw:
        return False
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(body, dict) and "messages" in body


def is_loopback(host: str) -> bool:
    """True when `host` listens on this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def guard_exposure(host: str, insecure: bool = False, keys: Any = None) -> bool:
    """Refuse (SpecError) to listen on `host` beyond loopback with no API key, unless `insecure`.
    Returns whether the server must require keys (beyond loopback, not insecure)."""
    if is_loopback(host) or insecure:
        return False
    from .keys import KeyRing

    if not (keys if keys is not None else KeyRing()).enabled():
        raise SpecError(f"--host {host} listens beyond this machine, and no API key exists: anyone who reaches "
                        "the port could use the model", where="stackwise serve --host",
                        fix="create a key first (`stackwise keys create NAME`; clients send 'Authorization: "
                            "Bearer KEY'), or pass --insecure when something in front authenticates callers "
                            "(a cloud endpoint, an API gateway)")
    return True


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


def serve(stack: Any, host: str = "127.0.0.1", port: int | None = DEFAULT_PORT, endpoint: str | None = None,
          insecure: bool = False, docs: bool = False) -> None:
    """Run the local endpoint in the foreground until interrupted. Beyond loopback it needs an API
    key to exist, unless `insecure` (`guard_exposure`)."""
    from .errors import ConfigError
    from .registry import DEPLOY, load, require

    if stack.cloud != "local":
        raise ConfigError(f"`stackwise serve` serves the local stack; {stack.name!r} is on {stack.cloud}",
                          where=f"stack {stack.name}", fix="use `stackwise endpoints --stack NAME` to see a cloud endpoint")
    name = load(DEPLOY, "local", "deploy")(stack).endpoint_name(endpoint)  # the local stack's DeployBackend
    require("uvicorn", "serve", "stackwise serve")
    require_keys = guard_exposure(host, insecure)
    import uvicorn

    uvicorn.run(create_app(name, require_keys=require_keys, docs=docs, stack=stack), host=host, port=listen_port(port),
                log_level="warning")


def serve_model(source: ModelSource, host: str = "127.0.0.1", port: int | None = None, insecure: bool = False,
                docs: bool = False) -> None:
    """Serve the one model at `source` in the foreground until interrupted (model source mode).

    A local folder is checked before the server starts (a missing folder, or one with no model,
    raises InputError: the container exits with the message, which the platform reports at
    once); a URI is fetched after it starts, in the background, because platforms probe the port
    long before a large model has been copied (Vertex AI restarts a container whose port is closed
    after about 40 s). Beyond loopback it needs an API key to exist, unless `insecure`.
    """
    from .registry import require

    require("uvicorn", "serve", "stackwise serve")
    require_keys = guard_exposure(host, insecure)
    folder = local_folder(source.uri)
    if folder is not None:
        find_model_folder(folder, source.origin)
    import uvicorn

    port = listen_port(port)
    _log(f"serving the model at {source.uri} ({source.origin}) on http://{host}:{port}")
    uvicorn.run(create_app(source=source, require_keys=require_keys, docs=docs), host=host, port=port,
                log_level="warning")
