"""MMLU-style multiple choice scored by log-likelihood, as the reference harnesses do: the
prompt lists the question and the lettered choices and ends with "Answer:"; the model's choice
is the letter whose continuation (" A", " B", ...) it finds most likely.

Records: `question`, `choices` (a list) or keys `A`..`D`, and `answer` (a letter or an index).
The full benchmark's CSV layout (question, A, B, C, D, answer; no header) also reads.
`build_from_text` makes a small MMLU-format set from any text (which sentence continues this
passage?), so tests and the quickstart need no download.
"""

from __future__ import annotations

import random
import re
from typing import Any

from ..errors import InputError

LETTERS = "ABCDEFGHIJ"


def choices_of(record: dict[str, Any], where: str) -> list[str]:
    if isinstance(record.get("choices"), list):
        choices = [str(c) for c in record["choices"]]
    else:
        choices = [str(record[k]) for k in LETTERS if k in record]
    if len(choices) < 2:
        raise InputError("an mmlu record needs at least 2 choices", where=where,
                         fix='give "choices": [...] or keys "A", "B", ...')
    return choices


def answer_index(record: dict[str, Any], n: int, where: str) -> int:
    answer = record.get("answer")
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < n:
        return answer
    if isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().upper() in LETTERS[:n]:
        return LETTERS.index(answer.strip().upper())
    raise InputError(f"mmlu answer {answer!r} is not a letter or index of the {n} choices", where=where,
                     fix='e.g. "answer": "B" or "answer": 1')


def prompt(question: str, choices: list[str], subject: str | None = None) -> str:
    head = f"The following is a multiple choice question{f' about {subject}' if subject else ''}.\n\n"
    body = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
    return f"{head}{question}\n{body}\nAnswer:"


def build_from_text(passages: list[str], n: int, seed: int = 0, choices: int = 4) -> list[dict[str, Any]]:
    """`n` MMLU-format records: the start of a passage, and which of `choices` sentences truly
    follows it (the distractors are sentences of other passages)."""
    rng = random.Random(seed)
    split = [re.split(r"(?<=[.!?])\s+", p.strip()) for p in passages]
    usable = [s for s in split if len(s) >= 3]
    if len(usable) < choices:
        raise InputError(f"need at least {choices} passages of 3 sentences or more", where="build_from_text",
                         fix="pass more text")
    records = []
    for i in range(n):
        sentences = usable[i % len(usable)]
        cut = rng.randrange(1, len(sentences) - 1)
        truth = sentences[cut]
        others = [s for j, s in enumerate(usable) if s is not sentences]
        distractors = [rng.choice(rng.choice(others)) for _ in range(choices - 1)]
        options = [truth, *distractors]
        rng.shuffle(options)
        records.append({
            "suite": "mmlu", "subject": "reading comprehension",
            "question": "Which sentence comes next?\n" + " ".join(sentences[:cut]),
            "choices": options, "answer": LETTERS[options.index(truth)],
        })
    return records
