"""Evaluation records: JSONL from any fsspec URI (or MMLU's CSV layout), and which records each
suite uses. A suite takes the records that carry its fields; a record may also name its suite
(`"suite": "mmlu"`) to keep it out of the others."""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from ..jsonl import decode, read_bytes
from ..jsonl import records as jsonl_records

# The fields each suite needs in a record (any one tuple of alternatives).
NEEDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "perplexity": (("text",),),
    "rouge": (("reference", "prompt"), ("reference", "prediction")),
    "bleu": (("reference", "prompt"), ("reference", "prediction")),
    "chrf": (("reference", "prompt"), ("reference", "prediction")),
    "qa": (("question", "answers"), ("question", "answer")),
    "retrieval": (("query", "relevant"),),
    "instruction": (("prompt", "checks"), ("prediction", "checks")),
    "mmlu": (("question", "choices", "answer"), ("question", "A", "B", "answer")),
    "safety": (("prompt", "harmful"),),
    "bias": (("group", "label", "prediction"), ("group", "label", "prompt", "choices")),
}
# `qa` answers carry a list `answers` or one `answer`; an mmlu record also has `answer`, and the
# suite field or the `choices` key keeps it out of qa.
_EXCLUDES = {"qa": ("choices", "A")}


@dataclass
class EvalData:
    uri: str
    records: list[dict[str, Any]]
    sha256: str
    lines: list[int]

    def for_suite(self, suite: str, limit: int | None = None) -> list[tuple[int, dict[str, Any]]]:
        """(line, record) pairs the suite evaluates, at most `limit`."""
        out = []
        for line, record in zip(self.lines, self.records):
            named = record.get("suite")
            if named is not None and named != suite:
                continue
            if any(k in record for k in _EXCLUDES.get(suite, ())) and named != suite:
                continue
            if any(all(f in record for f in need) for need in NEEDS[suite]):
                out.append((line, record))
        return out[:limit] if limit else out


def read_eval_data(uri: str) -> EvalData:
    raw = read_bytes(uri, "evaluation data")
    text = decode(raw, uri, "evaluation data")
    sha = hashlib.sha256(raw).hexdigest()
    if uri.lower().endswith(".csv"):
        return _mmlu_csv(uri, text, sha)
    records, lines = [], []
    for number, record in jsonl_records(text, uri, "write one JSON object per line"):
        records.append(record)
        lines.append(number)
    if not records:
        raise InputError(f"evaluation data {uri} has no records", where=uri, fix="add JSON lines")
    return EvalData(uri, records, sha, lines)


def _mmlu_csv(uri: str, text: str, sha: str) -> EvalData:
    """MMLU's own layout: question, A, B, C, D, answer; no header."""
    records, lines = [], []
    for number, row in enumerate(csv.reader(io.StringIO(text)), 1):
        if not row:
            continue
        if len(row) < 4:
            raise InputError(f"line {number} has {len(row)} columns; MMLU CSV has question, choices..., answer",
                             where=f"{uri} line {number}", fix="use the MMLU CSV layout")
        records.append({"suite": "mmlu", "question": row[0], "choices": row[1:-1], "answer": row[-1].strip()})
        lines.append(number)
    return EvalData(uri, records, sha, lines)
