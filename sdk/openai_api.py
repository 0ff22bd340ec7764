"""The OpenAI-compatible wire format of `stackwise serve`: request models, answers, stream chunks and
errors, with no server in them (the routes are in `stackwise.serve_routes`).

What the official `openai` client sends is accepted as is; what it does not know (the RAG
sources, the version that answered) rides in a `stackwise` field of the answer, which the client
keeps (`completion.model_extra["stackwise"]`), and in headers. `extra_body={"retrieval": {"k": 2,
"filter": ["year>=2019"]}}` overrides a RAG app's retrieval for one request.

Errors have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with its status
codes: 400 `invalid_request_error` (a bad field, a prompt past the model's window:
`context_length_exceeded`), 401 `authentication_error` (`invalid_api_key`), 404 (`model_not_found`,
and an unknown request id for feedback), 413 (body over the cap), 429 `rate_limit_error`, 500
`server_error`, 503 (`model_loading`, `no_traffic`).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import InputError

MAX_STOP = 4  # as OpenAI
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error",
               429: "rate_limit_error", 500: "server_error", 503: "server_error"}


class APIError(InputError):
    """A request answered with an OpenAI-shaped error: `status`, `param` (the field at fault) and
    `code` (OpenAI's machine-readable reason, e.g. `context_length_exceeded`)."""

    def __init__(self, what: str, *, status: int = 400, param: str | None = None, code: str | None = None,
                 where: str | None = None, fix: str | None = None, headers: dict[str, str] | None = None):
        self.status, self.param, self.code, self.headers = status, param, code, headers or {}
        super().__init__(what, where=where or (f"request field {param!r}" if param else "the request"), fix=fix)


def error_payload(message: str, status: int, *, param: str | None = None, code: str | None = None,
                  kind: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind or ERROR_TYPES.get(status, "server_error"), "param": param,
                      "code": code}}


def new_request_id() -> str:
    return uuid.uuid4().hex


class _Request(BaseModel):
    # Fields OpenAI defines that stackwise does not use (logprobs, presence_penalty, ...) are
    # accepted and ignored, as other compatible servers do; a wrong type is still an error.
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = Field(None, max_length=256)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = Field(1, ge=1, le=1)
    retrieval: RetrievalOverride | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: Any) -> Any:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOP or any(not s for s in stops):
            raise ValueError(f"at most {MAX_STOP} non-empty stop sequences")
        return value

    @property
    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class RetrievalOverride(BaseModel):
    """`extra_body={"retrieval": {...}}`: one request's retrieval, for a RAG app."""

    model_config = ConfigDict(extra="forbid")
    k: int | None = Field(None, ge=1, le=50)
    filter: list[str] | dict[str, Any] | str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: the text ones are read
            return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")
        return self.content or ""


class ChatRequest(_Request):
    messages: list[Message] = Field(min_length=1, max_length=256)
    max_completion_tokens: int | None = Field(None, ge=1)

    @property
    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def chat(self) -> list[dict[str, str]]:
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


class CompletionRequest(_Request):
    prompt: str | list[str]

    @property
    def limit(self) -> int | None:
        return self.max_tokens


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    input: str | list[str] = Field(min_length=1)
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: str = Field(min_length=1, max_length=64)
    score: float | None = Field(None, ge=0.0, le=1.0)
    label: str | None = Field(None, max_length=64)
    comment: str | None = Field(None, max_length=4000)
    correction: str | None = Field(None, max_length=16000)
    user: str | None = Field(None, max_length=256)


_Request.model_rebuild()
ChatRequest.model_rebuild()
CompletionRequest.model_rebuild()


def parse(model: type[BaseModel], raw: bytes) -> Any:
    """A JSON body -> `model`, or APIError 400 naming the first bad field."""
    try:
        body = json.loads(raw or b"")
    except (ValueError, UnicodeDecodeError) as exc:
        raise APIError(f"the request body is not valid JSON ({exc})", fix="send a JSON object") from None
    if not isinstance(body, dict):
        raise APIError(f"the request body must be a JSON object, not {type(body).__name__}", fix="send a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise APIError(f"{param or 'body'}: {first['msg']}", param=param,
                       fix="see the OpenAI API reference for the field's type and range") from None


# -- answers -------------------------------------------------------------------------------------
def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_completion(request_id: str, model: str, text: str, finish_reason: str, prompt_tokens: int,
                    completion_tokens: int, annotations: list[dict[str, Any]] | None = None,
                    extension: dict[str, Any] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    if annotations:
        message["annotations"] = annotations
    return {"id": f"chatcmpl-{request_id}", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
            "usage": usage(prompt_tokens, completion_tokens), "stackwise": {"request_id": request_id, **(extension or {})}}


def chat_chunk(request_id: str, model: str, created: int, delta: dict[str, Any], finish_reason: str | None = None,
               **extra: Any) -> dict[str, Any]:
    return {"id": f"chatcmpl-{request_id}", "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}], **extra}


def text_completion(request_id: str, model: str, texts: list[tuple[str, str]], prompt_tokens: int,
                    completion_tokens: int, extension: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": f"cmpl-{request_id}", "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": i, "text": text, "finish_reason": reason, "logprobs": None}
                        for i, (text, reason) in enumerate(texts)],
            "usage": usage(prompt_tokens, completion_tokens), "stackwise": {"request_id": request_id, **(extension or {})}}


def completion_chunk(request_id: str, model: str, created: int, text: str, finish_reason: str | None = None,
                     **extra: Any) -> dict[str, Any]:
    return {"id": f"cmpl-{request_id}", "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}], **extra}


def embeddings(model: str, vectors: list[list[float]], encoding: str, tokens: int) -> dict[str, Any]:
    def encode(vector: list[float]) -> Any:
        if encoding == "base64":  # what the openai client asks for by default: little-endian float32
            import numpy as np

            return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
        return [float(x) for x in vector]

    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def sse(data: dict[str, Any] | str) -> str:
    """One Server-Sent Event's data (sse-starlette adds the `data: ` framing)."""
    return data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
