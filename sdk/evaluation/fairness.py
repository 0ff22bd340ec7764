"""Group fairness with AI Fairness 360 as the reference, cross-checked against fairlearn.

AIF360 compares one *privileged* group against the pooled *unprivileged* rest (a binary protected
attribute); its metrics are signed, unprivileged minus privileged (0 is parity, negative means the
unprivileged group gets fewer positive outcomes):

- statistical_parity_difference  P(Yhat=1 | unpriv) - P(Yhat=1 | priv)
- disparate_impact               P(Yhat=1 | unpriv) / P(Yhat=1 | priv)   (1 is parity; nan when undefined)
- equal_opportunity_difference   TPR_unpriv - TPR_priv
- average_odds_difference        ((FPR_unpriv - FPR_priv) + (TPR_unpriv - TPR_priv)) / 2

The same four are recomputed with fairlearn on the same privileged / unprivileged split
(`MetricFrame` per group; `demographic_parity_difference` and `equal_opportunity_difference` for
the absolute gaps): a disagreement beyond 1e-9 raises `FairnessCrossCheckError` naming both values.
Where a rate is undefined (a side with no actual positives, say) the definitions differ (AIF360 gives
nan, fairlearn 0), so that metric is reported as nan and not cross-checked.

`dataset_bias` applies AIF360's `BinaryLabelDatasetMetric` to training labels (base rate per group,
disparate impact and statistical parity of the labels) for the curation report.

aif360 is imported lazily: it takes seconds and logs warnings about optional dependencies
(tensorflow, inFairness) that are silenced here.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from ..errors import InputError, StackwiseError

TOLERANCE = 1e-9
AIF360_METRICS = ("statistical_parity_difference", "disparate_impact", "equal_opportunity_difference",
                  "average_odds_difference")


class FairnessCrossCheckError(StackwiseError, RuntimeError):
    """AIF360 and fairlearn disagree on a metric both define the same way: a bug, not bad input."""

    exit_code = 1


class GroupRate(BaseModel):
    count: int
    positives: int
    base_rate: float


class DatasetBias(BaseModel):
    """Label bias of a training set: AIF360's BinaryLabelDatasetMetric on privileged vs the rest."""

    group_key: str
    label_key: str
    privileged: list[str]
    groups: dict[str, GroupRate]
    base_rate_privileged: float
    base_rate_unprivileged: float
    disparate_impact: float
    statistical_parity_difference: float
    num_instances: int


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence aif360's import-time notes. They go through `logging.warning` on the root logger,
    which also installs a root handler (basicConfig) when there is none: a NullHandler prevents it."""
    root = logging.getLogger()
    guard = logging.NullHandler()
    root.addHandler(guard)
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)
        root.removeHandler(guard)


def _aif360() -> Any:
    from ..errors import MissingDependencyError

    try:
        with _quiet():
            from aif360 import datasets, metrics
    except ImportError as exc:
        raise MissingDependencyError("aif360 is not installed", where="stackwise.evaluation.fairness",
                                     fix="pip install 'stackwise[eval]'") from exc
    return datasets, metrics


def _binary_dataset(labels: Sequence[int], privileged: Sequence[bool]) -> Any:
    import pandas as pd

    datasets, _ = _aif360()
    frame = pd.DataFrame({"label": [float(v) for v in labels], "privileged": [float(p) for p in privileged]})
    with _quiet():
        return datasets.BinaryLabelDataset(df=frame, label_names=["label"], protected_attribute_names=["privileged"],
                                           favorable_label=1.0, unfavorable_label=0.0)


_GROUPS = {"privileged_groups": [{"privileged": 1.0}], "unprivileged_groups": [{"privileged": 0.0}]}


def _finite(value: Any) -> float:
    value = float(value)
    return value if math.isfinite(value) else float("nan")


def aif360_metrics(y_true: Sequence[int], y_pred: Sequence[int], privileged: Sequence[bool]) -> dict[str, float]:
    """The four AIF360 metrics (see the module docstring); undefined ones are nan."""
    _, metrics = _aif360()
    truth, pred = _binary_dataset(y_true, privileged), _binary_dataset(y_true, privileged).copy(deepcopy=True)
    pred.labels[:, 0] = [float(v) for v in y_pred]
    import numpy as np

    with _quiet(), np.errstate(all="ignore"):
        cm = metrics.ClassificationMetric(truth, pred, **_GROUPS)
        return {name: _finite(getattr(cm, name)()) for name in AIF360_METRICS}


def _fairlearn_signed(y_true: Sequence[int], y_pred: Sequence[int], side: list[str]) -> dict[str, float]:
    from fairlearn.metrics import (MetricFrame, demographic_parity_difference, equal_opportunity_difference,
                                   false_positive_rate, selection_rate, true_positive_rate)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = MetricFrame(metrics={"sr": selection_rate, "tpr": true_positive_rate, "fpr": false_positive_rate},
                            y_true=list(y_true), y_pred=list(y_pred), sensitive_features=side)
        by = frame.by_group
        u, p = by.loc["unprivileged"], by.loc["privileged"]
        return {"statistical_parity_difference": float(u["sr"] - p["sr"]),
                "disparate_impact": float(u["sr"] / p["sr"]) if p["sr"] else float("nan"),
                "equal_opportunity_difference": float(u["tpr"] - p["tpr"]),
                "average_odds_difference": float(0.5 * ((u["fpr"] - p["fpr"]) + (u["tpr"] - p["tpr"]))),
                "|dpd|": float(demographic_parity_difference(y_true, y_pred, sensitive_features=side)),
                "|eod|": float(equal_opportunity_difference(y_true, y_pred, sensitive_features=side))}


def _defined(y_true: Sequence[int], y_pred: Sequence[int], privileged: Sequence[bool]) -> dict[str, bool]:
    """Which metrics both libraries define identically on this data (no empty denominator)."""
    def count(side: bool, label: int | None) -> int:
        return sum(1 for t, p in zip(y_true, privileged) if p == side and (label is None or t == label))

    positives = count(True, 1) > 0 and count(False, 1) > 0
    negatives = count(True, 0) > 0 and count(False, 0) > 0
    selected = sum(1 for y, p in zip(y_pred, privileged) if p and y == 1) > 0
    return {"statistical_parity_difference": True, "disparate_impact": selected,
            "equal_opportunity_difference": positives, "average_odds_difference": positives and negatives}


def cross_checked(y_true: Sequence[int], y_pred: Sequence[int], privileged: Sequence[bool]) -> dict[str, float]:
    """AIF360's four metrics, each verified against fairlearn on the same split.

    Raises `FairnessCrossCheckError` (naming both values) when they disagree beyond 1e-9 where
    both define a metric, and `InputError` when one side of the split is empty."""
    if all(privileged) or not any(privileged):
        raise InputError("group fairness needs records from both the privileged group and the others",
                         where="bias records", fix="add records of every group, or mark the privileged group")
    found = aif360_metrics(y_true, y_pred, privileged)
    side = ["privileged" if p else "unprivileged" for p in privileged]
    reference = _fairlearn_signed(y_true, y_pred, side)
    defined = _defined(y_true, y_pred, privileged)
    pairs = [(name, found[name], reference[name]) for name in AIF360_METRICS if defined[name]]
    pairs.append(("|statistical_parity_difference| vs fairlearn demographic_parity_difference",
                  abs(found["statistical_parity_difference"]), reference["|dpd|"]))
    if defined["equal_opportunity_difference"]:
        pairs.append(("|equal_opportunity_difference| vs fairlearn equal_opportunity_difference",
                      abs(found["equal_opportunity_difference"]), reference["|eod|"]))
    for name, ours, theirs in pairs:
        if not abs(ours - theirs) <= TOLERANCE:  # also catches a nan on one side only
            raise FairnessCrossCheckError(f"aif360 and fairlearn disagree on {name}: aif360 {ours!r}, "
                                          f"fairlearn {theirs!r} (tolerance {TOLERANCE:g})",
                                          where="stackwise.evaluation.fairness",
                                          fix="report this with the bias records; pin aif360/fairlearn versions")
    return {name: (value if defined[name] else float("nan")) for name, value in found.items()}


def privileged_flags(groups: Sequence[str], marks: Sequence[Any] | None = None, privileged: Iterable[str] | None = None,
                     where: str = "bias records") -> tuple[list[bool], list[str], str]:
    """(flag per record, privileged group names, source) from, in order: `privileged` names given,
    per-record `privileged: true/false` marks, or else the largest group (ties: first by name)."""
    names = sorted(set(groups))
    if privileged is not None:
        chosen, source = sorted({str(g) for g in privileged}), "config"
    elif marks is not None and any(m is not None for m in marks):
        chosen = sorted({g for g, m in zip(groups, marks) if m is True})
        wrong = sorted({g for g, m in zip(groups, marks) if (m is True) != (g in chosen)})
        if wrong or any(m not in (True, False, None) for m in marks):
            raise InputError(f"records of group {(wrong or ['?'])[0]!r} disagree on `privileged` (or it is not a "
                             "boolean)", where=where, fix="mark every record of the privileged group(s) "
                             "`\"privileged\": true` and the others false (or leave the field out everywhere)")
        source = "records"
    else:
        chosen, source = [max(names, key=groups.count)], "largest group"  # max keeps the first of a tie
    unknown = [g for g in chosen if g not in names]
    if unknown:
        raise InputError(f"privileged group {unknown[0]!r} is not a group in the data", where=where,
                         fix="choose from " + ", ".join(names[:20]))
    return [g in chosen for g in groups], chosen, source


def dataset_bias(records: Sequence[Mapping[str, Any]], group_key: str, label_key: str,
                 privileged: str | Iterable[str]) -> DatasetBias:
    """Bias of the labels in training data: base rate P(label=1) per group, and AIF360's
    disparate impact and statistical parity difference of the labels (privileged vs the rest).
    Labels must be 0/1 (or booleans); a record missing either key raises `InputError`."""
    groups, labels = [], []
    for i, record in enumerate(records):
        where = f"training record {i}"
        if group_key not in record or label_key not in record:
            missing = group_key if group_key not in record else label_key
            raise InputError(f"record has no `{missing}`", where=where, fix=f"give every record `{group_key}` "
                             f"and `{label_key}`, or choose other keys")
        label = record[label_key]
        if isinstance(label, str) or label not in (0, 1):
            raise InputError(f"`{label_key}` must be 0/1 or a boolean, got {str(label)[:40]!r}", where=where,
                             fix="map labels to 1 (favourable) and 0")
        groups.append(str(record[group_key]))
        labels.append(int(label))
    names = [privileged] if isinstance(privileged, str) else list(privileged)
    flags, chosen, _ = privileged_flags(groups, privileged=names, where=f"dataset_bias(privileged={names!r})")
    if all(flags) or not any(flags):
        raise InputError("dataset bias needs records from the privileged group and from the others",
                         where=f"`{group_key}` values", fix="check the group key and the privileged names")
    import numpy as np

    _, metrics = _aif360()
    with _quiet(), np.errstate(all="ignore"):
        m = metrics.BinaryLabelDatasetMetric(_binary_dataset(labels, flags), **_GROUPS)
        per_group = {g: GroupRate(count=groups.count(g), positives=sum(lb for lb, gg in zip(labels, groups) if gg == g),
                                  base_rate=sum(lb for lb, gg in zip(labels, groups) if gg == g) / groups.count(g))
                     for g in sorted(set(groups))}
        return DatasetBias(group_key=group_key, label_key=label_key, privileged=chosen, groups=per_group,
                           base_rate_privileged=_finite(m.base_rate(privileged=True)),
                           base_rate_unprivileged=_finite(m.base_rate(privileged=False)),
                           disparate_impact=_finite(m.disparate_impact()),
                           statistical_parity_difference=_finite(m.statistical_parity_difference()),
                           num_instances=int(m.num_instances()))
