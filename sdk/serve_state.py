"""What the routes of one `stackwise serve` app share (`ServingState`, built by `serving_state`):
the request limits, the metrics, the feedback store and its background recorder, and the requests
per minute of each API key (`RateLimiter`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import InputError, StackwiseError
from .serve_local import DEFAULT_ENDPOINT, Server
from .serve_protocol import CHAT_MAX_TOKENS, Limits, _log


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
