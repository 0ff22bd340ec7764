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
    "redteam.attack_success_rate",  # and every redteam.<family>.attack_success_rate (see GateRule)
}


class GateRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str
    min_delta: float = Field(0.0, ge=0)
    direction: Literal["higher", "lower"] | None = None

    @property
    def lower_is_better(self) -> bool:
        if self.direction:
            return self.direction == "lower"
        return self.metric in LOWER_IS_BETTER or (self.metric.startswith("redteam.")
                                                   and self.metric.endswith(".attack_success_rate"))


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
    """Read and validate a gate file (the project's bounded YAML loader: no alias bombs).

    Raises `SpecError` naming the file (and line, for bad YAML) on anything invalid."""
    from ..userinput import read_yaml, shorten

    raw = read_yaml(path, SpecError, what="gate file", fix="pass --gate FILE")
    if not isinstance(raw, dict) or not isinstance(raw.get("metrics"), dict) or not raw["metrics"]:
        raise SpecError("the gate file needs a `metrics:` mapping of metric -> {min_delta, direction}", where=path,
                        fix="e.g. metrics: {perplexity: {min_delta: 0.5}}")
    unknown = sorted((k for k in raw if k not in ("data", "metrics")), key=str)
    if unknown:
        raise SpecError(f"unknown gate key {shorten(unknown[0])}", where=path, fix="use `data` and `metrics`")
    data = raw.get("data")
    if data is not None and not (isinstance(data, str) and data.strip()):
        raise SpecError(f"gate `data` must be a path or URI, got {shorten(data)}", where=f"{path}: data",
                        fix="e.g. data: eval.jsonl (relative to the gate file), or remove the key")
    rules = []
    for name, opts in raw["metrics"].items():
        where = f"{path}: metrics.{shorten(name, 60)}"
        fix = "each metric takes min_delta (>= 0) and direction (higher or lower)"
        if not isinstance(name, str) or not name.strip():
            raise SpecError(f"gate metric name {shorten(name)} is not a metric name", where=where,
                            fix="name metrics as stackwise reports them, e.g. perplexity or rouge.rougeL")
        if opts is not None and (not isinstance(opts, dict) or "metric" in opts):
            raise SpecError(f"gate rule for {name} must be a mapping, got {shorten(opts)}", where=where, fix=fix)
        try:
            rules.append(GateRule.model_validate({"metric": name, **(opts or {})}))
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(p) for p in first["loc"]) or "(rule)"
            raise SpecError(f"invalid gate rule for {name}: {shorten(key, 60)}: {first['msg']}", where=where,
                            fix=fix) from None
    if data and not ("://" in data or Path(data).is_absolute()):
        data = str((Path(path).parent / data).resolve())  # relative to the gate file
    return Gate(data=data, rules=rules)


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
