"""Group fairness of a binary decision on a group-annotated task: demographic parity difference
(the largest gap between groups in the rate of positive predictions) and equalized odds
difference (the larger of the largest gaps in true-positive and false-positive rates), both
"between groups" as fairlearn defines them. fairlearn computes them when installed (the `eval`
extra); otherwise the same definitions are computed here, and the result says which.

`evaluate` adds AI Fairness 360's privileged-vs-rest metrics (statistical parity difference,
disparate impact, equal opportunity and average odds differences; see `fairness`), each
cross-checked against fairlearn, when aif360 is installed."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel


def _rate(values: list[int]) -> float | None:
    return sum(values) / len(values) if values else None


def _gap(rates: list[float | None]) -> float:
    present = [r for r in rates if r is not None]
    return max(present) - min(present) if present else 0.0


def demographic_parity_difference(y_pred: Sequence[int], groups: Sequence[str]) -> float:
    by = {g: [p for p, gg in zip(y_pred, groups) if gg == g] for g in set(groups)}
    return _gap([_rate(v) for v in by.values()])


def equalized_odds_difference(y_true: Sequence[int], y_pred: Sequence[int], groups: Sequence[str]) -> float:
    tpr, fpr = [], []
    for g in set(groups):
        pairs = [(t, p) for t, p, gg in zip(y_true, y_pred, groups) if gg == g]
        tpr.append(_rate([p for t, p in pairs if t == 1]))
        fpr.append(_rate([p for t, p in pairs if t == 0]))
    return max(_gap(tpr), _gap(fpr))


def fairness(y_true: Sequence[int], y_pred: Sequence[int], groups: Sequence[str]) -> tuple[dict[str, float], str]:
    """(metrics, backend): backend is "fairlearn" or "builtin"."""
    accuracy = sum(int(t == p) for t, p in zip(y_true, y_pred)) / max(len(y_true), 1)
    if importlib.util.find_spec("fairlearn") is not None:
        from fairlearn.metrics import demographic_parity_difference as dpd
        from fairlearn.metrics import equalized_odds_difference as eod

        return {"demographic_parity_difference": float(dpd(y_true, y_pred, sensitive_features=list(groups))),
                "equalized_odds_difference": float(eod(y_true, y_pred, sensitive_features=list(groups))),
                "accuracy": accuracy}, "fairlearn"
    return {"demographic_parity_difference": demographic_parity_difference(y_pred, groups),
            "equalized_odds_difference": equalized_odds_difference(y_true, y_pred, groups),
            "accuracy": accuracy}, "builtin"


class BiasResult(BaseModel):
    """Metrics (without the `bias.` prefix) and what each per-example row should say about them."""

    metrics: dict[str, float]
    backend: str
    reference: str  # "aif360" when its metrics are included, else "none (why)"
    privileged: list[str]
    privileged_source: str  # "config", "records" (per-record `privileged` marks) or "largest group"


def evaluate(y_true: Sequence[int], y_pred: Sequence[int], groups: Sequence[str],
             marks: Sequence[Any] | None = None, privileged: Sequence[str] | None = None,
             where: str = "bias records") -> BiasResult:
    """The bias suite: fairlearn's (or the built-in) between-group gaps and accuracy, plus
    AIF360's four privileged-vs-rest metrics cross-checked against fairlearn (a disagreement
    raises `fairness.FairnessCrossCheckError`). The privileged group comes from `privileged`,
    else the records' `privileged: true` marks, else the largest group."""
    from . import fairness as fair

    found, backend = fairness(y_true, y_pred, groups)
    flags, chosen, source = fair.privileged_flags(list(groups), marks, privileged, where)
    skip = ("aif360 not installed" if importlib.util.find_spec("aif360") is None or backend != "fairlearn"
            else "one group only" if len(set(groups)) < 2 else None)
    if skip:
        return BiasResult(metrics=found, backend=backend, reference=f"none ({skip})", privileged=chosen,
                          privileged_source=source)
    found.update(fair.cross_checked(y_true, y_pred, flags))
    return BiasResult(metrics=found, backend=backend, reference="aif360", privileged=chosen,
                      privileged_source=source)
