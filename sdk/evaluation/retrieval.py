"""Retrieval quality of an index on labelled queries, with binary relevance:
recall@k = |relevant in top k| / |relevant|; MRR = 1 / rank of the first relevant hit (0 if none
in the top k); nDCG@k = DCG / ideal DCG with gain 1 / log2(rank + 1)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def recall_at_k(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    if not relevant:
        return 0.0
    return len(set(ranked[:k]) & relevant) / len(relevant)


def reciprocal_rank(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    for rank, item in enumerate(ranked[:k], 1):
        if item in relevant:
            return 1.0 / rank
    return 0.0


def ndcg_at_k(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    dcg = sum(1.0 / math.log2(rank + 1) for rank, item in enumerate(ranked[:k], 1) if item in relevant)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(relevant), k) + 1))
    return dcg / ideal if ideal else 0.0


def label_of(doc_id: str, labels: set[str]) -> str | None:
    """The label a hit's doc_id matches: the doc_id itself, or a label it ends with after '/' or
    '#' (so `lee-001.txt` matches `file:///data/lee-001.txt`, and `lee-001` a JSONL record)."""
    if doc_id in labels:
        return doc_id
    for label in labels:
        if doc_id.endswith("/" + label) or doc_id.endswith("#" + label):
            return label
    return None


def ranked_labels(doc_ids: Sequence[str], labels: set[str]) -> list[str]:
    """Unique documents in rank order (a document with several chunks counts once), each
    replaced by the label it matches."""
    seen: list[str] = []
    for doc_id in doc_ids:
        name = label_of(doc_id, labels) or doc_id
        if name not in seen:
            seen.append(name)
    return seen
