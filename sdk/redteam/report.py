"""garak's JSONL report, read into attack success rates.

garak writes one JSON object per line; `entry_type` says what it is. Attempts (`attempt`) are
written twice: status 1 when the prompt was sent, status 2 once detectors scored every output
(`detector_results`: detector -> one score in [0, 1] per output). For each (probe, detector)
an `eval` entry counts outputs that `passed` and that failed (`fails`: the detector scored them
at or above the run's threshold, 0.5 by default: the attack succeeded), and `nones` (not scored).

attack success rate = fails / (passed + fails), per probe and detector; the overall
`redteam.attack_success_rate` pools every (probe, detector) pair: sum of fails / sum of outputs
evaluated.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, Field

from ..errors import InputError


class ProbeResult(BaseModel):
    """One (probe, detector) pair of a garak run."""

    probe: str
    family: str
    detector: str
    attempts: int  # prompts the probe sent (status-2 attempts)
    outputs_evaluated: int  # passed + fails
    fails: int
    passed: int
    nones: int
    attack_success_rate: float | None  # None when no output was scored


class NotRun(BaseModel):
    """A probe or detector that was asked for (or is part of a probe asked for) but did not run."""

    name: str
    kind: str  # "probe" or "detector"
    probes: list[str] = Field(default_factory=list)  # for a detector: the probes it belongs to
    reason: str


class RedTeamReport(BaseModel):
    """A garak run against an OpenAI-compatible endpoint: what ran, attack success rates, what did not run."""

    endpoint: str
    model: str
    garak_version: str
    requested: list[str]
    generations: int
    prompt_cap: int
    families_run: list[str]
    probes_run: list[str]
    detectors_run: list[str]
    results: list[ProbeResult]
    attempts: int
    outputs_evaluated: int
    fails: int
    attack_success_rate: float | None
    not_run: list[NotRun]
    over_cap: list[str] = Field(default_factory=list)  # probes that sent more prompts than the cap (garak's is soft)
    report_jsonl: str
    out_dir: str
    started: str
    seconds: float

    def metrics(self) -> dict[str, float]:
        """Eval-report metrics: `redteam.attack_success_rate` and one per probe family (lower is better)."""
        out: dict[str, float] = {}
        if self.attack_success_rate is not None:
            out["redteam.attack_success_rate"] = self.attack_success_rate
        for family in self.families_run:
            rows = [r for r in self.results if r.family == family]
            total = sum(r.outputs_evaluated for r in rows)
            if total:
                out[f"redteam.{family}.attack_success_rate"] = sum(r.fails for r in rows) / total
        return out


def read_entries(path: Path) -> list[dict]:
    """Every JSON line of a garak report (a torn last line, from a killed run, is skipped)."""
    entries = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"cannot read the garak report: {exc.strerror}", where=str(path),
                         fix="check garak's output above; the run may have failed before writing it") from None
    for i, line in enumerate(lines):
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise InputError(f"line {i + 1} of the garak report is not JSON", where=str(path),
                                 fix="rerun; the report was damaged") from None
    return entries


def probe_results(entries: list[dict]) -> list[ProbeResult]:
    """One result per garak `eval` entry, with the probe's scored attempts counted beside it."""
    attempts: dict[str, int] = {}
    for e in entries:
        if e.get("entry_type") == "attempt" and e.get("status") == 2:
            attempts[e["probe_classname"]] = attempts.get(e["probe_classname"], 0) + 1
    out = []
    for e in entries:
        if e.get("entry_type") != "eval":
            continue
        probe = str(e["probe"]).removeprefix("probes.")
        evaluated = int(e["passed"]) + int(e["fails"])
        out.append(ProbeResult(probe=probe, family=probe.split(".")[0], detector=str(e["detector"]),
                               attempts=attempts.get(probe, 0), outputs_evaluated=evaluated, fails=int(e["fails"]),
                               passed=int(e["passed"]), nones=int(e.get("nones", 0)),
                               attack_success_rate=int(e["fails"]) / evaluated if evaluated else None))
    return out


def pooled_rate(results: list[ProbeResult]) -> float | None:
    total = sum(r.outputs_evaluated for r in results)
    return sum(r.fails for r in results) / total if total else None
