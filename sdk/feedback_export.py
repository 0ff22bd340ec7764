"""The exports of a `stackwise.feedback.FeedbackStore` (mixed into it): evaluation JSONL
(`export_eval`) and Label Studio tasks (`export_label_studio`), both read through the store's
`list` and written at once (a temporary file renamed over the target).
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from .errors import InputError


class FeedbackExports:
    """`FeedbackStore`'s export methods; they read through its `list`."""

    def export_eval(self, path: str | Path, *, reviewed_only: bool = True, include_predictions: bool = False,
                    app: str | None = None, version: str | None = None) -> dict[str, int]:
        """Write evaluation JSONL: a qa record per answer with an expected answer (a reviewer's; with
        `reviewed_only=False` also a user's correction) and a retrieval record per answer with
        relevant doc ids. `include_predictions` adds the served answer as `prediction`, so the qa
        suite scores what was served. Returns counts per suite."""
        items = self.list(app=app, version=version, reviewed=True if reviewed_only else None, limit=None,
                          oldest_first=True)
        lines, counts = [], {"qa": 0, "retrieval": 0}
        for item in items:
            if item.review is not None and item.review.decision == "rejected":
                continue
            expected = item.expected
            if expected is None and not reviewed_only:
                expected = next((f.correction for f in reversed(item.feedback) if f.correction), None)
            if expected is None or not item.question:
                continue
            ref = {"request_id": item.record["request_id"], "app": item.record["app"],
                   "version": item.record["version"]}
            qa_rec: dict[str, Any] = {"question": item.question, "answers": [expected], **ref}
            texts = [str(s["text"]) for s in item.record["sources"] if s.get("text")]
            if texts:
                qa_rec["context"] = "\n\n".join(texts)
            if include_predictions:
                qa_rec["prediction"] = item.record["answer"]
            lines.append(qa_rec)
            counts["qa"] += 1
            if item.review is not None and item.review.relevant:
                lines.append({"query": item.question, "relevant": item.review.relevant, **ref})
                counts["retrieval"] += 1
        _write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines))
        return counts

    def export_label_studio(self, path: str | Path, *, reviewed: bool | None = None,
                            with_feedback: bool | None = None, app: str | None = None) -> int:
        """Write Label Studio tasks (JSON list of {"data", "predictions"}) for LABEL_STUDIO_CONFIG:
        the served answer is the prediction a labeller accepts or edits. Returns the task count."""
        tasks = []
        for item in self.list(app=app, reviewed=reviewed, with_feedback=with_feedback, limit=None, oldest_first=True):
            rec = item.record
            sources = "\n".join(f"[{i}] {s.get('doc_id') or s.get('source')} (score {s.get('score')})"
                                + (f": {s['text']}" if s.get("text") else "") for i, s in enumerate(rec["sources"], 1))
            data = {"request_id": rec["request_id"], "question": item.question, "answer": rec["answer"],
                    "sources": sources or "(none)", "app": rec["app"], "model": rec["model"], "version": rec["version"],
                    "user_score": item.score,
                    "user_comment": next((f.comment for f in item.feedback if f.comment), None),
                    "review": item.review.decision if item.review else None}
            result = [{"id": "answer", "from_name": "answer", "to_name": "question", "type": "textarea",
                       "value": {"text": [rec["answer"]]}}]
            tasks.append({"data": data, "predictions": [{"model_version": rec["model"] or rec["app"] or "served",
                                                         "result": result}]})
        _write(path, json.dumps(tasks, indent=2, ensure_ascii=False) + "\n")
        return len(tasks)


def _write(path: str | Path, text: str) -> None:
    """Write `text` to a local file at once (a temporary file renamed over it)."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(target)
    except OSError as exc:
        raise InputError(f"cannot write {target}: {exc.strerror or exc}", where=str(target),
                         fix="choose a writable path") from None
