"""The records of `stackwise.feedback`: a served answer (`AnswerRecord`), its feedback and review
as read back (`FeedbackEntry`, `Review`, `FeedbackItem`), one version's online figures
(`VersionStats`), and the names, labels and caps they share.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from .errors import InputError

EXPERIMENT = "stackwise-serving"
#: Labels a client may send instead of a score, with the score each counts as in the statistics.
LABELS: dict[str, float] = {"good": 1.0, "bad": 0.0, "correct": 1.0, "incorrect": 0.0, "helpful": 1.0,
                            "unhelpful": 0.0, "harmful": 0.0}
REVIEWS = ("approved", "corrected", "rejected")
MAX_ID, MAX_COMMENT, MAX_CORRECTION, MAX_NAME = 64, 4000, 16000, 256
_T = "stackwise."  # prefix of every tag and metadata key stackwise writes

class FeedbackNotFound(InputError):
    """No answer with that request id is recorded in this store (the server answers 404)."""


@dataclass(kw_only=True)
class AnswerRecord:
    """One served answer. `created` is when the request arrived (epoch seconds); `sources` are the
    cited chunks `{"id", "doc_id", "source", "score"}` (an optional `"text"` becomes eval context)."""

    request_id: str
    endpoint: str
    answer: str
    app: str = ""
    model: str = ""
    version: str = ""
    user: str | None = None
    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    sources: list[dict[str, Any]] = field(default_factory=list)
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    retrieval_ms: float | None = None
    status: int = 200
    finish_reason: str | None = None
    created: float = field(default_factory=time.time)

    @property
    def question(self) -> str:
        """The last user message (text parts joined), else the prompt."""
        for message in reversed(self.messages or []):
            if message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, list):
                    return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict)).strip()
                return str(content or "")
        return self.prompt or ""


class FeedbackEntry(BaseModel):
    score: float | None = None
    label: str | None = None
    comment: str | None = None
    correction: str | None = None
    user: str | None = None
    created_ms: int | None = None


class Review(BaseModel):
    decision: str  # approved | corrected | rejected
    reviewer: str
    expected: str | None = None
    relevant: list[str] = []
    created_ms: int | None = None


class FeedbackItem(BaseModel):
    """An answer with its feedback and review, as `list` returns it."""

    trace_id: str
    record: dict[str, Any]  # the AnswerRecord's fields
    question: str
    feedback: list[FeedbackEntry] = []
    review: Review | None = None

    @property
    def score(self) -> float | None:
        """The latest score-bearing feedback (a label counts as its LABELS score)."""
        scored = [f.score for f in self.feedback if f.score is not None]
        return scored[-1] if scored else None

    @property
    def expected(self) -> str | None:
        """The reviewer's expected answer, else None."""
        return self.review.expected if self.review else None


class VersionStats(BaseModel):
    """Online figures of one served version (app, model, version) on one endpoint's traffic."""

    app: str
    model: str
    version: str
    answers: int
    errors: int
    feedback: int
    scores: list[float]
    mean_score: float | None
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    ttft_p50_ms: float | None
    refusals: int
    refusal_rate: float | None

    @property
    def label(self) -> str:
        name = self.app or self.model or "-"
        return f"{name} v{self.version}" if self.version else name


def refused(answer: str) -> bool:
    """Whether an answer declines: the safety suite's refusal patterns, or a RAG abstention
    ("I don't know", "not in the context") as the qa suite counts them."""
    from .evaluation.qa import _REFUSALS
    from .evaluation.safety import refused as safety_refused

    return safety_refused(answer) or any(r in answer.lower() for r in _REFUSALS)
