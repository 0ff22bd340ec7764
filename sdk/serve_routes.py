"""The OpenAI-compatible routes of `stackwise serve`: chat completions (streamed or not, plain model
or RAG app), embeddings, feedback and metrics. `stackwise.serving.create_app` adds them beside the
cloud platforms' predict routes; the wire format is `stackwise.openai_api`.

One chat request: the key is checked and its rate counted, the body read under the size cap and
validated, the version picked by the traffic split (or pinned by `model`), a RAG app retrieves
(timed apart: `stackwise:retrieval_latency_seconds`) and fills its template, the prompt is checked
against the context (400 `context_length_exceeded`), and the engine's batch takes the request.
The answer, streamed or whole, carries the request id (`X-Request-Id` and `stackwise.request_id`),
the version (`X-Stackwise-Version`), usage, and for a RAG app its sources; the request is counted
in the metrics and recorded, off the request path, for feedback.
"""

from __future__ import annotations

import time
from typing import Any

from . import openai_api as oa
from .errors import InputError, SpecError

DEFAULT_MAX_TOKENS = 256  # a chat answer's tokens when the request and the app name none
STREAM_PING_S = 15


def _status_of(exc: BaseException) -> int:
    from .serve_protocol import NotReadyError

    if isinstance(exc, oa.APIError):
        return exc.status
    if isinstance(exc, NotReadyError):
        return 503
    return 400


def api_error(exc: BaseException, status: int | None = None, request_id: str | None = None) -> Any:
    """An OpenAI-shaped JSON error for `exc` (no path of this machine in it)."""
    from fastapi.responses import JSONResponse

    from .serve_protocol import public_text

    status = status or _status_of(exc)
    param = getattr(exc, "param", None)
    code = getattr(exc, "code", None)
    headers = dict(getattr(exc, "headers", {}) or {})
    if status == 503:
        headers.setdefault("Retry-After", "5")
    if request_id:
        headers["X-Request-Id"] = request_id
    return JSONResponse(oa.error_payload(public_text(str(exc)), status, param=param, code=code), status_code=status,
                        headers=headers)


def sampling(req: Any, app: Any, cap: int) -> Any:
    """The request's sampling (the RAG app's defaults where the request names none); greedy by default."""
    from .engine import SamplingParams

    if req.limit is None:  # the app's or the server's default, within the cap
        limit = min(app.max_tokens if app is not None else DEFAULT_MAX_TOKENS, cap)
    else:
        limit = req.limit
    if limit > cap:
        raise oa.APIError(f"max_tokens is {limit}; this server generates at most {cap} tokens per answer",
                          param="max_completion_tokens" if getattr(req, "max_completion_tokens", None) else "max_tokens",
                          code="max_tokens_exceeded",
                          fix=f"ask for {cap} or fewer (the server's $STACKWISE_SERVE_MAX_TOKENS sets the cap)")
    temperature = req.temperature if req.temperature is not None else (app.temperature if app is not None else 0.0)
    return SamplingParams(max_tokens=limit, temperature=temperature, top_p=req.top_p if req.top_p is not None else 1.0,
                          seed=req.seed, stop=req.stops)


def _question(messages: list[dict[str, str]]) -> tuple[str, list[dict[str, str]]]:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i]["role"] == "user":
            return messages[i]["content"], messages[:i]
    raise oa.APIError("the messages hold no user message to answer", param="messages",
                      fix="end the conversation with {\"role\": \"user\", \"content\": QUESTION}")


class Prepared:
    """A chat request made ready for the engine (in a worker thread: retrieval and tokenizing)."""

    def __init__(self, target: Any, req: Any, cap: int, metrics: Any):
        self.target, self.req = target, req
        self.hits: list[Any] = []
        self.retrieval_s: float | None = None
        messages = req.chat()
        app = target.app
        if app is not None:
            from .rag import prompt_messages, retrieve

            question, history = _question(messages)
            override = req.retrieval
            started = time.perf_counter()
            self.hits = retrieve(target.search, app, question, k=override.k if override else None,
                                 filter=override.filter if override else None, vectors=target.vectors)
            self.retrieval_s = time.perf_counter() - started
            metrics.observe_retrieval(self.retrieval_s, app=app.name, index=app.index)
            messages = prompt_messages(app, question, self.hits, history)
        self.messages = messages
        self.params = sampling(req, app, cap)
        self.ids = target.engine.encode_chat(messages)
        try:
            self.generation = target.engine.submit(self.ids, self.params, target.adapter)
        except InputError as exc:
            if type(exc).__name__ == "ContextLengthError":
                raise oa.APIError(exc.what, param="messages", code="context_length_exceeded", fix=exc.fix) from None
            raise

    def sources(self, text: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        if self.target.app is None:
            return [], []
        from .rag import annotate

        return annotate(text, self.hits)

    def extension(self, sources: list[dict[str, Any]]) -> dict[str, Any]:
        ext: dict[str, Any] = {"version": self.target.version}
        if self.target.app is not None:
            ext.update(app=self.target.app.name, index=self.target.app.index, sources=sources,
                       retrieval_ms=round(1000 * (self.retrieval_s or 0.0), 2))
        return ext


def record(state: Any, prepared: Prepared | None, request_id: str, status: int, started: float, endpoint: str,
           user: str | None, text: str = "", sources: list[dict[str, Any]] | None = None) -> None:
    """Count the request in the metrics and queue its answer for the feedback store."""
    gen = prepared.generation if prepared is not None else None
    target = prepared.target if prepared is not None else None
    labels = {"model_name": target.model_name if target else "", "version": target.version if target else "",
              "app": target.app_name if target else ""}
    e2e = time.perf_counter() - started
    ttft = (gen.first_token_at - started) if gen is not None and gen.first_token_at else None
    state.metrics.observe_request(status=status, finish_reason=gen.finish_reason if gen else None,
                                  prompt_tokens=gen.prompt_tokens if gen else 0,
                                  completion_tokens=gen.completion_tokens if gen else 0, ttft_s=ttft,
                                  token_times=list(gen.token_times) if gen else [], e2e_s=e2e, **labels)
    if state.feedback_factory is None or prepared is None:
        return
    from .feedback import AnswerRecord

    texts = {h.id: h.text for h in prepared.hits}  # the cited chunks' text: an exported qa record's context
    state.submit(AnswerRecord(
        request_id=request_id, endpoint=endpoint, app=labels["app"], model=target.key, version=target.version,
        user=user, messages=prepared.req.chat(), answer=text,
        # A RAG answer keeps the prompt its generator read (template, numbered sources) beside the question.
        prompt="\n\n".join(m["content"] for m in prepared.messages) if target.app is not None else None,
        sources=[{**src, "text": texts.get(src.get("id"), "")} for src in sources or []], latency_ms=round(1000 * e2e, 2),
        ttft_ms=round(1000 * ttft, 2) if ttft is not None else None, status=status,
        retrieval_ms=round(1000 * prepared.retrieval_s, 2) if prepared.retrieval_s is not None else None,
        finish_reason=gen.finish_reason if gen else None, created=time.time() - e2e))


def add_routes(app: Any, backend: Any, state: Any) -> None:
    """POST /v1/chat/completions, /v1/embeddings, /v1/feedback and GET /metrics on `app`.

    `state` carries `limits`, `metrics` (ServeMetrics), `recorder` (an AsyncRecorder or None),
    `feedback` (a FeedbackStore or None), `gate` (async (request) -> (denied response or None, key
    name)), `max_tokens` (the per-answer cap) and `endpoint`."""
    from fastapi import Request
    from fastapi.responses import JSONResponse, Response
    from starlette.concurrency import run_in_threadpool

    from .serve_protocol import RequestError, read_body

    async def body_of(request: Any) -> bytes:
        try:
            return await read_body(request, state.limits.body_bytes)
        except RequestError as exc:
            raise oa.APIError(exc.what, status=exc.status, fix=exc.fix,
                              headers={"Connection": "close"} if exc.status == 413 else None) from None

    async def chat(request: Request) -> Any:
        request_id = oa.new_request_id()
        denied, _ = await state.gate(request)
        if denied is not None:
            denied.headers["X-Request-Id"] = request_id
            return denied
        try:
            raw = await body_of(request)
        except oa.APIError as exc:
            return api_error(exc, exc.status, request_id)
        return await chat_body(raw, request_id)

    async def chat_body(raw: bytes, request_id: str) -> Any:
        """A chat request's body, once the key was checked: what /v1/chat/completions answers, and the
        cloud predict routes (/invocations, /score, Vertex's) when the body has `messages`."""
        started = time.perf_counter()
        prepared: Prepared | None = None
        try:
            req = oa.parse(oa.ChatRequest, raw)
            try:
                target = await run_in_threadpool(backend.target, req.model, req.user)
            except InputError as exc:  # nothing can answer: a failed load, a version's artifact gone
                raise _Unavailable(exc) from None
            prepared = await run_in_threadpool(Prepared, target, req, state.max_tokens, state.metrics)
        except Exception as exc:  # noqa: BLE001 - each becomes its OpenAI-shaped answer
            if isinstance(exc, _Unavailable):
                exc = exc.cause
                status = 503
            else:
                status = _not_found(exc) or _status_of(exc)
                if not isinstance(exc, (InputError, SpecError)) and status != 503:
                    raise
            record(state, prepared, request_id, status, started, state.endpoint, None)
            return api_error(exc, status, request_id)
        gen = prepared.generation
        headers = {"X-Request-Id": request_id, "X-Stackwise-Version": prepared.target.key}
        if not req.stream:
            parts = [delta async for delta in gen.astream()]
            text = "".join(parts)
            annotations, sources = prepared.sources(text)
            status = 500 if gen.finish_reason == "error" else 200
            record(state, prepared, request_id, status, started, state.endpoint, req.user, text, sources)
            if status == 500:
                return api_error(RuntimeError(f"generation failed: {type(gen.error).__name__}"), 500, request_id)
            return JSONResponse(oa.chat_completion(request_id, prepared.target.key, text, gen.finish_reason,
                                                   gen.prompt_tokens, gen.completion_tokens, annotations,
                                                   prepared.extension(sources)), headers=headers)
        from sse_starlette.sse import EventSourceResponse

        async def events() -> Any:
            created, key = int(time.time()), prepared.target.key
            text, status, sources = "", 200, []
            try:
                yield oa.sse(oa.chat_chunk(request_id, key, created, {"role": "assistant", "content": ""}))
                async for delta in gen.astream():
                    text += delta
                    yield oa.sse(oa.chat_chunk(request_id, key, created, {"content": delta}))
                annotations, sources = prepared.sources(text)
                if gen.finish_reason == "error":
                    status = 500
                    yield oa.sse(oa.error_payload("generation failed", 500))
                else:  # sources, usage and the finish reason before [DONE]
                    final: dict[str, Any] = {}
                    if annotations:
                        final["annotations"] = annotations
                    yield oa.sse(oa.chat_chunk(request_id, key, created, final, gen.finish_reason,
                                               usage=oa.usage(gen.prompt_tokens, gen.completion_tokens),
                                               stackwise={"request_id": request_id, **prepared.extension(sources)}))
                yield "[DONE]"
            finally:
                if not gen.done:  # the client went away: free the batch row
                    gen.cancel()
                    status = 499
                record(state, prepared, request_id, status, started, state.endpoint, req.user, text,
                       sources if status == 200 else [])

        return EventSourceResponse(events(), headers=headers, ping=STREAM_PING_S)

    async def embeddings(request: Request) -> Any:
        denied, _ = await state.gate(request)
        if denied is not None:
            return denied
        try:
            req = oa.parse(oa.EmbeddingRequest, await body_of(request))
            inputs = [req.input] if isinstance(req.input, str) else list(req.input)
            if not inputs or len(inputs) > 256 or any(len(t) > state.limits.prompt_chars for t in inputs):
                raise oa.APIError(f"input must hold 1 to 256 texts of at most {state.limits.prompt_chars:,} characters",
                                  param="input", fix="split the texts over several requests")
            name, vectors, tokens = await run_in_threadpool(backend.embed, req.model, inputs)
        except Exception as exc:  # noqa: BLE001
            if not isinstance(exc, (InputError, SpecError)):
                raise
            return api_error(exc, _not_found(exc) or _status_of(exc))
        return JSONResponse(oa.embeddings(name, vectors, req.encoding_format, tokens))

    async def feedback(request: Request) -> Any:
        denied, _ = await state.gate(request)
        if denied is not None:
            return denied
        try:
            req = oa.parse(oa.FeedbackRequest, await body_of(request))
            if req.score is None and req.label is None and req.correction is None:
                raise oa.APIError("feedback needs a score, a label or a correction", param="score",
                                  fix='e.g. {"request_id": ID, "score": 1.0}')
            await run_in_threadpool(_add_feedback, state, req)
        except Exception as exc:  # noqa: BLE001
            if not isinstance(exc, (InputError, SpecError)):
                raise
            return api_error(exc, 404 if type(exc).__name__ == "FeedbackNotFound" else _status_of(exc))
        return JSONResponse({"object": "feedback", "request_id": req.request_id, "status": "recorded"})

    async def metrics() -> Any:
        body, content_type = state.metrics.exposition()
        return Response(body, media_type=content_type)

    for handler in (chat, embeddings, feedback):
        handler.__annotations__["request"] = Request
    state.chat_body = chat_body
    app.add_api_route("/v1/chat/completions", chat, methods=["POST"], name="chat completions")
    app.add_api_route("/v1/embeddings", embeddings, methods=["POST"], name="embeddings")
    app.add_api_route("/v1/feedback", feedback, methods=["POST"], name="feedback")
    app.add_api_route("/metrics", metrics, methods=["GET"], name="metrics")


class _Unavailable(Exception):
    """The version cannot answer (server side): answered 503 with the cause's message."""

    def __init__(self, cause: BaseException):
        super().__init__(str(cause))
        self.cause = cause


def _add_feedback(state: Any, req: Any) -> None:
    """Attach feedback to a recorded answer (in a worker thread: it may open the store, and waits,
    bounded, for that answer to be written first)."""
    if state.feedback_factory is None:
        raise oa.APIError("this server keeps no feedback (no tracking store)", status=503, code="feedback_unavailable",
                          fix="serve on a stack with an MLflow tracking store, or set $MLFLOW_TRACKING_URI")
    state.warm_up()
    recorder = state.recorder
    if recorder is None:
        raise oa.APIError("the feedback store could not be opened (see the server's log)", status=503,
                          code="feedback_unavailable", fix="check the stack's tracking store")
    recorder.add_feedback(req.request_id, score=req.score, label=req.label, comment=req.comment,
                          correction=req.correction, user=req.user)


def _not_found(exc: BaseException) -> int | None:
    """404 for a `model` that names nothing on the endpoint (OpenAI's model_not_found)."""
    if isinstance(exc, SpecError) and getattr(exc, "where", "") == "request field 'model'":
        if not getattr(exc, "code", None):
            exc.code = "model_not_found"  # type: ignore[attr-defined]
            exc.param = "model"  # type: ignore[attr-defined]
        return 404
    return None
