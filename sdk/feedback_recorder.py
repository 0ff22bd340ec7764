"""The background writer of `stackwise.feedback`: `AsyncRecorder` writes served answers to a
`FeedbackStore` from one thread, so a server never waits for MLflow.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import TYPE_CHECKING, Any

from .feedback_records import AnswerRecord

if TYPE_CHECKING:
    from .feedback import FeedbackStore

_log = logging.getLogger("stackwise.feedback")  # the logger it wrote to before it moved here


# -- the background writer ---------------------------------------------------------------------------
class AsyncRecorder:
    """Writes answers to a FeedbackStore from one background thread, so the caller never waits for
    MLflow: `submit` only enqueues and, when the bounded queue is full, drops the record and counts
    it. `add_feedback` first waits (bounded) for that request's own answer to be written."""

    def __init__(self, store: FeedbackStore, maxsize: int = 1000):
        self.store = store
        self.submitted = self.recorded = self.dropped = self.failed = 0
        self.last_error: str | None = None
        self._queue: queue.Queue[AnswerRecord | None] = queue.Queue(maxsize)
        self._pending: set[str] = set()
        self._done = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="stackwise-feedback-recorder", daemon=True)
        self._thread.start()

    def submit(self, rec: AnswerRecord) -> bool:
        """Queue one answer; False (and counted in `dropped`) when the queue is full or closed."""
        with self._done:
            if self._closed:
                self.dropped += 1
                return False
            try:
                self._queue.put_nowait(rec)
            except queue.Full:
                self.dropped += 1
                return False
            self.submitted += 1
            self._pending.add(rec.request_id)
            return True

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every answer submitted so far is written (or failed); False on timeout."""
        with self._done:
            target = self.submitted
            return self._done.wait_for(lambda: self.recorded + self.failed >= target, timeout)

    def wait_recorded(self, request_id: str, timeout: float = 5.0) -> bool:
        """Wait until `request_id`'s answer left the queue; False on timeout."""
        with self._done:
            return self._done.wait_for(lambda: request_id not in self._pending, timeout)

    def add_feedback(self, request_id: str, timeout: float = 5.0, **feedback: Any) -> None:
        """FeedbackStore.add_feedback, after this request's answer (if queued) is written."""
        self.wait_recorded(request_id, timeout)
        self.store.add_feedback(request_id, **feedback)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (up to `timeout`) and stop the thread; later submits are dropped."""
        with self._done:
            if self._closed:
                return
            self._closed = True
        self.flush(timeout)
        try:
            self._queue.put(None, timeout=max(timeout, 0.1))
        except queue.Full:
            return
        self._thread.join(timeout)

    def counts(self) -> dict[str, int]:
        return {"submitted": self.submitted, "recorded": self.recorded, "dropped": self.dropped,
                "failed": self.failed, "queued": self._queue.qsize()}

    def _run(self) -> None:
        while True:
            rec = self._queue.get()
            if rec is None:
                return
            error = None
            try:
                self.store.record_answer(rec)
            except Exception as exc:  # noqa: BLE001 - one bad write must not stop the recorder
                error = f"{type(exc).__name__}: {str(exc)[:300]}"
            with self._done:
                if error:
                    self.failed += 1
                    if self.last_error is None:
                        _log.warning("feedback recorder: cannot record request %s: %s", rec.request_id, error)
                    self.last_error = error
                else:
                    self.recorded += 1
                self._pending.discard(rec.request_id)
                self._done.notify_all()
