"""Feedback and human review of served answers, kept as MLflow traces with assessments on the
stack's tracking store, so they flow back into evaluation.

- One trace per answer (`record_answer`): a root span with the messages or prompt and the answer,
  a retriever child span with the cited chunks; tags `stackwise.request_id`, `.endpoint`, `.app`,
  `.model`, `.version`; metadata with latency, time to first token, HTTP status and whether the
  answer refused. The trace id is derived from the request id, so a lookup is one read.
- User feedback is an MLflow `Feedback` assessment (`user_score`, 0..1, the label mapped through
  `LABELS`; `user_comment` when only a comment came); a user's correction is an `Expectation`
  (`expected_response`). A reviewer's verdict is an `expected_response` expectation of its own plus
  `expected_retrieved_context` (the doc ids judged relevant) and the tags `stackwise.review`
  (approved | corrected | rejected) and `stackwise.reviewer`.
- `export_eval` writes records `stackwise eval` reads: qa `{"question", "answers", "context"?}` and
  retrieval `{"query", "relevant"}`; `export_label_studio` writes Label Studio tasks.
- `stats` and `compare_versions` give the online A/B figures per version with significance tests.
- `AsyncRecorder` writes answers from a background thread so a server never waits for MLflow.

This module holds the store and re-exports the names of the others: `stackwise.feedback_records`
(the records and their vocabulary), `stackwise.feedback_export` (the exports, mixed into the
store), `stackwise.feedback_stats` (the online figures) and `stackwise.feedback_recorder`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from dataclasses import asdict
from typing import Any

from .errors import ConfigError, InputError
from .feedback_export import FeedbackExports

# Re-exported: `stackwise.feedback` stays the public surface.
from .feedback_records import (  # noqa: F401
    _T,
    EXPERIMENT,
    LABELS,
    MAX_COMMENT,
    MAX_CORRECTION,
    MAX_ID,
    MAX_NAME,
    REVIEWS,
    AnswerRecord,
    FeedbackEntry,
    FeedbackItem,
    FeedbackNotFound,
    Review,
    VersionStats,
    refused,
)
from .feedback_recorder import AsyncRecorder  # noqa: F401
from .feedback_stats import _version_stats, compare_versions, percentile  # noqa: F401

_PAGE = 500


def trace_id_for(experiment_id: str, request_id: str) -> str:
    """The trace id of a request's answer in one experiment: derived, so lookups need no search
    (trace ids are unique across a tracking store, hence the experiment in the hash)."""
    return "tr-" + hashlib.sha256(f"{experiment_id}\0{request_id}".encode()).hexdigest()[:32]


def _b64(number: int, size: int) -> str:
    return base64.b64encode(number.to_bytes(size, "big")).decode()


def _span(trace_id: str, name: str, kind: str, start_ns: int, end_ns: int, inputs: Any, outputs: Any,
          parent: int | None, ok: bool) -> tuple[int, dict[str, Any]]:
    span_id = secrets.randbits(63) | 1
    attrs = {"mlflow.traceRequestId": json.dumps(trace_id), "mlflow.spanType": json.dumps(kind),
             "mlflow.spanInputs": json.dumps(inputs), "mlflow.spanOutputs": json.dumps(outputs)}
    return span_id, {"trace_id": _b64(int(trace_id[3:], 16), 16), "span_id": _b64(span_id, 8),
                     "parent_span_id": _b64(parent, 8) if parent else "", "name": name,
                     "start_time_unix_nano": start_ns, "end_time_unix_nano": end_ns, "attributes": attrs,
                     "status": {"code": "STATUS_CODE_OK" if ok else "STATUS_CODE_ERROR", "message": ""}, "events": []}


def _text(value: Any, name: str, limit: int, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise InputError(f"{name} must be text of at most {limit} characters", where=where,
                         fix=f"send a shorter {name}")
    return value


def _quoted(value: str, name: str) -> str:
    if "'" in value or "\\" in value:
        raise InputError(f"{name} {value!r} contains a quote or backslash", where=f"--{name}",
                         fix="app, version and endpoint names are plain words")
    return f"'{value}'"

class FeedbackStore(FeedbackExports):
    """Answers, feedback and reviews in one MLflow experiment of a tracking store. Thread-safe:
    every call opens its own store session. Its exports come from `FeedbackExports`."""

    def __init__(self, tracking_uri: str | None = None, experiment: str = EXPERIMENT,
                 artifact_location: str | None = None):
        from .registry import require

        require("mlflow", "train", "feedback and review")
        import mlflow
        from mlflow import MlflowClient
        from mlflow.tracing.client import TracingClient

        self.tracking_uri = tracking_uri or mlflow.get_tracking_uri()
        self._client = MlflowClient(self.tracking_uri)
        self._tracing = TracingClient(self.tracking_uri)
        found = self._client.get_experiment_by_name(experiment)
        if found is None:
            try:
                self._client.create_experiment(experiment, artifact_location=artifact_location)
            except Exception:  # noqa: BLE001 - another process created it first
                pass
            found = self._client.get_experiment_by_name(experiment)
        self.experiment_id: str = found.experiment_id
        self.experiment = experiment

    @classmethod
    def for_stack(cls, stack: Any = None) -> FeedbackStore:
        """The store on a stack's tracking URI; `stack` is a Stack, a name or None (the active one)."""
        from .model_registry import _artifact_root
        from .stack import load_stack

        stack = stack if stack is not None and not isinstance(stack, str) else load_stack(stack)
        outputs = stack.outputs
        if not outputs.tracking_uri:
            raise ConfigError(f"stack {stack.name} has no tracking URI to keep feedback in",
                              where=f"stack {stack.name} outputs: tracking_uri",
                              fix="export tracking_uri from the stack's Pulumi program (an MLflow server)")
        return cls(outputs.tracking_uri, artifact_location=f"{_artifact_root(outputs.artifact_store)}/{EXPERIMENT}")

    # -- writing ---------------------------------------------------------------------------------
    def record_answer(self, rec: AnswerRecord) -> str:
        """Write one answer as a trace; returns its trace id. Callable from any thread. A request id
        already recorded is refused (InputError): one trace per answer."""
        from mlflow.entities import Span, TraceInfo, TraceLocation, TraceState

        self._check_id(rec.request_id)
        trace_id = trace_id_for(self.experiment_id, rec.request_id)
        if self._lookup(trace_id) is not None:
            raise InputError(f"request id {rec.request_id!r} is already recorded",
                             where=f"experiment {self.experiment}", fix="give every answer a new request id")
        start = int(rec.created * 1e9)
        end = start + int(max(rec.latency_ms, 0.0) * 1e6)
        ok = rec.status < 400
        # A RAG answer carries both: the user's messages and the prompt its generator read.
        inputs = {k: v for k, v in (("messages", rec.messages), ("prompt", rec.prompt)) if v is not None}
        outputs = {"answer": rec.answer, "finish_reason": rec.finish_reason, "sources": rec.sources}
        root_id, root = _span(trace_id, "answer", "CHAT_MODEL" if rec.messages is not None else "LLM", start, end,
                              {**inputs, "user": rec.user}, outputs, None, ok)
        docs = [{"id": str(s.get("id", "")), "page_content": str(s.get("text", "")),
                 "metadata": {"doc_uri": s.get("source") or s.get("doc_id"), "chunk_id": s.get("id"),
                              "doc_id": s.get("doc_id"), "score": s.get("score")}} for s in rec.sources]
        spans = [root]
        if rec.sources:
            took = int((rec.retrieval_ms or 0.0) * 1e6)
            spans.append(_span(trace_id, "retrieve", "RETRIEVER", start, start + took, {"query": rec.question}, docs,
                               root_id, True)[1])
        meta = {f"{_T}latency_ms": f"{rec.latency_ms:.3f}", f"{_T}status": str(rec.status),
                f"{_T}refused": str(ok and refused(rec.answer)).lower(), f"{_T}created": f"{rec.created:.6f}"}
        if rec.ttft_ms is not None:
            meta[f"{_T}ttft_ms"] = f"{rec.ttft_ms:.3f}"
        tags = {f"{_T}request_id": rec.request_id, **{f"{_T}{k}": str(getattr(rec, k) or "")[:MAX_NAME]
                                                       for k in ("endpoint", "app", "model", "version")}}
        info = TraceInfo(trace_id=trace_id, trace_location=TraceLocation.from_experiment_id(self.experiment_id),
                         request_time=start // 1_000_000, state=TraceState.OK if ok else TraceState.ERROR,
                         request_preview=rec.question[:1000], response_preview=rec.answer[:1000],
                         client_request_id=rec.request_id, execution_duration=int(rec.latency_ms),
                         trace_metadata=meta, tags=tags)
        self._tracing.log_spans(self.experiment_id, [Span.from_dict(s) for s in spans])
        self._tracing.start_trace(info)
        return trace_id

    def add_feedback(self, request_id: str, *, score: float | None = None, label: str | None = None,
                     comment: str | None = None, correction: str | None = None, user: str | None = None) -> None:
        """Attach a user's feedback to the answer of `request_id`.

        `score` is in [0, 1]; `label` one of LABELS (it counts as that score when no score is
        given); `correction` is the answer the user expected. At least one of the four is needed.
        Raises FeedbackNotFound for an unknown request id, InputError for anything invalid."""
        from mlflow.entities import AssessmentSource, Expectation, Feedback

        self._check_id(request_id)
        where = f"feedback for request {request_id!r}"
        if score is not None:
            if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0.0 <= score <= 1.0:
                raise InputError(f"score must be a number in [0, 1], got {score!r}", where=where,
                                 fix="send a score from 0 (bad) to 1 (good), or a label")
        if label is not None:
            label = str(label).strip().lower()
            if label not in LABELS:
                raise InputError(f"unknown feedback label {label[:40]!r}", where=where,
                                 fix=f"use one of: {', '.join(LABELS)}")
        comment = _text(comment, "comment", MAX_COMMENT, where)
        correction = _text(correction, "correction", MAX_CORRECTION, where)
        user = _text(user, "user", MAX_NAME, where)
        if score is None and label is None and not comment and not correction:
            raise InputError("feedback needs a score, a label, a comment or a correction", where=where,
                             fix='e.g. {"request_id": "...", "score": 1}')
        trace_id = self._info(request_id).trace_id
        source = AssessmentSource(source_type="HUMAN", source_id=user or "anonymous")
        if score is not None or label is not None:
            value = float(score) if score is not None else LABELS[label]  # type: ignore[index]
            self._tracing.log_assessment(trace_id, Feedback(name="user_score", value=value, source=source,
                                                            rationale=comment, metadata={"label": label or ""}))
        elif comment:
            self._tracing.log_assessment(trace_id, Feedback(name="user_comment", value=comment, source=source))
        if correction:
            self._tracing.log_assessment(trace_id, Expectation(name="expected_response", value=correction,
                                                               source=source, metadata={"kind": "user"}))
        self._tracing.set_trace_tag(trace_id, f"{_T}feedback", "true")

    def review(self, request_id: str, *, approve: bool, correction: str | None = None, reviewer: str,
               relevant: list[str] | None = None) -> None:
        """A reviewer's verdict: approve (the answer becomes the expected answer), correct (give
        `correction`, which becomes it) or reject (neither). `relevant` are the doc ids judged
        relevant (default: every cited document when approving, none otherwise). A later review
        replaces an earlier one."""
        from mlflow.entities import AssessmentSource, Expectation

        self._check_id(request_id)
        where = f"review of request {request_id!r}"
        reviewer = _text(reviewer, "reviewer", MAX_NAME, where) or ""
        correction = _text(correction, "correction", MAX_CORRECTION, where)
        if not reviewer.strip():
            raise InputError("a review needs the reviewer's name", where=where, fix="pass --reviewer NAME")
        if approve and correction:
            raise InputError("approve or correct, not both", where=where, fix="drop the correction, or approve=False")
        item = self._item(self._trace(request_id))
        decision = "approved" if approve else "corrected" if correction else "rejected"
        expected = item.record["answer"] if approve else correction
        if relevant is None:
            cited = {str(s.get("doc_id") or s.get("source")) for s in item.record["sources"]}
            relevant = sorted(cited) if approve else []
        relevant = [str(d) for d in relevant]
        source = AssessmentSource(source_type="HUMAN", source_id=reviewer)
        meta = {"kind": "review", "decision": decision, "review": secrets.token_hex(8)}
        if expected is not None:
            self._tracing.log_assessment(item.trace_id, Expectation(name="expected_response", value=expected,
                                                                    source=source, metadata=meta))
        self._tracing.log_assessment(item.trace_id, Expectation(
            name="expected_retrieved_context", value=[{"doc_uri": d} for d in relevant],
            source=source, metadata=meta))
        self._tracing.set_trace_tag(item.trace_id, f"{_T}reviewer", reviewer)
        self._tracing.set_trace_tag(item.trace_id, f"{_T}review", decision)

    # -- reading ---------------------------------------------------------------------------------
    def get(self, request_id: str) -> FeedbackItem:
        return self._item(self._trace(request_id))

    def list(self, *, app: str | None = None, version: str | None = None, endpoint: str | None = None,
             reviewed: bool | None = None, with_feedback: bool | None = None, limit: int | None = 100,
             oldest_first: bool = False) -> list[FeedbackItem]:
        """Answers with their feedback and review, newest first (or oldest first), at most `limit`."""
        found = self._search(self._filter(app, version, endpoint, reviewed, with_feedback), True, limit, oldest_first)
        return [self._item(t) for t in found]

    def stats(self, endpoint: str | None = None, app: str | None = None) -> list[VersionStats]:
        """Per served version: answers, errors, feedback, scores, latency p50/p99, refusal rate."""
        groups: dict[tuple[str, str, str], list[Any]] = {}
        for trace in self._search(self._filter(app, None, endpoint, None, None), False, None, True):
            tags = trace.info.tags
            key = (tags.get(f"{_T}app", ""), tags.get(f"{_T}model", ""), tags.get(f"{_T}version", ""))
            groups.setdefault(key, []).append(trace.info)
        return [_version_stats(key, infos) for key, infos in sorted(groups.items())]

    # -- internals -------------------------------------------------------------------------------
    @staticmethod
    def _check_id(request_id: Any) -> None:
        if not isinstance(request_id, str) or not request_id.strip() or len(request_id) > MAX_ID:
            raise InputError(f"invalid request id {str(request_id)[:80]!r}", where="request_id",
                             fix="use the request id an answer returned (its x-request-id header)")

    def _lookup(self, trace_id: str) -> Any:
        """The trace's info, None when the store has no such trace (other errors propagate)."""
        from mlflow.exceptions import MlflowException

        try:
            return self._tracing.get_trace_info(trace_id)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                return None
            raise

    def _info(self, request_id: str) -> Any:
        self._check_id(request_id)
        info = self._lookup(trace_id_for(self.experiment_id, request_id))
        if info is None or info.experiment_id != self.experiment_id:
            raise FeedbackNotFound(f"no answer with request id {request_id!r} is recorded",
                                   where=f"experiment {self.experiment} on {_safe_uri(self.tracking_uri)}",
                                   fix="use the request id an answer returned (its x-request-id header), "
                                       "see `stackwise feedback list --all`")
        return info

    def _trace(self, request_id: str) -> Any:
        return self._tracing.get_trace(self._info(request_id).trace_id)

    @staticmethod
    def _filter(app: str | None, version: str | None, endpoint: str | None, reviewed: bool | None,
                with_feedback: bool | None) -> str:
        parts = [f"tags.`{_T}{k}` = {_quoted(v, k)}" for k, v in (("app", app), ("version", version),
                                                                  ("endpoint", endpoint)) if v is not None]
        for key, flag in (("review", reviewed), ("feedback", with_feedback)):
            if flag is not None:
                parts.append(f"tags.`{_T}{key}` IS {'NOT NULL' if flag else 'NULL'}")
        return " AND ".join(parts)

    def _search(self, query: str, spans: bool, limit: int | None, oldest_first: bool) -> list[Any]:
        out: list[Any] = []
        token = None
        while limit is None or len(out) < limit:
            page = self._client.search_traces(locations=[self.experiment_id], filter_string=query or None,
                                              max_results=min(_PAGE, limit - len(out)) if limit else _PAGE,
                                              order_by=[f"timestamp_ms {'ASC' if oldest_first else 'DESC'}"],
                                              page_token=token, include_spans=spans)
            out.extend(page)
            token = page.token
            if not token or not page:
                break
        return out

    @staticmethod
    def _item(trace: Any) -> FeedbackItem:
        info, meta, tags = trace.info, trace.info.trace_metadata, trace.info.tags
        root = next(s for s in trace.data.spans if s.parent_id is None)
        inputs, outputs = root.inputs or {}, root.outputs or {}
        rec = AnswerRecord(request_id=tags.get(f"{_T}request_id", ""), endpoint=tags.get(f"{_T}endpoint", ""),
                           app=tags.get(f"{_T}app", ""), model=tags.get(f"{_T}model", ""),
                           version=tags.get(f"{_T}version", ""), user=inputs.get("user"),
                           messages=inputs.get("messages"), prompt=inputs.get("prompt"),
                           answer=outputs.get("answer", ""), sources=outputs.get("sources") or [],
                           latency_ms=float(meta.get(f"{_T}latency_ms", 0)),
                           ttft_ms=float(meta[f"{_T}ttft_ms"]) if f"{_T}ttft_ms" in meta else None,
                           status=int(meta.get(f"{_T}status", 200)), finish_reason=outputs.get("finish_reason"),
                           created=float(meta.get(f"{_T}created", info.request_time / 1000)))
        feedback: list[FeedbackEntry] = []
        reviews: dict[str, Review] = {}  # review token -> the verdict its expectations carry
        for a in sorted(info.assessments, key=lambda a: a.create_time_ms or 0):
            meta_a, who, when = a.metadata or {}, a.source.source_id, a.create_time_ms
            if a.valid is False:
                continue
            if a.name == "user_score":
                feedback.append(FeedbackEntry(score=float(a.value), label=meta_a.get("label") or None,
                                              comment=a.rationale, user=who, created_ms=when))
            elif a.name == "user_comment":
                feedback.append(FeedbackEntry(comment=str(a.value), user=who, created_ms=when))
            elif a.name == "expected_response" and meta_a.get("kind") == "user":
                feedback.append(FeedbackEntry(correction=str(a.value), user=who, created_ms=when))
            elif meta_a.get("kind") == "review":
                review = reviews.setdefault(meta_a.get("review", ""), Review(
                    decision=meta_a.get("decision", ""), reviewer=who, created_ms=when))
                if a.name == "expected_response":
                    review.expected = str(a.value)
                elif a.name == "expected_retrieved_context":
                    review.relevant = [str(d.get("doc_uri")) for d in a.value or [] if d.get("doc_uri")]
        latest = list(reviews.values())[-1] if reviews else None  # first seen in time order: the newest last
        return FeedbackItem(trace_id=info.trace_id, record=asdict(rec), question=rec.question, feedback=feedback,
                            review=latest)


def _safe_uri(uri: str) -> str:
    """The URI without credentials (user:password@) and with known secrets masked, for messages."""
    import re

    from .secrets import redact

    return redact(re.sub(r"//[^/@]*@", "//***@", uri))
