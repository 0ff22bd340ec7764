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

**Modules.** This one holds the app (`create_app`) and the entry points (`serve`, `serve_model`)
and re-exports the names of the others: `stackwise.serve_protocol` (limits, request bodies and
answers), `stackwise.serve_local` (deploy state mode), `stackwise.serve_source` (model source
mode), `stackwise.serve_state` (what the routes share), `stackwise.serve_routes` (the OpenAI
routes), `stackwise.serve_targets` (engines and RAG apps) and `stackwise.serve_metrics`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import threading
from collections.abc import Mapping
from typing import Any

from .deploy import version_key
from .errors import InputError, SpecError, StackwiseError

# Re-exported: `stackwise.serving` stays the public surface (see "Modules" above).
from .serve_local import DEFAULT_ENDPOINT, Router, Server, read_state, state_path, write_state  # noqa: F401
from .serve_protocol import (  # noqa: F401
    ACCEPTED,
    CHAT_MAX_TOKENS,
    DEFAULT_MAX_TOKENS,
    MAX_BODY_BYTES,
    MAX_PROMPT_CHARS,
    MAX_PROMPTS,
    MAX_TOKENS_LIMIT,
    CompletionRequest,
    Generation,
    Limits,
    NotReadyError,
    PredictRequest,
    RequestError,
    _log,
    error_body,
    generate_on,
    parse_predict,
    public_text,
    read_body,
    render,
)
from .serve_source import (  # noqa: F401
    SAGEMAKER_MODEL_DIR,
    SOURCE_VARIABLES,
    ModelServer,
    ModelSource,
    fetch_model,
    find_model_folder,
    load_model,
    local_folder,
    model_source,
)
from .serve_state import RateLimited, RateLimiter, ServingState, serving_state  # noqa: F401

DEFAULT_PORT = 8080


# -- the app -------------------------------------------------------------------------------------
HEALTH_ROUTES = ("/health", "/ping")  # stackwise's; SageMaker's
PREDICT_ROUTES = ("/v1/completions", "/invocations", "/score")  # OpenAI's; SageMaker's; the Azure ML inference server's


class AuthError(StackwiseError, PermissionError):
    """A predict request without a valid API key: answered 401."""


def bearer(header: str | None) -> str | None:
    """The key of an `Authorization: Bearer KEY` header, else None."""
    scheme, _, value = (header or "").strip().partition(" ")
    return (value.strip() or None) if scheme.lower() == "bearer" else None


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
