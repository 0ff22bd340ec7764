"""The wire side of `stackwise serve`'s predict routes: request limits, the three body shapes a
predict request comes in (`parse_predict`) and the answer in the same shape (`render`), the errors
they are refused with, the body reader that enforces the size cap (`read_body`), and what answers
may say (`public_text`, `error_body`). `stackwise.serving` describes the routes and re-exports
these names.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from .errors import InputError, StackwiseError


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
