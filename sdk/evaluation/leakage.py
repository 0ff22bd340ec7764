"""The leakage guard: evaluation records whose text also appears in the training data, compared
by a hash of normalized text (lowercase, punctuation dropped, whitespace collapsed), so a copy
that only differs in case, spacing or punctuation is still caught.

Training texts are every string of a training record (`text`, `prompt`, `completion`, message
contents); evaluation texts are the fields a model is scored on (text, prompt, question,
reference, completion)."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from ..errors import InputError

EVAL_FIELDS = ("text", "prompt", "question", "reference", "completion", "query")
# Very short strings ("yes", "Paris") collide by chance, not by leakage.
MIN_CHARS = 24


class LeakageError(InputError):
    """Evaluation records were found in the training data."""


def normalized_hash(text: str) -> str | None:
    norm = " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())
    if len(norm) < MIN_CHARS:
        return None
    return hashlib.sha256(norm.encode()).hexdigest()


def training_hashes(records: list[dict[str, Any]]) -> set[str]:
    out: set[str] = set()

    def add(value: Any) -> None:
        if isinstance(value, str):
            h = normalized_hash(value)
            if h:
                out.add(h)
        elif isinstance(value, list):
            for item in value:
                add(item.get("content") if isinstance(item, dict) else item)

    for record in records:
        for value in record.values():
            add(value)
        if "prompt" in record and "completion" in record:
            add(f"{record['prompt']} {record['completion']}")
    return out


def find_leaks(eval_records: list[tuple[int, dict[str, Any]]], train: set[str]) -> list[tuple[int, str]]:
    """(line, field) of every evaluation record with a field found in the training data."""
    leaks = []
    for line, record in eval_records:
        for field in EVAL_FIELDS:
            value = record.get(field)
            if isinstance(value, str) and normalized_hash(value) in train:
                leaks.append((line, field))
                break
    return leaks


def check(eval_records: list[tuple[int, dict[str, Any]]], train_uris: list[str], allow: bool,
          where: str) -> dict[str, Any]:
    """Compare; raise LeakageError unless `allow`. Returns what was checked and found."""
    from ..training.data import read_dataset

    hashes: set[str] = set()
    for uri in train_uris:
        hashes |= training_hashes(read_dataset(uri).records)
    leaks = find_leaks(eval_records, hashes) if hashes else []
    summary = {"training_data": train_uris, "checked": len(eval_records), "leaked": len(leaks),
               "lines": [line for line, _ in leaks][:50], "allowed": allow}
    if leaks and not allow:
        shown = ", ".join(f"line {line} ({field})" for line, field in leaks[:8])
        raise LeakageError(
            f"{len(leaks)} of {len(eval_records)} evaluation records appear in the training data: {shown}"
            + (" ..." if len(leaks) > 8 else ""),
            where=f"{where} vs {', '.join(train_uris)}",
            fix="evaluate on held-out records (remove these lines), or pass --allow-leakage to report and go on",
        )
    return summary
