"""The online A/B figures of `stackwise.feedback`: per-version statistics from the answers'
traces (`FeedbackStore.stats`) and the significance tests between two
versions (`compare_versions`).
"""

from __future__ import annotations

import math
from typing import Any

from .feedback_records import _T, VersionStats


# -- online statistics -------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _version_stats(key: tuple[str, str, str], infos: list[Any]) -> VersionStats:
    scores, latencies, ttfts, errors, refusals = [], [], [], 0, 0
    for info in infos:
        meta = info.trace_metadata
        latencies.append(float(meta.get(f"{_T}latency_ms", 0)))
        if f"{_T}ttft_ms" in meta:
            ttfts.append(float(meta[f"{_T}ttft_ms"]))
        errors += int(meta.get(f"{_T}status", "200")) >= 400
        refusals += meta.get(f"{_T}refused") == "true"
        rated = sorted((a for a in info.assessments if a.name == "user_score" and a.valid is not False),
                       key=lambda a: a.create_time_ms or 0)
        if rated:
            scores.append(float(rated[-1].value))  # one score per answer: the latest
    ok = len(infos) - errors
    return VersionStats(app=key[0], model=key[1], version=key[2], answers=len(infos), errors=errors,
                        feedback=len(scores), scores=scores, mean_score=sum(scores) / len(scores) if scores else None,
                        latency_p50_ms=percentile(latencies, 50), latency_p99_ms=percentile(latencies, 99),
                        ttft_p50_ms=percentile(ttfts, 50), refusals=refusals,
                        refusal_rate=refusals / ok if ok else None)


def compare_versions(a: VersionStats, b: VersionStats, alpha: float = 0.05) -> dict[str, Any]:
    """Whether b differs from a: Welch's t-test on feedback scores (unequal variances) with Cohen's
    d (average-variance form), and Fisher's exact test on refusals among successful answers with
    the odds ratio. A test without enough data gives p_value None and significant False."""
    from .registry import require

    stats = require("scipy.stats", "eval", "the significance tests")
    out: dict[str, Any] = {"a": a.label, "b": b.label, "alpha": alpha}
    score: dict[str, Any] = {"n_a": len(a.scores), "n_b": len(b.scores), "mean_a": a.mean_score,
                             "mean_b": b.mean_score, "diff": None, "t": None, "p_value": None, "cohens_d": None}
    if a.scores and b.scores:
        score["diff"] = b.mean_score - a.mean_score  # type: ignore[operator]
    if len(a.scores) >= 2 and len(b.scores) >= 2:
        var_a, var_b = _variance(a.scores), _variance(b.scores)
        if var_a + var_b > 0:
            result = stats.ttest_ind(b.scores, a.scores, equal_var=False)
            score["t"], score["p_value"] = float(result.statistic), float(result.pvalue)
            score["cohens_d"] = score["diff"] / math.sqrt((var_a + var_b) / 2)
        else:
            score["note"] = "no variance in either version's scores"
    else:
        score["note"] = "needs at least 2 scored answers per version"
    score["significant"] = score["p_value"] is not None and score["p_value"] < alpha
    ok_a, ok_b = a.answers - a.errors, b.answers - b.errors
    refusal: dict[str, Any] = {"rate_a": a.refusal_rate, "rate_b": b.refusal_rate, "diff": None,
                               "odds_ratio": None, "p_value": None}
    if ok_a > 0 and ok_b > 0:
        refusal["diff"] = b.refusals / ok_b - a.refusals / ok_a
        result = stats.fisher_exact([[b.refusals, ok_b - b.refusals], [a.refusals, ok_a - a.refusals]])
        refusal["odds_ratio"], refusal["p_value"] = float(result[0]), float(result[1])
    refusal["significant"] = refusal["p_value"] is not None and refusal["p_value"] < alpha
    out["score"], out["refusal"] = score, refusal
    return out


def _variance(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / (len(values) - 1)
