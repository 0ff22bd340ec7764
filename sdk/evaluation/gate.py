"""The promotion gate: rules read from a YAML file, compared on two sets of metrics measured on
the same data. Pure: no registry, no MLflow (see stackwise.model_registry for those).

    # gates.yaml
    data: eval.jsonl          # optional: the data both models were evaluated on
    metrics:
      perplexity: {min_delta: 0.5}           # lower is better for perplexity: must drop by >= 0.5
      rouge.rougeL: {min_delta: 0.01}
      mmlu.accuracy: {}                      # must be strictly better
      safety.unsafe_rate: {min_delta: 0, direction: lower}

A rule passes when the candidate improves on the champion by at least `min_delta` in the
metric's direction (strictly, when `min_delta` is 0). A metric missing on either side fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import SpecError

LOWER_IS_BETTER = {
    "perplexity", "safety.unsafe_rate", "safety.over_refusal_rate",
    "bias.demographic_parity_difference", "bias.equalized_odds_difference",
}


class GateRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str
    min_delta: float = Field(0.0, ge=0)
    direction: Literal["higher", "lower"] | None = None

    @property
    def lower_is_better(self) -> bool:
        return self.direction == "lower" if self.direction else self.metric in LOWER_IS_BETTER


class Gate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str | None = None
    rules: list[GateRule]


class GateRow(BaseModel):
    metric: str
    direction: str
    candidate: float | None
    champion: float | None
    improvement: float | None
    min_delta: float
    passed: bool
    reason: str = ""


def read_gate(path: str) -> Gate:
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpecError(f"cannot read gate file: {exc.strerror}", where=path, fix="pass --gate FILE") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"gate file is not valid YAML: {exc}", where=path, fix="fix the YAML") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("metrics"), dict) or not raw["metrics"]:
        raise SpecError("the gate file needs a `metrics:` mapping of metric -> {min_delta, direction}", where=path,
                        fix="e.g. metrics: {perplexity: {min_delta: 0.5}}")
    unknown = sorted(set(raw) - {"data", "metrics"})
    if unknown:
        raise SpecError(f"unknown gate key {unknown[0]!r}", where=path, fix="use `data` and `metrics`")
    try:
        rules = [GateRule(metric=name, **(opts or {})) for name, opts in raw["metrics"].items()]
        data = raw.get("data")
        if data and not ("://" in str(data) or Path(str(data)).is_absolute()):
            data = str((Path(path).parent / str(data)).resolve())  # relative to the gate file
        return Gate(data=data, rules=rules)
    except (ValidationError, TypeError) as exc:
        raise SpecError(f"invalid gate rule: {exc}", where=path, fix="each metric takes min_delta (>= 0) and "
                        "direction (higher or lower)") from None


def compare(gate: Gate, candidate: dict[str, float], champion: dict[str, float]) -> list[GateRow]:
    rows = []
    for rule in gate.rules:
        c, b = candidate.get(rule.metric), champion.get(rule.metric)
        direction = "lower" if rule.lower_is_better else "higher"
        if c is None or b is None:
            side = "candidate" if c is None else "champion"
            rows.append(GateRow(metric=rule.metric, direction=direction, candidate=c, champion=b, improvement=None,
                                min_delta=rule.min_delta, passed=False,
                                reason=f"not measured for the {side} on this data"))
            continue
        improvement = (b - c) if rule.lower_is_better else (c - b)
        passed = improvement >= rule.min_delta if rule.min_delta > 0 else improvement > 0
        if passed:
            reason = ""
        elif rule.min_delta > 0:
            reason = f"improvement {improvement:+.4g} is below the required {rule.min_delta:g}"
        else:
            reason = f"not better (improvement {improvement:+.4g})"
        rows.append(GateRow(metric=rule.metric, direction=direction, candidate=c, champion=b,
                            improvement=improvement, min_delta=rule.min_delta, passed=passed, reason=reason))
    return rows
