"""Factual accuracy against gold answers: SQuAD v1.1 exact match and token F1 (the official
script's normalization: lowercase, drop punctuation and the articles a/an/the, collapse
whitespace; the best score over the gold answers), and for RAG answers whether the answer is
supported by the retrieved context."""

from __future__ import annotations

import re
import string
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)
# An answer counts as supported when at least this share of its (normalized) tokens occur in
# the context: lenient to inflection and glue words, strict against invented facts.
SUPPORT_THRESHOLD = 0.8
_REFUSALS = ("i don't know", "i do not know", "not in the context", "cannot answer")


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: list[str]) -> float:
    return float(any(normalize_answer(prediction) == normalize_answer(g) for g in gold))


def _f1(prediction: str, truth: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = Counter(pred) & Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, gold: list[str]) -> float:
    return max((_f1(prediction, g) for g in gold), default=0.0)


def support(answer: str, context: str) -> float:
    """The share of the answer's normalized tokens found in the context (0 for an empty answer)."""
    tokens = normalize_answer(answer).split()
    if not tokens:
        return 0.0
    vocab = set(normalize_answer(context).split())
    return sum(t in vocab for t in tokens) / len(tokens)


def supported(answer: str, context: str, threshold: float = SUPPORT_THRESHOLD) -> bool:
    """Whether the context backs the answer: its normalized text appears in the context, or
    enough of its tokens do. An abstention ("I don't know") is never counted as supported."""
    norm = normalize_answer(answer)
    if not norm or any(r in answer.lower() for r in _REFUSALS):
        return False
    return norm in normalize_answer(context) or support(answer, context) >= threshold


def gold_answers(record: dict) -> list[str]:
    answers = record.get("answers", record.get("answer"))
    if isinstance(answers, str):
        return [answers]
    return [str(a) for a in answers or []]
